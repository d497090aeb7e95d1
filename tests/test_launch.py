"""The CUDA kernels' logic, checked on the CPU against numpy (no GPU needed).

The same kernels/*.cu sources are compiled as plain C++ behind kernels/portable.h (g++, with
-ffp-contract=off) and called through ctypes by the very drivers (tmesim.rng_kernel,
tmesim.steps.<family>_kernel) that drive the GPU (PortableLauncher instead of CupyLauncher). Expectations:

- the random numbers are bit-identical to tmesim.rng (words and uniforms);
- the field primitives are bit-identical to the numpy code they mirror. That is stronger than
  "within float32 rounding", and it is what the kernels are built for: each one performs the
  numpy operations in the same order and precision, every one of them correctly rounded in IEEE
  754 (add, subtract, multiply, divide, reciprocal, float64 products rounded once to float32), and
  the round-to-nearest intrinsics / -ffp-contract=off forbid fused multiply-adds. A difference of
  even one ulp therefore means the kernel's arithmetic departed from numpy's;
- the tumor rules give an identical integer state, identical counts and identical division lists
  on random lattices, over several steps, whatever the order in which the work items run.

What this cannot show: behaviour that exists only on a GPU (data races between concurrent threads,
launch-configuration bugs, device-library math) -- tests/test_gpu_parity.py runs the same
comparisons on a GPU when one is present.
"""

from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import os
import re
import shutil
import stat
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

from tmesim import codes, launch, rng, rng_kernel
from tmesim.grid import Grid
from tmesim.scenario import TumorConfig
from tmesim.steps import fields as F_
from tmesim.steps import fields_kernel as FK
from tmesim.steps.tumor import TumorRules
from tmesim.steps.tumor_kernel import KernelTumorRules

pytestmark = pytest.mark.skipif(launch.find_cxx() is None, reason="no C++ compiler")


# ------------------------------------------------------------------------------------------ rng
SEEDS = [0, 1, 11, 20101, 2 ** 32 + 5, 2 ** 63 + 12345, 2 ** 64 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_rng_words_and_uniforms_bit_exact(launcher, seed):
    g = np.random.default_rng(seed % 1000)
    for _ in range(6):
        step = int(g.integers(0, 2 ** 40))
        stream = int(g.integers(0, 64))
        start = int(g.integers(0, 2 ** 44))
        sites = start + g.permutation(257)[:200]      # clustered, shuffled, any alignment
        want = rng.raw_at(seed, step, stream, sites)
        got = rng_kernel.raw_at(seed, step, stream, sites, launcher=launcher)
        np.testing.assert_array_equal(got, want)
        u = rng_kernel.uniform_at(seed, step, stream, sites, launcher=launcher)
        np.testing.assert_array_equal(u, rng.to_uniform(want))
        assert u.dtype == np.float64 and (u >= 0).all() and (u < 1).all()


def test_rng_matches_the_reference_rounds(launcher):
    """Whole blocks against the integer spelling of Philox in rng.py (counter = block + 1)."""
    for seed, step, stream, block in [(5, 0, 10, 0), (2 ** 64 - 1, 2 ** 64 - 1, 21, 12345),
                                      (42, 7, 11, 2 ** 50)]:
        sites = np.arange(4 * block, 4 * block + 4)
        got = rng_kernel.raw_at(seed, step, stream, sites, launcher=launcher)
        ref = rng.philox4x64_reference((block + 1, step, stream, 0), (seed, 0))
        assert [int(w) for w in got] == list(ref)


def test_rng_repeats_and_empty(launcher):
    sites = np.array([9, 3, 9, 0, 3])
    np.testing.assert_array_equal(rng_kernel.raw_at(1, 2, 3, sites, launcher=launcher),
                                  rng.raw_at(1, 2, 3, sites))
    assert rng_kernel.raw_at(1, 2, 3, [], launcher=launcher).size == 0


# ------------------------------------------------------------------------------------------ fields
SHAPES = [(9, 7), (5, 6, 4), (1, 8), (4, 1, 5)]


def random_ghosts(g, F, ndim):
    """Per axis (lo, hi): None, or (F, 1, ..) values with NaN for fields without that face."""
    out = []
    for _ in range(ndim):
        pair = []
        for _ in range(2):
            if g.random() < 0.3:
                pair.append(None)
            else:
                v = g.uniform(0, 40, F).astype(np.float32)
                v[g.random(F) < 0.3] = np.nan
                pair.append(v.reshape((F,) + (1,) * ndim))
        out.append(tuple(pair))
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_laplacian_and_operator_bit_exact(launcher, shape):
    g = np.random.default_rng(len(shape) * 100 + shape[0])
    F, ndim = 3, len(shape)
    c = g.uniform(0, 50, (F,) + shape).astype(np.float32)
    Dh2 = g.uniform(1, 300, F).astype(np.float32).reshape((F,) + (1,) * ndim)
    ghosts = random_ghosts(g, F, ndim)
    want = F_.laplacian(c, Dh2, ghosts, np.empty_like(c))
    got = FK.laplacian(c, Dh2, ghosts, np.empty_like(c), launcher=launcher)
    np.testing.assert_array_equal(got, want)
    # the CG operator, as FieldSolver._apply computes it: lap, then diag * p - lap
    diag = g.uniform(0.1, 20, c.shape).astype(np.float32)
    want = np.multiply(diag, c)
    want -= F_.laplacian(c, Dh2, ghosts, np.empty_like(c))
    got = FK.apply_operator(c, diag, Dh2, ghosts, np.empty_like(c), launcher=launcher)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("coef_dtype", [np.float64, np.float32])
def test_thomas_solve_bit_exact(launcher, shape, coef_dtype):
    g = np.random.default_rng(7 + len(shape))
    F, ndim = 3, len(shape)
    for axis in range(ndim):
        k = g.uniform(0.01, 30, F)
        lo, hi = g.random(F) < 0.5, g.random(F) < 0.5
        co = F_.thomas_coefficients(k, shape[axis], lo, hi, g.uniform(0, 0.5, F), ndim,
                                    coef_dtype)
        x = g.uniform(-5, 50, (F,) + shape).astype(np.float32)
        want = F_.thomas_solve(x.copy(), axis, co)
        got = FK.thomas_solve(x.copy(), axis, co, launcher=launcher)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES)
