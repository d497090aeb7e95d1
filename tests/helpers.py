"""What the test modules share: a mark for tests that need a C++ compiler, the small test
scenarios, whole runs and their files compared, callbacks that act at a given step, statistical
checks, sweep files.

Fixtures live in conftest.py; this module holds plain functions and constants, imported with
``from .helpers import ...`` (``from ..helpers import ...`` in the subfolders).
"""

from __future__ import annotations

import time
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
#: The small test scenario: a 48 x 48 lattice of 20 um voxels, a disk tumor of radius 150 um,
#: random vessels, one day of 6-min steps (240 steps, about a second). The test scenarios are
#: this one with a few keys changed (scenario_text, make_scenario).
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

#: every value its default (scenario_text's ``base`` for scenarios of a few keys)
DEFAULTS = ""


def _without(text: str, key: str) -> str:
    """``text`` without the line of ``key`` (``table.name``), or without the table ``key``."""
    out, table, skipping = [], "", False
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if s.startswith("["):
            table = s.strip("[]").strip()
            skipping = table == key
        elif skipping or ("=" in s and f"{table}.{s.split('=', 1)[0].strip()}" == key):
            continue
        if not skipping:
            out.append(line)
    return "".join(out)


#: tables to add to the small test scenario: a CAF shell and an erlotinib field dosed at 6 h and
#: stopped at 12 h (a run with several kinds, states and fields, and a drug period)
CAF_AND_DRUG = """
[init.caf]
placement = "shell"
density = 0.3
[drugs.erlotinib]
preset = "egfr_tki"
transport = "uniform"
schedule = { kind = "doses", times_h = [6, 12], doses_uM = [2.0, 0.0] }
"""

#: the small scenario as a 10 x 12 x 14 lattice (no two axes alike, so a swapped axis shows)
SMALL_3D_SETS = (
    "grid.shape=[10,12,14]",
    'init.tumor.shape="sphere"',
    "init.tumor.radius_um=80",
    "run.duration_days=0.25",
    "run.snapshot_every_hours=3",
)


def scenario_text(
    *sets: str, extra: str = "", drop: tuple[str, ...] = (), base: str = SMALL_2D
) -> str:
    """A test scenario as TOML text: ``base`` (the small test scenario) with the ``extra`` TOML
    tables appended, the keys or tables named in ``drop`` left out (their defaults apply), and
    the ``key.path=value`` settings of ``sets`` applied as ``tmesim run --set`` applies them
    (tmesim.loads_scenario's overrides; the text is then the scenario's own, overrides
    written in)."""
    text = base + extra
    for key in drop:
        text = _without(text, key)
    if not sets:
        return text
    return tmesim.loads_scenario(text, overrides=list(sets)).text


def make_scenario(
    *sets: str, extra: str = "", drop: tuple[str, ...] = (), base: str = SMALL_2D
) -> tmesim.Scenario:
    """The validated Scenario of :func:`scenario_text`'s text."""
    return tmesim.loads_scenario(scenario_text(*sets, extra=extra, drop=drop, base=base))


#: 32 x 32 voxels, 480 steps: about 2 s; a checkpoint every 20 steps, a snapshot every 30
TINY_SETS = (
    "run.name=tiny",
    "run.seed=5",
    "run.duration_days=2",
    "run.snapshot_every_hours=3",
    "run.checkpoint_every_hours=2",
    "grid.shape=[32,32]",
    "init.tumor.radius_um=120",
    "init.vessels.density=0.02",
)
TINY = scenario_text(*TINY_SETS)

#: The whole model switched on: drugs, pre-existing persisters and resistant cells, transitions,
#: CAFs and TAMs, signalling fields; the cases of MODEL_CASES pick the grid and the solver.
MODEL_SCENARIO = scenario_text(
    "run.name=device_model",
    "run.seed=20101",
    "run.snapshot_every_hours=0.5",
    "run.checkpoint_every_hours=0.4",
    "grid.shape=[24,24]",
    "init.tumor.persister_fraction=0.1",
    "init.tumor.resistant_fraction=0.05",
    "init.vessels.density=0.03",
    "init.vessels.outside_tumor=false",
    extra="""
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
""",
)

