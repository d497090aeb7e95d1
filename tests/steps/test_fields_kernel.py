"""The field solver's kernels (kernels/fields.cu, driven by tmesim.steps.fields_kernel) against
the numpy FieldSolver and its primitives (tmesim.steps.fields), the independent reference.

The primitives (Laplacian and CG operator, Thomas line solves, the LOD sweep, the point-wise CG
pieces) are bit-identical to the numpy code they mirror. That is stronger than "within float32
rounding", and it is what the kernels are built for: each one performs the numpy operations in
the same order and precision, every one of them correctly rounded in IEEE 754 (add, subtract,
multiply, divide, reciprocal, float64 products rounded once to float32), and the round-to-nearest
intrinsics / -ffp-contract=off forbid fused multiply-adds. A difference of even one ulp therefore
means the kernel's arithmetic departed from numpy's.

KernelFieldSolver with numpy arrays (the portable C++ build, or a GPU through copies: the
``launcher`` fixture) takes numpy's own CG reductions (dots, absmax), so every operation is the
numpy solver's operation: fields and iteration counts must be identical bit for bit, for both
methods, over several agent steps with cells changing between steps, field steps per agent step
(n_sub > 1), drug-like fields whose supply (vessel and bath values) changes every step, and
whatever order the work items of each launch run in.

With device-resident arrays on a GPU (skipped without one) the CG inner products are cupy's
reductions, summed in another order than numpy's: see test_gpu_matches_numpy for the tolerance
and why.
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

import tmesim
from tmesim import codes
from tmesim.grid import Grid
from tmesim.steps import fields as F_
from tmesim.steps import fields_kernel as FK
from tmesim.steps import medium
from tmesim.steps.fields import FieldSolver
from tmesim.steps.fields_kernel import FieldSolverError, KernelFieldSolver, field_workspace_bytes

from ..helpers import solver_text


# ------------------------------------------------------------------------------------- scenarios
def fields_text(
    shape,
    method,
    *,
    dt_field=0.0,
    o2_faces='"all"',
    drug_faces='"x-", "y+"',
    tolerance=1e-3,
    max_iterations=200,
    preconditioner=None,
):
    """Three fields: oxygen (Dirichlet bath and vessels at 38 mmHg, uptake by tumor cells with
    per-state rates and by CAFs), a drug (bath on some faces, vessels; its supply is changed by
    set_supply), a secreted signal (no-flux everywhere)."""
    return (
        solver_text(
            shape,
            method=method,
            dt_field=dt_field,
            tolerance=tolerance,
            max_iterations=max_iterations,
            preconditioner=preconditioner,
        )
        + f"""
