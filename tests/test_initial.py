"""Initial conditions (tmesim.initial): tumor shapes and vessel placements produce the geometry they
describe; initial persister and resistant fractions and stromal placements follow their rates."""

import math

import numpy as np
from scipy import ndimage

from tmesim import codes, rng
from tmesim.grid import Grid
from tmesim.initial import initial_state, stroma_region

from .helpers import DEFAULTS, assert_binomial, make_scenario

P, R = codes.PERSISTER, codes.RESISTANT


def _init(*sets):
    """The scenario of ``sets`` (every other value its default), its grid and initial state."""
    sc = make_scenario(*sets, base=DEFAULTS)
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    return sc, grid, initial_state(sc, grid)


def state_of(*sets):
    sc, _, st = _init(*sets)
    return sc, st


def test_disk_area_and_sphere_volume():
    _, st = state_of("grid.shape=[200,200]", "grid.dx_um=10", "init.tumor.radius_um=500")
    n = (st.kind == codes.TUMOR).sum()
    assert abs(n - math.pi * 50**2) < 2 * math.pi * 50  # within one ring of voxels
    _, st = state_of("grid.shape=[60,60,60]", "init.tumor.shape=sphere", "init.tumor.radius_um=400")
    n = (st.kind == codes.TUMOR).sum()
    assert abs(n - 4 / 3 * math.pi * 20**3) < 4 * math.pi * 20**2
    assert np.all(st.tumor_state[st.kind == codes.TUMOR] == codes.SENSITIVE)
    assert np.all(st.tumor_state[st.kind != codes.TUMOR] == codes.NONE)


def test_rectangle_and_fill_fraction():
    _sc, st = state_of(
        "grid.shape=[100,100]",
        "grid.dx_um=20",
        "init.tumor.shape=rectangle",
        "init.tumor.size_um=[400,800]",
        "init.tumor.center_um=[1000,1000]",
    )
    k = st.kind.reshape(100, 100) == codes.TUMOR
    rows, cols = np.flatnonzero(k.any(1)), np.flatnonzero(k.any(0))
    assert len(rows) == 20 and len(cols) == 40 and k.sum() == 800
    _, st = state_of(
        "run.seed=3",
        "grid.shape=[300,300]",
        "init.tumor.radius_um=2500",
        "init.tumor.fill_fraction=0.3",
    )
    _, full = state_of("grid.shape=[300,300]", "init.tumor.radius_um=2500")
    N = (full.kind == codes.TUMOR).sum()
    n = (st.kind == codes.TUMOR).sum()
    assert abs(n - 0.3 * N) < 5 * math.sqrt(N * 0.3 * 0.7)


def test_vessels_random_lines_and_outside_tumor():
    _sc, st = state_of(
        "grid.shape=[200,200]",
        "init.tumor.radius_um=1000",
        "init.vessels.placement=random",
        "init.vessels.density=0.02",
    )
    v = st.kind == codes.VESSEL
    tumor_region = np.hypot(*np.indices((200, 200)) - 99.5).ravel() * 20 <= 1000
    assert not v[tumor_region].any()
    outside = (~tumor_region).sum()
    assert abs(v.sum() - 0.02 * outside) < 5 * math.sqrt(outside * 0.02)
    ox = st.fields[0]
    assert np.all(ox[v] == 38.0)
    _, st = state_of(
        "grid.shape=[20,40,40]",
        "init.tumor.shape=none",
        "init.vessels.placement=lines",
        "init.vessels.axis=z",
        "init.vessels.spacing_um=200",
    )
    v = (st.kind == codes.VESSEL).reshape(20, 40, 40)
    assert np.all(v == v[:1])  # straight along z
    ys, xs = np.nonzero(v[0])
    assert len(set(np.diff(np.unique(ys)))) == 1 and np.unique(np.diff(np.unique(xs))) == [10]


def test_initial_persister_and_resistant_fractions():
    """Each initial tumor cell is P with probability persister_fraction (0.1) and R with
    resistant_fraction (0.02), independently of the others: binomial bounds over about 15,000
    cells. With transitions.pre_existing = false there are no initial persisters and R keeps its
    fraction."""
    for pre in (True, False):
        _sc, _, st = _init(
            "grid.shape=[150,150]",
            "init.tumor.radius_um=1400",
            "init.tumor.persister_fraction=0.1",
            "init.tumor.resistant_fraction=0.02",
            f"tumor.transitions.pre_existing={'true' if pre else 'false'}",
        )
        tum = st.kind == codes.TUMOR
        N = int(tum.sum())
        assert N > 14000
        assert_binomial((st.tumor_state[tum] == P).sum(), N, 0.1 if pre else 0.0, "P")
        assert_binomial((st.tumor_state[tum] == R).sum(), N, 0.02, "R")
        assert np.all(st.tumor_state[~tum] == codes.NONE)
        assert np.all(st.memory == 0) and np.all(st.time_in_P_min == 0)


