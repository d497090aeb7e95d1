"""The culture medium (tmesim.steps.medium, kernels/fields.cu tm_medium_*): which voxels a stirred
bath holds, where decay acts, and what the field solver makes of them.

References are independent of the code under test: the chamfer distance by its closed form
(the shortest path of Moore steps weighing 10, 14, 17: the diagonal steps first), minimised by
brute force over every occupied voxel; the ray test by walking each ray; the Euclidean distance
bounds of the chamfer metric; and analytical steady states of a disk and a sphere of uptake in a
bath held beyond an unstirred layer.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import i0, i1

import tmesim
from tmesim import codes
from tmesim.errors import ScenarioError
from tmesim.grid import Grid
from tmesim.steps import fields_kernel as FK
from tmesim.steps import medium
from tmesim.steps.fields import FieldSolver
from tmesim.steps.fields_kernel import KernelFieldSolver, field_workspace_bytes

from ..helpers import solver_text


# ------------------------------------------------------------------------------- references
def chamfer(delta: np.ndarray) -> np.ndarray:
    """Closed-form chamfer length of Moore paths for offsets delta (..., ndim): sorted
    |components| a >= b >= c take c space diagonals (17), b - c face diagonals (14) and a - b
    axis steps (10)."""
    s = -np.sort(-np.abs(delta), axis=-1)
    if s.shape[-1] == 2:
        return 14 * s[..., 1] + 10 * (s[..., 0] - s[..., 1])
    return 17 * s[..., 2] + 14 * (s[..., 1] - s[..., 2]) + 10 * (s[..., 0] - s[..., 1])


def brute_distance(kind, shape, cap):
    """min over occupied voxels of the chamfer length, INF above cap, 0 at occupied voxels."""
    coords = np.stack(np.unravel_index(np.arange(kind.size), shape), axis=-1)
    occ = coords[kind != codes.EMPTY]
    out = np.full(kind.size, medium.INF, dtype=np.int64)
    if len(occ):
        d = chamfer(coords[:, None, :] - occ[None, :, :]).min(axis=1)
        out = np.where(d <= cap, d, medium.INF)
    return out


def brute_exterior(kind, shape):
    """Walk the 2 ndim axis rays of every voxel: all empty up to a face on one of them."""
    k = kind.reshape(shape)
    out = np.zeros(shape, dtype=bool)
    for idx in itertools.product(*(range(n) for n in shape)):
        for ax in range(len(shape)):
            for step in (-1, 1):
                ok, p = True, list(idx)
                while 0 <= p[ax] < shape[ax]:
                    if k[tuple(p)] != codes.EMPTY:
                        ok = False
                        break
                    p[ax] += step
                if ok:
                    out[idx] = True
    return out.reshape(-1)


def random_lattice(g, shape, p_occupied):
    """Random occupants of every kind, ``p_occupied`` of the voxels."""
    n = int(np.prod(shape))
    kind = g.integers(1, len(codes.KIND_NAMES), n).astype(np.uint8)
    kind[g.random(n) >= p_occupied] = codes.EMPTY
    return kind


def ball(shape, radius_vox, hollow_vox=0.0):
    """A ball (disk) of occupied voxels at the centre, hollow inside ``hollow_vox``."""
    c = [np.arange(n) - (n - 1) / 2 for n in shape]
    r = np.sqrt(sum(x**2 for x in np.meshgrid(*c, indexing="ij"))).reshape(-1)
    kind = np.where(r <= radius_vox, codes.TUMOR, codes.EMPTY).astype(np.uint8)
    kind[r < hollow_vox] = codes.EMPTY
    return kind, r


GEOMS = [((17, 13), 0.03), ((9, 11, 8), 0.02), ((1, 12, 7), 0.05), ((21, 19), 0.0)]


# ------------------------------------------------------------------------------- the mask
@pytest.mark.parametrize("shape, p", GEOMS)
@pytest.mark.parametrize("cap", [0, 9, 10, 14, 17, 30, 45])
def test_distance_is_the_brute_force_chamfer_distance(shape, p, cap):
    g = np.random.default_rng(cap + len(shape))
    kind = random_lattice(g, shape, p)
    kind[g.integers(kind.size)] = codes.TUMOR  # at least one occupied voxel
    got = medium.distance(kind, shape, cap)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, brute_distance(kind, shape, cap))


@pytest.mark.parametrize("shape, p", GEOMS[:3])
def test_exterior_is_the_ray_walk(shape, p):
    g = np.random.default_rng(len(shape))
    for frac in (p, 0.2, 0.5):
        kind = random_lattice(g, shape, frac)
        np.testing.assert_array_equal(medium.exterior(kind, shape), brute_exterior(kind, shape))


@pytest.mark.parametrize("shape", [(40, 40), (20, 22, 24)])
@pytest.mark.parametrize("layer_um", [0.0, 30.0, 60.0, 100.0])
def test_held_voxels_lie_beyond_the_layer_in_euclidean_length(shape, layer_um):
    """The layer is a length: an empty voxel open to a face is held when its Euclidean distance
    from every occupied voxel exceeds the layer by the chamfer metric's 2 % (it never
    underestimates by more), and never when it is within the layer less its 11 % (the most it
    overestimates, at offsets such as (2, 1, 1))."""
    dx = 20.0
    g = np.random.default_rng(len(shape) + int(layer_um))
    kind, _ = ball(shape, min(shape) / 5)
    kind[g.random(kind.size) < 0.004] = codes.CAF  # scattered cells as well
    cap = medium.layer_units(layer_um, dx)
    held = medium.held(kind, shape, cap)
    coords = np.stack(np.unravel_index(np.arange(kind.size), shape), axis=-1)
    occ = coords[kind != codes.EMPTY]
    e = 10 * np.sqrt(((coords[:, None, :] - occ[None]) ** 2).sum(-1)).min(axis=1)
    open_empty = (kind == codes.EMPTY) & medium.exterior(kind, shape)
    assert held[open_empty & (e > cap / 0.98)].all()
    assert not held[e <= cap / 1.11].any()
    assert not held[~open_empty].any()
    if layer_um == 0.0:
        np.testing.assert_array_equal(held, open_empty)


def test_enclosed_cavity_is_not_held():
    """A hollow spheroid (its cleared core empty, wider than the layer) keeps its cavity
    unstirred; the medium outside is held."""
    shape = (24, 24, 24)
    kind, r = ball(shape, 10, hollow_vox=6)
    held = medium.held(kind, shape, medium.layer_units(20.0, 20.0))
    cavity = r < 6
    assert (kind[cavity] == codes.EMPTY).all()
    assert not held[cavity].any()
    assert held[r > 12].all()
    pins = medium.pin_codes(kind, shape, 10)
    np.testing.assert_array_equal(pins == medium.BATH, held)
    np.testing.assert_array_equal(pins[~held], kind[~held])


def test_layer_units_and_passes():
    assert medium.layer_units(30.0, 20.0) == 15
    assert medium.layer_units(1.0, 20.0) == 1  # 0.5 tenths: halves up
    assert medium.layer_units(0.0, 20.0) == 0
    assert [medium.n_passes(c) for c in (0, 9, 10, 19, 20, 45)] == [1, 1, 1, 1, 2, 4]
    assert len(medium.moore(2)) == 8 and len(medium.moore(3)) == 26


def test_pin_code_agrees_with_the_kernel_source():
    from tmesim.launch import kernel_defines

    assert kernel_defines("pins.cuh", "TM_PIN_")["BATH"] == medium.BATH
    assert len(codes.KIND_NAMES) <= medium.BATH


# ------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("shape, p", GEOMS)
@pytest.mark.parametrize("cap", [0, 10, 17, 45])
def test_kernel_pins_are_numpys_in_any_order(launcher, shape, p, cap):
    """medium_pins (the ray launches, the in-place distance passes, tm_medium_pins) against
    medium.pin_codes, and each piece against its twin, forward, reverse and scrambled."""
    g = np.random.default_rng(cap + 7 * len(shape))
    n = int(np.prod(shape))
    try:
        for trial in range(3):
            kind = random_lattice(g, shape, (p, 0.1, 0.3)[trial])
            for order in (0, 1, 2):
                launcher.set_order(order)
                D = np.full(n, 12345, np.uint16)  # whatever the buffers held before
                pin = np.full(n, 77, np.uint8)
                FK.medium_distance(kind, shape, cap, D, launcher=launcher)
                np.testing.assert_array_equal(D, medium.distance(kind, shape, cap))
                for ax in range(len(shape)):
                    FK.medium_exterior(kind, shape, ax, ax == 0, pin, launcher=launcher)
                np.testing.assert_array_equal(pin.astype(bool), medium.exterior(kind, shape))
                got = FK.medium_pins(kind, shape, cap, D, pin, launcher=launcher)
                np.testing.assert_array_equal(got, medium.pin_codes(kind, shape, cap))
    finally:
        launcher.set_order(0)


# ------------------------------------------------------------------------------- the solver
def stirred_text(
    shape,
    dx,
    layer_um,
    *,
    method="adi",
    k=10.0,
    lam=0.1,
    decay_in="tissue",
    stirred=True,
    dt_agent=60.0,
    dt_field=0.0,
    tolerance=1e-6,
    bath=38.0,
    extra="",
):
    """An oxygen field in a bath of ``bath`` mmHg on every face, taken up by tumor cells at k,
    decaying at lam where ``decay_in`` says, the medium stirred beyond ``layer_um``."""
    head = solver_text(
        shape,
        method=method,
        dx=dx,
        tolerance=tolerance,
        max_iterations=3000,
        dt_agent=dt_agent,
        dt_field=dt_field,
    )
    return (
        head
        + f"""
