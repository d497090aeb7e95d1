"""Initial conditions: tumor shapes and vessel placements produce the geometry they describe."""

import math

import numpy as np

import tmesim
from tmesim import codes
from tmesim.grid import Grid
from tmesim.initial import initial_state


def state_of(text):
    sc = tmesim.loads_scenario(text)
    return sc, initial_state(sc, Grid(sc.grid.shape, sc.grid.dx_um))


def test_disk_area_and_sphere_volume():
    _, st = state_of("[grid]\nshape=[200,200]\ndx_um=10\n[init.tumor]\nradius_um=500\n")
    n = (st.kind == codes.TUMOR).sum()
    assert abs(n - math.pi * 50 ** 2) < 2 * math.pi * 50      # within one ring of voxels
    _, st = state_of("[grid]\nshape=[60,60,60]\n[init.tumor]\nshape='sphere'\nradius_um=400\n")
    n = (st.kind == codes.TUMOR).sum()
    assert abs(n - 4 / 3 * math.pi * 20 ** 3) < 4 * math.pi * 20 ** 2
    assert np.all(st.tumor_state[st.kind == codes.TUMOR] == codes.SENSITIVE)
    assert np.all(st.tumor_state[st.kind != codes.TUMOR] == codes.NONE)


def test_rectangle_and_fill_fraction():
    sc, st = state_of("[grid]\nshape=[100,100]\ndx_um=20\n[init.tumor]\nshape='rectangle'\n"
                      "size_um=[400,800]\ncenter_um=[1000,1000]\n")
    k = st.kind.reshape(100, 100) == codes.TUMOR
    rows, cols = np.flatnonzero(k.any(1)), np.flatnonzero(k.any(0))
    assert len(rows) == 20 and len(cols) == 40 and k.sum() == 800
    _, st = state_of("[run]\nseed=3\n[grid]\nshape=[300,300]\n[init.tumor]\nradius_um=2500\n"
                     "fill_fraction=0.3\n")
    _, full = state_of("[grid]\nshape=[300,300]\n[init.tumor]\nradius_um=2500\n")
    N = (full.kind == codes.TUMOR).sum()
    n = (st.kind == codes.TUMOR).sum()
    assert abs(n - 0.3 * N) < 5 * math.sqrt(N * 0.3 * 0.7)


def test_vessels_random_lines_and_outside_tumor():
    sc, st = state_of("[grid]\nshape=[200,200]\n[init.tumor]\nradius_um=1000\n"
                      "[init.vessels]\nplacement='random'\ndensity=0.02\n")
    v = st.kind == codes.VESSEL
    tumor_region = np.hypot(*np.indices((200, 200)) - 99.5).ravel() * 20 <= 1000
    assert not v[tumor_region].any()
    outside = (~tumor_region).sum()
    assert abs(v.sum() - 0.02 * outside) < 5 * math.sqrt(outside * 0.02)
    ox = st.fields[0]
    assert np.all(ox[v] == 38.0)
    _, st = state_of("[grid]\nshape=[20,40,40]\n[init.tumor]\nshape='none'\n"
                     "[init.vessels]\nplacement='lines'\naxis='z'\nspacing_um=200\n")
    v = (st.kind == codes.VESSEL).reshape(20, 40, 40)
    assert np.all(v == v[:1])                      # straight along z
    ys, xs = np.nonzero(v[0])
    assert len(set(np.diff(np.unique(ys)))) == 1 and np.unique(np.diff(np.unique(xs))) == [10]