[fields.oxygen]
diffusion_um2_per_min = 1e5
decay_per_min = 0.1
uptake_per_min = {{ tumor = 10.0, persister = 4.0, caf = 1.0 }}
vessel_value = 38.0
boundary = [{{ faces = [{o2_faces}], kind = "dirichlet", value = 38.0 }}]
[fields.erl]
role = "drug"
units = "uM"
diffusion_um2_per_min = 2e4
decay_per_min = 0.01
uptake_per_min = {{ tumor = 0.5, resistant = 0.1, necrotic = 0.2 }}
vessel_value = 1.0
boundary = [{{ faces = [{drug_faces}], kind = "dirichlet", value = 1.0 }}]
[fields.hgf]
units = "ng/mL"
diffusion_um2_per_min = 5e3
decay_per_min = 0.05
secretion_per_min = {{ caf = 0.3, tam = 0.1 }}
"""
    )


def solvers(launcher, shape, method, **kw):
    sc = tmesim.loads_scenario(fields_text(shape, method, **kw))
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    return sc, FieldSolver(sc, grid), KernelFieldSolver(sc, grid, launcher=launcher)


def random_cells(g, n):
    """Occupants: mostly empty and tumor (states S, P, R), some CAF, TAM, vessel, necrotic."""
    kind = g.choice(6, n, p=[0.45, 0.32, 0.08, 0.05, 0.04, 0.06]).astype(np.uint8)
    state = np.where(kind == codes.TUMOR, g.integers(1, 4, n), 0).astype(np.uint8)
    return kind, state


def evolve(g, kind):
    """Cells change between agent steps: 10 % of the voxels get a new occupant."""
    kind = kind.copy()
    m = g.random(kind.size) < 0.1
    kind[m] = g.choice(6, int(m.sum())).astype(np.uint8)
    state = np.where(kind == codes.TUMOR, g.integers(1, 4, kind.size), 0).astype(np.uint8)
    return kind, state


def initial_fields(g, n):
    f = np.empty((3, n), np.float32)
    f[0] = g.uniform(20, 38, n)
    f[1] = 0.0
    f[2] = g.uniform(0, 2, n)
    return f


def run_both(ref, ks, shape, n_steps=4, seed=1):
    """n_steps agent steps of both solvers from the same start, the drug's supply changing every
    step (and the oxygen's once); checks identity after every step."""
    g = np.random.default_rng(seed)
    n = int(np.prod(shape))
    want = initial_fields(g, n)
    got = want.copy()
    kind, state = random_cells(g, n)
    for s in range(n_steps):
        supply = np.array([30.0 if s == 2 else np.nan, 0.5 + 0.75 * s, np.nan])
        ref.set_supply(supply)
        ks.set_supply(supply)
        ref.step(want, kind, state)
        ks.step(got, kind, state)
        np.testing.assert_array_equal(got, want, err_msg=f"agent step {s}")
        assert ks.last_sweeps == ref.last_sweeps
        np.testing.assert_array_equal(ks.last_field_sweeps, ref.last_field_sweeps)
        kind, state = evolve(g, kind)
    return got


CASES = [
    # shape, method ("adi": CG with the default multigrid preconditioner; "adi/line": with the
    # line-factor one), field dt (0: one field step per agent step), faces of oxygen, of the drug
    ((24, 24), "adi", 0.0, '"all"', '"x-", "y+"'),
    ((24, 24), "adi", 2.0, '"y-", "x+"', '"x-"'),  # n_sub = 3; a face with no bath at all
    ((24, 24), "adi/line", 0.0, '"all"', '"x-", "y+"'),
    ((24, 24), "adi/line", 2.0, '"y-", "x+"', '"x-"'),
    ((24, 24), "lod", 0.5, '"all"', '"x-", "y+"'),  # n_sub = 12
    ((24, 24), "lod", 1.5, '"y-", "x+"', '"x-"'),
    ((12, 12, 12), "adi", 0.0, '"all"', '"z-", "x-", "y+"'),
    ((12, 12, 12), "adi", 3.0, '"z+", "y-"', '"x+"'),
    ((12, 12, 12), "adi/line", 0.0, '"all"', '"z-", "x-", "y+"'),
    ((12, 12, 12), "adi/line", 3.0, '"z+", "y-"', '"x+"'),
    ((13, 11, 9), "adi", 0.0, '"z-", "y+"', '"x-"'),  # odd axes: blocks of one layer
    ((25, 17), "adi", 0.0, '"all"', '"y-"'),
    ((12, 12, 12), "lod", 0.5, '"all"', '"z-", "x-", "y+"'),
    ((12, 12, 12), "lod", 2.0, '"z+", "y-"', '"x+"'),
    ((1, 30), "adi", 0.0, '"all"', '"x-"'),  # lines of length 1 along y
    ((1, 200), "adi", 0.0, '"all"', '"x-"'),  # an axis of length 1 through every level
    ((1, 30), "adi/line", 0.0, '"all"', '"x-"'),
    ((5, 1, 9), "lod", 1.0, '"all"', '"x-", "z+"'),
    ((9, 1, 17), "adi", 1.0, '"all"', '"x-", "z+"'),
]


def _method(method: str) -> tuple[str, dict]:
    """A CASES method: the scenario's solver.method and its preconditioner keyword."""
    if method == "adi/line":
        return "adi", {"preconditioner": "adi"}
    return method, {}


@pytest.mark.parametrize("shape, method, dt_field, o2_faces, drug_faces", CASES)
def test_matches_numpy_bit_for_bit(launcher, shape, method, dt_field, o2_faces, drug_faces):
    method, pre = _method(method)
    _sc, ref, ks = solvers(
        launcher,
        shape,
        method,
        dt_field=dt_field,
        o2_faces=o2_faces,
        drug_faces=drug_faces,
        **pre,
    )
    for name in ("F", "method", "n_sub", "dt"):
        assert getattr(ks, name) == getattr(ref, name)
    if dt_field:
        assert ks.n_sub > 1
    run_both(ref, ks, shape)
    np.testing.assert_array_equal(ks.vessel_value, ref.vessel_value)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize(
    "shape, method, dt_field",
    [
        ((12, 12, 12), "adi", 3.0),
        ((13, 11, 9), "adi", 0.0),
        ((12, 12, 12), "adi/line", 3.0),
        ((12, 12, 12), "lod", 2.0),
        ((24, 24), "adi", 0.0),
        ((24, 24), "adi/line", 0.0),
        ((24, 24), "lod", 1.5),
    ],
)
def test_work_order_does_not_matter(launcher, order, shape, method, dt_field):
    """Every launch's work items run backwards, or in a scrambled order: still numpy's result
    (the forward order is test_matches_numpy_bit_for_bit)."""
    method, pre = _method(method)
    _sc, ref, ks = solvers(launcher, shape, method, dt_field=dt_field, **pre)
    launcher.set_order(order)
    try:
        run_both(ref, ks, shape, n_steps=3, seed=5)
    finally:
        launcher.set_order(0)


def test_tumor_state_omitted_and_rates(launcher):
    g = np.random.default_rng(3)
    for method in ("adi", "lod"):
        _sc, ref, ks = solvers(launcher, (16, 20), method, dt_field=2.0)
        n = 16 * 20
        kind, state = random_cells(g, n)
        U_w, S_w = ref.rates(kind, state)
        U, S = ks.rates(kind, state)
        np.testing.assert_array_equal(U, U_w)
        np.testing.assert_array_equal(S, S_w)
        U_w, S_w = ref.rates(kind)
        U, S = ks.rates(kind)
        np.testing.assert_array_equal(U, U_w)
        np.testing.assert_array_equal(S, S_w)
        want = initial_fields(g, n)
        got = want.copy()
        ref.step(want, kind)
        ks.step(got, kind)
        np.testing.assert_array_equal(got, want)
        assert ks.last_sweeps == ref.last_sweeps


@pytest.mark.parametrize("method", ["adi", "lod"])
def test_non_finite_fields_raise_naming_them(launcher, method):
    _sc, ref, ks = solvers(launcher, (10, 12), method)
    g = np.random.default_rng(4)
    kind, state = random_cells(g, 120)
    kind[kind == codes.VESSEL] = codes.EMPTY  # a NaN on a vessel would be reset
    fields = initial_fields(g, 120)
    fields[1, 7] = np.nan
    fields[2, 70] = np.inf
    msgs = []
    for solver in (ref, ks):
        with pytest.raises(FieldSolverError) as e, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN residuals: max_iterations
            solver.step(fields.copy(), kind, state)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "erl" in msgs[1] and "hgf" in msgs[1]
    assert "oxygen" not in msgs[1]


def test_max_iterations_warns_once_like_numpy(launcher):
    _sc, ref, ks = solvers(launcher, (24, 24), "adi", tolerance=1e-6, max_iterations=3)
    g = np.random.default_rng(6)
    kind, state = random_cells(g, 576)
    want = initial_fields(g, 576)
    got = want.copy()
    caught = []
    for solver, f in ((ref, want), (ks, got)):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            solver.step(f, kind, state)
            solver.step(f, kind, state)  # warned once per solver
        caught.append([str(x.message) for x in w if issubclass(x.category, RuntimeWarning)])
    np.testing.assert_array_equal(got, want)
    assert ks.last_sweeps == ref.last_sweeps == 3
    assert len(caught[1]) == 1 and caught[1] == caught[0]
    assert "solver.max_iterations = 3" in caught[1][0]


def multigrid_bytes(shape, F: int) -> int:
    """Bytes per grid of the CG with the multigrid preconditioner, counted level by level: on
    the fine level seven vectors per field (S, diag, b, r, z, p, q; the level's own w, e and d
    are recomputed per site, never stored); on each coarser level (every axis halved, rounded
    up, until at most 64 sites) w, e (ndim), d, x, t and r per field and a byte of free flags."""
    nd = len(shape)
    total = 4 * F * 7 * int(np.prod(shape))
    s = tuple(shape)
    while int(np.prod(s)) > 64 and max(s) > 1:
        s = tuple((m + 1) // 2 for m in s)
        total += (4 * F * (5 + nd) + 1) * int(np.prod(s))
    return total


@pytest.mark.parametrize("shape", [(24, 24), (12, 12, 12), (13, 11, 9)])
@pytest.mark.parametrize("method", ["adi", "adi/line", "lod"])
def test_workspace_bytes_counts_every_array(launcher, shape, method):
    """field_workspace_bytes(sc) is what the solver holds after stepping, and its part that
    grows with the grid is 8 B per voxel (lod: one field's float64 work array), 4 F (8 + 2 ndim)
    B per voxel (adi with line factors) or multigrid_bytes (adi with multigrid)."""
    method, pre = _method(method)
    sc, ref, ks = solvers(launcher, shape, method, **pre)
    run_both(ref, ks, shape, n_steps=1)
    assert ks.workspace_bytes() == field_workspace_bytes(sc)
    # and nothing else of the grid's size is kept on the solver
    held = sum(v.nbytes for v in vars(ks).values() if isinstance(v, np.ndarray))
    held += sum(v.nbytes for v in ks._arrays.values())
    assert held == field_workspace_bytes(sc)
    n, F, nd = int(np.prod(shape)), 3, len(shape)
    if method == "lod":
        grows = 8 * n
    elif pre:
        grows = 4 * F * (8 + 2 * nd) * n
    else:
        grows = multigrid_bytes(shape, F)
    small = field_workspace_bytes(sc) - grows
    # O(F x (kinds x states + edge lengths)), and the reductions' column sums and maxima (16 B
    # per field and site of a plane), not O(voxels)
    assert 0 < small < 8192 + 16 * F * n // shape[0]


def test_lod_fits_1024_cubed_with_five_fields():
    """The budget the run's memory check relies on: 1024^3 voxels, 5 fields, LOD needs 8 B per
    voxel of workspace (with 20 B of fields and 10 B of cell state: 38 B per voxel, 40.8 GB)."""
    fields = "".join(
        f"""
[fields.f{i}]
units = "uM"
diffusion_um2_per_min = 1e4
boundary = [{{ faces = ["all"], kind = "dirichlet", value = 1.0 }}]
"""
        for i in range(4)
    )
    text = fields_text((1024, 1024, 1024), "lod", dt_field=0.01).split("[fields.erl]")[0]
    sc = tmesim.loads_scenario(text + fields)
    assert len(sc.fields) == 5
    n = 1024**3
    ws = field_workspace_bytes(sc)
    assert 8 * n <= ws < 8 * n + (1 << 20)  # + coefficient tables (3 x 3 x 1024 x 5)
    assert ws + (4 * 5 + 10) * n < 80e9 / 1.9  # 80 GB with room to spare
    adi = tmesim.loads_scenario(text.replace('method = "lod"', 'method = "adi"') + fields)
    assert multigrid_bytes((1024,) * 3, 5) <= field_workspace_bytes(adi)
    # + the column sums (float64) and maxima (two float32) of the reductions: 16 B per field
    # and plane position
    assert field_workspace_bytes(adi) < multigrid_bytes((1024,) * 3, 5) + 16 * 5 * 1024**2 + (
        1 << 20
    )
    line = tmesim.loads_scenario(
        text.replace('method = "lod"', 'method = "adi"\npreconditioner = "adi"') + fields
    )
    assert field_workspace_bytes(line) >= 4 * 5 * 14 * n


# ------------------------------------------------------------------------------------- primitives
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


def random_line_system(g, shape, F, axis):
    """A random line system along ``axis`` as the CG preconditioner builds it: the coupling k
    (F, 1, ..), the base diagonal of each line and a per-voxel extra diagonal with pinned voxels
    (1e20)."""
    sl = (F,) + (1,) * (len(shape) - 1)
    kf = g.uniform(0.01, 30, F)
    base = F_.line_diagonal(kf, shape[axis], g.random(F) < 0.5, g.random(F) < 0.5)
    k = kf.reshape(sl).astype(np.float32)
    base = base.reshape((-1,) + sl).astype(np.float32)
    extra = g.uniform(0, 3, (F,) + shape).astype(np.float32)
    extra[g.random(extra.shape) < 0.1] = np.float32(1e20)  # pinned voxels
    return k, base, extra


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
        co = F_.thomas_coefficients(k, shape[axis], lo, hi, g.uniform(0, 0.5, F), ndim, coef_dtype)
        x = g.uniform(-5, 50, (F,) + shape).astype(np.float32)
        want = F_.thomas_solve(x.copy(), axis, co)
        got = FK.thomas_solve(x.copy(), axis, co, launcher=launcher)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES)
def test_thomas_solve_diag_bit_exact(launcher, shape):
    g = np.random.default_rng(11 + len(shape))
    F, ndim = 2, len(shape)
    for axis in range(ndim):
        k, base, extra = random_line_system(g, shape, F, axis)
        x = g.uniform(-5, 50, (F,) + shape).astype(np.float32)
        slice_shape = np.moveaxis(x, axis + 1, 0).shape[1:]
        want = F_.thomas_solve_diag(
            x.copy(), axis, k, base, extra, np.empty_like(x), np.empty(slice_shape, np.float32)
        )
        got = FK.thomas_solve_diag(
            x.copy(), axis, k, base, extra, np.empty_like(x), launcher=launcher
        )
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES)
def test_thomas_factored_bit_exact(launcher, shape):
    """Factor once + solve (the preconditioner's split of thomas_solve_diag)."""
    if not hasattr(F_, "thomas_factor_diag"):
        pytest.skip("tmesim.steps.fields has no thomas_factor_diag in this version")
    g = np.random.default_rng(23 + len(shape))
    F, ndim = 2, len(shape)
    for axis in range(ndim):
        k, base, extra = random_line_system(g, shape, F, axis)
        slice_shape = np.moveaxis(extra, axis + 1, 0).shape[1:]
        inv_w, cp_w = np.empty_like(extra), np.empty_like(extra)
        F_.thomas_factor_diag(axis, k, base, extra, inv_w, cp_w, np.empty(slice_shape, np.float32))
        inv, cp = np.empty_like(extra), np.empty_like(extra)
        FK.thomas_factor_diag(axis, k, base, extra, inv, cp, launcher=launcher)
        np.testing.assert_array_equal(inv, inv_w)
        np.testing.assert_array_equal(cp, cp_w)
        x = g.uniform(-5, 50, (F,) + shape).astype(np.float32)
        want = F_.thomas_solve_factored(
            x.copy(), axis, k, inv_w, cp_w, np.empty(slice_shape, np.float32)
        )
        got = FK.thomas_solve_factored(x.copy(), axis, k, inv, cp, launcher=launcher)
        np.testing.assert_array_equal(got, want)
        # and the same as the one-pass solve
        once = FK.thomas_solve_diag(
            x.copy(), axis, k, base, extra, np.empty_like(x), launcher=launcher
        )
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

    # pin codes: the kinds with a stirred bath's held voxels (some empty ones) marked
    pin = np.where((kind == codes.EMPTY) & (g.random(n) < 0.5), medium.BATH, kind).astype(np.uint8)
    vessel, bath = pin == codes.VESSEL, pin == medium.BATH
    assert vessel.any() and bath.any()
    pinned = np.flatnonzero(vessel | bath)
    r = g.normal(size=(F, n)).astype(np.float32)
    want = np.subtract(b, r)
    want[:, pinned] = 0
    np.testing.assert_array_equal(FK.residual(b, r.copy(), pin, launcher=launcher), want)

    vv = g.uniform(0, 40, F).astype(np.float32)
    bv = g.uniform(0, 40, F).astype(np.float32)
    want = c.copy()
    want[:, vessel] = vv[:, None]
    want[:, bath] = bv[:, None]
    np.testing.assert_array_equal(FK.set_pinned(c.copy(), pin, vv, bv, launcher=launcher), want)

    tau = g.uniform(1e-4, 1e-2, F).astype(np.float32).reshape(F, 1)
    scale = tau * np.float32(0.5)
    want = np.multiply(diag, scale)
    want[:, pinned] = np.float32(1e20)
    got = FK.factor_diag(diag, scale, pin, 1e20, np.empty_like(diag), launcher=launcher)
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


