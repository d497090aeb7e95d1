"""benchmarks/bench_gpu.py, checked without a GPU: run through the portable kernels on tiny grids
(its table has the documented columns and rows), and its byte counts of the tumor rules and of the
push rule equal counts by hand from the arguments of kernels/tumor.cu and kernels/mechanics.cu."""

from __future__ import annotations

import importlib.util
import json
import os
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


def _apply_rules(m, rules, step):
    st = m.state
    return rules.apply(
        st.kind,
        st.tumor_state,
        st.fields[m.oxygen],
        step,
        st.memory,
        st.time_in_P_min,
        m._field("hgf"),
        m._field("igf1"),
        m.therapy.tissue_levels(st),
    )


def test_tumor_rules_bytes_equal_the_hand_count():
    """Three timed steps of the contact-inhibited rules: each reports its own 3 launches and the
    hand count of their bytes."""
    bench = _bench()
    from tmesim.backend import Portable
    from tmesim.simulation import Model

    sc = bench.bench_scenario((32, 32), 8, "solver.method=lod", "tumor.mechanics.push_reach_um=0")
    counting = bench.counting_backend(Portable())
    m = Model(sc, counting)
    tr = m.tumor_rules
    step = iter(range(100))
    steps = bench.timed_steps(
        bench.Clock(counting), counting.counter, lambda: _apply_rules(m, tr, next(step)), 3
    )
    # the small tables each launch of decide reads (parameters, effects, offsets, state table)
    small = sum(a.nbytes for a in (tr.effects, tr.offsets, tr.params, tr.state_table))
    assert sc.field_names == ("oxygen", "hgf", "igf1", "signal", "erlotinib")
    hand = _tumor_rules_bytes_by_hand(32 * 32, 1, small)
    assert [s[1:] for s in steps] == [(3, hand)] * 3
    assert all(s[0] > 0 for s in steps)
    row = bench._row("tumor rules", "32x32", steps)
    assert (row["steps"], row["launches"], row["bytes"]) == (3, 3, hand)
    assert row["bandwidth"] == pytest.approx(3 * hand / sum(s[0] for s in steps))


def test_a_model_on_the_counting_backend_counts_the_push_launches():
    """Every step object of a Model built on the counting backend launches through its counter:
    the rules' push launches (their own KernelPushing's launcher) too, 3 tumor launches plus 3
    distance passes and claim, apply, finish per step at 60 um; and the field solver's."""
    bench = _bench()
    from tmesim.backend import Portable
    from tmesim.simulation import Model

    sc = bench.bench_scenario((32, 32), 8, "tumor.mechanics.push_reach_um=60")
    counting = bench.counting_backend(Portable())
    m = Model(sc, counting)
    assert m.tumor_rules.pushing.passes == 3
    n, nbytes = counting.counter.count(lambda: _apply_rules(m, m.tumor_rules, 0))
    assert n == 9 and nbytes > 0
    before = counting.counter.total
    st = m.state
    n_fields, _ = counting.counter.count(
        lambda: m.field_solver.step(st.fields, st.kind, st.tumor_state)
    )
    assert n_fields > 0 and counting.counter.total == before + n_fields


def test_timed_steps_count_the_steps_they_time():
    """A step whose i-th call launches tm_axpy i times: each timed step reports its own i
    launches and i times one launch's bytes (a count taken from another call than the timed one
    would not), and the row their means."""
    bench = _bench()
    from tmesim.backend import Portable
    from tmesim.steps.fields_kernel import axpy

    counting = bench.counting_backend(Portable())
    F, n = 2, 300
    y = np.zeros((F, n), np.float32)
    x = np.ones((F, n), np.float32)
    alpha = np.array([1, 2], np.float32)
    calls = [0]

    def step():
        calls[0] += 1
        for _ in range(calls[0]):
            axpy(y, alpha, x, launcher=counting.counter)

    one = 2 * y.nbytes + x.nbytes + alpha.nbytes  # y updated in place; x, alpha read
    steps = bench.timed_steps(bench.Clock(counting), counting.counter, step, 4)
    assert [s[1:] for s in steps] == [(i, i * one) for i in (1, 2, 3, 4)]
    np.testing.assert_array_equal(y, np.outer(alpha, np.ones(n)) * 10)  # 10 launches ran
    row = bench._row("axpy", "2x300", steps)
    assert (row["steps"], row["launches"], row["bytes"]) == (4, 2.5, 2.5 * one)
    assert counting.counter.total == 10


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
    counting = bench.counting_backend(Portable())
    counter = counting.counter
    m = Model(sc, counting)
    tr, st = m.tumor_rules, m.state
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
    # the contact-inhibited rules launch decide, apply, finish; with the push rule also 3
    # distance passes and the claim, apply and finish launches, in every timed step
    tumor_rows = [row for row in rows if row[0] == "tumor rules"]
    assert [row[4] for row in tumor_rows] == ["3", "3"]
    assert [row[4] for row in push_rows] == ["9", "9"]
    for t, p in zip(tumor_rows, push_rows):
        assert float(p[5]) > float(t[5])  # MB per step
    for row in rows:
        steps, ms, launches, mb, gbs, pct = map(float, row[2:])
        assert steps == 2  # --repeats
        assert ms > 0 and launches >= 3 and mb > 0 and gbs > 0 and pct > 0
        assert abs(gbs - mb / ms) <= 0.01 * gbs + 0.01  # GB/s = MB / ms
    # an LOD step of one substep: tm_set_pinned, then per field one tm_lod_sweep per axis (the
    # copies in and out of the float64 work array are the array library's), 5 fields
    lod = [row[4] for row in rows if row[0].startswith("field solver lod")]
    assert lod == [str(1 + 5 * 2), str(1 + 5 * 3)]
    assert "Copy bandwidth" in text
    run = next(s for s in lines if "tiny stand-in" in s)
    cells = [c.strip() for c in run.strip("|").split("|")]
    assert cells[1:5] == ["16x16x16", "5", "0.02", "5"] and cells[8] == "finished"
    assert float(cells[7]) >= 3  # launches per step of the whole run