def test_thomas_solve_diag_bit_exact(launcher, shape):
    g = np.random.default_rng(11 + len(shape))
    F, ndim = 2, len(shape)
    sl = (F,) + (1,) * (ndim - 1)
    for axis in range(ndim):
        kf = g.uniform(0.01, 30, F)
        base = F_.line_diagonal(kf, shape[axis], g.random(F) < 0.5, g.random(F) < 0.5)
        k = kf.reshape(sl).astype(np.float32)
        base = base.reshape((-1,) + sl).astype(np.float32)
        extra = g.uniform(0, 3, (F,) + shape).astype(np.float32)
        extra[g.random(extra.shape) < 0.1] = np.float32(1e20)      # pinned voxels
        x = g.uniform(-5, 50, (F,) + shape).astype(np.float32)
        slice_shape = np.moveaxis(x, axis + 1, 0).shape[1:]
        want = F_.thomas_solve_diag(x.copy(), axis, k, base, extra, np.empty_like(x),
                                    np.empty(slice_shape, np.float32))
        got = FK.thomas_solve_diag(x.copy(), axis, k, base, extra, np.empty_like(x),
                                        launcher=launcher)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES)
def test_thomas_factored_bit_exact(launcher, shape):
    """Factor once + solve (the preconditioner's split of thomas_solve_diag)."""
    if not hasattr(F_, "thomas_factor_diag"):
        pytest.skip("tmesim.steps.fields has no thomas_factor_diag in this version")
    g = np.random.default_rng(23 + len(shape))
    F, ndim = 2, len(shape)
    sl = (F,) + (1,) * (ndim - 1)
    for axis in range(ndim):
        kf = g.uniform(0.01, 30, F)
        base = F_.line_diagonal(kf, shape[axis], g.random(F) < 0.5, g.random(F) < 0.5)
        k = kf.reshape(sl).astype(np.float32)
        base = base.reshape((-1,) + sl).astype(np.float32)
        extra = g.uniform(0, 3, (F,) + shape).astype(np.float32)
        extra[g.random(extra.shape) < 0.1] = np.float32(1e20)
        slice_shape = np.moveaxis(extra, axis + 1, 0).shape[1:]
        inv_w, cp_w = np.empty_like(extra), np.empty_like(extra)
        F_.thomas_factor_diag(axis, k, base, extra, inv_w, cp_w,
                              np.empty(slice_shape, np.float32))
        inv, cp = np.empty_like(extra), np.empty_like(extra)
        FK.thomas_factor_diag(axis, k, base, extra, inv, cp, launcher=launcher)
        np.testing.assert_array_equal(inv, inv_w)
        np.testing.assert_array_equal(cp, cp_w)
        x = g.uniform(-5, 50, (F,) + shape).astype(np.float32)
        want = F_.thomas_solve_factored(x.copy(), axis, k, inv_w, cp_w,
                                        np.empty(slice_shape, np.float32))
        got = FK.thomas_solve_factored(x.copy(), axis, k, inv, cp, launcher=launcher)
        np.testing.assert_array_equal(got, want)
        # and the same as the one-pass solve
        once = FK.thomas_solve_diag(x.copy(), axis, k, base, extra, np.empty_like(x),
                                         launcher=launcher)
        np.testing.assert_array_equal(got, once)


