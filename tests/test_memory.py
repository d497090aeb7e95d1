"""The memory estimate (tmesim.memory) against the arrays a model really holds, the parts counted
by hand, the 1024^3 budget of an 80 GB GPU, and a run that does not fit refused before anything
is allocated."""

from __future__ import annotations

import gc
import os
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest

from tmesim import memory
from tmesim.backend import CPU
from tmesim.simulation import Model

from .helpers import MODEL_CASES, model_scenario

ROOT = Path(__file__).resolve().parents[1]


def held_arrays(root, n_sites: int) -> dict[int, np.ndarray]:
    """Every numpy array of at least ``n_sites`` elements reachable from ``root`` through
    attributes, dicts, lists and tuples, de-duplicated by the memory that owns it (a view counts
    as its base). Attributes named ``ref`` are not followed: they are the numpy reference objects
    the kernel classes build to borrow their coefficient tables, host-side on a GPU run."""
    found, seen = {}, set()
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(
            o, (type, types.ModuleType, types.FunctionType, str, bytes, int, float)
        ):
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            base = o
            while isinstance(base.base, np.ndarray):
                base = base.base
            if base.size >= n_sites:
                found[id(base)] = base
            continue
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.extend(v for k, v in vars(o).items() if k != "ref")
    return found


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_memory_estimate_covers_what_the_model_holds(case, portable):
    """After a few steps on the Portable backend (numpy arrays, so every array the model keeps
    can be found), the arrays the model holds fit the estimate's persistent part (state + field
    solver + rules), and the estimate is not more than 1.5 times what is held."""
    sc = model_scenario(case)
    m = Model(sc, portable)
    for _ in range(3):
        m.step()
        m.observe()
    gc.collect()
    n = m.grid.n_sites
    held = sum(a.nbytes for a in held_arrays(m, n).values())
    est = memory.bytes_needed(sc, "portable")
    assert est["fields_source"] == "as counted by tmesim.steps.fields_kernel"
    assert held <= est["persistent"] <= 1.5 * held, (held, est)
    assert est["total"] == est["persistent"] + est["observables"]


@pytest.mark.parametrize("case", ["2d-adi", "3d-lod", "3d-adi"])
def test_cpu_memory_estimate_covers_the_numpy_model(case):
    """The CPU's figure (numpy's solver work arrays estimated per method) also covers what the
    numpy model holds after a few steps, within 1.5 times."""
    sc = model_scenario(case)
    m = Model(sc, CPU())
    for _ in range(3):
        m.step()
        m.observe()
    held = sum(a.nbytes for a in held_arrays(m, m.grid.n_sites).values())
    est = memory.bytes_needed(sc, "cpu")
    assert held <= est["persistent"] <= 1.5 * held, (held, est)


def test_memory_estimate_parts_by_hand():
    """The parts of a 2D ADI scenario counted by hand: state 10 + 4F, kernel rules 13 B/voxel and
    2 more for the push rule's distance buffer."""
    sc = model_scenario("2d-adi")
    n, F = 24 * 24, 5
    est = memory.bytes_needed(sc, "gpu")
    assert est["state"] == n * (10 + 4 * F)
    assert est["rules"] == n * (13 + 2)
    assert memory.bytes_needed(sc, "cpu")["rules"] == n * 16
    # the observables' temporaries: on the kernels one float64 column sum per quantity
    # (16 + 2 F) and plane position (24 + the totals); on the CPU the tumor mask and states
    # (2 B per voxel) and with CAFs the near-CAF work on the tumor's box (12 B per voxel of it)
    no_caf = model_scenario("2d-adi", "init.caf.placement=none")
    assert memory.bytes_needed(no_caf, "gpu")["observables"] == 8 * (16 + 2 * F) * (24 + 1)
    assert est["observables"] == 8 * (16 + 2 * F) * (24 + 1)
    assert memory.bytes_needed(no_caf, "cpu")["observables"] == 2 * n
    assert memory.bytes_needed(sc, "cpu")["observables"] == 14 * n


def lod_1024(*extra):
    return model_scenario("3d-lod", "grid.shape=[1024,1024,1024]", "grid.dx_um=10", *extra)


@pytest.mark.parametrize("cafs", [False, True])
def test_1024_cubed_five_field_lod_fits_80_gb(cafs):
    """A 1024^3 grid with five fields (oxygen, HGF, IGF-1, signal, a drug), LOD: state 30 +
    LOD work 8 + rules 15 B per voxel (13, and 2 for the push rule's distance buffer), plus the
    observables' column sums: (16 + 2 F) float64 per plane position, with or without CAFs
    (about 57e9 bytes in all; 78e9 with CAFs while the row used a distance transform)."""
    extra = () if cafs else ("init.caf.placement=none",)
    sc = lod_1024(*extra)
    assert len(sc.fields) == 5
    est = memory.bytes_needed(sc, "gpu")
    n = 1024**3
    assert est["persistent"] == n * (30 + 8 + 15) + (est["fields"] - 8 * n)
    assert est["fields"] - 8 * n < 1e6  # small tables only
    assert est["observables"] == 8 * (16 + 2 * 5) * (1024**2 + 1)
    assert est["total"] <= 58e9
    assert est["total"] <= 80e9, memory.describe(est)


class FakeGPU(CPU):
    """A backend that says it is a GPU with ``free`` bytes free (no device is touched)."""

    name = "gpu"

    def __init__(self, free):
        self.free = free

    @property
    def device(self):
        return f"a made-up GPU with {self.free / 1e9:g} GB free"

    def free_memory(self):
        return self.free

    def launcher(self):
        raise AssertionError("the memory check must come before the kernels are set up")