[medium]
stirred = {str(stirred).lower()}
boundary_layer_um = {layer_um}
[fields.oxygen]
diffusion_um2_per_min = 1e5
decay_per_min = {lam}
decay_in = "{decay_in}"
uptake_per_min = {{ tumor = {k} }}
boundary = {{ faces = "all", kind = "dirichlet", value = {bath} }}
{extra}"""
    )


def steady(sc, kind, steps=30):
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    fs = FieldSolver(sc, grid)
    state = np.where(kind == codes.TUMOR, codes.SENSITIVE, 0).astype(np.uint8)
    f = np.full((len(sc.fields), kind.size), 38.0, np.float32)
    for _ in range(steps):
        fs.step(f, kind, state)
    return f[0], fs


def centred_radius(shape, dx):
    c = [(np.arange(n) + 0.5 - n / 2) * dx for n in shape]
    return np.sqrt(sum(x**2 for x in np.meshgrid(*c, indexing="ij"))).reshape(-1)


@pytest.mark.parametrize("layer_um", [0.0, 50.0])
def test_disk_in_a_stirred_bath_matches_the_analytical_profile(layer_um):
    """2D: uptake k plus decay in a disk of radius R; no decay in the medium; the bath held
    beyond the layer. Steady state c = A I0(r / l) inside (l = sqrt(D / (k + decay))) and
    B + C ln r in the unstirred layer, matched in value and flux at R and equal to the bath at
    the first held radius. Within 4 % of the bath everywhere on a 10 um lattice."""
    dx, R, n, bath = 10.0, 150.0, 60, 38.0
    sc = tmesim.loads_scenario(stirred_text((n, n), dx, layer_um))
    r = centred_radius((n, n), dx)
    kind = np.where(r <= R, codes.TUMOR, codes.EMPTY).astype(np.uint8)
    c, fs = steady(sc, kind)
    held = medium.held(kind, (n, n), fs.bath_cap)
    np.testing.assert_array_equal(c[held], np.float32(bath))
    ell = math.sqrt(1e5 / 10.1)
    Rt = math.sqrt((kind == codes.TUMOR).sum() / math.pi) * dx  # the lattice disk's radius
    Rd = r[held].min()
    A = bath / (i0(Rt / ell) + (Rt / ell) * i1(Rt / ell) * math.log(Rd / Rt))
    C = A * Rt * i1(Rt / ell) / ell
    want = np.where(r <= Rt, A * i0(r / ell), A * i0(Rt / ell) + C * np.log(np.maximum(r, 1) / Rt))
    inside = r < Rd
    assert np.abs(c - want)[inside].max() < 0.04 * bath
    # the outer voxels: within 3 % of the bath of the profile's mean over them (50 um of layer
    # costs about 6 mmHg there)
    outer = (kind == codes.TUMOR) & (r > R - dx)
    assert abs(c[outer].mean() - want[outer].mean()) < 0.03 * bath


def test_sphere_in_a_stirred_bath_matches_the_analytical_profile():
    """3D: c = A sinh(r / l) / r inside the sphere and B + C / r in the layer, matched in value
    and flux at R, the bath at the first held radius; within 5 % of the bath on a 10 um
    lattice. Unstirred, with decay everywhere, the same sphere's centre is lower (by 3 mmHg in
    this small box, whose faces are 80 um from the sphere)."""
    dx, R, n, L, bath = 10.0, 120.0, 40, 30.0, 38.0
    shape = (n, n, n)
    r = centred_radius(shape, dx)
    kind = np.where(r <= R, codes.TUMOR, codes.EMPTY).astype(np.uint8)
    c, fs = steady(tmesim.loads_scenario(stirred_text(shape, dx, L)), kind, steps=20)
    held = medium.held(kind, shape, fs.bath_cap)
    ell = math.sqrt(1e5 / 10.1)
    Rt = np.cbrt(3 * (kind == codes.TUMOR).sum() / (4 * math.pi)) * dx
    Rd = r[held].min()
    # inside A sinh(r/l)/r; outside B + C/r; continuity of c and c' at Rt, c(Rd) = bath
    s, ch = math.sinh(Rt / ell), math.cosh(Rt / ell)
    dc_in = (ch / ell - s / Rt) / Rt  # derivative of sinh(r/l)/r at Rt
    Cc = -dc_in * Rt**2  # C of the outer profile per unit A: -C/Rt^2 = A dc_in
    Bc = s / Rt - Cc / Rt
    A = bath / (Bc + Cc / Rd)
    want = np.where(
        r <= Rt, A * np.sinh(r / ell) / np.maximum(r, 1e-9), A * (Bc + Cc / np.maximum(r, 1e-9))
    )
    inside = r < Rd
    assert np.abs(c - want)[inside].max() < 0.05 * bath
    centre = c[np.argmin(r)]
    old, _ = steady(
        tmesim.loads_scenario(stirred_text(shape, dx, L, stirred=False, decay_in="everywhere")),
        kind,
        steps=20,
    )
    assert old[np.argmin(r)] < centre - 2.0


@pytest.mark.parametrize("method", ["adi", "lod"])
def test_tissue_decay_leaves_the_medium_without_loss(method):
    """decay_in = "tissue" with no-flux faces: an empty dish keeps its oxygen (to float32
    rounding), where decay everywhere would lose exp(-0.1 t); with cells, only they lose it."""
    text = (
        solver_text((20, 20), method=method, dt_field=0.5, tolerance=1e-6)
        + """