@pytest.mark.parametrize("shape", [(9, 7), (5, 6, 4), (1, 8), (4, 1, 5)])
def test_lod_sweep_kernel_bit_exact(launcher, shape):
    """tm_lod_sweep against its numpy twin on random inputs: every axis, with and without the
    reaction, Dirichlet terms present, zero or absent (NaN) at either end, random vessels."""
    g = np.random.default_rng(31 + len(shape) * 10 + shape[0])
    F, nd = 3, len(shape)
    n = int(np.prod(shape))
    nk, ns = len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES)
    U_t = g.uniform(0, 10, (F, nk * ns)).astype(np.float32)
    S_t = g.uniform(0, 3, (F, nk * ns)).astype(np.float32)
    kind, state = random_cells(g, n)
    # pin codes: some empty voxels held by a stirred bath
    kind[(kind == codes.EMPTY) & (g.random(n) < 0.4)] = medium.BATH
    for axis in range(nd):
        k = g.uniform(0.01, 30, F)
        co = F_.thomas_coefficients(
            k,
            shape[axis],
            g.random(F) < 0.5,
            g.random(F) < 0.5,
            g.uniform(0, 0.5, F),
            nd,
            np.float64,
        )
        inv, kinv, cp = (
            np.ascontiguousarray(getattr(co, p).reshape(shape[axis], F))
            for p in ("inv", "kinv", "cp")
        )
        for f in range(F):
            for react in (False, True):
                kg = [
                    np.nan if g.random() < 0.3 else (0.0 if g.random() < 0.3 else g.uniform(0, 20))
                    for _ in range(2)
                ]
                x = g.uniform(-1, 40, shape)
                x.reshape(-1)[:3] = -0.0  # a -0.0 meets an added 0.0
                args = (
                    axis,
                    f,
                    inv,
                    kinv,
                    cp,
                    kg[0],
                    kg[1],
                    kind,
                    float(g.uniform(0, 40)),
                    react,
                    state,
                    U_t,
                    S_t,
                    float(g.uniform(0, 0.2)),
                    0.37,
                    float(g.uniform(0, 40)),
                )
                want = F_.lod_sweep(x.copy(), *args)
                got = FK.lod_sweep(x.copy(), *args, launcher=launcher)
                assert np.array_equal(np.signbit(got), np.signbit(want))
                np.testing.assert_array_equal(got, want)


