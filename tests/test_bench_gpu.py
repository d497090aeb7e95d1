"""benchmarks/bench_gpu.py, checked without a GPU: run through the portable kernels on tiny grids
(its table has the documented columns and rows), and its byte counts of the tumor rules and of the
push rule equal counts by hand from the arguments of kernels/tumor.cu and kernels/mechanics.cu."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tmesim import launch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"

pytestmark = pytest.mark.skipif(launch.find_cxx() is None, reason="no C++ compiler")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tumor_rules_bytes_by_hand(n: int, n_drugs: int, small: int) -> int:
    """The dense count (bench_gpu.launch_bytes' rule: read 1x, write-only 1x, in place 2x) of
    one step of the tumor rules, from the kernels' arguments in kernels/tumor.cu."""
    decide = (
        1  # kind, read
        + 2 * 1  # tumor_state, updated (transitions)
        + 2 * 4  # memory, updated
        + 2 * 4  # time_in_P, updated
        + 4
        + 4
        + 4  # oxygen, hgf, igf1, read
        + 4 * n_drugs  # drug_conc, read
        + 1
        + 4  # action, target: written
        + 2 * 8
    )  # claims, atomicMax (read-modify-write)
    apply = 2 * 1 + 2 * 1 + 2 * 4 + 2 * 4 + 2 * 1 + 4 + 8  # kind, state, memory, time, action
    #                                                        updated; target, claims read
    finish = 1 + 2 * 4 + 2 * 8  # action read; target, claims updated
    return n * (decide + apply + finish) + small


def test_tumor_rules_bytes_equal_the_hand_count():
    bench = _bench()
    from tmesim.backend import Portable
    from tmesim.simulation import Model

    sc = bench.bench_scenario((32, 32), 8, "solver.method=lod")
    m = Model(sc, Portable())
    counter = bench.CountingLauncher(m.classes.launcher)
    tr, st = m.tumor_rules, m.state
    tr.L = counter
    n_launches, nbytes = counter.count(
        lambda: tr.apply(
            st.kind,
            st.tumor_state,
            st.fields[m.oxygen],
            0,
            st.memory,
            st.time_in_P_min,
            m._field("hgf"),
            m._field("igf1"),
            m.therapy.tissue_levels(st),
        )
    )
    # the small tables each launch of decide reads (parameters, effects, offsets, state table)
    small = sum(a.nbytes for a in (tr.effects, tr.offsets, tr.params, tr.state_table))
    assert sc.field_names == ("oxygen", "hgf", "igf1", "signal", "erlotinib")
    assert n_launches == 3
    assert nbytes == _tumor_rules_bytes_by_hand(32 * 32, 1, small)


def _push_bytes_by_hand(n: int, passes: int, small: int) -> int:
    """The dense count of the push launches of one step (kernels/mechanics.cu), per site: the
    first distance pass (tm_push_distance_first) reads kind and writes D, each further one
    (tm_push_distance) reads kind and updates D in place (read, written back: the one buffer);
    claim reads D, updates action and claims; apply reads D and claims, updates kind,
    tumor_state, memory, time_in_P and action, writes target; finish reads D and action, updates
    claims."""
    first = 1 + 2
    further = 1 + 2 * 2
    claim = 2 + 2 * 1 + 2 * 8
    apply = 2 + 2 * (1 + 1 + 4 + 4) + 2 * 1 + 4 + 8
    finish = 2 + 1 + 2 * 8
    return n * (first + (passes - 1) * further + claim + apply + finish) + small


@pytest.mark.parametrize("reach_um,passes", [(20.0, 1), (60.0, 3), (100.0, 5)])
def test_push_rule_bytes_equal_the_hand_count(reach_um, passes):
    bench = _bench()
    from tmesim.backend import Portable
    from tmesim.simulation import Model

    sc = bench.bench_scenario(
        (32, 32), 8, "solver.method=lod", f"tumor.mechanics.push_reach_um={reach_um}"
    )
    m = Model(sc, Portable())
    counter = bench.CountingLauncher(m.classes.launcher)
    tr, st = m.tumor_rules, m.state
    tr.L = tr.pushing.L = counter
    kind = st.kind.copy()
    n = 32 * 32
    n_launches, nbytes = counter.count(
        lambda: tr.pushing.apply(
            kind, st.tumor_state, st.memory, st.time_in_P_min, tr.action, tr.target, tr.claims, 0
        )
    )
    p = tr.pushing
    assert p.passes == passes and n_launches == passes + 3
    # the offsets each launch reads
    small = (passes + 3) * p.offsets.nbytes
    assert nbytes == _push_bytes_by_hand(n, passes, small)


def test_launch_bytes_roles():
    """A field kernel by hand: tm_laplacian reads c and the small tables, writes out."""
    bench = _bench()
    sig = bench.kernel_signatures()
    F, n = 3, 100
    c = np.zeros((F, n), np.float32)
    out = np.zeros_like(c)
    D = np.zeros(F, np.float32)
    ghosts = np.zeros((F, 3, 2), np.float32)
    args = (np.int32(F), np.int32(1), np.int32(10), np.int32(10), np.int32(2), c, D, ghosts, out)
    assert [r for _, r in sig["tm_laplacian"] if r != "scalar"] == ["r", "r", "r", "w"]
    assert bench.launch_bytes("tm_laplacian", args, sig) == 2 * F * n * 4 + F * 4 + F * 6 * 4
    with pytest.raises(ValueError, match="arguments"):
        bench.launch_bytes("tm_laplacian", args[:-1], sig)


def test_script_runs_on_the_portable_kernels(tmp_path):
    """The whole script, --backend portable --sizes tiny: a table with the documented columns,
    one row per part and grid, and the whole-run table; --out holds the same text."""
    out = tmp_path / "bench.md"
    r = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--backend",
            "portable",
            "--sizes",
            "tiny",
            "--repeats",
            "2",
            "--warm",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.strip() == r.stdout.strip()
    bench = _bench()
    lines = text.splitlines()
    head = next(i for i, s in enumerate(lines) if s.startswith("| part |"))
    assert [c.strip() for c in lines[head].strip("|").split("|")] == list(bench.COLUMNS)
    rows = []
    for s in lines[head + 2 :]:
        if not s.startswith("|"):
            break
        rows.append([c.strip() for c in s.strip("|").split("|")])
    parts = [(row[0].split(" (")[0], row[1]) for row in rows]
    assert parts == [
        (p, g)
        for g in ("32x32", "16x16x16")
        for p in ("field solver adi", "tumor rules", "tumor rules + push", "field solver lod")
    ]
    push_rows = [row for row in rows if row[0].startswith("tumor rules + push")]
    assert all("(60 um, 3 passes)" in row[0] for row in push_rows)
    # the same tumor step plus 3 distance passes and the claim, apply and finish launches
    tumor_rows = [row for row in rows if row[0] == "tumor rules"]
    for t, p in zip(tumor_rows, push_rows):
        assert float(p[3]) == float(t[3]) + 6
        assert float(p[4]) > float(t[4])
    for row in rows:
        ms, launches, mb, gbs, pct = map(float, row[2:])
        assert ms > 0 and launches >= 3 and mb > 0 and gbs > 0 and pct > 0
        assert abs(gbs - mb / ms) <= 0.01 * gbs + 0.01  # GB/s = MB / ms
    assert "Copy bandwidth" in text
    run = next(s for s in lines if "tiny stand-in" in s)
    assert "| 16x16x16 | 5 |" in run and "finished" in run