def test_pointwise_pieces_bit_exact(launcher):
    g = np.random.default_rng(3)
    F, n = 3, 5000
    kind = g.integers(0, len(codes.KIND_NAMES), n).astype(np.uint8)
    state = np.where(kind == codes.TUMOR, g.integers(1, 4, n), 0).astype(np.uint8)
    nk, ns = len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES)
    U_t, S_t = g.uniform(0, 10, (F, nk, ns)), g.uniform(0, 3, (F, nk, ns))
    # FieldSolver.rates reads its tables from self
    solver = types.SimpleNamespace(U_table=U_t, S_table=S_t, F=F, dtype=np.float32)
    U_w, S_w = F_.FieldSolver.rates(solver, kind, state)
    U, S = FK.rates(kind, state, U_t, S_t, launcher=launcher)
    np.testing.assert_array_equal(U, U_w)
    np.testing.assert_array_equal(S, S_w)

    c = g.uniform(0, 40, (F, n)).astype(np.float32)
    inv_dt = np.float32(1.0 / 0.37)
    diag, b = FK.cg_setup(c, U, S, inv_dt, launcher=launcher)
    np.testing.assert_array_equal(diag, U + inv_dt)
    np.testing.assert_array_equal(b, c * inv_dt + S)

    pinned = np.flatnonzero(kind == codes.VESSEL)
    r = g.normal(size=(F, n)).astype(np.float32)
    want = np.subtract(b, r)
    want[:, pinned] = 0
    np.testing.assert_array_equal(FK.residual(b, r.copy(), kind, launcher=launcher), want)

    vv = g.uniform(0, 40, F).astype(np.float32)
    want = c.copy()
    want[:, pinned] = vv[:, None]
    np.testing.assert_array_equal(FK.set_pinned(c.copy(), kind, vv, launcher=launcher), want)

    tau = g.uniform(1e-4, 1e-2, F).astype(np.float32).reshape(F, 1)
    scale = tau * np.float32(0.5)
    want = np.multiply(diag, scale)
    want[:, pinned] = np.float32(1e20)
    got = FK.factor_diag(diag, scale, kind, 1e20, np.empty_like(diag), launcher=launcher)
    np.testing.assert_array_equal(got, want)

    a = g.normal(size=(F, 1)).astype(np.float32)
    p, q = g.normal(size=(2, F, n)).astype(np.float32)
    y = c.copy()
    y += a * p
    np.testing.assert_array_equal(FK.axpy(c.copy(), a, p, launcher=launcher), y)
    y = r.copy()
    y -= a * q
    np.testing.assert_array_equal(FK.axpy(r.copy(), -a, q, launcher=launcher), y)
    y = p.copy()
    y *= a
    y += q
    np.testing.assert_array_equal(FK.scale_add(p.copy(), a, q, launcher=launcher), y)


# ------------------------------------------------------------------------------------------ tumor
def tumor_config(**kw) -> TumorConfig:
    """A TumorConfig with the persister transitions off: the growth rules alone (the persister
    biology has its own parity tests in tests/test_kernels_tumor_cpu.py)."""
    cfg = TumorConfig(**kw)
    if hasattr(cfg, "transitions"):
        from tmesim.scenario import TransitionConfig
        cfg = dataclasses.replace(cfg, transitions=TransitionConfig(
            pre_existing=False, drug_induced=False, exit_per_h=0.0, resistance_per_h=0.0))
    return cfg


def random_lattice(g, shape, p_tumor=0.45, p_necrotic=0.08, p_vessel=0.02):
    n = int(np.prod(shape))
    u = g.random(n)
    kind = np.zeros(n, dtype=np.uint8)
    kind[u < p_tumor] = codes.TUMOR
    kind[(u >= p_tumor) & (u < p_tumor + p_necrotic)] = codes.NECROTIC
    kind[(u >= p_tumor + p_necrotic) & (u < p_tumor + p_necrotic + p_vessel)] = codes.VESSEL
    kind[(u > 0.97)] = codes.CAF
    state = np.zeros(n, dtype=np.uint8)
    t = kind == codes.TUMOR
    state[t] = g.choice([codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT], t.sum(),
                        p=[0.7, 0.2, 0.1])
    # oxygen across every regime, with values exactly on the thresholds
    o2 = g.uniform(0, 45, n).astype(np.float32)
    edges = np.array([0.0, 2.5, 5.0, 15.0, 38.0], dtype=np.float32)
    pick = g.random(n) < 0.1
    o2[pick] = edges[g.integers(0, len(edges), pick.sum())]
    return kind, state, o2