def test_cg_rhs_kernel_bit_exact(launcher):
    g = np.random.default_rng(8)
    c = g.uniform(0, 40, (3, 500)).astype(np.float32)
    S = g.uniform(0, 3, (3, 500)).astype(np.float32)
    inv_dt = np.float32(1.0 / 0.37)
    want = np.multiply(c, inv_dt)
    want += S
    np.testing.assert_array_equal(
        FK.cg_rhs(c, S, inv_dt, np.empty_like(c), launcher=launcher), want
    )


# ------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_laplacian_on_device_arrays(gpu_launcher):
    import cupy

    g = np.random.default_rng(1)
    F, shape = 3, (33, 17, 20)
    c = g.uniform(0, 50, (F,) + shape).astype(np.float32)
    Dh2 = g.uniform(1, 300, F).astype(np.float32).reshape((F, 1, 1, 1))
    ghosts = random_ghosts(g, F, 3)
    want = F_.laplacian(c, Dh2, ghosts, np.empty_like(c))
    got = FK.laplacian(
        cupy.asarray(c),
        cupy.asarray(Dh2),
        ghosts,
        cupy.empty(c.shape, cupy.float32),
        launcher=gpu_launcher,
    )
    np.testing.assert_array_equal(cupy.asnumpy(got), want)


