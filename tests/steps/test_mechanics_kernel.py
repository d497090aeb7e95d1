"""The push kernels (kernels/mechanics.cu, driven by tmesim.steps.mechanics_kernel through
KernelTumorRules) against the numpy rule (tmesim.steps.mechanics, run by TumorRules.apply).

On random dense lattices -- a core without empty voxels, so that blocked cells abound, some with
free space within the reach (they push, and neighbours' paths collide) and some without (far) --
every step must leave kind, tumor_state, memory and time_in_P identical bit for bit to numpy's,
with every field of RuleCounts and the division list the same, and the claims all 0: in 2D and 3D,
Moore and von Neumann, at reaches of 1, 2.25, 3 and 5 voxel edges, with and without CAFs and TAMs
pushable, with the persister biology off and on, and in forward, reverse and scrambled work-item
order. The tests assert that pushes, lost paths and far cells all happened. The kernels' distance
field, computed in place in one buffer, equals numpy's whole-lattice field in every work-item
order (the argument of kernels/mechanics.cu that the in-place passes end on the Jacobi field
whatever the order); with a reach under one voxel edge nothing new is allocated or launched.

The kernels run compiled as C++ behind kernels/portable.h (PortableLauncher), and on a GPU when
one is present (the ``gpu`` parameter of the launcher fixture; skipped without one).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tmesim import codes, launch, memory, rng
from tmesim.grid import Grid
from tmesim.scenario import MechanicsConfig, TransitionConfig, TumorConfig
from tmesim.steps import mechanics, mechanics_kernel
from tmesim.steps.mechanics import Pushing
from tmesim.steps.mechanics_kernel import EVENT_MASK, OUTCOMES, KernelPushing
from tmesim.steps.tumor import RuleCounts, TumorRules
from tmesim.steps.tumor_kernel import KernelTumorRules

from ..helpers import model_scenario

DT_MIN = 6.0
DX_UM = 20.0

GEOMETRIES = [
    ((34, 36), "moore"),
    ((35, 33), "von_neumann"),
    ((21, 22, 20), "moore"),
    ((20, 21, 19), "von_neumann"),
]
REACHES_UM = [20.0, 45.0, 60.0, 100.0]
PUSHABLE = {
    "tumor_necrotic": ("tumor", "necrotic"),
    "all": ("tumor", "necrotic", "caf", "tam"),
}

#: the growth rules alone (no phenotype transitions), fast division and some clearance
GROWTH = dict(
    doubling_time_h=0.2,
    necrosis_max_rate_per_h=1.0,
    necrotic_clearance_per_h=0.3,
    transitions=TransitionConfig(
        pre_existing=False, drug_induced=False, exit_per_h=0.0, resistance_per_h=0.0
    ),
)
#: the persister biology on: transitions, memory and time in P (the cells a push carries), few
#: losses (every voxel they empty in the core brings free space within reach of its cells)
BIOLOGY = dict(
    doubling_time_h=0.3,
    necrosis_max_rate_per_h=1.0,
    necrotic_clearance_per_h=0.1,
    death_per_h=0.01,
    transitions=TransitionConfig(
        entry_basal_per_h=0.6,
        exit_per_h=1.5,
        resistance_per_h=0.6,
        mutability_ramp_h=1.0,
        memory_decay_per_h=1.0,
        hypoxia_weight=3.0,
    ),
)


def config(reach_um: float, pushable, biology: bool) -> TumorConfig:
    return TumorConfig(
        **(BIOLOGY if biology else GROWTH),
        mechanics=MechanicsConfig(push_reach_um=reach_um, pushable=tuple(pushable)),
    )


def dense_lattice(g, shape):
    """Tumor cells everywhere with necrotic, vessel, CAF and TAM voxels sprinkled in, and empty
    voxels only outside a central core of radius 0.45 of the shortest side: near the core's
    surface blocked cells have free space within a few voxels, deep inside none. Random S/P/R
    states, memory, time in P and oxygen (some cells below the necrosis threshold)."""
    n = int(np.prod(shape))
    u = g.random(n)
    kind = np.full(n, codes.TUMOR, dtype=np.uint8)
    for code, lo, hi in (
        (codes.NECROTIC, 0.0, 0.07),
        (codes.VESSEL, 0.07, 0.09),
        (codes.CAF, 0.09, 0.13),
        (codes.TAM, 0.13, 0.15),
    ):
        kind[(u >= lo) & (u < hi)] = code
    centre = (np.array(shape) - 1) / 2.0
    r = np.sqrt(((np.indices(shape).reshape(len(shape), -1).T - centre) ** 2).sum(axis=1))
    outside = r > 0.45 * min(shape)
    kind[outside & (g.random(n) < 0.35)] = codes.EMPTY
    state = np.zeros(n, dtype=np.uint8)
    t = kind == codes.TUMOR
    state[t] = g.choice(
        [codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT], t.sum(), p=[0.6, 0.3, 0.1]
    )
    memory_ = g.random(n).astype(np.float32)
    memory_[g.random(n) < 0.3] = 0.0
    time_in_P = g.uniform(0, 120, n).astype(np.float32)
    o2 = g.uniform(1, 45, n).astype(np.float32)
    return kind, state, memory_, time_in_P, o2


def same_bits(a, b):
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def run_both(launcher, cfg, shape, neighbourhood, seed, steps, order=0):
    """Steps of TumorRules.apply and KernelTumorRules.apply from the same random state, compared
    after every step. Returns the summed counts, the kernels' number of lost push paths and
    their final arrays."""
    g = np.random.default_rng(seed)
    grid = Grid(shape, DX_UM, neighbourhood)
    kind, state, memory_, time_in_P, o2 = dense_lattice(g, shape)
    ref = TumorRules(cfg, grid, seed, DT_MIN)
    ker = KernelTumorRules(cfg, grid, seed, DT_MIN, launcher=launcher)
    assert ref.pushing.on and ker.pushing.D is not None
    a = [x.copy() for x in (kind, state, memory_, time_in_P)]
    b = [x.copy() for x in (kind, state, memory_, time_in_P)]
    total = RuleCounts()
    lost_paths = 0
    launcher.set_order(order)
    try:
        for step in range(steps):
            c1 = ref.apply(a[0], a[1], o2, step, a[2], a[3])
            c2 = ker.apply(b[0], b[1], o2, step, b[2], b[3])
            for name, x, y in zip(("kind", "tumor_state", "memory", "time_in_P"), a, b):
                assert same_bits(y, x), (name, step, np.flatnonzero(x != y)[:10])
            assert c2 == c1, (step, c1, c2)
            for x, y in zip(ker.last_division, ref.last_division):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)
            assert not ker.claims.any()  # left all 0 for the next step and the stroma rules
            lost_paths += int(((ker.action & EVENT_MASK) == OUTCOMES["lost"]).sum())
            for f in dataclasses.fields(RuleCounts):
                setattr(total, f.name, getattr(total, f.name) + getattr(c1, f.name))
    finally:
        launcher.set_order(0)
    return total, lost_paths, b


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("biology", [False, True], ids=["growth", "biology"])
@pytest.mark.parametrize("pushable", list(PUSHABLE))
@pytest.mark.parametrize("reach_um", REACHES_UM)
@pytest.mark.parametrize("shape,neighbourhood", GEOMETRIES)
def test_push_rule_identical(launcher, shape, neighbourhood, reach_um, pushable, biology):
    cfg = config(reach_um, PUSHABLE[pushable], biology)
    seed = int(reach_um) + 3 * len(shape) + (neighbourhood == "moore") + 7 * biology
    total, lost_paths, _ = run_both(launcher, cfg, shape, neighbourhood, seed, steps=5)
    # pushes, lost paths and far cells all happened
    assert total.pushes > 0 and lost_paths > 0 and total.blocked > 0, (total, lost_paths)
    assert total.divisions > total.pushes  # divisions into empty neighbours too
    if biology:
        assert total.entered_P and total.exited_P and total.became_R, total


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("shape,neighbourhood", [GEOMETRIES[0], GEOMETRIES[3]])
def test_push_rule_does_not_depend_on_thread_order(launcher, shape, neighbourhood, order):
    """Every launch's work items in reverse and in a scrambled order: identical to numpy (each
    step) and to the forward order."""
    cfg = config(60.0, PUSHABLE["all"], biology=True)
    t0, l0, b0 = run_both(launcher, cfg, shape, neighbourhood, 5, 4, order=0)
    t1, l1, b1 = run_both(launcher, cfg, shape, neighbourhood, 5, 4, order=order)
    assert t1 == t0 and l1 == l0
    assert t0.pushes > 0 and l0 > 0 and t0.blocked > 0, (t0, l0)
    for x, y in zip(b0, b1):
        assert same_bits(x, y)


@pytest.mark.parametrize("reach_um", REACHES_UM)
@pytest.mark.parametrize("shape,neighbourhood", GEOMETRIES)
def test_distance_field_is_numpys(launcher, shape, neighbourhood, reach_um):
    """The in-place passes (tm_push_distance_first, then tm_push_distance on the same buffer)
    give Pushing.distance (the whole-lattice field) exactly, with the work items of every launch
    in forward, reverse and scrambled order, on a lattice with empty voxels everywhere (so that
    distances of every size occur)."""
    g = np.random.default_rng(int(reach_um) + len(shape))
    grid = Grid(shape, DX_UM, neighbourhood)
    kind, *_ = dense_lattice(g, shape)
    kind[g.random(grid.n_sites) < 0.03] = codes.EMPTY
    try:
        for pushable in PUSHABLE.values():
            ref = Pushing(reach_um, pushable, grid, seed=1)
            ker = KernelPushing(ref, launcher=launcher)
            want = ref.distance(kind)
            assert ((want > 0) & (want < mechanics.INF)).sum() > 10  # finite distances seen
            for order in (0, 1, 2):
                launcher.set_order(order)
                ker.D[...] = 12345  # whatever the buffer held before: the first pass sets it
                got = ker.distance(kind)
                assert got is ker.D  # the one buffer, in place
                np.testing.assert_array_equal(got, want, err_msg=f"order {order}")
    finally:
        launcher.set_order(0)
    assert ker.passes == ref.passes == round(reach_um / DX_UM * 10) // 10


def test_distance_passes_in_place_differ_midway_by_order(portable):
    """What the order test above exercises: stopped after two of five passes, the in-place field
    depends on the work-item order (a forward sweep carries a distance many voxels in one pass,
    a reverse sweep the other way), and lies between numpy's final field and the two-pass Jacobi
    field (numpy's Pushing.relax stopped after two passes); all five passes end on the same
    field."""
    L = portable.launcher()
    g = np.random.default_rng(4)
    grid = Grid((30, 32), DX_UM, "moore")
    kind, *_ = dense_lattice(g, grid.shape)
    kind[g.random(grid.n_sites) < 0.03] = codes.EMPTY
    ref = Pushing(100.0, PUSHABLE["all"], grid, seed=1)
    ker = KernelPushing(ref, launcher=L)
    assert ker.passes == 5
    final = ref.distance(kind)
    two = Pushing(100.0, PUSHABLE["all"], grid, seed=1)
    two.passes = 2
    jacobi = two.distance(kind)
    assert (jacobi > final).any()  # two passes are not enough here
    midway = {}
    try:
        for order in (0, 1, 2):
            L.set_order(order)
            ker.passes = 2
            midway[order] = ker.distance(kind).copy()
            ker.passes = 5
            np.testing.assert_array_equal(ker.distance(kind), final)
    finally:
        L.set_order(0)
    for order, d in midway.items():
        assert (d >= final).all() and (d <= jacobi).all(), order
    assert not np.array_equal(midway[0], midway[1])
    assert (midway[0] < jacobi).any() and (midway[1] < jacobi).any()


# ------------------------------------------------------------------------------------- off
class CountingLauncher:
    """Records the names of the kernels launched through it."""

    def __init__(self, inner):
        self.inner, self.xp, self.names = inner, inner.xp, []

    def set_order(self, mode):
        self.inner.set_order(mode)

    def __call__(self, name, n_work, *args):
        self.names.append(name)
        return self.inner(name, n_work, *args)


@pytest.mark.parametrize("reach_um", [0.0, 9.0])
def test_reach_under_one_voxel_allocates_and_launches_nothing(launcher, reach_um):
    """Under one voxel edge (cap < 10) the rule is off: no distance buffer, the three tumor
    launches only, and the numpy rule's result (contact inhibition: blocked cells stay)."""
    cfg = config(reach_um, PUSHABLE["all"], biology=False)
    counting = CountingLauncher(launcher)
    shape = (30, 31)
    g = np.random.default_rng(2)
    grid = Grid(shape, DX_UM, "moore")
    kind, state, memory_, time_in_P, o2 = dense_lattice(g, shape)
    ref = TumorRules(cfg, grid, 2, DT_MIN)
    ker = KernelTumorRules(cfg, grid, 2, DT_MIN, launcher=counting)
    assert not ker.pushing.on and ker.pushing.D is None
    a = [x.copy() for x in (kind, state, memory_, time_in_P)]
    b = [x.copy() for x in (kind, state, memory_, time_in_P)]
    blocked = 0
    for step in range(3):
        counting.names.clear()
        c1 = ref.apply(a[0], a[1], o2, step, a[2], a[3])
        c2 = ker.apply(b[0], b[1], o2, step, b[2], b[3])
        assert counting.names == ["tm_tumor_decide", "tm_tumor_apply", "tm_tumor_finish"]
        assert c1 == c2 and c2.pushes == 0
        for x, y in zip(a, b):
            assert same_bits(x, y)
        assert not np.isin(ker.action & EVENT_MASK, list(OUTCOMES.values())).any()
        blocked += c2.blocked
    assert blocked > 0


def test_push_launches_per_step(launcher):
    """With the rule on: the tumor launches, cap / 10 distance passes (the first from the
    lattice, the others in place), claim, apply, finish; one uint16 distance buffer."""
    cfg = config(60.0, PUSHABLE["all"], biology=False)
    counting = CountingLauncher(launcher)
    grid = Grid((20, 20), DX_UM, "moore")
    kind, state, memory_, time_in_P, o2 = dense_lattice(np.random.default_rng(1), grid.shape)
    ker = KernelTumorRules(cfg, grid, 1, DT_MIN, launcher=counting)
    ker.apply(kind, state, o2, 0, memory_, time_in_P)
    assert counting.names == [
        "tm_tumor_decide",
        "tm_tumor_apply",
        "tm_tumor_finish",
        "tm_push_distance_first",
        *["tm_push_distance"] * 2,
        "tm_push_claim",
        "tm_push_apply",
        "tm_push_finish",
    ]
    D = ker.pushing.D
    assert D.dtype == np.uint16 and D.shape == (grid.n_sites,)


# ------------------------------------------------------------------------------------- codes
def test_outcome_codes_and_distance_constants_match_the_kernel():
    consts = launch.kernel_defines("mechanics.cu", "TM_PUSH_")
    assert (consts["UNIT"], consts["W2"], consts["W3"]) == mechanics.STEP_WEIGHTS
    assert consts["INF"] == mechanics.INF
    # the action byte's codes that mechanics.cu repeats are tumor.cu's
    mine = launch.kernel_defines("mechanics.cu", "TM_ACT_")
    theirs = launch.kernel_defines("tumor.cu", "TM_ACT_")
    assert mine == {
        k: theirs[k] for k in ("BLOCKED", "PUSH_WON", "PUSH_LOST", "PUSH_FAR", "EVENT_MASK")
    }
    assert {k: mine["PUSH_" + k.upper()] for k in OUTCOMES} == OUTCOMES
    assert mine["EVENT_MASK"] == EVENT_MASK
    # an outcome is an event of its own, distinct from every other event, within the event bits
    others = {v for k, v in theirs.items() if not k.startswith("PUSH_") and k != "EVENT_MASK"}
    assert not others & set(OUTCOMES.values())
    assert max(OUTCOMES.values()) <= EVENT_MASK
    assert 1 << launch.kernel_defines("tumor.cu", "TM_TRANSITION_")["SHIFT"] == EVENT_MASK + 1
    assert launch.kernel_defines("rng.cuh", "TM_STREAM_")["PUSH_PATH"] == rng.PUSH_PATH


# ------------------------------------------------------------------------------------- memory
def test_memory_estimate_counts_the_distance_buffers():
    """2 B per voxel more on the kernel backends with the rule on (one uint16 buffer), none on
    the CPU (numpy's windows are temporaries) or with the rule off."""
    off = model_scenario("2d-adi", "tumor.mechanics.push_reach_um=0")
    on = model_scenario("2d-adi", "tumor.mechanics.push_reach_um=60")
    n = 24 * 24
    for backend in ("gpu", "portable"):
        assert memory.bytes_needed(on, backend)["rules"] == (
            memory.bytes_needed(off, backend)["rules"] + n * 2
        )
    assert memory.bytes_needed(on, "cpu")["rules"] == memory.bytes_needed(off, "cpu")["rules"]
    tiny = model_scenario("2d-adi", "tumor.mechanics.push_reach_um=9")  # under one voxel
    assert memory.bytes_needed(tiny, "gpu")["rules"] == memory.bytes_needed(off, "gpu")["rules"]


def test_model_holds_the_estimated_push_buffers(portable):
    """A whole model with the push rule on holds exactly the estimate's 2 B per voxel more than
    the same model without it (memory.KERNEL_PUSH_BYTES_PER_SITE: the one distance buffer)."""
    from tmesim.simulation import Model

    from ..test_memory import held_arrays

    held = {}
    for reach in (0.0, 60.0):
        sc = model_scenario("2d-adi", f"tumor.mechanics.push_reach_um={reach}")
        m = Model(sc, portable)
        for _ in range(2):
            m.step()
        held[reach] = sum(a.nbytes for a in held_arrays(m, m.grid.n_sites).values())
        assert m.tumor_rules.pushing.on == (reach > 0)
    assert held[60.0] - held[0.0] == m.grid.n_sites * memory.KERNEL_PUSH_BYTES_PER_SITE
    assert mechanics_kernel.KernelPushing is type(m.tumor_rules.pushing)


class HostTables:
    """A launcher that is never called: KernelPushing's constructor only reads its numbers."""

    xp = np


def test_every_mechanics_field_reaches_the_kernels():
    """push_reach_um sets the reach (cap, passes) and pushable the kinds' bit mask the kernels
    are given, both from the numpy rule's own numbers."""
    grid = Grid((8, 8), DX_UM)

    def numbers(reach_um, pushable):
        k = KernelPushing(Pushing(reach_um, pushable, grid, seed=1), launcher=HostTables())
        return int(k.cap), k.passes, int(k.pushable)

    assert numbers(60.0, ("tumor", "necrotic")) == (
        30,
        3,
        1 << codes.TUMOR | 1 << codes.NECROTIC,
    )
    # 22.5 tenths: halves round up (mechanics.reach_units)
    assert numbers(45.0, ("tumor", "caf", "tam")) == (
        23,
        2,
        1 << codes.TUMOR | 1 << codes.CAF | 1 << codes.TAM,
    )
    assert numbers(100.0, ("necrotic",)) == (50, 5, 1 << codes.NECROTIC)
