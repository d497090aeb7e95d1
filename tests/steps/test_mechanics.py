"""The push rule (tmesim.steps.mechanics) in isolation, against independent expectations.

* the distance field equals Dijkstra's shortest paths (scipy.sparse.csgraph) on the lattice graph
  of pushable voxels with the chamfer weights, wherever it is within the reach, and is INF
  elsewhere; the numpy windows give the same values at every voxel a walk can read;
* a push conserves every cell: each cell is found once afterwards (the mother twice: herself
  and her daughter), each at its old voxel or one neighbour on, vessels and non-pushable kinds
  never move, and the daughter lands next to her mother;
* a cell divides by pushing if and only if free space lies within the reach, on a strip whose
  distances are known exactly;
* ties are broken uniformly (chi-square) and the claims leave every voxel to one path;
* with a reach of 0 TumorRules is the contact-inhibited rule (no push drawn or made).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import sparse, stats
from scipy.sparse.csgraph import dijkstra

from tmesim import codes
from tmesim.grid import Grid
from tmesim.scenario import MechanicsConfig, TransitionConfig, TumorConfig
from tmesim.steps import mechanics
from tmesim.steps.mechanics import INF, Pushing
from tmesim.steps.tumor import TumorRules

SHAPES = [
    ((23, 19), "moore"),
    ((21, 17), "von_neumann"),
    ((9, 8, 10), "moore"),
    ((8, 9, 7), "von_neumann"),
]


def random_kinds(g, n, p_empty=0.12, p_necrotic=0.1, p_vessel=0.03, p_caf=0.03, p_tam=0.02):
    u = g.random(n)
    kind = np.full(n, codes.TUMOR, dtype=np.uint8)
    edges = np.cumsum([p_empty, p_necrotic, p_vessel, p_caf, p_tam])
    for code, lo, hi in zip(
        (codes.EMPTY, codes.NECROTIC, codes.VESSEL, codes.CAF, codes.TAM),
        np.r_[0, edges[:-1]],
        edges,
    ):
        kind[(u >= lo) & (u < hi)] = code
    return kind


def dijkstra_distance(kind, grid, pushable):
    """Chamfer shortest-path length (tenths of dx) from each voxel to the nearest empty one,
    moving through pushable voxels only (the empty voxel is the end of the path)."""
    n = grid.n_sites
    sites = np.arange(n)
    nbr, inside = grid.neighbours(sites)
    w = mechanics.step_weights(grid.offsets)
    can = np.isin(kind, [mechanics.PUSHABLE_KINDS[k] for k in pushable])
    # an edge u -> v of weight w(u, v) where u is pushable and v is pushable or empty; reversed,
    # Dijkstra from a super-source joined to every empty voxel gives each voxel's distance
    src, dst, wt = [], [], []
    for j in range(nbr.shape[1]):
        ok = inside[:, j] & can & (can[nbr[:, j]] | (kind[nbr[:, j]] == codes.EMPTY))
        src.append(nbr[ok, j])
        dst.append(sites[ok])
        wt.append(np.full(ok.sum(), w[j]))
    empty = np.flatnonzero(kind == codes.EMPTY)
    src.append(np.full(empty.size, n))
    dst.append(empty)
    wt.append(np.full(empty.size, 1e-9))  # the super-source: zero length, kept as an edge
    a = sparse.csr_matrix(
        (np.concatenate(wt), (np.concatenate(src), np.concatenate(dst))), shape=(n + 1, n + 1)
    )
    d = dijkstra(a, indices=n)[:n]
    return np.where(np.isfinite(d), np.round(d), np.inf)


@pytest.mark.parametrize("shape,neighbourhood", SHAPES)
@pytest.mark.parametrize("reach_um", [20.0, 45.0, 60.0, 100.0])
def test_distance_is_the_shortest_path_within_reach(shape, neighbourhood, reach_um):
    g = np.random.default_rng(7)
    grid = Grid(shape, 20.0, neighbourhood)
    kind = random_kinds(g, grid.n_sites, p_empty=0.04)
    push = Pushing(reach_um, ("tumor", "necrotic", "caf"), grid, seed=1)
    want = dijkstra_distance(kind, grid, ("tumor", "necrotic", "caf"))
    want = np.where(want <= push.cap, want, INF)
    got = push.distance(kind)
    np.testing.assert_array_equal(got, want.astype(np.uint16))
    assert (got[kind == codes.EMPTY] == 0).all()
    assert (got[(kind == codes.VESSEL) | (kind == codes.TAM)] == INF).all()
    assert ((got > 0) & (got < INF)).sum() > 10  # the test saw finite distances


@pytest.mark.parametrize("shape,neighbourhood", SHAPES)
def test_windows_agree_with_the_whole_field_where_walks_read(shape, neighbourhood):
    """The numpy economy (a window of radius passes + 1 around each source) reads the values of
    the whole-lattice field at every voxel within passes + 1 of its source."""
    g = np.random.default_rng(3)
    grid = Grid(shape, 20.0, neighbourhood)
    kind = random_kinds(g, grid.n_sites, p_empty=0.05)
    push = Pushing(60.0, ("tumor", "necrotic"), grid, seed=1)
    full = push.distance(kind).reshape(shape)
    sources = np.flatnonzero(kind == codes.TUMOR)[::3]
    win = push.windows(kind, sources)
    r = push.passes + 1
    c = grid.coords(sources)
    for i, s in enumerate(sources):
        for local in np.ndindex(win.shape[1:]):
            at = c[i] + np.array(local) - r
            if (at < 0).any() or (at >= np.array(shape)).any():
                assert win[(i,) + local] == INF
                continue
            cheb = np.abs(np.array(local) - r).max()
            true = full[tuple(at)]
            # exact within passes of the source's neighbours; never below the true value
            assert win[(i,) + local] >= true
            if cheb <= 1 or (true < INF and cheb + true // mechanics.UNIT <= r):
                assert win[(i,) + local] == true, (s, local)


def push_once(kind, grid, reach_um, pushable=("tumor", "necrotic"), seed=5, step=3, sources=None):
    """Run Pushing.apply with every tumor cell that has no empty neighbour as a mother (or the
    given sources); cells are tagged by a unique memory value."""
    n = grid.n_sites
    tumor_state = np.where(kind == codes.TUMOR, codes.SENSITIVE, codes.NONE).astype(np.uint8)
    memory = np.arange(1, n + 1, dtype=np.float32)  # a tag per voxel's occupant
    time_in_P = np.zeros(n, dtype=np.float32)
    if sources is None:
        cells = np.flatnonzero(kind == codes.TUMOR)
        nbr, inside = grid.neighbours(cells)
        sources = cells[~(inside & (kind[nbr] == codes.EMPTY)).any(axis=1)]
    push = Pushing(reach_um, pushable, grid, seed)
    claims = np.zeros(n, dtype=np.uint64)
    before = kind.copy(), memory.copy()
    counts, mothers, daughters = push.apply(
        kind, tumor_state, memory, time_in_P, np.sort(sources), step, claims
    )
    assert not claims.any()  # claims left at 0
    return before, (kind, memory), counts, mothers, daughters, push


@pytest.mark.parametrize("shape,neighbourhood", SHAPES)
@pytest.mark.parametrize("pushable", [("tumor", "necrotic"), ("tumor", "necrotic", "caf", "tam")])
def test_push_conserves_cells_and_moves_each_one_voxel(shape, neighbourhood, pushable):
    g = np.random.default_rng(11)
    grid = Grid(shape, 20.0, neighbourhood)
    kind = random_kinds(g, grid.n_sites, p_empty=0.06)
    (k0, tag0), (k1, tag1), c, mothers, daughters, _ = push_once(kind, grid, 60.0, pushable)
    assert c.pushes > 3 and c.displaced > 3  # the test saw pushes
    # kinds: tumor + one per push, every other kind conserved
    n0 = np.bincount(k0, minlength=6)
    n1 = np.bincount(k1, minlength=6)
    expect = n0.copy()
    expect[codes.TUMOR] += c.pushes
    expect[codes.EMPTY] -= c.pushes
    np.testing.assert_array_equal(n1, expect)
    # vessels and non-pushable kinds stay where they were
    fixed = ~np.isin(k0, [codes.EMPTY] + [mechanics.PUSHABLE_KINDS[p] for p in pushable])
    np.testing.assert_array_equal(k1[fixed], k0[fixed])
    np.testing.assert_array_equal(tag1[fixed], tag0[fixed])
    # every occupied voxel's tag: each old occupant once (mothers twice), one voxel at most away
    occupied0 = k0 != codes.EMPTY
    occupied1 = k1 != codes.EMPTY
    tags, where = tag1[occupied1], np.flatnonzero(occupied1)
    uniq, cnt = np.unique(tags, return_counts=True)
    np.testing.assert_array_equal(np.sort(uniq), np.sort(tag0[occupied0]))
    np.testing.assert_array_equal(np.sort(uniq[cnt == 2]), np.sort(tag0[mothers]))
    assert (cnt <= 2).all()
    old_site = (tags - 1).astype(np.int64)  # tag t was at site t - 1
    step = np.abs(grid.coords(where) - grid.coords(old_site)).max(axis=1)
    assert step.max() <= 1
    if neighbourhood == "von_neumann":
        assert (np.abs(grid.coords(where) - grid.coords(old_site)).sum(axis=1) <= 1).all()
    # the kinds moved with their cells
    np.testing.assert_array_equal(k1[where], k0[old_site])
    # daughters: next to their mothers, copies of them
    d = np.abs(grid.coords(daughters) - grid.coords(mothers))
    assert (d.max(axis=1) == 1).all()
    np.testing.assert_array_equal(tag1[daughters], tag0[mothers])
    np.testing.assert_array_equal(tag1[mothers], tag0[mothers])


@pytest.mark.parametrize("neighbourhood", ["moore", "von_neumann"])
@pytest.mark.parametrize("reach_um", [0.0, 20.0, 40.0, 60.0, 70.0, 100.0])
def test_divides_iff_free_space_within_reach(neighbourhood, reach_um):
    """A tumor slab filling x < X of a strip, free space beyond: a mother at x reaches it in
    X - x axis steps (a diagonal step costs more), so she pushes iff the X - x - 1 cells in the
    way span at most the reach, (X - x - 1) dx <= reach (to a tenth of dx); exactly those move."""
    ny, nx, X = 7, 16, 12
    grid = Grid((ny, nx), 20.0, neighbourhood)
    kind = np.zeros(ny * nx, dtype=np.uint8)
    kg = kind.reshape(ny, nx)
    kg[:, :X] = codes.TUMOR
    kg[0, :] = kg[-1, :] = codes.VESSEL  # walls: no free space above or below
    delta = int(np.floor(round(10 * reach_um / 20.0) / 10))  # cells a straight push may move
    for x in range(1, X - 1):
        k = kind.copy()
        s = np.array([3 * nx + x])
        _, (k1, _), c, _mothers, _daughters, _ = push_once(k, grid, reach_um, sources=s)
        if X - x <= delta + 1:
            assert c.pushes == 1 and c.far == 0, x
            assert c.displaced == X - x - 1
            assert (k1.reshape(ny, nx)[:, X] == codes.TUMOR).sum() == 1  # the front moved
        else:
            assert c.pushes == 0 and c.far == 1, x
            np.testing.assert_array_equal(k1, kind)


def test_ties_are_broken_uniformly():
    """A mother in the middle of a plus-shaped block with free space two steps away in each of
    the four axis directions: the first hop goes to each of the four axis neighbours alike
    (diagonal routes are longer). Chi-square over 4000 (step, seed) draws."""
    grid = Grid((9, 9), 20.0, "moore")
    kind = np.full(81, codes.VESSEL, dtype=np.uint8)
    kg = kind.reshape(9, 9)
    kg[4, 2:7] = codes.TUMOR
    kg[2:7, 4] = codes.TUMOR
    kg[4, 1] = kg[4, 7] = kg[1, 4] = kg[7, 4] = codes.EMPTY
    mother = np.array([4 * 9 + 4])
    push = Pushing(40.0, ("tumor",), grid, seed=0)
    firsts = []
    for seed in range(4):
        push.seed = seed
        win = push.windows(kind, mother)
        for step in range(1000):
            movers, path, _far = push.paths(mother, win, step)
            assert movers.size == 1 and path.shape[1] == 4  # mother, n1, n2, the empty voxel
            firsts.append(int(path[0, 1]))
    counts = np.unique(firsts, return_counts=True)[1]
    assert len(counts) == 4
    assert stats.chisquare(counts).pvalue > 1e-4


def test_competing_paths_leave_each_voxel_to_one():
    """Two mothers whose only route is through the same cell: one wins, one loses."""
    grid = Grid((5, 7), 20.0, "von_neumann")
    kind = np.full(35, codes.VESSEL, dtype=np.uint8)
    kg = kind.reshape(5, 7)
    kg[2, 1:4] = codes.TUMOR  # mothers at (2,1) and (2,3) share (2,2)
    kg[1, 2] = codes.TUMOR
    kg[0, 2] = codes.EMPTY
    sources = np.array([2 * 7 + 1, 2 * 7 + 3])
    for step in range(20):
        k = kind.copy()
        _, (k1, _), c, _mothers, _, _ = push_once(
            k, grid, 60.0, ("tumor",), step=step, sources=sources
        )
        assert c.pushes == 1 and c.lost == 1
        assert (k1 == codes.TUMOR).sum() == (kind == codes.TUMOR).sum() + 1


def test_reach_zero_is_contact_inhibition():
    """With a reach of 0, or one under 0.95 of a voxel edge (no cell fits), the rule is off and
    nothing is pushed: the same lattice either way; a 60 um reach pushes and grows more."""
    grid = Grid((40, 40), 20.0, "moore")
    base = TumorConfig(
        transitions=TransitionConfig(pre_existing=False, drug_induced=False),
        doubling_time_h=1.0,
    )
    yy, xx = np.mgrid[:40, :40]
    kind0 = np.where(np.hypot(yy - 20, xx - 20) < 8, codes.TUMOR, codes.EMPTY).astype(np.uint8)
    kind0 = kind0.reshape(-1)
    o2 = np.full(grid.n_sites, 38.0, dtype=np.float32)
    runs = []
    for reach in (0.0, 9.0, 60.0):
        cfg = dataclasses.replace(base, mechanics=MechanicsConfig(push_reach_um=reach))
        rules = TumorRules(cfg, grid, seed=4, dt_min=6.0)
        kind = kind0.copy()
        ts = np.where(kind == codes.TUMOR, codes.SENSITIVE, 0).astype(np.uint8)
        pushes = 0
        for step in range(10):
            pushes += rules.apply(kind, ts, o2, step).pushes
        runs.append((kind, pushes, rules.pushing.on))
    assert runs[0][1] == runs[1][1] == 0 and not runs[0][2] and not runs[1][2]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[2][1] > 0
    assert (runs[2][0] == codes.TUMOR).sum() > (runs[0][0] == codes.TUMOR).sum()


def test_windows_in_chunks_change_nothing(monkeypatch):
    """The numpy rule's windows come in chunks of WINDOW_BUDGET distances: any chunk size gives
    the same lattice and counts."""
    g = np.random.default_rng(1)
    grid = Grid((12, 13, 11), 20.0, "moore")
    kind0 = np.where(g.random(grid.n_sites) < 0.06, codes.EMPTY, codes.TUMOR).astype(np.uint8)
    runs = []
    for budget in (mechanics.WINDOW_BUDGET, 3000):
        monkeypatch.setattr(mechanics, "WINDOW_BUDGET", budget)
        _, (k1, tag1), c, mothers, daughters, _ = push_once(kind0.copy(), grid, 60.0, seed=3)
        runs.append((k1, tag1, c, mothers, daughters))
    assert runs[0][2].pushes > 10
    for i in (0, 1, 3, 4):  # lattice, tags, mothers, daughters
        np.testing.assert_array_equal(runs[0][i], runs[1][i])
    assert runs[0][2] == runs[1][2]