def test_initial_caf_shell_within_its_ring():
    """Shell placement: every CAF lies at a centre-to-centre distance d from the nearest tumor
    voxel with gap < d <= gap + width (gap 40, width 100 um; brute-force distances), never on a
    tumor or vessel voxel, and the number placed is Binomial(free ring voxels, density 0.5)."""
    _sc, grid, st = _init(
        "grid.shape=[60,60]",
        "grid.dx_um=20",
        "init.tumor.radius_um=300",
        "init.vessels.placement=random",
        "init.vessels.density=0.03",
        "init.caf.placement=shell",
        "init.caf.density=0.5",
        "init.caf.shell_gap_um=40",
        "init.caf.shell_width_um=100",
    )
    kind = st.kind
    tumor = np.flatnonzero(kind == codes.TUMOR)
    caf = np.flatnonzero(kind == codes.CAF)
    tc, cc = grid.coords(tumor) * 20.0, grid.coords(caf) * 20.0
    d = np.sqrt(((cc[:, None, :] - tc[None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert caf.size > 0 and np.all(d > 40) and np.all(d <= 140 + 1e-9)
    allc = grid.coords(np.arange(grid.n_sites)) * 20.0
    dall = np.sqrt(((allc[:, None, :] - tc[None, :, :]) ** 2).sum(-1)).min(axis=1)
    ring_free = (dall > 40) & (dall <= 140 + 1e-9) & (kind != codes.VESSEL) & (kind != codes.TUMOR)
    assert np.all(ring_free[caf])
    assert_binomial(caf.size, ring_free.sum(), 0.5, "shell CAFs")


def test_initial_clusters_and_random_stroma_avoid_tumor_and_vessels():
    """Clusters (3, radius 60 um = 3 voxels, density 1): CAFs form at most 3 connected groups,
    at most 3 discs of 29 voxels in all, none on tumor or vessel voxels. Random placement
    (density 0.1 for CAFs and TAMs): CAFs are Binomial(free voxels, 0.1), TAMs Binomial(voxels
    still free, 0.1), never on tumor, vessel or CAF voxels."""
    sc, grid, st = _init(
        "run.seed=4",
        "grid.shape=[60,60]",
        "grid.dx_um=20",
        "init.tumor.radius_um=200",
        "init.vessels.placement=random",
        "init.vessels.density=0.03",
        "init.caf.placement=clusters",
        "init.caf.clusters=3",
        "init.caf.cluster_radius_um=60",
        "init.caf.density=1",
    )
    caf = (st.kind == codes.CAF).reshape(grid.shape)
    region = stroma_region(
        sc.init.caf, sc, grid, (st.kind == codes.TUMOR).reshape(grid.shape), rng.INIT_CAF
    )
    _, n_groups = ndimage.label(caf, structure=np.ones((3, 3)))
    assert 1 <= n_groups <= 3 and 0 < caf.sum() <= 3 * 29
    assert np.all(region[caf])
    sc, grid, st = _init(
        "run.seed=5",
        "grid.shape=[100,100]",
        "init.tumor.radius_um=600",
        "init.vessels.placement=random",
        "init.vessels.density=0.03",
        "init.caf.placement=random",
        "init.caf.density=0.1",
        "init.tam.placement=random",
        "init.tam.density=0.1",
    )
    k = st.kind
    n_caf, n_tam = (k == codes.CAF).sum(), (k == codes.TAM).sum()
    free = grid.n_sites - (k == codes.TUMOR).sum() - (k == codes.VESSEL).sum()
    assert_binomial(n_caf, free, 0.1, "random CAFs")
    assert_binomial(n_tam, free - n_caf, 0.1, "random TAMs")


def test_resistant_cells_placed_at_the_edge_or_inside():
    """resistant_placement edge / interior: exactly round(fraction x cells) resistant cells, each
    with (edge) or without (interior) an empty lattice neighbour, checked against a dilation of
    the empty voxels (scipy.ndimage, the 3 x 3 Moore neighbourhood); never a persister; spread
    over the eligible cells (not the first ones in site order); the same seed gives the same
    cells, and random placement keeps its per-cell draw."""
    moore = np.ones((3, 3), dtype=bool)
    for place in ("edge", "interior"):
        sets = (
            "grid.shape=[100,100]",
            "init.tumor.radius_um=600",
            "init.tumor.persister_fraction=0.05",
            "init.tumor.resistant_fraction=0.02",
            f"init.tumor.resistant_placement={place}",
        )
        _sc, grid, st = _init(*sets)
        kind = st.kind.reshape(grid.shape)
        tum = kind == codes.TUMOR
        res = (st.tumor_state == R).reshape(grid.shape)
        assert res.sum() == round(0.02 * tum.sum())
        beside_empty = ndimage.binary_dilation(kind == codes.EMPTY, structure=moore)
        edge = tum & beside_empty
        assert (res & (edge if place == "edge" else tum & ~edge)).sum() == res.sum()
        ys, xs = np.nonzero(res)
        # spread around the disk / through it, not bunched in the first rows
        assert ys.min() < 40 and ys.max() > 60 and xs.min() < 40 and xs.max() > 60
        _, _, again = _init(*sets)
        assert np.array_equal(again.tumor_state, st.tumor_state)
    _, _, rnd = _init(
        "grid.shape=[100,100]", "init.tumor.radius_um=600", "init.tumor.resistant_fraction=0.02"
    )
    _, _, dflt = _init(
        "grid.shape=[100,100]",
        "init.tumor.radius_um=600",
        "init.tumor.resistant_fraction=0.02",
        "init.tumor.resistant_placement=random",
    )
    assert np.array_equal(rnd.tumor_state, dflt.tumor_state)


def test_too_few_edge_cells_is_a_clear_error():
    """A tumor filling the whole lattice has no cell beside an empty voxel (the lattice's border
    is a wall, not space): edge placement names the key, the value and the counts."""
    import pytest

    from tmesim.errors import ScenarioError

    with pytest.raises(ScenarioError, match=r"init.tumor.resistant_placement.*edge.*among 0 edge"):
        _init(
            "grid.shape=[30,30]",
            "init.tumor.shape=rectangle",
            "init.tumor.size_um=[900,900]",
            "init.tumor.resistant_fraction=0.01",
            "init.tumor.resistant_placement=edge",
        )