@pytest.mark.gpu
@pytest.mark.parametrize("shape, method, dt_field, o2_faces, drug_faces", CASES)
def test_gpu_matches_numpy(gpu_launcher, shape, method, dt_field, o2_faces, drug_faces):
    """The driver on the GPU with device-resident fields and cells.

    lod: bit for bit numpy's (only correctly rounded float64 kernel arithmetic, no reductions).
    adi: the CG inner products are cupy reductions, summed in another order than numpy's einsum
    (the products are exact in float64 on both sides, so the dots differ by float64 rounding of
    the sum, ~1e-16 relative). alpha and beta are cast to float32, so most iterations use the very
    same float32 scalars and the rest differ by one float32 ulp (6e-8 relative) of one update;
    with identical iteration counts the fields then agree to 1e-5 of their scale. The stopping
    test (residual <= tol * start residual) can flip by one iteration when a residual lies within
    that rounding of the threshold; the two iterates then differ by one CG update, whose size is
    bounded by the remaining error, about tol times the field's change (tol = 1e-3 here): allowed
    2 tol of the field's scale."""
    import cupy

    sc = tmesim.loads_scenario(
        fields_text(shape, method, dt_field=dt_field, o2_faces=o2_faces, drug_faces=drug_faces)
    )
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    ref = FieldSolver(sc, grid)
    ks = KernelFieldSolver(sc, grid, launcher=gpu_launcher)
    g = np.random.default_rng(1)
    n = grid.n_sites
    want = initial_fields(g, n)
    got = cupy.asarray(want)
    kind, state = random_cells(g, n)
    tol = sc.solver.tolerance
    for s in range(4):
        supply = np.array([np.nan, 0.5 + 0.75 * s, np.nan])
        ref.set_supply(supply)
        ks.set_supply(supply)
        ref.step(want, kind, state)
        ks.step(got, cupy.asarray(kind), cupy.asarray(state))
        host = cupy.asnumpy(got)
        if method == "lod":
            np.testing.assert_array_equal(host, want)
            assert ks.last_sweeps == ref.last_sweeps
        else:
            assert abs(ks.last_sweeps - ref.last_sweeps) <= 1
            scale = np.abs(want).max(axis=1, keepdims=True)
            slack = 1e-5 if ks.last_sweeps == ref.last_sweeps else 2 * tol
            assert (np.abs(host - want) <= slack * scale).all(), s
            got = cupy.asarray(want)  # restart from numpy's state: errors do not compound
        kind, state = evolve(g, kind)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["adi", "lod"])