CONFIGS = {
    "default": dict(),
    "fast": dict(doubling_time_h=0.3, necrosis_max_rate_per_h=6.0,
                 necrotic_clearance_per_h=3.0),           # p_div capped at 1: many conflicts
    "step_necrosis": dict(doubling_time_h=2.0, necrosis_threshold_mmHg=4.0,
                          necrosis_max_mmHg=6.0, necrosis_max_rate_per_h=2.0),
    "no_loss": dict(doubling_time_h=1.0, necrosis_max_rate_per_h=0.0,
                    necrotic_clearance_per_h=0.0),
    "odd_thresholds": dict(doubling_time_h=1.7, proliferation_threshold_mmHg=3.3,
                           proliferation_saturation_mmHg=21.7, necrosis_threshold_mmHg=7.1,
                           necrosis_max_mmHg=1.9, necrosis_max_rate_per_h=3.0),
}


def run_both(launcher, cfg, shape, neighbourhood, seed, steps, order=0):
    g = np.random.default_rng(seed)
    grid = Grid(shape, 20.0, neighbourhood)
    kind, state, o2 = random_lattice(g, shape)
    ref = TumorRules(cfg, grid, seed, 6.0)
    ker = KernelTumorRules(cfg, grid, seed, 6.0, launcher=launcher)
    k1, s1, k2, s2 = kind.copy(), state.copy(), kind.copy(), state.copy()
    launcher.set_order(order)
    history = []
    try:
        for step in range(steps):
            c1 = ref.apply(k1, s1, o2, step)
            c2 = ker.apply(k2, s2, o2, step)
            np.testing.assert_array_equal(k2, k1, err_msg=f"kind, step {step}")
            np.testing.assert_array_equal(s2, s1, err_msg=f"tumor_state, step {step}")
            for f in ("divisions", "necroses", "cleared", "blocked", "lost_conflicts"):
                assert getattr(c2, f) == getattr(c1, f), (f, step)
            for a, b in zip(ker.last_division, ref.last_division):
                np.testing.assert_array_equal(a, b)
            assert not ker.claims.any()                 # claims reset for the next step
            history.append((c1.divisions, c1.necroses, c1.cleared, c1.lost_conflicts))
    finally:
        launcher.set_order(0)
    return history, k2, s2


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shape,neighbourhood", [((40, 33), "moore"), ((37, 41), "von_neumann"),
                                                 ((9, 11, 10), "moore"),
                                                 ((8, 9, 7), "von_neumann")])
def test_tumor_rules_identical_state(launcher, name, shape, neighbourhood):
    cfg = tumor_config(**CONFIGS[name])
    seed = 100 * list(CONFIGS).index(name) + len(shape) + (neighbourhood == "moore")
    history, _, _ = run_both(launcher, cfg, shape, neighbourhood, seed=seed, steps=6)
    totals = np.sum(history, axis=0)
    assert totals[:3].sum() > 0                           # the rules did something
    if name != "default":
        assert totals[0] > 0                              # something divided
    if name == "fast":
        assert totals[3] > 0                              # and conflicts were resolved


@pytest.mark.parametrize("order", [1, 2])
def test_tumor_rules_do_not_depend_on_thread_order(launcher, order):
    """The work items of every launch in reverse and in a scrambled order give the same lattice
    (claims are settled by integer max, not by who comes first)."""
    cfg = tumor_config(**CONFIGS["fast"])
    _, k0, s0 = run_both(launcher, cfg, (30, 30), "moore", 5, 4, order=0)
    _, k1, s1 = run_both(launcher, cfg, (30, 30), "moore", 5, 4, order=order)
    np.testing.assert_array_equal(k1, k0)
    np.testing.assert_array_equal(s1, s0)