def test_oversized_run_is_refused_up_front():
    """Model refuses a run that does not fit before allocating anything, naming the parts, the
    free memory and what to change."""
    sc = lod_1024()
    with pytest.raises(memory.OutOfDeviceMemory) as e:
        Model(sc, FakeGPU(40 * 10**9))
    msg = str(e.value)
    for word in (
        "state",
        "field solver",
        "rules",
        "observables",
        "37.25 GiB is free",
        "a smaller grid",
        "53.20 GiB on the GPU",
    ):
        assert word in msg, msg
    assert "lod" not in msg.split("Use")[1]  # already LOD: not suggested
    with pytest.raises(memory.OutOfDeviceMemory, match=r'solver.method = "lod"'):
        Model(lod_1024("solver.method=adi"), FakeGPU(80 * 10**9))
    # it fits: the check passes and returns the estimate
    assert memory.check_fits(sc, FakeGPU(80 * 10**9))["total"] <= 80e9


@pytest.mark.gpu
def test_gpu_memory_check_reads_the_device(gpu_backend):
    b = gpu_backend
    free = b.free_memory()
    assert free > 0
    assert memory.check_fits(model_scenario("2d-adi"), b)["total"] < free


# ------------------------------------------------------------------------- the host's memory
def over_the_host(backend_name: str):
    """A 1024^3 scenario of five fields whose estimate on ``backend_name`` exceeds this host's
    available memory (skip on a host that has that much: the run would then be allowed)."""
    sc = lod_1024()
    avail = memory.host_available_bytes()
    need = memory.bytes_needed(sc, backend_name)["total"]
    if avail is None or avail >= need:
        pytest.skip(f"the host has {avail} bytes available, the test needs less than {need}")
    return sc, need, avail


@pytest.mark.parametrize("backend", ["cpu", "portable"])
def test_a_grid_bigger_than_the_host_is_refused_before_allocating(backend):
    """On the CPU and Portable backends (host memory) a run whose estimate exceeds the host's
    available memory (MemAvailable, this machine's 24 GiB) is refused in one line that gives
    the need and what is available, before the model allocates anything (tracemalloc sees
    numpy's allocations: the peak stays under 16 MiB, where the state alone is 30 GiB)."""
    from tmesim.backend import Portable

    sc, need, avail = over_the_host(backend)
    b = CPU() if backend == "cpu" else Portable()
    tracemalloc.start()
    try:
        with pytest.raises(memory.OutOfHostMemory) as e:
            Model(sc, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak
    msg = str(e.value)
    assert "\n" not in msg
    for word in (
        f"needs about {need / 2**30:.2f} GiB of host memory ({backend} backend)",
        "is available",
        "state",
        "field solver",
        "a smaller grid (grid.shape [1024, 1024, 1024])",
        "fewer fields (it has 5)",
    ):
        assert word in msg, msg
    # the figure it gives is what the host says (within what other processes change meanwhile)
    shown = float(msg.split(" but ")[1].split(" GiB")[0])
    assert abs(shown * 2**30 - avail) < 0.5 * 2**30, (shown, avail)


def test_tmesim_run_refuses_a_grid_bigger_than_the_host_in_one_line(tmp_path):
    """Through the console: exit 2, one line, no traceback, quickly, and no run file, in a
    process whose address space is capped at 4 GiB (an allocation of the 300 GB the run needs
    would fail there with a MemoryError: the check comes first)."""
    import resource
    import subprocess
    import sys
    import time

    over_the_host("cpu")
    scen = tmp_path / "big.toml"
    scen.write_text(lod_1024().text)
    cap = 4 * 2**30

    def limit():  # in the child, before it runs tmesim
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "tmesim", "run", str(scen), "--backend", "cpu", "-o", "big.h5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=limit,
        timeout=120,
    )
    took = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "MemoryError" not in p.stderr
    assert p.stderr.count("\n") == 1 and "of host memory (cpu backend)" in p.stderr, p.stderr
    assert not (tmp_path / "big.h5").exists()
    assert took < 60, took


def test_validate_says_whether_a_cpu_run_fits_this_host(tmp_path, capsys):
    from tmesim.cli import main

    f = tmp_path / "s.toml"
    f.write_text(lod_1024().text)
    assert main(["validate", str(f)]) == 0
    out = capsys.readouterr().out
    avail = memory.host_available_bytes()
    if avail is not None and avail < memory.bytes_needed(lod_1024(), "cpu")["total"]:
        assert "of host memory available; a cpu run does NOT fit" in out, out
    f.write_text(model_scenario("2d-adi").text)
    assert main(["validate", str(f)]) == 0
    if avail is not None:
        assert "a cpu run fits" in capsys.readouterr().out


def test_host_available_reads_meminfo_and_a_cgroup_limit(tmp_path):
    """MemAvailable in kB from /proc/meminfo; a cgroup v2 limit leaves max - current; "max" is no
    limit (files written here in the formats the kernel writes)."""
    (tmp_path / "meminfo").write_text(
        "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"
    )
    assert memory._meminfo_available(str(tmp_path / "meminfo")) == 20000000 * 1024
    assert memory._meminfo_available(str(tmp_path / "none")) is None
    (tmp_path / "memory.max").write_text("8589934592\n")
    (tmp_path / "memory.current").write_text("1073741824\n")
    assert memory._cgroup_room(str(tmp_path)) == 7 * 2**30
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_room(str(tmp_path)) is None
