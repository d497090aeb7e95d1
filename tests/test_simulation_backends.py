"""The Model and Simulation on every backend: the numpy classes on the CPU, the kernel twins on
a backend with a launcher; whole runs through the kernels (numpy arrays stepped by the portable C++
build, and by a GPU through the ``kernel_backend`` fixture) against the numpy reference (CPU),
step by step; a model on an emulated device that keeps host and device arrays apart.

The scenarios switch on everything a step does: drugs (one-compartment PK, vessel supply, kill and
induced entry), pre-existing persisters and resistant cells, phenotype transitions, CAFs and TAMs
(motion, recruitment at vessels), the signalling fields (HGF, IGF-1, recruitment signal), both
field-solver methods, in 2D and 3D. Expected: identical state arrays after every step and
identical time-series rows (the kernels are bit-for-bit twins of the numpy steps; the observables
reduce the same arrays in the same way).

The GPU variants (the ``gpu`` parameter of kernel_backend, and the device-resident runs at the
end) skip without a GPU.
"""

from __future__ import annotations

import math
import sys
import types

import h5py
import numpy as np
import pytest

from tmesim import launch
from tmesim.backend import CPU, Portable
from tmesim.simulation import Model, Simulation, step_classes

from .helpers import MODEL_CASES, MODEL_SCENARIO, h5_contents, model_scenario, needs_cxx

STEPS = 16


def assert_rows_equal(a: dict, b: dict, where="", rtol=0.0):
    """Equal rows (NaN equals NaN). ``rtol`` > 0 lets float columns differ by that much (a GPU's
    reductions sum in another order than numpy's); integers must always be equal."""
    assert a.keys() == b.keys(), where
    for k in a:
        x, y = a[k], b[k]
        same = x == y or (
            isinstance(x, float)
            and isinstance(y, float)
            and ((math.isnan(x) and math.isnan(y)) or abs(x - y) <= rtol * max(abs(x), abs(y)))
        )
        assert same, f"{where}: column {k}: {x!r} != {y!r}"


def assert_states_equal(ref, got, backend, where=""):
    ra, ga = ref.arrays(), got.arrays()
    assert ra.keys() == ga.keys()
    for name in ra:
        np.testing.assert_array_equal(
            backend.to_host(ga[name]), ra[name], err_msg=f"{where}: {name}"
        )
    assert (ref.step, ref.time_min) == (got.step, got.time_min)


def run_pair(sc, backend, steps=STEPS, rtol=0.0):
    """Step a CPU model and a ``backend`` model side by side, comparing after every step (the
    rows' float columns within ``rtol``). Returns the totals of the event columns (to show the
    run exercised the rules)."""
    ref, got = Model(sc, CPU()), Model(sc, backend)
    assert_states_equal(ref.state, got.state, backend, "initial state")
    assert_rows_equal(ref.observe(), got.observe(), "initial row", rtol)
    totals = {}
    for s in range(steps):
        ref.step()
        got.step()
        assert_states_equal(ref.state, got.state, backend, f"step {s}")
        r = ref.observe()
        assert_rows_equal(r, got.observe(), f"step {s}", rtol)
        for k in ("divisions", "killed", "entered_P", "became_R", "tam_recruited"):
            totals[k] = totals.get(k, 0) + r[k]
        totals["caf_moves"] = totals.get("caf_moves", 0) + ref.last_stroma.caf_moves
    return totals


# ------------------------------------------------------------------------------- selection
def test_cpu_path_never_imports_the_kernel_classes():
    """The numpy classes on the CPU, without importing the launch layer or the kernel twins."""
    import subprocess

    code = (
        "import sys, tmesim\n"
        "from tmesim.simulation import Model\n"
        f"sc = tmesim.loads_scenario({MODEL_SCENARIO!r}, overrides=['grid.shape=[16,16]'])\n"
        "m = Model(sc); m.step(); m.observe()\n"
        "bad = [k for k in sys.modules if k == 'tmesim.launch' or k.endswith('_kernel')]\n"
        "assert not bad, bad\n"
        "print(type(m.field_solver.inner).__module__, type(m.tumor_rules).__module__)\n"
    )
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tmesim.steps.fields", "tmesim.steps.tumor"]


@needs_cxx
def test_kernel_backends_take_the_kernel_twins():
    """A backend with a launcher gets the tmesim.steps.<family>_kernel classes, with that
    launcher."""
    p = Portable()
    cls = step_classes(p)
    assert cls.launcher is p.launcher()
    assert [c.__module__ for c in cls[:3]] == [
        "tmesim.steps.fields_kernel",
        "tmesim.steps.tumor_kernel",
        "tmesim.steps.stroma_kernel",
    ]