[fields.oxygen]
diffusion_um2_per_min = 1e5
decay_per_min = 0.1
decay_in = "tissue"
uptake_per_min = {}
boundary = { faces = "all", kind = "no_flux" }
"""
    )
    sc = tmesim.loads_scenario(text)
    g = np.random.default_rng(1)
    fs = FieldSolver(sc, Grid(sc.grid.shape, sc.grid.dx_um))
    assert fs.decay[0] == 0.0  # nothing uniform: LOD's line solves and the CG bound see none
    f = g.uniform(10, 40, (1, 400)).astype(np.float32)
    total = f.sum(dtype=np.float64)
    kind = np.zeros(400, np.uint8)
    for _ in range(10):
        fs.step(f, kind)
    assert abs(f.sum(dtype=np.float64) / total - 1) < 1e-5
    # one cell (a CAF: no uptake) decays what reaches it: the dish loses oxygen, slowly
    kind[210] = codes.CAF
    fs.step(f, kind)
    lost = 1 - f.sum(dtype=np.float64) / total
    assert 0 < lost < 0.1 * 6.0 / 400 * 1.01  # at most the one voxel's share of 6 min of decay


def test_tissue_decay_tables():
    sc = tmesim.loads_scenario(stirred_text((8, 8), 20.0, 0.0, k=3.0, lam=0.2))
    fs = FieldSolver(sc, Grid((8, 8), 20.0))
    np.testing.assert_allclose(fs.U_table[0, codes.EMPTY], 0.0)
    np.testing.assert_allclose(fs.U_table[0, codes.CAF], 0.2)
    np.testing.assert_allclose(fs.U_table[0, codes.NECROTIC], 0.2)
    np.testing.assert_allclose(fs.U_table[0, codes.TUMOR, codes.SENSITIVE], 3.2)
    every = tmesim.loads_scenario(stirred_text((8, 8), 20.0, 0.0, lam=0.2, decay_in="everywhere"))
    fe = FieldSolver(every, Grid((8, 8), 20.0))
    np.testing.assert_allclose(fe.U_table[0, codes.EMPTY], 0.2)
    assert fe.decay[0] == 0.2


def test_bath_follows_set_supply():
    """A drug's bath follows its plasma level: the held voxels take the new value."""
    text = (
        stirred_text((16, 16), 20.0, 0.0)
        + """
[drugs.erl]
preset = "egfr_tki"
"""
    )
    sc = tmesim.loads_scenario(text)
    fs = FieldSolver(sc, Grid((16, 16), 20.0))
    kind, _ = ball((16, 16), 3)
    f = np.zeros((2, 256), np.float32)
    fs.set_supply([np.nan, 2.5])
    fs.step(f, kind)
    held = medium.held(kind, (16, 16), 0)
    assert (f[1][held] == np.float32(2.5)).all() and (f[0][held] == np.float32(38.0)).all()
    assert (f[1][~held] < 2.5).all()


