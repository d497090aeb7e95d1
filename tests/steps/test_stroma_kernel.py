"""The stromal-rule kernels (kernels/stroma.cu) against numpy's StromaRules.

The kernels, compiled as plain C++ (kernels/portable.h, g++ -ffp-contract=off) or on a GPU, are
driven by tmesim.steps.stroma_kernel.KernelStromaRules on random 2D/3D lattices holding
every kind of occupant, with a quantized recruitment signal (many exact ties), a continuous one,
and none. Expectation: the same kind array and the same counts as StromaRules after every step,
whatever the order in which the work items of each launch run. Every parity test runs on the
portable C++ build and on a GPU (the ``launcher`` fixture); the GPU tests at the end keep the
lattice in device memory, and skip without a GPU.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tmesim import codes, launch, rng
from tmesim.grid import Grid
from tmesim.scenario import CafConfig, TamConfig
from tmesim.steps.stroma import StromaCounts, StromaRules
from tmesim.steps.stroma_kernel import KernelStromaRules
from tmesim.steps.tumor import TumorRules
from tmesim.steps.tumor_kernel import KernelTumorRules

COUNTS = ("caf_moves", "tam_moves", "tam_recruited", "tam_died", "lost_conflicts")


# ------------------------------------------------------------------------------------- inputs
#: (caf, tam) keyword arguments; rates high enough that every branch fires in a few steps
CONFIGS = {
    "busy": (
        dict(motility_per_h=5.0),
        dict(
            motility_per_h=8.0,
            chemotaxis=0.6,
            recruitment_per_h=2.0,
            recruitment_signal_gain=3.0,
            signal_half_max=0.5,
            death_per_h=1.5,
        ),
    ),
    "all_follow": (
        dict(motility_per_h=0.0),
        dict(
            motility_per_h=30.0,
            chemotaxis=1.0,
            recruitment_per_h=0.0,
            recruitment_signal_gain=0.0,
            death_per_h=0.0,
        ),
    ),
    "gain_only": (
        dict(motility_per_h=2.0),
        dict(
            motility_per_h=0.0,
            chemotaxis=0.0,
            recruitment_per_h=0.0,
            recruitment_signal_gain=8.0,
            signal_half_max=0.3,
            death_per_h=3.0,
        ),
    ),
    "no_motion": (
        dict(motility_per_h=0.0),
        dict(
            motility_per_h=0.0,
            chemotaxis=0.5,
            recruitment_per_h=4.0,
            recruitment_signal_gain=0.0,
            death_per_h=2.0,
        ),
    ),
    "default": (dict(), dict()),
}

CASES = [
    ((24, 24), "moore"),
    ((23, 25), "von_neumann"),
    ((12, 12, 12), "moore"),
    ((10, 11, 9), "von_neumann"),
]


def make_rules(name, grid, seed, launcher, **scratch):
    caf_kw, tam_kw = CONFIGS[name]
    caf, tam = CafConfig(**caf_kw), TamConfig(**tam_kw)
    return (
        StromaRules(caf, tam, grid, seed, 6.0),
        KernelStromaRules(caf, tam, grid, seed, 6.0, launcher=launcher, **scratch),
    )


def random_lattice(g, n):
    """Every occupant kind, with room to move (about 35 % empty)."""
    kind = g.choice(
        [codes.EMPTY, codes.TUMOR, codes.CAF, codes.TAM, codes.VESSEL, codes.NECROTIC],
        n,
        p=[0.35, 0.2, 0.12, 0.15, 0.08, 0.1],
    )
    return kind.astype(np.uint8)


def random_signal(g, n, mode):
    if mode == "none":
        return None
    if mode == "quantized":  # 5 levels: most followers see ties among their neighbours
        return (g.integers(0, 5, n) * 0.25).astype(np.float32)
    return g.uniform(0.0, 3.0, n).astype(np.float32)


def run_both(launcher, name, shape, neighbourhood, signal_mode, seed, steps=5, order=0):
    """Run numpy and the kernels side by side from one random lattice; check kind and counts
    after every step. Returns the per-step numpy counts and the final lattice."""
    g = np.random.default_rng(seed)
    grid = Grid(shape, 20.0, neighbourhood)
    kind = random_lattice(g, grid.n_sites)
    signal = random_signal(g, grid.n_sites, signal_mode)
    ref, ker = make_rules(name, grid, seed, launcher)
    xp = launcher.xp
    k_ref, k_ker = kind.copy(), xp.asarray(kind)
    s_ker = None if signal is None else xp.asarray(signal)
    assert ker.active(k_ker) == ref.active(k_ref)
    set_order = getattr(launcher, "set_order", lambda mode: None)  # a GPU has its own order
    set_order(order)
    history = []
    try:
        for step in range(steps):
            c_ref = ref.apply(k_ref, signal, step)
            c_ker = ker.apply(k_ker, s_ker, step)
            got = k_ker.get() if hasattr(k_ker, "get") else k_ker
            np.testing.assert_array_equal(got, k_ref, err_msg=f"kind, step {step}")
            assert c_ker == c_ref, (step, c_ker, c_ref)
            assert not bool(ker.claims.any())  # claims reset for the next step
            history.append(c_ref)
    finally:
        set_order(0)
    return history, k_ref


def totals(history):
    return {f: sum(getattr(c, f) for c in history) for f in COUNTS}


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shape,neighbourhood", CASES)
@pytest.mark.parametrize("signal_mode", ["quantized", "none", "continuous"])
def test_stroma_rules_identical(launcher, name, shape, neighbourhood, signal_mode):
    seed = (
        1000 * list(CONFIGS).index(name)
        + 10 * CASES.index((shape, neighbourhood))
        + ["quantized", "none", "continuous"].index(signal_mode)
    )
    history, _ = run_both(launcher, name, shape, neighbourhood, signal_mode, seed)
    t = totals(history)
    if name == "busy":  # every branch fired
        assert t["caf_moves"] and t["tam_moves"] and t["tam_died"] and t["lost_conflicts"]
        assert t["tam_recruited"] > 0
    if name == "all_follow":
        assert t["tam_moves"] > 0 and t["lost_conflicts"] > 0
    if name == "gain_only":  # recruitment exists only through the signal
        assert (t["tam_recruited"] > 0) == (signal_mode != "none")
    if name == "no_motion":
        assert t["tam_recruited"] > 0 and t["caf_moves"] == t["tam_moves"] == 0


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("shape,neighbourhood", [((24, 24), "moore"), ((12, 12, 12), "moore")])
def test_stroma_rules_do_not_depend_on_thread_order(launcher, order, shape, neighbourhood):
    """Work items in reverse and scrambled order: the same lattice and counts as numpy (and hence
    as the forward order): claims settle by integer max, not by who comes first."""
    for name in ("busy", "all_follow"):
        _, k0 = run_both(launcher, name, shape, neighbourhood, "quantized", 77, order=0)
        _, k1 = run_both(launcher, name, shape, neighbourhood, "quantized", 77, order=order)
        np.testing.assert_array_equal(k1, k0)


def test_chemotaxis_goes_up_the_signal(launcher):
    """A lone TAM in a signal ramp that always moves and always follows climbs it: a sanity check
    that the follow branch is taken at all (the parity tests say it matches numpy)."""
    grid = Grid((9, 9), 20.0, "von_neumann")
    kind = np.zeros(grid.n_sites, dtype=np.uint8)
    kind[4 * 9 + 0] = codes.TAM
    signal = np.tile(np.arange(9, dtype=np.float32), 9)  # rises along x
    tam = TamConfig(
        motility_per_h=1e4,
        chemotaxis=1.0,
        recruitment_per_h=0.0,
        recruitment_signal_gain=0.0,
        death_per_h=0.0,
    )
    ker = KernelStromaRules(CafConfig(), tam, grid, 3, 6.0, launcher=launcher)
    for step in range(8):
        assert ker.apply(kind, signal, step) == StromaCounts(tam_moves=1)
    assert kind[4 * 9 + 8] == codes.TAM and (kind == codes.TAM).sum() == 1


def test_shared_scratch_with_the_tumor_rules(launcher):
    """Tumor and stroma steps alternating on one claims/action pair (what a GPU run does to save
    memory): identical to the numpy steps, claims all 0 after each."""
    from .test_tumor_kernel import random_lattice as tumor_lattice
    from .test_tumor_kernel import tumor_config

    g = np.random.default_rng(12)
    shape = (30, 28)
    grid = Grid(shape, 20.0, "moore")
    kind, state, o2 = tumor_lattice(g, shape, p_tumor=0.3)
    more = g.random(grid.n_sites)
    kind[(kind == codes.EMPTY) & (more < 0.15)] = codes.TAM
    signal = random_signal(g, grid.n_sites, "quantized")
    cfg = tumor_config(
        doubling_time_h=0.5, necrosis_max_rate_per_h=3.0, necrotic_clearance_per_h=3.0
    )
    t_ref = TumorRules(cfg, grid, 9, 6.0)
    t_ker = KernelTumorRules(cfg, grid, 9, 6.0, launcher=launcher)
    s_ref, s_ker = make_rules("busy", grid, 9, launcher, claims=t_ker.claims, action=t_ker.action)
    assert s_ker.claims is t_ker.claims and s_ker.action is t_ker.action
    k1, st1, k2, st2 = kind.copy(), state.copy(), kind.copy(), state.copy()
    for step in range(5):
        t_ref.apply(k1, st1, o2, step)
        t_ker.apply(k2, st2, o2, step)
        c_ref = s_ref.apply(k1, signal, step)
        c_ker = s_ker.apply(k2, signal, step)
        np.testing.assert_array_equal(k2, k1)
        np.testing.assert_array_equal(st2, st1)
        assert c_ker == c_ref
        assert not t_ker.claims.any()


def test_active_matches_numpy(launcher):
    grid = Grid((6, 6), 20.0)
    kind = np.zeros(grid.n_sites, dtype=np.uint8)
    quiet = TamConfig(recruitment_per_h=0.0, recruitment_signal_gain=0.0)
    for tam in (
        quiet,
        TamConfig(recruitment_per_h=0.0, recruitment_signal_gain=0.1),
        TamConfig(recruitment_per_h=1.0, recruitment_signal_gain=0.0),
    ):
        ref = StromaRules(CafConfig(), tam, grid, 1, 6.0)
        ker = KernelStromaRules(CafConfig(), tam, grid, 1, 6.0, launcher=launcher)
        for k in (codes.EMPTY, codes.CAF, codes.TAM, codes.TUMOR):
            kind[7] = k
            assert ker.active(kind) == ref.active(kind)
    assert not KernelStromaRules(CafConfig(), quiet, grid, 1, 6.0, launcher=launcher).active(
        np.zeros(grid.n_sites, np.uint8)
    )


def test_streams_match_tmesim_rng():
    """rng.cuh holds the stream numbers of every per-site decision the kernels take, each equal
    to tmesim.rng's; no other kernel file defines a stream."""
    d = launch.find_kernel_dir()
    text = (d / "rng.cuh").read_text()
    found = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^#define TM_STREAM_(\w+)\s+(\d+)", text, re.M)
    }
    names = (
        "DIVIDE",
        "DIRECTION",
        "PRIORITY",
        "NECROSIS",
        "CLEARANCE",
        "TRANSITION",
        "KILL",
        "MOVE",
        "MOVE_DIRECTION",
        "RECRUIT",
        "STROMA_DEATH",
        "CHEMOTAXIS",
    )
    assert set(names) <= set(found)
    assert all(found[k] == getattr(rng, k) for k in found)
    for f in d.iterdir():
        if f.name != "rng.cuh" and f.suffix in (".cu", ".cuh"):
            assert "#define TM_STREAM_" not in f.read_text(), f.name