def test_tumor_kernels_take_every_rule(launcher):
    """The default persister biology runs on the kernels with the numpy step's result
    (tests/test_kernels_tumor_cpu.py has the full parity tests: drugs, signalling, memory, every
    branch)."""
    cfg = TumorConfig()
    g = np.random.default_rng(4)
    grid = Grid((20, 20), 20.0)
    kind, state, o2 = random_lattice(g, grid.shape)
    ref = TumorRules(cfg, grid, 4, 6.0)
    ker = KernelTumorRules(cfg, grid, 4, 6.0, launcher=launcher)
    mem = g.random(grid.n_sites).astype(np.float32)
    t_p = g.uniform(0, 5000, grid.n_sites).astype(np.float32)
    a = [kind.copy(), state.copy(), mem.copy(), t_p.copy()]
    b = [kind.copy(), state.copy(), mem.copy(), t_p.copy()]
    for step in range(3):
        assert ker.apply(b[0], b[1], o2, step, b[2], b[3]) == \
            ref.apply(a[0], a[1], o2, step, a[2], a[3])
        for x, y in zip(a, b):
            np.testing.assert_array_equal(y.view(np.uint8), x.view(np.uint8))


# ------------------------------------------------------------------------------------------ sources
def test_assembled_source_compiles_with_nvcc(tmp_path):
    """What get_module hands to NVRTC (preamble + inlined includes) is valid CUDA and exports
    every kernel the sources declare (TM_KERNEL), in every file of KERNEL_SOURCES."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    src = tmp_path / "all.cu"
    src.write_text(launch.kernel_source())
    r = subprocess.run([nvcc, "--ptx", "-arch=sm_80", "-std=c++17", "-Werror", "all-warnings",
                        str(src), "-o", str(tmp_path / "all.ptx")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    ptx = (tmp_path / "all.ptx").read_text()
    d = launch.find_kernel_dir()
    declared = [m.group(1) for f in launch.KERNEL_SOURCES
                for m in re.finditer(r"TM_KERNEL\s+void\s+(\w+)\s*\(", (d / f).read_text())]
    assert {"tm_rng_raw_at", "tm_laplacian", "tm_tumor_decide", "tm_stroma_decide",
            "tm_lod_sweep"} <= set(declared)
    for name in declared:
        assert f".entry {name}(" in ptx, name


def test_missing_sources_name_every_place_searched(monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "kernel_dir_candidates",
                        lambda: [("somewhere", tmp_path / "nope"), ("zip", None)])
    with pytest.raises(launch.KernelSourceError) as e:
        launch.find_kernel_dir()
    assert str(tmp_path / "nope") in str(e.value) and "zip: not on a file system" in str(e.value)


def test_portable_builds_are_cached_in_a_private_folder(monkeypatch, tmp_path):
    """The portable library is loaded from a folder only this user can write to (mode 0700,
    owned by this user); a folder open to others, or not this user's, is passed over."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(launch.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    d = launch.portable_cache_dir()
    assert d == tmp_path / "cache" / "tmesim" / "portable"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid == os.getuid()
    d.chmod(0o777)
    fallback = launch.portable_cache_dir()
    assert fallback == tmp_path / "tmp" / f"tmesim-portable-{os.getuid()}"
    assert stat.S_IMODE(fallback.stat().st_mode) == 0o700
    fallback.chmod(0o755)
    with pytest.raises(launch.KernelSourceError, match="mode 0755, expected 0700"):
        launch.portable_cache_dir()


# ------------------------------------------------------------------------------------------ backend
def test_backend_selection():
    """auto keeps to the CPU until the kernels are verified on a GPU
    (tmesim.backend.GPU_VERIFIED) or when there is none; gpu without a device is a clear error;
    an unknown backend is named."""
    from tmesim import backend
    from tmesim.errors import UserError
    if not (backend.GPU_VERIFIED and backend.gpu_available()):
        assert backend.get_backend("auto").name == "cpu"
    if not backend.gpu_available():
        with pytest.raises(UserError, match="--backend gpu"):
            backend.get_backend("gpu")
    with pytest.raises(UserError, match="expected auto, cpu or gpu"):
        backend.get_backend("tpu")


def test_kernels_ship_with_the_package():
    """setup.cfg maps kernels/ to tmesim/kernels/ and takes every source file as package data."""
    cfg = configparser.ConfigParser()
    root = Path(launch.__file__).resolve().parent.parent
    if not (root / "setup.cfg").is_file():
        pytest.skip("not a source checkout")
    cfg.read(root / "setup.cfg")
    assert "tmesim.kernels" in cfg["options"]["packages"].split()
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n")
                   if "=" in line)
    assert {k.strip(): v.strip() for k, v in mapping.items()}["tmesim.kernels"] == "kernels"
    patterns = cfg["options.package_data"]["tmesim.kernels"].replace(",", " ").split()
    for f in (root / "kernels").iterdir():
        if f.suffix in (".cu", ".cuh", ".h"):
            assert any(fnmatch.fnmatch(f.name, p) for p in patterns), f.name