def test_gpu_runs_are_bitwise_reproducible(gpu_launcher, method):
    import cupy

    sc = tmesim.loads_scenario(fields_text((20, 18, 16), method, dt_field=2.0))
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    out = []
    for _ in range(2):
        ks = KernelFieldSolver(sc, grid, launcher=gpu_launcher)
        g = np.random.default_rng(2)
        f = cupy.asarray(initial_fields(g, grid.n_sites))
        kind, state = random_cells(g, grid.n_sites)
        sweeps = []
        for _ in range(3):
            ks.step(f, cupy.asarray(kind), cupy.asarray(state))
            sweeps.append(ks.last_sweeps)
            kind, state = evolve(g, kind)
        out.append((cupy.asnumpy(f), sweeps))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]


def test_a_field_decayed_into_denormals_converges_at_once(launcher):
    """A secreted signal whose sources are gone decays into float32's denormal range (a TAM
    recruitment signal in the therapy library reached +-1e-42). Its residual cannot fall by the
    relative tolerance there; both solvers must count it as converged (RESIDUAL_ZERO) instead
    of running to max_iterations every step. Regression: CG stalled at 200 iterations, 1e-31."""
    _sc, ref, ks = solvers(launcher, (24, 24), "adi", tolerance=1e-3, max_iterations=50)
    g = np.random.default_rng(8)
    kind, state = random_cells(g, 576)
    kind[(kind == codes.CAF) | (kind == codes.TAM)] = codes.EMPTY  # no hgf secretion left
    want = initial_fields(g, 576)
    want[2] = g.choice(np.array([-4e-45, 0.0, 1e-44, 3e-43, 2e-42], np.float32), 576)
    got = want.copy()
    for solver, f in ((ref, want), (ks, got)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            for _ in range(3):
                solver.step(f, kind, state)
                assert solver.last_sweeps < 50
    np.testing.assert_array_equal(got, want)
    assert np.abs(want[2]).max() < 1e-40


@pytest.mark.parametrize("method", ["adi", "adi/line"])
def test_a_field_that_overflows_is_reported_not_passed_as_converged(launcher, method):
    """A diffusion coefficient so large that D/h^2 overflows float32 makes the first CG residual
    non-finite: the field step reports the field as non-finite (numpy and kernels alike), as a
    sweep's failing runs rely on, instead of leaving the field as it was (a field whose first
    residual is within its tolerance leaves the iteration at once; an infinite residual and
    threshold once passed for that). LOD's float64 coefficients stay finite here."""
    method, pre = _method(method)
    text = fields_text((12, 12), method, **pre).replace(
        "diffusion_um2_per_min = 5e3", "diffusion_um2_per_min = 1e300"
    )
    sc = tmesim.loads_scenario(text)
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    g = np.random.default_rng(4)
    kind, state = random_cells(g, grid.n_sites)
    for solver in (FieldSolver(sc, grid), KernelFieldSolver(sc, grid, launcher=launcher)):
        f = initial_fields(g, grid.n_sites)
        with pytest.raises(FieldSolverError, match="hgf"):
            solver.step(f, kind, state)