# ------------------------------------------------------------------------------- parity
def parity_text(shape, method, dt_field, layer_um):
    return stirred_text(
        shape,
        20.0,
        layer_um,
        method=method,
        k=10.0,
        lam=0.1,
        dt_agent=6.0,
        dt_field=dt_field,
        tolerance=1e-3,
        extra="""
[fields.erl]
role = "drug"
units = "uM"
diffusion_um2_per_min = 2e4
decay_per_min = 0.01
decay_in = "tissue"
uptake_per_min = { tumor = 0.5, necrotic = 0.2 }
vessel_value = 1.0
boundary = [{ faces = ["all"], kind = "dirichlet", value = 1.0 }]
""",
    )


def growing(g, shape, step):
    """A ragged ball that grows by a voxel a step, with scattered vessels and necrotic voxels."""
    kind, r = ball(shape, min(shape) / 6 + step)
    n = kind.size
    rough = (r > min(shape) / 6 + step - 1.5) & (g.random(n) < 0.4)
    kind[rough] = codes.EMPTY
    kind[(kind == codes.TUMOR) & (g.random(n) < 0.1)] = codes.NECROTIC
    kind[(kind == codes.EMPTY) & (g.random(n) < 0.01)] = codes.VESSEL
    state = np.where(kind == codes.TUMOR, g.integers(1, 4, n), 0).astype(np.uint8)
    return kind, state


