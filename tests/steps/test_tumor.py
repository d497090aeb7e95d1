"""Tumor rules against their rates: growth, necrosis, clearance, placement and conflict resolution.

Each test drives TumorRules directly on a lattice with a prescribed oxygen array, so the expected
statistics follow from the rule's rate alone.
"""

import math

import numpy as np
import pytest
from scipy import stats

from tmesim import codes, rng
from tmesim.grid import Grid
from tmesim.scenario import MechanicsConfig, TransitionConfig
from tmesim.scenario import TumorConfig as _TumorConfig
from tmesim.steps.tumor import TumorRules

DT = 6.0


def TumorConfig(**kw):
    """Growth, necrosis and clearance alone: no phenotype transitions (tested in
    tests/steps/test_persisters.py), division into empty neighbours only (the push rule is tested
    in tests/steps/test_mechanics.py)."""
    kw.setdefault("transitions", TransitionConfig(pre_existing=False, drug_induced=False))
    kw.setdefault("mechanics", MechanicsConfig(push_reach_um=0.0))
    return _TumorConfig(**kw)


def lattice(shape, sites=(), kind=codes.TUMOR):
    n = int(np.prod(shape))
    k = np.zeros(n, dtype=np.uint8)
    s = np.zeros(n, dtype=np.uint8)
    k[list(sites)] = kind
    if kind == codes.TUMOR:
        s[list(sites)] = codes.SENSITIVE
    return k, s


def test_free_growth_matches_doubling_time():
    """Isolated cells at full oxygen grow as a Galton-Watson process with p = exp(r dt) - 1, r =
    ln2/24 h: the total after n steps has mean N0 (1+p)^n = N0 2^(t/24 h) and variance
    N0 s^2 m^(n-1) (m^n - 1)/(m - 1) (m = 1+p, s^2 = p(1-p)); 4-sigma bound."""
    shape = (600, 600)
    ys, xs = np.meshgrid(np.arange(10, 600, 19), np.arange(10, 600, 19), indexing="ij")
    sites = (ys * 600 + xs).ravel()
    kind, state = lattice(shape, sites)
    grid = Grid(shape, 20.0, "moore")
    rules = TumorRules(TumorConfig(doubling_time_h=24.0), grid, seed=4, dt_min=DT)
    o2 = np.full(grid.n_sites, 38.0, dtype=np.float32)
    n = 480  # two days
    blocked = 0
    for step in range(n):
        c = rules.apply(kind, state, o2, step)
        blocked += c.blocked + c.lost_conflicts
    N0, N = len(sites), int((kind == codes.TUMOR).sum())
    p = math.expm1(math.log(2) / (24 * 60) * DT)
    m = 1 + p
    mean = N0 * m**n
    var = N0 * p * (1 - p) * m ** (n - 1) * (m**n - 1) / (m - 1)
    assert abs(N - mean) < 4 * math.sqrt(var), (N, mean, math.sqrt(var))
    assert blocked < 0.01 * (N - N0)  # the clones stayed small and apart: "free" growth
    assert mean == pytest.approx(N0 * 2 ** (n * DT / 60 / 24), rel=1e-12)
    # the doubling time estimated from the run is 24 h within its sampling error (4 sigma)
    t_d = math.log(2) * n * DT / 60 / math.log(N / N0)
    assert abs(t_d - 24.0) < 24.0 * 4 * math.sqrt(var) / mean / math.log(mean / N0)


@pytest.mark.parametrize("o2,fraction_of_max", [(2.0, 1.0), (3.75, 0.5), (5.0, 0.0)])
def test_necrosis_is_first_order_at_its_rate(o2, fraction_of_max):
    """Well-mixed: with oxygen fixed, each cell survives n steps with probability exp(-k n dt),
    k = max rate x (5 - o2)/(5 - 2.5) clipped to [0, 1]; binomial 5-sigma bound."""
    shape = (200, 200)
    kind, state = lattice(shape, range(200 * 200))
    grid = Grid(shape, 20.0)
    p = TumorConfig()
    rules = TumorRules(p, grid, seed=9, dt_min=DT)
    oxygen = np.full(grid.n_sites, o2, dtype=np.float32)
    n = 20
    for step in range(n):
        rules.apply(kind, state, oxygen, step)
    k = p.necrosis_max_rate_per_h / 60 * fraction_of_max
    expect = math.exp(-k * n * DT)
    N0 = grid.n_sites
    alive = (kind == codes.TUMOR).sum()
    assert abs(alive / N0 - expect) <= 5 * math.sqrt(expect * (1 - expect) / N0) + 1e-12
    assert alive + (kind == codes.NECROTIC).sum() + (kind == codes.EMPTY).sum() == N0
    assert np.all(state[kind != codes.TUMOR] == codes.NONE)


def test_clearance_is_first_order():
    shape = (150, 150)
    kind, state = lattice(shape, range(150 * 150), kind=codes.NECROTIC)
    grid = Grid(shape, 20.0)
    p = TumorConfig(necrotic_clearance_per_h=0.5)
    rules = TumorRules(p, grid, seed=2, dt_min=DT)
    o2 = np.zeros(grid.n_sites, dtype=np.float32)
    n = 15
    for step in range(n):
        rules.apply(kind, state, o2, step)
    expect = math.exp(-0.5 / 60 * n * DT)
    left = (kind == codes.NECROTIC).mean()
    assert abs(left - expect) <= 5 * math.sqrt(expect * (1 - expect) / grid.n_sites)