# ------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_run_through_the_kernels_is_the_cpu_run(case, kernel_backend):
    totals = run_pair(model_scenario(case), kernel_backend)
    # the comparison means something only if the rules acted
    assert totals["killed"] > 0 and totals["entered_P"] > 0 and totals["caf_moves"] > 0, totals


def test_run_through_the_kernels_in_scrambled_thread_order(kernel_backend):
    """Every launch visits its work items in a fixed pseudo-random order: the same run."""
    kernel_backend.launcher().set_order(2)
    try:
        run_pair(model_scenario("2d-adi"), kernel_backend, steps=6)
    finally:
        kernel_backend.launcher().set_order(0)


def test_simulation_through_the_kernels_writes_the_cpu_file(tmp_path, kernel_backend):
    """Simulation.run through the kernels (snapshots and checkpoints copy to the host): the same
    run file as the CPU's, dataset for dataset, but for the backend and device attributes."""
    sc = model_scenario("2d-adi", "run.duration_days=0.05")  # 12 steps, 2 checkpoints
    files = {}
    for name, b in (("cpu", CPU()), ("portable", kernel_backend)):
        sim = Simulation(sc, backend=b)
        files[name] = h5_contents(sim.run(tmp_path / f"{name}.h5"))
        assert sim.checkpoints_written >= 1
    a, b = files["cpu"], files["portable"]
    assert a.pop("@backend") == "cpu" and b.pop("@backend") == "portable"
    a.pop("@device"), b.pop("@device")
    a.pop("@text_digest"), b.pop("@text_digest")  # a digest of the text, backend and device in
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_resume_through_the_kernels_restores_device_and_host_arrays(tmp_path, kernel_backend):
    """A checkpoint written by a run through the kernels resumes (site arrays back in place,
    plasma and dose_total host arrays) to the CPU's uninterrupted result."""
    sc = model_scenario("2d-adi", "run.duration_days=0.05")
    ref = Simulation(sc, backend="cpu")
    ref.run(tmp_path / "ref.h5")
    sim = Simulation(sc, backend=kernel_backend)
    sim.wall_deadline = 0.0  # already past: checkpoint and stop after the first step
    sim.run(tmp_path / "p.h5")
    assert sim.status == "interrupted" and sim.state.step == 1
    back = Simulation.resume(tmp_path / "p.h5", backend=kernel_backend)
    assert back.status == "finished" and back.resumed_from == 1
    assert_states_equal(ref.state, back.state, kernel_backend, "resumed")


class DeviceArray(np.ndarray):
    """A numpy array that plays a device array: like cupy, it refuses to meet a host (plain
    numpy) array in a ufunc or array function, what it computes stays a DeviceArray, and its
    array module (tmesim.backend.array_module) makes DeviceArrays."""

    def __array_namespace__(self, api_version=None):
        return DEVICE_XP

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        _refuse_host(ufunc.__name__, inputs + tuple(kw.get("out", ())))
        raw = [np.asarray(a) if isinstance(a, DeviceArray) else a for a in inputs]
        if "out" in kw:
            kw["out"] = tuple(np.asarray(a) for a in kw["out"])
        out = getattr(ufunc, method)(*raw, **kw)
        return _wrap(out)

    def __array_function__(self, func, types_, args, kwargs):
        flat = list(args) + list(kwargs.values())
        for a in list(flat):
            if isinstance(a, (list, tuple)):
                flat.extend(a)
        _refuse_host(func.__name__, flat)

        def unwrap(a):
            if isinstance(a, DeviceArray):
                return np.asarray(a)
            if isinstance(a, list):
                return [unwrap(x) for x in a]
            if isinstance(a, tuple):
                return tuple(unwrap(x) for x in a)
            return a

        return _wrap(func(*unwrap(list(args)), **{k: unwrap(v) for k, v in kwargs.items()}))


def _refuse_host(name, values):
    if any(isinstance(v, DeviceArray) for v in values):
        host = [v for v in values if type(v) is np.ndarray and v.ndim > 0]
        if host:
            raise TypeError(
                f"{name}: a host numpy array {host[0].dtype}{host[0].shape} meets "
                "a device array (cupy refuses this)"
            )


def _wrap(out):
    if isinstance(out, tuple):
        return tuple(_wrap(o) for o in out)
    return out.view(DeviceArray) if type(out) is np.ndarray else out


