"""Whole runs (tmesim.simulation): determinism, a killed run, stop conditions, the CLI run with its
report, two runs given one output path, and the shipped scenarios' expected biology (slow)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import tmesim
from tmesim import codes
from tmesim.cli import main
from tmesim.io import checkpoint
from tmesim.io.runfile import attr_str
from tmesim.simulation import Model

from .helpers import SMALL_2D, h5_contents, make_scenario, rows_in, run_small, scenario_text

ROOT = Path(__file__).resolve().parents[1]


def test_same_seed_same_file_other_seed_differs(tmp_path):
    _, _, p1 = run_small(tmp_path, "1.h5")
    _, _, p2 = run_small(tmp_path, "2.h5")
    _, _, p3 = run_small(tmp_path, "3.h5", **{"run.seed": 12})
    a, b, c = h5_contents(p1), h5_contents(p2), h5_contents(p3)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    assert not np.array_equal(a["snapshots/kind"], c["snapshots/kind"])


def test_killed_run_leaves_a_readable_file(tmp_path):
    """SIGKILL while running: the file opens (h5py and open_run) with the snapshots flushed."""
    scen = tmp_path / "long.toml"
    scen.write_text(scenario_text("run.duration_days=30", "run.snapshot_every_hours=1"))
    out = tmp_path / "killed.h5"
    p = subprocess.Popen([sys.executable, "-m", "tmesim", "run", str(scen), "-o", str(out), "-q"])
    try:
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline and n < 3:
            time.sleep(0.2)
            if out.exists():
                try:
                    with h5py.File(out, "r", swmr=True) as f:
                        n = f["snapshots/time"].shape[0]
                except OSError:
                    pass
        assert n >= 3, "the run did not get going"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    with tmesim.open_run(out) as ds:
        T = ds.sizes["time"]
        assert T >= 3
        assert ds.attrs["status"] == "running"  # it never got to close
        kind = ds["kind"].values
        assert kind.shape[0] == T and (kind[-1] == codes.TUMOR).sum() > 0
        assert ds["burden"].size >= 1


def _tmesim(*args) -> subprocess.Popen:
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return subprocess.Popen(
        [sys.executable, "-m", "tmesim", *args, "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)),
    )


def test_a_second_run_given_the_path_of_a_live_run_is_refused(tmp_path):
    """Two `tmesim run` processes, one output path: the second, started while the first runs,
    is refused with one line (it used to replace the file, both reported success and the first
    run's output was lost); the first goes on writing the file under that name."""
    long = tmp_path / "long.toml"
    long.write_text(scenario_text("run.duration_days=30", "run.checkpoint_every_hours=1"))
    short = tmp_path / "short.toml"
    short.write_text(scenario_text("run.duration_days=0.1", "run.seed=99"))
    out = tmp_path / "run.h5"
    first = _tmesim("run", str(long), "-o", str(out))
    try:
        deadline = time.monotonic() + 60
        while rows_in(out) < 2 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert rows_in(out) >= 2, "the first run did not get going"
        second = _tmesim("run", str(short), "-o", str(out))
        _, err = second.communicate(timeout=120)
        assert first.poll() is None, "the first run ended before the second was refused"
        rows = rows_in(out)
        first.send_signal(signal.SIGTERM)  # checkpoint and end "interrupted"
        _, err1 = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("tmesim run: error: ")
    assert f"{out}: another process is writing this run file" in err
    assert first.returncode == 3, err1
    # the file under the name is the first run's, and it went on after the refusal
    with h5py.File(out, "r") as f:
        assert f.attrs["seed"] == 11 and attr_str(f, "status").strip() == "interrupted"
        assert f["timeseries/time_min"].shape[0] >= rows
        assert checkpoint.read(f).step > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "long.toml",
        "run.h5",
        "run.xdmf",
        "short.toml",
    ]


def test_a_path_held_open_is_refused_and_a_finished_run_is_replaced(tmp_path):
    """In one process: a file at the output path that another writer holds (its shared lock) is
    refused, after the 2 s a reader gets to close it; a finished run there is replaced; no
    temporary file is left either way."""
    _, _, path = run_small(tmp_path, "a.h5", **{"run.duration_days": 0.1})
    held = checkpoint.WriterLock(path)
    held.shared()
    try:
        before = path.read_bytes()
        with pytest.raises(checkpoint.RunLockedError, match="another process is writing"):
            run_small(tmp_path, "a.h5", **{"run.duration_days": 0.2})
        assert path.read_bytes() == before
    finally:
        held.release()
    _, sim, path = run_small(tmp_path, "a.h5", **{"run.duration_days": 0.2})
    with h5py.File(path, "r") as f:
        assert f["timeseries/time_min"].shape[0] == sim.state.step + 1 == 49
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "a.xdmf"]


def test_stop_at_burden_is_an_event(tmp_path):
    _sc, sim, path = run_small(tmp_path, **{"run.stop.max_burden": 200, "run.duration_days": 5})
    assert sim.stop_reason == "burden reached 200"
    with tmesim.open_run(path) as ds:
        assert ds.attrs["status"] == "stopped"
        assert ds["burden"].values[-1] >= 200 > ds["burden"].values[-2]
        assert list(ds["event_kind"].values) == ["start", "stop"]
        assert ds["time"].values[-1] == ds["step_time_h"].values[-1]  # last state snapshotted