def test_no_division_at_or_below_proliferation_threshold():
    shape = (60, 60)
    kind, state = lattice(shape, range(0, 3600, 7))
    grid = Grid(shape, 20.0)
    rules = TumorRules(TumorConfig(doubling_time_h=0.5), grid, seed=1, dt_min=DT)
    o2 = np.full(grid.n_sites, 5.0, dtype=np.float32)  # the threshold itself, above necrosis
    before = kind.copy()
    for step in range(50):
        c = rules.apply(kind, state, o2, step)
        assert c.divisions == 0
    np.testing.assert_array_equal(kind, before)


@pytest.mark.parametrize(
    "shape,hood",
    [
        ((40, 40), "moore"),
        ((40, 40), "von_neumann"),
        ((12, 14, 16), "moore"),
        ((12, 14, 16), "von_neumann"),
    ],
)
def test_daughters_go_to_distinct_empty_neighbours(shape, hood):
    """On a crowded lattice with fast division: every daughter lands on a voxel that was empty, is
    a neighbour of its mother in the chosen neighbourhood, and no voxel receives two cells."""
    grid = Grid(shape, 20.0, hood)
    n = grid.n_sites
    u = rng.uniform_range(77, 0, 99, n)
    kind, state = lattice(shape, np.flatnonzero(u < 0.4))
    kind[(u > 0.95)] = codes.VESSEL
    rules = TumorRules(TumorConfig(doubling_time_h=1.0), grid, seed=5, dt_min=DT)
    o2 = np.full(n, 38.0, dtype=np.float32)
    for step in range(15):
        before = kind.copy()
        c = rules.apply(kind, state, o2, step)
        src, tgt = rules.last_division
        assert len(np.unique(tgt)) == len(tgt) == c.divisions
        assert np.all(before[tgt] == codes.EMPTY)
        assert np.all(before[src] == codes.TUMOR)
        d = np.abs(grid.coords(src) - grid.coords(tgt))
        if hood == "moore":
            assert np.all(d.max(axis=1) == 1)
        else:
            assert np.all(d.sum(axis=1) == 1)
        # tumor voxels only ever gain cells here (no necrosis at 38 mmHg); vessels never change
        assert np.all(kind[before == codes.TUMOR] == codes.TUMOR)
        assert np.array_equal(kind == codes.VESSEL, before == codes.VESSEL)
        assert (kind == codes.TUMOR).sum() == (before == codes.TUMOR).sum() + c.divisions


def test_contact_inhibition_full_lattice_never_divides():
    shape = (30, 30)
    kind, state = lattice(shape, range(900))
    grid = Grid(shape, 20.0)
    rules = TumorRules(TumorConfig(doubling_time_h=1.0), grid, seed=3, dt_min=DT)
    o2 = np.full(900, 38.0, dtype=np.float32)
    blocked = 0
    for step in range(10):
        c = rules.apply(kind, state, o2, step)
        assert c.divisions == 0
        blocked += c.blocked
    assert blocked > 0 and (kind == codes.TUMOR).all()


def test_conflicts_go_to_the_larger_key_and_are_fair():
    """Two cells whose only empty neighbour is the same voxel (a 1 x 3 row, von Neumann) and that
    both divide every step: exactly one daughter, from the cell with the larger key
    ((low 32 bits of its DIRECTION word) << 32 | site); each wins half the time (binomial)."""
    grid = Grid((1, 3), 20.0, "von_neumann")
    rules = TumorRules(TumorConfig(doubling_time_h=1e-4), grid, seed=8, dt_min=DT)
    o2 = np.full(3, 38.0, dtype=np.float32)
    wins_left = 0
    trials = 2000
    for step in range(trials):
        kind, state = lattice((1, 3), [0, 2])
        c = rules.apply(kind, state, o2, step)
        assert c.divisions == 1 and c.lost_conflicts == 1 and kind[1] == codes.TUMOR
        words = rng.raw_at(8, step, rng.DIRECTION, np.array([0, 2]))
        keys = ((words & np.uint64(0xFFFFFFFF)) << np.uint64(32)) | np.array([0, 2], np.uint64)
        winner = int(rules.last_division[0][0])
        assert winner == [0, 2][int(np.argmax(keys))]
        wins_left += winner == 0
    assert abs(wins_left - trials / 2) < 4 * math.sqrt(trials / 4)


@pytest.mark.parametrize("hood,k", [("moore", 8), ("von_neumann", 4)])
def test_target_choice_is_uniform_over_empty_neighbours(hood, k):
    grid = Grid((5, 5), 20.0, hood)
    rules = TumorRules(TumorConfig(doubling_time_h=1e-4), grid, seed=21, dt_min=DT)
    o2 = np.full(25, 38.0, dtype=np.float32)
    counts = {}
    for step in range(4000):
        kind, state = lattice((5, 5), [12])
        rules.apply(kind, state, o2, step)
        t = int(rules.last_division[1][0])
        counts[t] = counts.get(t, 0) + 1
    assert len(counts) == k
    assert stats.chisquare(list(counts.values())).pvalue > 1e-4


def test_rules_are_a_function_of_state_and_seed():
    """Same state, seed and step: identical result; another seed: a different one."""
    shape = (64, 64)
    grid = Grid(shape, 20.0)
    u = rng.uniform_range(5, 0, 99, grid.n_sites)
    k0, s0 = lattice(shape, np.flatnonzero(u < 0.5))
    o2 = (u * 40).astype(np.float32)
    out = []
    for seed in (1, 1, 2):
        k, s = k0.copy(), s0.copy()
        rules = TumorRules(TumorConfig(doubling_time_h=2.0), grid, seed=seed, dt_min=DT)
        for step in range(5):
            rules.apply(k, s, o2, step)
        out.append(k)
    assert np.array_equal(out[0], out[1])
    assert not np.array_equal(out[0], out[2])