PROBE = ROOT / "benchmarks" / "gpu_probe.py"


def test_probe_timeline_holds_every_launch_of_the_step(tmp_path):
    """benchmarks/gpu_probe.py on the portable kernels at 16^3: no section fails, and its
    timelines hold each launch of the step, per kernel as the solver and rules make them. A CG
    step of s sweeps (3D, 5 fields, converged) builds the diagonal and sources (one pass), starts
    with one pass for the residual and its maxima, then per iteration and run of still-active
    fields applies the operator with p.q (a launches in all, at least s), updates c and r with
    largest |r| as often, and preconditions (v V-cycles: the start's and one per run of every
    iteration but the last), each V-cycle over the three multigrid levels of 16^3 (16^3, 8^3,
    4^3): on level 0 smoothing, the residual restricted as it is computed, and the prolongation
    with the last sweep and r.z, each recomputing the level's coefficients; on 8^3 smoothing, a
    residual, restriction, prolongation and a sweep; 7 more sweeps on 4^3; every dot product
    is a tree pass (a + v); levels 1 and 2 are built once per step. The rules launch
    the three tumor kernels and, at the bench scenario's 60 um on 20 um voxels, 3 distance
    passes and the push's claim, apply and finish; an LOD step sweeps each of 5 fields along 3
    axes."""
    r = subprocess.run(
        [sys.executable, str(PROBE), str(tmp_path), "--portable", "--size", "16"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    p = json.loads((tmp_path / "probe.json").read_text())
    assert p["failures"] == [] and "skipped" not in p
    fields = p["timeline_field solver"]
    s = fields["sweeps"]
    calls = {k: v["calls"] for k, v in fields["parts"].items()}
    assert s >= 2
    assert calls["tm_rates_diag"] == calls["tm_cg_start"] == calls["tm_set_pinned"] == 1
    a = calls["tm_apply_pinned_dot"]
    assert a >= s and calls["tm_cg_update_absmax"] == a
    assert calls.get("tm_cg_direction", 0) >= s - 1
    v = calls["tm_mg0_jacobi_dot"]
    assert s <= v <= a + 1
    assert calls["tm_mg0_smooth0"] == calls["tm_mg0_residual_restrict"] == v
    assert calls["tm_mg_smooth0"] == 2 * v and calls["tm_mg_residual"] == v
    assert calls["tm_mg_restrict"] == calls["tm_mg_prolong_add"] == v
    assert calls["tm_mg_jacobi"] == (1 + 7) * v
    assert calls["tm_reduce_tree"] == a + v
    assert calls["tm_mg0_coarsen"] == calls["tm_mg_coarsen"] == 1 and calls["tm_mg_diag"] == 2
    for gone in ("tm_apply_operator", "tm_thomas_solve_factored", "tm_dots_columns", "tm_rates"):
        assert gone not in calls, gone
    assert {k: v["calls"] for k, v in p["timeline_tumor rules"]["parts"].items()} == {
        "tm_tumor_decide": 1,
        "tm_tumor_apply": 1,
        "tm_tumor_finish": 1,
        "tm_push_distance_first": 1,
        "tm_push_distance": 2,
        "tm_push_claim": 1,
        "tm_push_apply": 1,
        "tm_push_finish": 1,
    }
    assert {k: v["calls"] for k, v in p["lod"]["parts"].items()} == {
        "tm_set_pinned": 1,
        "tm_lod_sweep": 15,
    }
    md = (tmp_path / "probe.md").read_text()
    assert "| tm_apply_pinned_dot | " in md and "failures: []" in md


@pytest.mark.slow
def test_device_check_dry_run(tmp_path):
    """benchmarks/device_check.sh with DC_DRY=1: every stage ends ok (memcheck, without
    compute-sanitizer, only finds its tests: 'skipped'), the smoke runs hold both claims, and
    summary.md is printed last. Catches a renamed test, scenario key or function the script
    calls."""
    env = dict(
        os.environ, DC_DRY="1", OUT=str(tmp_path / "out"), BUDGET_S="400", PYTHON=sys.executable
    )
    env.pop("DC_ONLY", None)
    r = subprocess.run(
        ["bash", "benchmarks/device_check.sh"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("stage", "---"):
            rows[cells[0]] = cells[1]
    expected = ["env", "pytest", "smoke", "memcheck", "probe", "bench-3d-128", "bench-3d-256"]
    assert list(rows) == expected
    assert rows["memcheck"] == "skipped (see the log)"
    assert all(rows[k] == "ok" for k in expected if k != "memcheck"), rows
    assert summary.count("AS CLAIMED") == 2
    assert r.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])