MODEL_CASES = {
    "2d-adi": ["grid.shape=[24,24]", "solver.method=adi"],
    "2d-biopsy": [
        "grid.shape=[24,24]",
        "solver.method=lod",
        'drugs.erlotinib.controller={ kind = "biomarker", dose_uM = 1.8, '
        "on_fraction = 0.05, biopsy_size_um = 240, biopsy_cells = 30, "
        "decide_every_h = 0.3 }",
    ],
    "3d-lod": [
        "grid.shape=[12,12,12]",
        "init.tumor.shape=sphere",
        "init.tumor.radius_um=100",
        "solver.method=lod",
    ],
    "3d-adi": [
        "grid.shape=[12,12,12]",
        "init.tumor.shape=sphere",
        "init.tumor.radius_um=100",
        "solver.method=adi",
    ],
}


def model_scenario(case, *extra):
    return tmesim.loads_scenario(MODEL_SCENARIO, overrides=MODEL_CASES[case] + list(extra))


def solver_text(
    shape,
    *,
    method: str | None = None,
    dt_field: float | None = None,
    tolerance: float | None = None,
    max_iterations: int | None = None,
    dx: float = 20.0,
    dt_agent: float = 6.0,
    preconditioner: str | None = None,
) -> str:
    """The head of a field-solver test scenario as TOML text: a ``shape`` grid of ``dx`` um
    voxels with no tumor, agent steps of ``dt_agent`` min, and the [solver] keys given (the
    others their defaults); the caller appends its [fields.*] tables."""
    solver = {
        "method": None if method is None else f'"{method}"',
        "dt_min": None if dt_field is None else repr(float(dt_field)),
        "tolerance": None if tolerance is None else repr(float(tolerance)),
        "max_iterations": None if max_iterations is None else str(int(max_iterations)),
        "preconditioner": None if preconditioner is None else f'"{preconditioner}"',
    }
    return (
        f"\n[run]\ndt_min = {float(dt_agent)!r}\n[grid]\nshape = {list(shape)}\n"
        f'dx_um = {float(dx)!r}\n[init.tumor]\nshape = "none"\n[solver]\n'
        + "".join(f"{k} = {v}\n" for k, v in solver.items() if v is not None)
    )


# ------------------------------------------------------------------------------------ runs
def run_small(tmp_path, name="a.h5", **over):
    sc = tmesim.loads_scenario(SMALL_2D, overrides=over or None)
    sim = tmesim.Simulation(sc, backend="cpu")
    path = sim.run(tmp_path / name)
    return sc, sim, path


def h5_contents(path, skip: tuple[str, ...] = ()) -> dict:
    """Every dataset and attribute of a file (``name``, ``name@attribute``, ``@attribute`` at the
    root), except the creation time and the groups named in ``skip``."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if any(name == g or name.startswith(g + "/") for g in skip):
                return
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = v

        f.visititems(visit)
        for k, v in f.attrs.items():
            if k != "created":
                out[f"@{k}"] = v
    return out


def run_contents(path):
    """Every dataset and attribute of a run file except what a resume legitimately changes: the
    creation time, the checkpoint and the ``resume`` events."""
    out = h5_contents(path, skip=(checkpoint.GROUP,))
    keep = out["events/kind"] != b"resume"
    for k in ("events/kind", "events/time_min", "events/detail"):
        out[k] = out[k][keep]
    return out


def assert_same_run(a, b):
    ca, cb = run_contents(a), run_contents(b)
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


def restamp_text_digest(f: h5py.File) -> None:
    """After a test edits a file's text attributes: record their digest as this tmesim's writer
    of that text would have (else readers refuse the file as damaged, tmesim.io.trust)."""
    from tmesim.io import trust

    f.attrs.create(trust.TEXT_DIGEST, trust.text_digest(f).encode("ascii"), dtype="S64")


def status_in(f: h5py.File) -> str:
    """The run file's status attribute as text (stored as a 64-byte ASCII string, read as bytes)."""
    v = f.attrs["status"]
    return (v.decode("ascii") if isinstance(v, bytes) else v).strip()


def rows_in(path) -> int:
    """Time-series rows a run file holds now (0 while it does not exist or cannot be read yet)."""
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return f["timeseries/time_min"].shape[0]
    except (OSError, KeyError):
        return 0


def signal_after_rows(proc, path, rows: int, sig, timeout: float = 60.0) -> None:
    """Send ``sig`` to ``proc`` once the run file ``path`` it writes holds ``rows`` time-series
    rows (or after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while rows_in(path) < rows and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)


# ------------------------------------------------------------------------------------ statistics
ALPHA = 1e-6  # two-sided tail probability of every binomial check


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
    ys, xs = np.meshgrid(
        np.arange(offset, shape[0], spacing), np.arange(offset, shape[1], spacing), indexing="ij"
    )
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