def test_bad_arguments_are_refused(launcher):
    grid = Grid((5, 5), 20.0)
    ker = KernelStromaRules(CafConfig(), TamConfig(), grid, 1, 6.0, launcher=launcher)
    kind = np.zeros(grid.n_sites, np.uint8)
    with pytest.raises(ValueError, match="float32"):
        ker.apply(kind, np.zeros(grid.n_sites, np.float64), 0)
    with pytest.raises(ValueError, match="uint8"):
        ker.apply(kind.astype(np.int32), None, 0)
    with pytest.raises(ValueError, match="zeros"):
        KernelStromaRules(
            CafConfig(),
            TamConfig(),
            grid,
            1,
            6.0,
            launcher=launcher,
            claims=np.ones(grid.n_sites, np.uint64),
        )


# ------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["busy", "all_follow", "gain_only"])
@pytest.mark.parametrize("shape,neighbourhood", CASES)
@pytest.mark.parametrize("signal_mode", ["quantized", "none"])
def test_stroma_rules_identical_on_gpu(gpu_launcher, name, shape, neighbourhood, signal_mode):
    """The same parity on a CUDA device, the lattice kept in device memory between steps."""
    history, _ = run_both(
        gpu_launcher,
        name,
        shape,
        neighbourhood,
        signal_mode,
        seed=5 + CASES.index((shape, neighbourhood)),
    )
    assert sum(totals(history).values()) > 0


@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape,neighbourhood",
    [((96, 80), "moore"), ((20, 24, 22), "moore"), ((20, 24, 22), "von_neumann")],
)
def test_stroma_rules_deterministic_on_gpu(gpu_launcher, shape, neighbourhood):
    """Two device runs bit-identical to each other and to numpy (real concurrent atomicMax)."""
    import cupy

    g = np.random.default_rng(4)
    grid = Grid(shape, 20.0, neighbourhood)
    kind = random_lattice(g, grid.n_sites)
    signal = random_signal(g, grid.n_sites, "quantized")
    ref, _ = make_rules("busy", grid, 3, gpu_launcher)
    k_ref = kind.copy()
    for step in range(8):
        ref.apply(k_ref, signal, step)
    for _ in range(2):
        _, ker = make_rules("busy", grid, 3, gpu_launcher)
        k_d, s_d = cupy.asarray(kind), cupy.asarray(signal)
        for step in range(8):
            ker.apply(k_d, s_d, step)
        np.testing.assert_array_equal(cupy.asnumpy(k_d), k_ref)