def test_extinction_stops(tmp_path):
    _sc, sim, _path = run_small(tmp_path, **{"init.tumor.shape": "none"})
    assert sim.stop_reason == "extinction" and sim.state.step == 1


def test_cli_run_and_report(tmp_path, capsys):
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL_2D)
    out = tmp_path / "r" / "run.h5"
    assert (
        main(["run", str(scen), "-o", str(out), "-q", "--report", "--set", "run.duration_days=0.5"])
        == 0
    )
    text = capsys.readouterr().out
    assert "tumor cells (burden)" in text and "equivalent radius" in text
    for png in ("run_population.png", "run_maps.png"):
        p = out.parent / png
        assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG"
    assert main(["run", str(scen), "--backend", "gpu", "-q"]) == 2


#: the tables of the whole model beside the small scenario's: CAFs, TAMs, growth, transitions
#: and two drugs
EVERYTHING = """
[init.caf]
placement = "shell"
density = 0.3
shell_width_um = 100
[init.tam]
placement = "random"
density = 0.05
[tam]
motility_per_h = 2.0
recruitment_per_h = 0.2
[tumor]
doubling_time_h = 6
[tumor.transitions]
entry_basal_per_h = 0.05
entry_induced_per_h = 0.2
exit_per_h = 0.1
resistance_per_h = 0.05
[drugs.erl]
preset = "egfr_tki"
half_life_h = 12
transport = "vessels"
[drugs.erl.schedule]
dose_uM = 2
interval_h = 12
[drugs.cpi]
preset = "kdm5_inhibitor"
[drugs.cpi.schedule]
kind = "intermittent"
dose_uM = 5
on_days = 0.05
off_days = 0.05
"""


def test_same_seed_same_run_other_seed_other_run():
    """With drugs (one-compartment and square-wave), CAFs, TAMs (motion, chemotaxis,
    recruitment, death), HGF/IGF-1/signal fields and every transition on: two models with the
    same seed give bit-identical state arrays after 25 steps; another seed gives a different
    lattice. The run does exercise the rules (kills, transitions, stromal moves happen)."""
    runs = []
    for seed in (7, 7, 8):
        m = Model(
            make_scenario(
                f"run.seed={seed}",
                "grid.shape=[40,40]",
                "init.tumor.radius_um=250",
                "init.tumor.persister_fraction=0.1",
                "init.tumor.resistant_fraction=0.05",
                "init.vessels.density=0.02",
                drop=("run.name", "run.snapshot_every_hours"),
                extra=EVERYTHING,
            )
        )
        seen = dict(killed=0, entered_P=0, divisions=0, moves=0)
        for _ in range(25):
            c = m.step()
            seen["killed"] += c.killed
            seen["entered_P"] += c.entered_P
            seen["divisions"] += c.divisions
            seen["moves"] += m.last_stroma.caf_moves + m.last_stroma.tam_moves
        assert all(v > 0 for v in seen.values()), seen
        runs.append({k: v.copy() for k, v in m.state.arrays().items()})
    a, b, c = runs
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["kind"], c["kind"])


@pytest.mark.slow
def test_spheroid_grows_hypoxic_then_necrotic_core(tmp_path):
    """MODEL.md 7.5 on the shipped 3D scenario (shortened): the spheroid outgrows the oxygen
    diffusion length; a hypoxic core appears first, necrosis later, and necrosis sits deeper in the
    spheroid than the living cells (mean distance from the centre)."""
    sc = tmesim.load_scenario(
        "scenarios/spheroid_3d.toml",
        overrides={"grid.shape": [48, 48, 48], "run.duration_days": 8, "init.tumor.radius_um": 260},
    )
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "sph.h5")
    with tmesim.open_run(path) as ds:
        t = ds["step_time_h"].values
        hyp = ds["hypoxic_fraction"].values
        nec = ds["n_necrotic"].values
        first_hyp = t[np.argmax(hyp > 0.05)]
        first_nec = t[np.argmax(nec > 0)]
        assert hyp[0] == 0 and nec[0] == 0
        assert hyp.max() > 0.3 and nec.max() > 20
        assert first_hyp < first_nec
        kind = ds["kind"][-1].values
        zz, yy, xx = np.indices(kind.shape)
        r = np.sqrt(sum((a - (n - 1) / 2) ** 2 for a, n in zip((zz, yy, xx), kind.shape)))
        assert r[kind == codes.NECROTIC].mean() < r[kind == codes.TUMOR].mean()
        o2 = ds["oxygen"][-1].values
        assert o2[kind == codes.NECROTIC].mean() < 5.0 < o2[kind == codes.TUMOR].mean()


@pytest.mark.slow
def test_quickstart_runs_as_readme_says(tmp_path):
    code = main(["run", "scenarios/quickstart_2d.toml", "-o", str(tmp_path / "q.h5"), "-q"])
    assert code == 0
    with tmesim.open_run(tmp_path / "q.h5") as ds:
        # README: treated from day 3, it falls by about 90 %, then regrows off drug (the whole
        # story is checked in tests/test_shipped_scenarios.py)
        b = ds["burden"].values
        assert b.min() < 0.15 * b.max() and b[-1] > 1.5 * b.min()
