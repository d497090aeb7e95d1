"""Therapy controllers on scripted observables, in a run, through a checkpoint, and their errors.

Scripted tests drive Controllers.decide with rows whose burden follows a prescribed path, so the
expected decisions follow from the controller's rule alone (Zhang et al. 2017's adaptive
thresholds, Gatenby et al. 2009's dose modulation, a biopsy threshold)."""

import json
import os
import signal

import h5py
import numpy as np
import pytest

import tmesim
from tmesim import codes
from tmesim.cli import main
from tmesim.controllers import ControllerError, Controllers
from tmesim.grid import Grid
from tmesim.state import State

from .helpers import At

BASE = """
[run]
seed = 4
duration_days = {days}
snapshot_every_hours = 24
checkpoint_every_hours = 24
[grid]
shape = [40, 40]
[init.tumor]
shape = "rectangle"
size_um = [800, 800]
fill_fraction = 0.3
resistant_fraction = 0.02
[fields.oxygen]
uptake_per_min = {{ tumor = 0 }}
decay_per_min = 0
[drugs.erlotinib]
preset = "egfr_tki"
transport = "uniform"
{extra}
"""


def scenario(controller: str, days=2, extra=""):
    return tmesim.loads_scenario(
        BASE.format(days=days, extra=f"controller = {controller}\n" + extra)
    )


def drive(sc, burdens, every_min=None):
    """Decide once per entry of ``burdens`` (one decision interval apart); return the levels."""
    ctl = Controllers(sc, Grid(sc.grid.shape, sc.grid.dx_um))
    st = State.empty(Grid(sc.grid.shape, sc.grid.dx_um), 1, 1)
    every = every_min or sc.drugs[0].controller.decide_every_h * 60
    levels = []
    for k, b in enumerate(burdens):
        st.time_min = k * every
        ctl.decide({"burden": b}, st, k)
        levels.append(ctl.level[0])
    return levels, ctl


def test_adaptive_thresholds_and_hysteresis():
    """Baseline 1000 at the first decision: treat (>= 1.0 x baseline); keep treating down to
    501 (> 0.5 x); pause at 500 (<= 0.5 x); stay paused while it regrows to 999 (< 1.0 x:
    hysteresis); treat again at 1000; pause again at 400."""
    sc = scenario('{ kind = "adaptive", dose_uM = 2.0, decide_every_h = 24 }')
    burdens = [1000, 800, 501, 500, 600, 999, 1000, 700, 400]
    levels, ctl = drive(sc, burdens)
    assert levels == [2, 2, 2, 0, 0, 0, 2, 2, 0]
    kinds = [e[1] for e in ctl.events]
    assert kinds == ["dose_decision"] * 4
    assert [e[2]["dose_uM"] for e in ctl.events] == [2.0, 0.0, 2.0, 0.0]


def test_adaptive_custom_thresholds_and_stop_time():
    """lower 0.7, upper 0.9; no dose after stop_day: the level drops to 0 at day 3 and stays,
    whatever the burden."""
    sc = scenario(
        '{ kind = "adaptive", dose_uM = 1.0, lower_fraction = 0.7, '
        "upper_fraction = 0.9, stop_day = 3 }"
    )
    levels, ctl = drive(sc, [1000, 690, 850, 900, 5000, 5000, 5000])
    assert levels == [1, 0, 0, 0, 0, 0, 0]
    sc = scenario('{ kind = "adaptive", dose_uM = 1.0, stop_day = 3 }')
    levels, ctl = drive(sc, [1000, 900, 800, 700, 5000, 5000])
    assert levels == [1, 1, 1, 0, 0, 0]
    assert ctl.events[-1][2]["reason"] == "controller stop time"


