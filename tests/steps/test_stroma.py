"""Stromal rules (tmesim.steps.stroma) against their rates, each rule in isolation: CAF and TAM
random walks, one cell per voxel, TAM chemotaxis up a signal, TAM death and recruitment at
vessels. Counts are compared with exact binomial tails (tests/helpers.py assert_binomial)."""

import math

import numpy as np
import pytest
from scipy import stats

from tmesim import codes, rng
from tmesim.grid import Grid
from tmesim.scenario import CafConfig, TamConfig
from tmesim.steps.stroma import StromaRules

from ..helpers import assert_binomial, sparse_cells

DT = 6.0


def stroma(caf=None, tam=None, shape=(60, 60), seed=50, hood="moore"):
    caf = caf or CafConfig(motility_per_h=0.0)
    tam = tam or TamConfig(
        motility_per_h=0.0, death_per_h=0.0, recruitment_per_h=0.0, recruitment_signal_gain=0.0
    )
    grid = Grid(shape, 20.0, hood)
    return grid, StromaRules(caf, tam, grid, seed, DT)


def single_moves(grid, rules, code, sites, trials, signal=None):
    """Step a fresh lattice (stromal cells of ``code`` at ``sites``, disjoint neighbourhoods)
    once at steps 0..trials-1; returns the displacements (dy, dx) of the cells that moved and the
    number of cell-steps. Checks that each mover went to a neighbour that was empty."""
    disp = []
    for step in range(trials):
        kind = np.zeros(grid.n_sites, np.uint8)
        kind[sites] = code
        before = kind.copy()
        c = rules.apply(kind, signal, step)
        new = np.flatnonzero((kind == code) & (before != code))
        gone = np.flatnonzero((kind != code) & (before == code))
        assert np.all(before[new] == codes.EMPTY) and np.all(kind[gone] == codes.EMPTY)
        assert (kind == code).sum() == sites.size and c.lost_conflicts == 0
        moved = c.caf_moves if code == codes.CAF else c.tam_moves
        assert new.size == gone.size == moved
        nc, gc = grid.coords(new), grid.coords(gone)
        # neighbourhoods are disjoint: pair each new voxel with the vacated one next to it
        for y, x in nc:
            d = gc - (y, x)
            j = np.flatnonzero(np.abs(d).max(axis=1) == 1)
            assert j.size == 1
            disp.append(-d[j[0]])
    return np.array(disp).reshape(-1, 2), sites.size * trials


def test_caf_random_walk_rate_and_uniform_direction():
    """A CAF steps with probability 1 - exp(-motility dt) per step (motility 2 /h: 0.181) into a
    uniformly chosen empty neighbour: over 400 isolated CAFs x 30 steps the number of moves is
    binomial, each of the 8 Moore directions is equally likely (chi-square p > 1e-4), and CAFs
    only ever move into empty neighbours, one per voxel, their number conserved."""
    grid, rules = stroma(caf=CafConfig(motility_per_h=2.0))
    sites = sparse_cells(grid.shape, 3)
    disp, trials = single_moves(grid, rules, codes.CAF, sites, 30)
    assert_binomial(len(disp), trials, -math.expm1(-2.0 / 60 * DT), "moves")
    keys, counts = np.unique(disp[:, 0] * 3 + disp[:, 1], return_counts=True)
    assert len(keys) == 8 and stats.chisquare(counts).pvalue > 1e-4


def test_stroma_moves_keep_one_cell_per_voxel_and_conserve_counts():
    """Crowded lattice (tumor 30 %, vessels 5 %, CAFs 15 %, TAMs 10 %), fast motility, no TAM
    death or recruitment, 30 steps: CAF and TAM counts are conserved, tumor and vessel voxels
    never change, every voxel that gains a stromal cell was empty, and conflicts happen (the
    crowding tests their resolution). Then with death and recruitment on, the counts change by
    exactly what StromaCounts reports."""
    grid = Grid((50, 50), 20.0)
    u = rng.uniform_range(9, 0, 99, grid.n_sites)
    kind0 = np.select(
        [u < 0.3, u < 0.35, u < 0.5, u < 0.6],
        [codes.TUMOR, codes.VESSEL, codes.CAF, codes.TAM],
        codes.EMPTY,
    )
    kind0 = kind0.astype(np.uint8)
    signal = (u * 3).astype(np.float32)
    for tam in (
        TamConfig(
            motility_per_h=5.0, death_per_h=0.0, recruitment_per_h=0.0, recruitment_signal_gain=0.0
        ),
        TamConfig(
            motility_per_h=5.0, death_per_h=0.5, recruitment_per_h=0.5, recruitment_signal_gain=1.0
        ),
    ):
        rules = StromaRules(CafConfig(motility_per_h=5.0), tam, grid, 51, DT)
        kind = kind0.copy()
        conflicts = 0
        for step in range(30):
            before = kind.copy()
            c = rules.apply(kind, signal, step)
            conflicts += c.lost_conflicts
            fixed = (before == codes.TUMOR) | (before == codes.VESSEL)
            np.testing.assert_array_equal(kind[fixed], before[fixed])
            gained = (kind != before) & ((kind == codes.CAF) | (kind == codes.TAM))
            assert np.all(before[gained] == codes.EMPTY)
            assert (kind == codes.CAF).sum() == (before == codes.CAF).sum()
            assert (kind == codes.TAM).sum() == (
                before == codes.TAM
            ).sum() + c.tam_recruited - c.tam_died
            assert c.caf_moves == (gained & (kind == codes.CAF)).sum()
            assert c.tam_moves + c.tam_recruited == (gained & (kind == codes.TAM)).sum()
        assert conflicts > 0