@pytest.mark.parametrize(
    "shape, method, dt_field, layer_um",
    [
        ((24, 24), "adi", 0.0, 0.0),
        ((24, 24), "lod", 1.5, 30.0),
        ((12, 12, 12), "adi", 3.0, 30.0),
        ((12, 12, 12), "lod", 2.0, 0.0),
    ],
)
def test_kernel_solver_is_numpys_bit_for_bit(launcher, shape, method, dt_field, layer_um):
    """KernelFieldSolver with a stirred medium and decay in tissue only: the fields after every
    agent step (cells growing, the drug's bath changing) equal the numpy solver's bit for bit,
    in forward and scrambled work order."""
    sc = tmesim.loads_scenario(parity_text(shape, method, dt_field, layer_um))
    assert sc.medium.stirred
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    n = grid.n_sites
    for order in (0, 2):
        ref = FieldSolver(sc, grid)
        ks = KernelFieldSolver(sc, grid, launcher=launcher)
        g = np.random.default_rng(len(shape) + order)
        want = np.empty((2, n), np.float32)
        want[0] = g.uniform(20, 38, n)
        want[1] = 0.0
        got = want.copy()
        launcher.set_order(order)
        try:
            for s in range(3):
                kind, state = growing(g, shape, s)
                held = medium.held(kind, shape, ref.bath_cap)
                assert held.any()
                assert (~held & (kind == codes.EMPTY)).any() or not layer_um  # an unstirred layer
                supply = np.array([np.nan, 0.5 + 0.75 * s])
                ref.set_supply(supply)
                ks.set_supply(supply)
                ref.step(want, kind, state)
                ks.step(got, kind, state)
                np.testing.assert_array_equal(got, want, err_msg=f"agent step {s}")
                assert ks.last_sweeps == ref.last_sweeps
                assert (want[1][held] == np.float32(0.5 + 0.75 * s)).all()
        finally:
            launcher.set_order(0)
    held_bytes = sum(v.nbytes for v in ks._arrays.values())
    assert held_bytes == field_workspace_bytes(sc)
    plain = tmesim.loads_scenario(
        parity_text(shape, method, dt_field, layer_um).replace("stirred = true", "stirred = false")
    )
    assert field_workspace_bytes(sc) - field_workspace_bytes(plain) == 3 * n