def test_decisions_only_at_their_interval():
    """decide_every_h = 24 but decide called every 6 h: the level can change only at 0, 24,
    48 h."""
    sc = scenario('{ kind = "adaptive", dose_uM = 1.0 }')
    burdens = [1000, 100, 100, 100, 100, 100, 100, 100, 100]
    levels, _ = drive(sc, burdens, every_min=360)
    assert levels == [1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_dose_modulation_steps_the_dose():
    """Gatenby: target = baseline 1000, tolerance 0.1, step 0.5: above 1100 the dose rises by
    half (from min_dose if 0), below 900 it falls by half, under min_dose it becomes 0; capped
    at max_dose."""
    sc = scenario(
        '{ kind = "modulation", dose_uM = 1.0, tolerance = 0.1, step_fraction = 0.5, '
        "min_dose_uM = 0.2, max_dose_uM = 2.0 }"
    )
    burdens = [1000, 1200, 1200, 1200, 1050, 800, 800, 800, 800, 1200]
    levels, _ = drive(sc, burdens)
    assert levels == pytest.approx([0, 0.2, 0.3, 0.45, 0.45, 0.225, 0, 0, 0, 0.2])


def test_biomarker_biopsy_switches_on_above_threshold():
    """A lattice of 400 tumor cells, every 10th a persister (10 %): a biopsy of all cells in the
    box measures exactly 0.1, so on_fraction 0.05 starts the drug and 0.2 does not; a biopsy of
    50 cells is a sample without replacement (hypergeometric: within 4 sigma of 0.1)."""
    sc = scenario(
        '{ kind = "biomarker", dose_uM = 0.5, on_fraction = 0.05, '
        "biopsy_size_um = 2000, biopsy_cells = 400 }"
    )
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    st = State.empty(grid, 1, 1)
    cells = np.arange(400) * 4
    st.kind[cells] = codes.TUMOR
    st.tumor_state[cells] = codes.SENSITIVE
    st.tumor_state[cells[::10]] = codes.PERSISTER
    ctl = Controllers(sc, grid)
    ctl.decide({"burden": 400}, st, 0)
    assert ctl.measured[0] == pytest.approx(0.1) and ctl.level[0] == 0.5
    assert [e[1] for e in ctl.events] == ["biopsy", "dose_decision"]
    sc2 = scenario(
        '{ kind = "biomarker", dose_uM = 0.5, on_fraction = 0.2, '
        "biopsy_size_um = 2000, biopsy_cells = 50 }"
    )
    ctl = Controllers(sc2, grid)
    ctl.decide({"burden": 400}, st, 0)
    sd = np.sqrt(0.1 * 0.9 / 50 * (400 - 50) / (400 - 1))
    assert abs(ctl.measured[0] - 0.1) < 4 * sd and ctl.level[0] == 0


def test_adaptive_run_writes_decisions_as_events_and_cumulative_dose(tmp_path):
    """In a run, each decision is an event of the run file; the plasma follows the level (square
    wave) and the cumulative dose is the level's integral (uM h)."""
    sc = scenario(
        '{ kind = "adaptive", dose_uM = 2.0, start_day = 0.5, decide_every_h = 6 }', days=4
    )
    path = tmesim.Simulation(sc, "cpu").run(tmp_path / "a.h5")
    with h5py.File(path, "r") as f:
        kinds = [k.decode() for k in f["events/kind"][:]]
        details = [json.loads(d) for d in f["events/detail"][:]]
        plasma = f["timeseries/plasma_erlotinib"][:]
        cum = f["timeseries/cumulative_dose_erlotinib"][:]
    decisions = [d for k, d in zip(kinds, details) if k == "dose_decision"]
    assert decisions[0]["dose_uM"] == 2.0 and any(d["dose_uM"] == 0 for d in decisions)
    assert set(np.unique(plasma)) <= {0.0, 2.0}
    assert cum[-1] == pytest.approx(np.sum(plasma[1:]) * 0.1)


def test_controller_state_survives_a_resume(tmp_path):
    """Interrupted mid-treatment and resumed, an adaptive run makes the same decisions and file
    as an uninterrupted one (the controller's level, baseline and timers are checkpointed)."""
    sc = scenario(
        '{ kind = "adaptive", dose_uM = 2.0, start_day = 0.5, decide_every_h = 6 }', days=4
    )
    ref = tmesim.Simulation(sc, "cpu").run(tmp_path / "ref.h5")
    out = tmp_path / "r.h5"
    sim = tmesim.Simulation(sc, "cpu")
    sim.callbacks.append(At(500, lambda s: os.kill(os.getpid(), signal.SIGUSR1)))
    sim.run(out)
    assert sim.status == "interrupted"
    tmesim.Simulation.resume(out, backend="cpu")
    with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
        for col in a["timeseries"]:
            np.testing.assert_array_equal(a["timeseries"][col][:], b["timeseries"][col][:])
        ka = [k for k in a["events/kind"][:] if k != b"resume"]
        kb = [k for k in b["events/kind"][:] if k != b"resume"]
        assert ka == kb


def test_user_controller_and_its_errors(tmp_path):
    """A Python controller doses from the row; one that raises or returns nonsense stops the run
    with an error naming it; a controller for an unknown drug is refused up front."""
    sc = scenario('{ kind = "none", decide_every_h = 3 }', days=1)
    seen = []

    def fn(row, t_h):
        seen.append(t_h)
        return 1.5 if t_h >= 6 else 0.0

    sim = tmesim.Simulation(sc, "cpu", controllers={"erlotinib": fn})
    path = sim.run(tmp_path / "u.h5")
    with h5py.File(path, "r") as f:
        plasma = f["timeseries/plasma_erlotinib"][:]
    # decisions every 3 h; the level set at 6 h (step 60) is the plasma from that step on
    assert seen[:3] == [0.0, 3.0, 6.0]
    assert plasma[60] == 0.0 and plasma[61] == 1.5 and plasma[-1] == 1.5
    with pytest.raises(ControllerError, match="controller for 'erlotinib' raised ZeroDivision"):
        tmesim.Simulation(sc, "cpu", controllers={"erlotinib": lambda r, t: 1 / 0}).run(
            tmp_path / "e.h5"
        )
    with pytest.raises(ControllerError, match="returned 'lots'"):
        tmesim.Simulation(sc, "cpu", controllers={"erlotinib": lambda r, t: "lots"}).run(
            tmp_path / "e2.h5"
        )
    with pytest.raises(ControllerError, match="'cisplatin': no such drug"):
        tmesim.Simulation(sc, "cpu", controllers={"cisplatin": fn})


@pytest.mark.parametrize(
    "ctl,path,expected",
    [
        (
            '{ kind = "adaptive", lower_fraction = 0.8, upper_fraction = 0.5 }',
            "drugs.erlotinib.controller.upper_fraction",
            "above lower_fraction",
        ),
        ('{ kind = "pid" }', "drugs.erlotinib.controller.kind", "adaptive"),
        (
            '{ kind = "biomarker", on_fraction = 0.1, off_fraction = 0.2 }',
            "drugs.erlotinib.controller.off_fraction",
            "at or below on_fraction",
        ),
        (
            '{ kind = "adaptive", decide_every_h = 0 }',
            "drugs.erlotinib.controller.decide_every_h",
            "> 0",
        ),
    ],
)
def test_bad_controller_is_named(tmp_path, capsys, ctl, path, expected):
    f = tmp_path / "s.toml"
    f.write_text(BASE.format(days=1, extra=f"controller = {ctl}\n"))
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert path in err and expected in err and "Traceback" not in err