@pytest.mark.parametrize("chemotaxis", [0.0, 0.7])
def test_tam_chemotaxis_up_a_linear_gradient(chemotaxis):
    """Signal = x (a linear gradient along x). A moving TAM follows the signal with probability
    c (to an x + 1 neighbour: dx = +1), else steps to a uniform neighbour (dx = +1 or -1 with
    probability 3/8 each, 0 with 2/8). So per move P(dx = 1) = c + (1 - c) 3/8 = p_up, P(dx = -1)
    = (1 - c) 3/8 = p_down, mean dx = c, variance p_up + p_down - c^2: the mean is checked within
    5 standard errors (c = 0: no drift) and the count of dx = +1 with its binomial bound. Moves
    happen with probability 1 - exp(-motility dt) (binomial)."""
    tam = TamConfig(
        motility_per_h=3.0,
        chemotaxis=chemotaxis,
        death_per_h=0.0,
        recruitment_per_h=0.0,
        recruitment_signal_gain=0.0,
    )
    grid, rules = stroma(tam=tam)
    signal = np.tile(np.arange(grid.shape[1], dtype=np.float32), grid.shape[0])
    sites = sparse_cells(grid.shape, 3)
    disp, trials = single_moves(grid, rules, codes.TAM, sites, 40, signal)
    assert_binomial(len(disp), trials, -math.expm1(-3.0 / 60 * DT), "moves")
    c = chemotaxis
    p_up, p_down = c + (1 - c) * 3 / 8, (1 - c) * 3 / 8
    mean, var = p_up - p_down, p_up + p_down - (p_up - p_down) ** 2
    dx = disp[:, 1]
    assert abs(dx.mean() - mean) < 5 * math.sqrt(var / dx.size), (dx.mean(), mean)
    assert_binomial((dx == 1).sum(), dx.size, p_up, "up")


def test_tam_chemotaxis_has_no_drift_across_the_gradient():
    """In a linear gradient along x the three x + 1 neighbours have equal signal; an unbiased
    rule would pick among them uniformly, so the mean displacement across the gradient (dy) is 0
    (5 standard errors). A first-in-neighbour-order tie-break (an earlier version) sent every
    chemotactic step to (dy, dx) = (-1, +1): mean dy = -c (-0.7 here)."""
    tam = TamConfig(
        motility_per_h=3.0,
        chemotaxis=0.7,
        death_per_h=0.0,
        recruitment_per_h=0.0,
        recruitment_signal_gain=0.0,
    )
    grid, rules = stroma(tam=tam)
    signal = np.tile(np.arange(grid.shape[1], dtype=np.float32), grid.shape[0])
    disp, _ = single_moves(grid, rules, codes.TAM, sparse_cells(grid.shape, 3), 40, signal)
    dy = disp[:, 0]
    # random steps: dy = +1 or -1 with 3/8 each; chemotactic ones, unbiased: +-1 or 0 with 1/3
    var = 0.7 * 2 / 3 + 0.3 * 6 / 8
    assert abs(dy.mean()) < 5 * math.sqrt(var / dy.size), dy.mean()


def test_tam_death_is_first_order():
    """TAMs (motionless, no recruitment) die at 0.6 /h: after 10 steps each survives with
    probability exp(-0.6 h^-1 x 1 h); binomial bound; dead TAMs leave empty voxels."""
    tam = TamConfig(
        motility_per_h=0.0, death_per_h=0.6, recruitment_per_h=0.0, recruitment_signal_gain=0.0
    )
    grid, rules = stroma(tam=tam, shape=(50, 50))
    kind = np.full(grid.n_sites, codes.TAM, np.uint8)
    died = sum(rules.apply(kind, None, step).tam_died for step in range(10))
    alive = (kind == codes.TAM).sum()
    assert alive + died == grid.n_sites and np.all(kind[kind != codes.TAM] == codes.EMPTY)
    assert_binomial(alive, grid.n_sites, math.exp(-0.6), "survivors")


@pytest.mark.parametrize("with_signal", [True, False])
def test_tam_recruitment_at_vessels(with_signal):
    """Each vessel voxel recruits a TAM into an empty neighbour with probability 1 - exp(-k dt),
    k = recruitment + gain s / (s + half_max) = 0.5 + 1.5 x 2/3 = 1.5 /h at s = 2 (without a
    signal field: 0.5 /h). Isolated vessels (disjoint neighbourhoods), 30 single steps:
    binomial; each new TAM sits next to a vessel; vessels stay."""
    tam = TamConfig(
        motility_per_h=0.0,
        death_per_h=0.0,
        recruitment_per_h=0.5,
        recruitment_signal_gain=1.5,
        signal_half_max=1.0,
    )
    grid, rules = stroma(tam=tam)
    vessels = sparse_cells(grid.shape, 3)
    signal = np.full(grid.n_sites, 2.0, np.float32) if with_signal else None
    recruited = 0
    for step in range(30):
        kind = np.zeros(grid.n_sites, np.uint8)
        kind[vessels] = codes.VESSEL
        c = rules.apply(kind, signal, step)
        new = np.flatnonzero(kind == codes.TAM)
        assert new.size == c.tam_recruited and c.lost_conflicts == 0
        assert np.all(kind[vessels] == codes.VESSEL)
        nbr, inside = grid.neighbours(new)
        assert np.all(((kind[nbr] == codes.VESSEL) & inside).sum(axis=1) == 1)
        recruited += new.size
    k = 0.5 + (1.5 * 2 / 3 if with_signal else 0.0)
    assert_binomial(recruited, vessels.size * 30, -math.expm1(-k / 60 * DT), "recruited")
