"""What the test modules share: a mark for tests that need a C++ compiler, the small test
scenarios, whole runs and their files compared, callbacks that act at a given step, statistical
checks, sweep files.

Fixtures live in conftest.py; this module holds plain functions and constants, imported with
``from .helpers import ...`` (``from ..helpers import ...`` in the subfolders).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import stats

import tmesim
from tmesim import launch
from tmesim.io import checkpoint
from tmesim.schedules import IterationInterval

#: for tests that build the kernels' portable C++ library (the ``launcher`` and ``portable``
#: fixtures skip by themselves)
needs_cxx = pytest.mark.skipif(launch.find_cxx() is None, reason="no C++ compiler")


# ------------------------------------------------------------------------------------ scenarios
SMALL_2D = """
[run]
name = "small"
seed = 11
duration_days = 1
dt_min = 6
snapshot_every_hours = 6

[grid]
shape = [48, 48]
dx_um = 20

[init.tumor]
shape = "disk"
radius_um = 150

[init.vessels]
placement = "random"
density = 0.01
"""


# 32 x 32 voxels, 480 steps: about 2 s; a checkpoint every 20 steps, a snapshot every 30
TINY = """
[run]
name = "tiny"
seed = 5
duration_days = 2
dt_min = 6
snapshot_every_hours = 3
checkpoint_every_hours = 2

[grid]
shape = [32, 32]
dx_um = 20

[init.tumor]
shape = "disk"
radius_um = 120

[init.vessels]
placement = "random"
density = 0.02
"""


#: The whole model switched on: drugs, pre-existing persisters and resistant cells, transitions,
#: CAFs and TAMs, signalling fields; the cases of MODEL_CASES pick the grid and the solver.
MODEL_SCENARIO = """
[run]
name = "device_model"
seed = 20101
duration_days = 1
dt_min = 6
snapshot_every_hours = 0.5
checkpoint_every_hours = 0.4

[grid]
shape = [24, 24]
dx_um = 20

[init.tumor]
shape = "disk"
radius_um = 150
persister_fraction = 0.1
resistant_fraction = 0.05

[init.vessels]
placement = "random"
density = 0.03
outside_tumor = false

[init.caf]
placement = "shell"
shell_width_um = 100
density = 0.3

[init.tam]
placement = "random"
density = 0.03

[tam]
recruitment_per_h = 0.05
motility_per_h = 2.0

[caf]
motility_per_h = 1.0

[tumor]
doubling_time_h = 6

[tumor.transitions]
entry_basal_per_h = 0.01
entry_induced_per_h = 0.2
exit_per_h = 0.05
resistance_per_h = 0.01

[drugs.erlotinib]
preset = "egfr_tki"
half_life_h = 36
unbound_fraction = 0.5
transport = "vessels"
schedule = { kind = "continuous", dose_uM = 1.8, start_day = 0.04, interval_h = 2 }
"""


MODEL_CASES = {
    "2d-adi": ["grid.shape=[24,24]", "solver.method=adi"],
    "2d-biopsy": ["grid.shape=[24,24]", "solver.method=lod",
                  'drugs.erlotinib.controller={ kind = "biomarker", dose_uM = 1.8, '
                  'on_fraction = 0.05, biopsy_size_um = 240, biopsy_cells = 30, '
                  'decide_every_h = 0.3 }'],
    "3d-lod": ["grid.shape=[12,12,12]", "init.tumor.shape=sphere", "init.tumor.radius_um=100",
               "solver.method=lod"],
    "3d-adi": ["grid.shape=[12,12,12]", "init.tumor.shape=sphere", "init.tumor.radius_um=100",
               "solver.method=adi"],
}


def model_scenario(case, *extra):
    return tmesim.loads_scenario(MODEL_SCENARIO, overrides=MODEL_CASES[case] + list(extra))


# ------------------------------------------------------------------------------------ runs
def run_small(tmp_path, name="a.h5", **over):
    sc = tmesim.loads_scenario(SMALL_2D, overrides=over or None)
    sim = tmesim.Simulation(sc, backend="cpu")
    path = sim.run(tmp_path / name)
    return sc, sim, path


def h5_contents(path):
    """Every dataset and attribute of a file, except the creation time."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = v
        f.visititems(visit)
        for k, v in f.attrs.items():
            if k != "created":
                out[f"@{k}"] = v
    return out


def contents(path):
    """Every dataset and attribute of a run file except what a resume legitimately changes."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if name == checkpoint.GROUP or name.startswith(checkpoint.GROUP + "/"):
                return
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = v
        f.visititems(visit)
        for k, v in f.attrs.items():
            if k != "created":
                out[f"@{k}"] = v
    keep = out["events/kind"] != b"resume"
    for k in ("events/kind", "events/time_min", "events/detail"):
        out[k] = out[k][keep]
    return out


def assert_same_run(a, b):
    ca, cb = contents(a), contents(b)
    assert ca.keys() == cb.keys()
    differ = [k for k in ca if not np.array_equal(np.asarray(ca[k]), np.asarray(cb[k]))]
    assert differ == []
    xa, xb = a.with_suffix(".xdmf").read_text(), b.with_suffix(".xdmf").read_text()
    assert xa.replace(a.name, "RUN") == xb.replace(b.name, "RUN")


def event_kinds(path):
    with h5py.File(path, "r") as f:
        return [k.decode() for k in f["events/kind"][:]]


class At:
    """A callback that calls ``fn(sim)`` once, after step ``step``."""

    def __init__(self, step, fn):
        self.schedule = IterationInterval(1)
        self.step, self.fn = step, fn

    def __call__(self, sim):
        if sim.state.step == self.step:
            self.fn(sim)


# ------------------------------------------------------------------------------------ statistics
ALPHA = 1e-6          # two-sided tail probability of every binomial check


def assert_binomial(k, n, p, what=""):
    """k successes out of n trials is consistent with probability p: both exact binomial tails
    beyond k are above ALPHA / 2 (p = 0 demands k = 0)."""
    k, n = int(k), int(n)
    if p <= 0:
        assert k == 0, (what, k, n, p)
        return
    lo = stats.binom.cdf(k, n, p)
    hi = stats.binom.sf(k - 1, n, p)
    assert min(lo, hi) > ALPHA / 2, (what, k, n, p, k / max(n, 1))


def sparse_cells(shape, spacing, offset=1):
    """Sites on a square sublattice (spacing 3 or more: the neighbourhoods are disjoint)."""
    ys, xs = np.meshgrid(np.arange(offset, shape[0], spacing),
                         np.arange(offset, shape[1], spacing), indexing="ij")
    return (ys * shape[1] + xs).ravel()


# ------------------------------------------------------------------------------------ sweeps
SWEEP = """
[sweep]
name = "t"
scenario = "tiny.toml"
out_dir = "out"

[set]
"run.duration_days" = {days}

[grid]
"tumor.doubling_time_h" = [20, 30]
"fields.oxygen.diffusion_um2_per_min" = {diff}

[replicates]
seeds = [1, 2]

[observables]
final = ["burden", "hypoxic_fraction"]
at_hours = [12]
at = ["burden"]
"""


def write_sweep(d: Path, days=2, diff="[1e5]", extra="") -> Path:
    (d / "tiny.toml").write_text(TINY)
    p = d / "sweep.toml"
    p.write_text(SWEEP.format(days=days, diff=diff) + extra)
    return p