# ------------------------------------------------------------------------------- scenarios
def test_scenario_errors_name_the_key():
    base = solver_text((8, 8)) + "[medium]\nstirred = true\n"
    with pytest.raises(ScenarioError, match=r"fields\.oxygen\.boundary.*one value"):
        tmesim.loads_scenario(
            base
            + """[fields.oxygen]
boundary = [{ faces = ["x-"], kind = "dirichlet", value = 38 },
            { faces = ["x+"], kind = "dirichlet", value = 20 }]
"""
        )
    with pytest.raises(ScenarioError, match=r"fields\.hgf\.boundary.*Dirichlet face"):
        tmesim.loads_scenario(base + "[fields.hgf]\n")
    with pytest.raises(ScenarioError, match=r"drugs\.erl\.transport"):
        tmesim.loads_scenario(
            base
            + '[init.vessels]\nplacement = "random"\ndensity = 0.01\n'
            + '[drugs.erl]\npreset = "egfr_tki"\ntransport = "vessels"\n'
        )
    # a well-mixed drug is not solved: it needs no bath
    tmesim.loads_scenario(base + '[drugs.erl]\npreset = "egfr_tki"\ntransport = "uniform"\n')
    with pytest.raises(ScenarioError, match=r"medium\.boundary_layer_um"):
        tmesim.loads_scenario(base + "boundary_layer_um = 30000\n")
    with pytest.raises(ScenarioError, match=r"medium\.boundary_layer_um"):
        tmesim.loads_scenario(base + "boundary_layer_um = -1\n")
    with pytest.raises(ScenarioError, match=r"fields\.oxygen\.decay_in"):
        tmesim.loads_scenario(solver_text((8, 8)) + '[fields.oxygen]\ndecay_in = "medium"\n')
    # unstirred, a field without a bath is fine
    tmesim.loads_scenario(solver_text((8, 8)) + "[fields.hgf]\n")


def test_summary_says_where_decay_acts_and_what_the_bath_holds():
    sc = tmesim.loads_scenario(stirred_text((8, 8), 20.0, 40.0))
    text = tmesim.scenario.summary(sc)
    assert "decay 0.1 /min in tissue only" in text
    assert "Medium: stirred" in text and "40 um" in text
    plain = tmesim.scenario.summary(tmesim.loads_scenario(solver_text((8, 8))))
    assert "Medium" not in plain and "tissue only" not in plain


def test_memory_counts_the_bath_buffers():
    """tmesim.memory: 3 B per voxel more on the kernels with a stirred medium (pin codes and
    distances), 16 B on the CPU (the numpy mask's temporaries)."""
    from tmesim import memory

    stirred = tmesim.loads_scenario(stirred_text((30, 40), 20.0, 20.0))
    plain = tmesim.loads_scenario(stirred_text((30, 40), 20.0, 20.0, stirred=False))
    for backend, per_voxel in (("gpu", 3), ("portable", 3), ("cpu", 16)):
        diff = memory.bytes_needed(stirred, backend)["fields"]
        diff -= memory.bytes_needed(plain, backend)["fields"]
        assert diff == per_voxel * 1200, backend