class _DeviceXP(types.ModuleType):
    """numpy whose array-making functions return DeviceArrays (the kernels' scratch lives on
    the 'device' too)."""

    def __getattr__(self, name):
        v = getattr(np, name)
        if callable(v) and not isinstance(v, type) and name not in ("dtype",):
            return lambda *a, **k: _wrap(v(*a, **k))
        return v


DEVICE_XP = _DeviceXP("device_xp")


class DeviceLauncher(launch.PortableLauncher):
    xp = DEVICE_XP


class EmulatedDevice(Portable):
    """The Portable backend with DeviceArrays for device memory: a step that mixes host arrays
    into device computations (which cupy refuses) fails here, without a GPU."""

    name = "emulated-device"

    def launcher(self):
        if self._launcher is None:
            self._launcher = DeviceLauncher()
        return self._launcher

    def to_device(self, a):
        return np.array(a).view(DeviceArray)

    def to_host(self, a):
        return np.array(a)


def test_emulated_device_refuses_host_arrays():
    d = EmulatedDevice().to_device(np.arange(4))
    assert type(d + 1) is DeviceArray and type(np.flatnonzero(d)) is DeviceArray
    with pytest.raises(TypeError, match="host numpy array"):
        d & np.ones(4, dtype=int)
    with pytest.raises(TypeError, match="host numpy array"):
        np.flatnonzero(np.ones(4, bool) & d)


@needs_cxx
@pytest.mark.parametrize("case", ["2d-adi", "3d-lod", "2d-biopsy"])
def test_model_keeps_host_and_device_apart(case, tmp_path):
    """A whole model on the emulated device: every step, row, snapshot and checkpoint path runs
    without a host array meeting a device one, the state stays on the device (plasma and
    dose_total on the host), and the run is still the CPU's."""
    # the CG's reductions are kernels now (no numpy-or-cupy choice to stand in for)
    b = EmulatedDevice()
    sc = model_scenario(case)
    m = Model(sc, b)
    for name in ("kind", "tumor_state", "memory", "time_in_P_min", "fields"):
        assert type(getattr(m.state, name)) is DeviceArray, name
    assert type(m.state.plasma) is np.ndarray and type(m.state.dose_total) is np.ndarray
    run_pair(sc, b, steps=8)
    # the run loop: snapshots and checkpoints copy to the host, a resume copies back
    short = model_scenario(case, "run.duration_days=0.02")
    sim = Simulation(short, backend=b)
    sim.wall_deadline = 0.0
    sim.run(tmp_path / "e.h5")
    assert sim.status == "interrupted"
    back = Simulation(short, backend=b)
    back.run(tmp_path / "e.h5", resume=True)
    assert back.status == "finished" and type(back.state.kind) is DeviceArray
    if case == "2d-biopsy":  # the biopsies did happen (the region copied to the host)
        ref = Simulation(short, backend="cpu")
        ref.run(tmp_path / "c.h5")
        with h5py.File(tmp_path / "c.h5", "r") as f:
            kinds = [k.decode() if isinstance(k, bytes) else k for k in f["events/kind"][:]]
        assert "biopsy" in kinds, kinds


# ------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("case", ["2d-adi", "3d-lod"])
def test_gpu_model_is_device_resident_and_matches(gpu_backend, case):
    """On a GPU: the site arrays are cupy arrays, plasma stays numpy; LOD and ADI runs are the
    CPU's bit for bit, states and rows (the CG's dot products and the observables' sums follow
    tmesim.reduce's order on both; until issue 16 they were cupy reductions and ADI agreed to
    1e-4)."""
    import cupy

    b = gpu_backend
    sc = model_scenario(case)
    m = Model(sc, b)
    assert isinstance(m.state.kind, cupy.ndarray) and isinstance(m.state.fields, cupy.ndarray)
    assert isinstance(m.state.plasma, np.ndarray)
    del m
    run_pair(sc, b)


@pytest.mark.gpu
def test_gpu_runs_are_deterministic(gpu_backend):
    b = gpu_backend
    sc = model_scenario("3d-adi")
    runs = []
    for _ in range(2):
        m = Model(sc, b)
        rows = []
        for _ in range(6):
            m.step()
            rows.append(m.observe())
        runs.append((m.state.to_backend(b.to_host), rows))
    assert_states_equal(runs[0][0], runs[1][0], CPU(), "two GPU runs")
    for r0, r1 in zip(runs[0][1], runs[1][1]):
        assert_rows_equal(r0, r1)
