"""The field solver on the kernels (``kernels/fields.cu``): :class:`KernelFieldSolver`, the twin
of :class:`tmesim.steps.fields.FieldSolver`, and the launch function of every field kernel, each
with the arguments of the numpy function it mirrors (in :mod:`tmesim.steps.fields`) plus the
launcher to run on.

The numpy solver is built inside from the same scenario and supplies every coefficient table
(rates, ghosts, line factors' k and base, pseudo-step tau, LOD's Thomas coefficients), so the two
cannot drift apart; the driver runs the same operations in the same order on ``L.xp`` arrays
(numpy with :class:`tmesim.launch.PortableLauncher`, cupy with
:class:`tmesim.launch.CupyLauncher`).

``adi``: FieldSolver._adi_step's preconditioned conjugate gradients, every vector operation a
kernel. The per-field inner products and largest |r| are xp reductions: on the CPU the numpy
solver's own ``dots`` and ``absmax`` (results bit for bit numpy's), on the GPU cupy reductions
(float64 sums of exact float32 products; deterministic for a given shape but summed in another
order than numpy's, so the GPU iterates agree with numpy's to the rounding of the dots). alpha,
beta and the stopping threshold stay on the device: **one device-to-host copy per CG iteration**
(the boolean stopping test), plus one per agent step for the non-finite check (and two more,
only when max_iterations is reached, for the warning's numbers). The other direction: set_supply
copies the (F,) vessel values and (adi) the (F, 3, 2) ghosts to the device (a few bytes, once
per call); lod passes its other per-field numbers as kernel arguments (no copies).

``lod``: FieldSolver._lod_run, one field at a time in a float64 work array of one field (8 B per
voxel), with the line solves (tm_lod_sweep) taking the vessel reset and, on the last axis, the
implicit reaction fused in; the reaction reads the float32 rate tables per voxel instead of
numpy's two float64 coefficient arrays per field. Bit for bit numpy's result.

Stirred medium (tmesim.steps.medium): once per agent step :func:`medium_pins` (the ray launches,
the in-place distance passes and tm_medium_pins) turns the kinds into pin codes, which every
pinning kernel then reads instead of the kinds (tm_rates still reads the kinds); bit for bit
medium.pin_codes, whatever the work order.

Memory: :func:`field_workspace_bytes` counts every array the solver allocates (the same list
that allocates them, so the count is exact); the fields themselves (4 B per field per voxel) and
the cell state are not included.
"""

from __future__ import annotations

import math

import numpy as np

from .. import codes
from ..grid import Grid
from ..launch import check_arrays, flat_f32, grid3
from ..scenario import Scenario
from . import fields as F_
from . import medium
from . import multigrid as MG
from .fields import FieldSolver, FieldSolverError

__all__ = ["FieldSolverError", "KernelFieldSolver", "field_workspace_bytes"]


# ---------------------------------------------------------------------------------------- kernels
def pack_ghosts(xp, ghosts, F: int, ndim: int):
    """(F, 3, 2) float32 ghost values per kernel axis (z, y, x) and face (lo, hi) from the numpy
    solver's per-axis pairs (None or (F, 1, ..., 1) arrays); NaN marks a no-flux face."""
    g = xp.full((F, 3, 2), np.nan, dtype=xp.float32)
    for a, pair in enumerate(ghosts):
        for side, v in enumerate(pair):
            if v is not None:
                g[:, a + 3 - ndim, side] = xp.asarray(v, dtype=xp.float32).reshape(F)
    return g


def _stencil(L, c, D_over_h2, ghosts):
    """The grid arguments (F, nz, ny, nx, ndim) of a 7-point-stencil kernel over c (F, *grid),
    and its per-field D/h^2 and packed ghost values."""
    F = c.shape[0]
    nz, ny, nx, ndim = grid3(c.shape[1:])
    head = (np.int32(F), nz, ny, nx, ndim)
    return head, flat_f32(L.xp, D_over_h2, F), pack_ghosts(L.xp, ghosts, F, int(ndim))


def laplacian(c, D_over_h2, ghosts, out, *, launcher):
    """out = D lap(c) with ghost values per face: twin of :func:`tmesim.steps.fields.laplacian`.

    Args: as the numpy function; c and out (F, *grid) float32, C-contiguous.
    """
    check_arrays(c, out, dtype=np.float32)
    head, D, g = _stencil(launcher, c, D_over_h2, ghosts)
    launcher("tm_laplacian", c.size, *head, c, D, g, out)
    return out


def apply_operator(p, diag, D_over_h2, ghosts, out, *, launcher):
    """out = diag * p - D lap(p): twin of ``FieldSolver._apply(p, diag, out, lap, ghosts)``
    (the fused kernel needs no ``lap`` scratch)."""
    check_arrays(p, diag, out, dtype=np.float32)
    head, D, g = _stencil(launcher, p, D_over_h2, ghosts)
    launcher("tm_apply_operator", p.size, *head, p, diag, D, g, out)
    return out


def _lines(x, axis: int):
    """The work count and leading arguments (F, nz, ny, nx, kernel axis) of a line-solve kernel
    along grid ``axis`` of x (F, *grid): one work item per line."""
    F = x.shape[0]
    nz, ny, nx, ndim = grid3(x.shape[1:])
    m = x.shape[axis + 1]
    return (F * x[0].size // m, np.int32(F), nz, ny, nx, np.int32(axis + 3 - int(ndim)))


def thomas_solve(x, axis: int, co, tmp=None, *, launcher):
    """Precomputed tridiagonal solves along grid ``axis`` of x (F, *grid), in place: twin of
    :func:`tmesim.steps.fields.thomas_solve` (``tmp`` is accepted and unused)."""
    L = launcher
    check_arrays(x, dtype=np.float32)
    F, m = x.shape[0], x.shape[axis + 1]
    coef = [
        L.xp.ascontiguousarray(L.xp.asarray(a, dtype=L.xp.float64).reshape(m, F))
        for a in (co.inv, co.kinv, co.cp)
    ]
    L("tm_thomas_solve", *_lines(x, axis), x, *coef)
    return x


def thomas_solve_diag(x, axis: int, k, base, extra, cp, tmp=None, *, launcher):
    """Tridiagonal solves with a per-voxel diagonal along grid ``axis``, in place: twin of
    :func:`tmesim.steps.fields.thomas_solve_diag` (``cp`` is scratch of x's shape; ``tmp`` is
    accepted and unused)."""
    L = launcher
    check_arrays(x, extra, cp, dtype=np.float32)
    F, m = x.shape[0], x.shape[axis + 1]
    L(
        "tm_thomas_solve_diag",
        *_lines(x, axis),
        x,
        extra,
        cp,
        flat_f32(L.xp, k, F),
        flat_f32(L.xp, base, m * F),
    )
    return x


def thomas_factor_diag(axis: int, k, base, extra, inv, cp, tmp=None, *, launcher):
    """Per-voxel elimination factors for :func:`thomas_solve_factored`: twin of
    ``tmesim.steps.fields.thomas_factor_diag`` (``tmp`` is accepted and unused)."""
    L = launcher
    check_arrays(extra, inv, cp, dtype=np.float32)
    F, m = extra.shape[0], extra.shape[axis + 1]
    L(
        "tm_thomas_factor_diag",
        *_lines(extra, axis),
        extra,
        flat_f32(L.xp, k, F),
        flat_f32(L.xp, base, m * F),
        inv,
        cp,
    )


def thomas_solve_factored(x, axis: int, k, inv, cp, tmp=None, *, launcher):
    """Line solves with factors from :func:`thomas_factor_diag`, in place: twin of
    ``tmesim.steps.fields.thomas_solve_factored`` (``tmp`` is accepted and unused)."""
    L = launcher
    check_arrays(x, inv, cp, dtype=np.float32)
    L("tm_thomas_solve_factored", *_lines(x, axis), x, flat_f32(L.xp, k, x.shape[0]), inv, cp)
    return x


def rates(kind, tumor_state, U_table, S_table, *, launcher):
    """Per-voxel U (1/min) and S (units/min), (F, n) float32, from (F, n_kinds, n_states) tables:
    twin of :meth:`tmesim.steps.fields.FieldSolver.rates` (which takes its tables from self)."""
    L = launcher
    xp = L.xp
    F, nk, ns = U_table.shape
    n = kind.size
    U = xp.empty((F, n), dtype=xp.float32)
    S = xp.empty((F, n), dtype=xp.float32)
    L(
        "tm_rates",
        F * n,
        np.int32(F),
        np.int64(n),
        np.int32(nk * ns),
        np.int32(ns),
        xp.ascontiguousarray(kind),
        xp.ascontiguousarray(tumor_state),
        flat_f32(xp, U_table),
        flat_f32(xp, S_table),
        U,
        S,
    )
    return U, S


def cg_setup(c, U, S, inv_dt, *, launcher):
    """diag = U + inv_dt and b = c * inv_dt + S (float32): as FieldSolver._adi_step begins."""
    L = launcher
    check_arrays(c, U, S, dtype=np.float32)
    diag = L.xp.empty_like(c)
    b = L.xp.empty_like(c)
    L("tm_cg_setup", c.size, np.int64(c.size), np.float32(inv_dt), c, U, S, diag, b)
    return diag, b


def residual(b, r, kind, *, launcher):
    """r = b - r, 0 at pinned voxels (in place): ``np.subtract(b, r, out=r); r[:, pinned] = 0``.
    ``kind``: (n,) uint8 pin codes (FieldSolver.pins: vessels and held bath voxels are pinned)."""
    L = launcher
    check_arrays(b, r, dtype=np.float32)
    L("tm_residual", r.size, np.int32(r.shape[0]), np.int64(kind.size), b, r, kind)
    return r


def set_pinned(x, kind, value, bath, *, launcher):
    """x[:, vessel voxels] = value (F,) and x[:, held bath voxels] = bath (F,) in place (``kind``
    the pin codes): ``x[:, pinned] = pin_value`` of FieldSolver.pins."""
    L = launcher
    check_arrays(x, dtype=np.float32)
    F = x.shape[0]
    L(
        "tm_set_pinned",
        x.size,
        np.int32(F),
        np.int64(kind.size),
        x,
        kind,
        flat_f32(L.xp, value, F),
        flat_f32(L.xp, bath, F),
    )
    return x


def medium_exterior(kind, shape, axis: int, first: bool, pin, *, launcher):
    """The ray test along grid ``axis`` (tm_medium_exterior): pin = 1 where the voxel and every
    voxel to the lo or hi face along the axis are empty (OR-ed into pin unless ``first``); over
    every axis, :func:`tmesim.steps.medium.exterior`."""
    L = launcher
    check_arrays(kind, pin, dtype=np.uint8)
    nz, ny, nx, ndim = grid3(shape)
    m = shape[axis]
    L(
        "tm_medium_exterior",
        kind.size // m,
        nz,
        ny,
        nx,
        np.int32(axis + 3 - int(ndim)),
        np.int32(bool(first)),
        kind,
        pin,
    )
    return pin


def medium_distance(kind, shape, cap: int, D, *, launcher):
    """The capped chamfer distance from the occupied voxels into D ((n,) uint16, in place):
    tm_medium_distance_first, then tm_medium_distance n_passes(cap) - 1 times; twin of
    :func:`tmesim.steps.medium.distance`."""
    L = launcher
    check_arrays(kind, dtype=np.uint8)
    check_arrays(D, dtype=np.uint16)
    nz, ny, nx, _ = grid3(shape)
    n = np.int64(kind.size)
    L("tm_medium_distance_first", kind.size, n, nz, ny, nx, kind, np.int32(cap), D)
    for _ in range(medium.n_passes(cap) - 1):
        L("tm_medium_distance", kind.size, n, nz, ny, nx, kind, np.int32(cap), D)
    return D


def medium_pins(kind, shape, cap: int, D, pin, *, launcher):
    """The pin codes of a stirred bath into pin ((n,) uint8; D (n,) uint16 scratch): the ray test
    on every grid axis, the distance passes, then tm_medium_pins; twin of
    :func:`tmesim.steps.medium.pin_codes`."""
    for axis in range(len(shape)):
        medium_exterior(kind, shape, axis, axis == 0, pin, launcher=launcher)
    medium_distance(kind, shape, cap, D, launcher=launcher)
    launcher("tm_medium_pins", kind.size, np.int64(kind.size), kind, D, np.int32(cap), pin)
    return pin


def factor_diag(diag, scale, kind, pin, out, *, launcher):
    """out = diag * scale[f], ``pin`` at pinned voxels (``kind``: pin codes):
    ``np.multiply(diag, tau * share, out=extra); extra[:, pinned] = PIN`` (pass scale = the
    float32 ``tau * np.float32(share)``)."""
    L = launcher
    check_arrays(diag, out, dtype=np.float32)
    F = diag.shape[0]
    L(
        "tm_factor_diag",
        diag.size,
        np.int32(F),
        np.int64(kind.size),
        diag,
        flat_f32(L.xp, scale, F),
        kind,
        np.float32(pin),
        out,
    )
    return out


def axpy(y, alpha, x, *, launcher):
    """y += alpha[f] * x in place (alpha (F,) float32): ``y += a_b * x``; pass -alpha for
    ``y -= a_b * x`` (identical in IEEE arithmetic)."""
    L = launcher
    check_arrays(y, x, dtype=np.float32)
    F = y.shape[0]
    L("tm_axpy", y.size, np.int32(F), np.int64(y.size // F), y, flat_f32(L.xp, alpha, F), x)
    return y


def scale_add(p, beta, z, *, launcher):
    """p = p * beta[f] + z in place: ``p *= beta; p += z``."""
    L = launcher
    check_arrays(p, z, dtype=np.float32)
    F = p.shape[0]
    L("tm_scale_add", p.size, np.int32(F), np.int64(p.size // F), p, flat_f32(L.xp, beta, F), z)
    return p


def cg_rhs(c, S, inv_dt, b, *, launcher):
    """b = c * inv_dt + S (float32) in place: ``np.multiply(c, inv_dt, out=b); b += S`` at the
    start of each field step of ``FieldSolver._adi_step``."""
    L = launcher
    check_arrays(c, S, b, dtype=np.float32)
    L("tm_cg_rhs", c.size, np.int64(c.size), np.float32(inv_dt), c, S, b)
    return b


def lod_sweep(
    x,
    axis: int,
    f: int,
    inv,
    kinv,
    cp,
    kg_lo: float,
    kg_hi: float,
    kind,
    vessel: float,
    react: bool,
    tumor_state,
    U_table,
    S_table,
    decay: float,
    dt: float,
    bath: float = float("nan"),
    *,
    launcher,
):
    """One LOD line solve of field ``f`` along grid ``axis`` of x (*grid) float64, in place, with
    the vessel reset and (``react``) the reaction update fused in: twin of
    :func:`tmesim.steps.fields.lod_sweep` (one ``lod_line_solve`` of ``FieldSolver._lod_run`` and
    the per-voxel lines after it; see ``tm_lod_sweep``).

    Args:
        x: (*grid) float64 work array of one field.
        inv, kinv, cp: (m, F) float64 ThomasCoefficients of that axis (device arrays).
        kg_lo, kg_hi: Dirichlet terms k g of this field (0.0 without a bath on the face; NaN when
            the face is no-flux for every field, i.e. numpy's ghost is None).
        kind: (n_sites,) uint8 pin codes; tumor_state: (n_sites,) uint8.
        vessel: the field's vessel value; U_table, S_table: (F, n_codes) float32 rate tables;
        decay: 1/min; dt: the field step, min; bath: the field's bath value (held voxels).
    """
    L = launcher
    check_arrays(x, inv, kinv, cp, dtype=np.float64)
    check_arrays(kind, tumor_state, dtype=np.uint8)
    check_arrays(U_table, S_table, dtype=np.float32)
    nz, ny, nx, ndim = grid3(x.shape)
    m = x.shape[axis]
    F = inv.shape[-1]
    L(
        "tm_lod_sweep",
        x.size // m,
        nz,
        ny,
        nx,
        np.int32(axis + 3 - int(ndim)),
        np.int32(F),
        np.int32(f),
        x,
        inv,
        kinv,
        cp,
        np.float64(kg_lo),
        np.float64(kg_hi),
        kind,
        np.float64(vessel),
        np.float64(bath),
        np.int32(bool(react)),
        tumor_state,
        np.int32(U_table.shape[-1]),
        np.int32(len(codes.TUMOR_STATE_NAMES)),
        U_table,
        S_table,
        np.float64(decay),
        np.float64(dt),
    )
    return x


# ---------------------------------------------------------------------------------------- solver
def _factor_keys(ndim: int) -> list[tuple[int, float]]:
    """The distinct (axis, share) line factors of the ADI preconditioner, in first-use order
    (FieldSolver._setup_adi's order x/2 ... z ... x/2 repeats all but the middle one)."""
    order = list(range(ndim - 1)) + [ndim - 1] + list(range(ndim - 2, -1, -1))
    keys = []
    for a in order:
        key = (a, (1.0 if a == ndim - 1 else 0.5) / ndim)
        if key not in keys:
            keys.append(key)
    return keys


def _mg_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The grid shape of every multigrid level, fine to coarsest (tmesim.steps.multigrid)."""
    out = [tuple(shape)]
    while len(out) < MG.n_levels(shape):
        out.append(MG.coarse_shape(out[-1]))
    return out


def _array_specs(
    method: str,
    F: int,
    shape: tuple[int, ...],
    stirred: bool = False,
    preconditioner: str = "multigrid",
) -> dict[str, tuple[tuple, type]]:
    """Every device array a KernelFieldSolver holds, name -> (shape, dtype): the one list that
    both allocates them and counts them (field_workspace_bytes).

    adi: per field and voxel eight float32 vectors (U, which is reused as the line factors'
    diagonal scratch once the operator's diagonal is built; S, diag, b, r, z, p, q), and for the
    preconditioner
    - multigrid: on the fine level the edge weights (ndim vectors) and the Jacobi diagonal (U
      holds the level's w, b its V-cycle iterate and q its residual: each is free while the
      V-cycle runs), 1 B of free flags; on each coarser level w, e (ndim), d, x, t and r, about
      a seventh (3D; a third in 2D) of the fine level's voxels in all: in 3D about
      4 F (12 + 8/7) + 1.2 B per voxel;
    - adi: two vectors per distinct line factor (inv, cp; 2 in 2D, 3 in 3D), i.e.
      4 F (8 + 2 ndim) B per voxel in all.
    lod: one float64 work array of one field, 8 B per voxel.
    A stirred medium (tmesim.steps.medium): the pin codes (uint8) and the distance buffer
    (uint16), 3 B per voxel.
    Both: small tables (rates, per-field constants, ghosts, LOD coefficients)."""
    ndim = len(shape)
    nk, ns = len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES)
    f32, f64 = np.float32, np.float64
    specs: dict[str, tuple[tuple, type]] = {
        "U_table": ((F, nk * ns), f32),
        "S_table": ((F, nk * ns), f32),
        "vessel": ((F,), f32),
        "bath": ((F,), f32),
        "zeros": ((F,), f32),
    }
    if stirred:
        specs["pin"] = ((math.prod(shape),), np.uint8)
        specs["bath_dist"] = ((math.prod(shape),), np.uint16)
    if method == "adi":
        full = (F,) + tuple(shape)
        mg = preconditioner == "multigrid"
        # multigrid never stores U (tm_rates_diag); the line factors use it as scratch
        for name in (
            ("S", "diag", "b", "r", "z", "p", "q")
            if mg
            else ("U", "S", "diag", "b", "r", "z", "p", "q")
        ):
            specs[name] = (full, f32)
        specs["D_over_h2"] = ((F,), f32)
        specs["field_sweeps"] = ((F,), np.int64)
        plane = math.prod(shape) // shape[0]
        specs["cols"] = ((F, plane), f64)  # column sums of a dot product (tmesim.reduce)
        specs["colmax"] = ((F, plane), f32)  # column maxima of |r|
        specs["colmax_b"] = ((F, plane), f32)  # and of |b| at the start of a field step
        specs["ones"] = ((F,), np.uint8)  # every field active: the flags of a run's launch
        specs["ghosts"] = ((F, 3, 2), f32)
        specs["ghosts0"] = ((F, 3, 2), f32)
        if preconditioner == "multigrid":
            specs["mg_dir"] = ((F, ndim, 2), np.uint8)
            # level 0 is never stored: its kernels recompute w, e, d from diag and the pins
            for lvl, shp in enumerate(_mg_shapes(tuple(shape))[1:], start=1):
                nl = math.prod(shp)
                specs[f"mg_e{lvl}"] = ((F, ndim, nl), f32)
                specs[f"mg_d{lvl}"] = ((F, nl), f32)
                specs[f"mg_free{lvl}"] = ((nl,), np.uint8)
                for name in ("w", "x", "t", "r"):
                    specs[f"mg_{name}{lvl}"] = ((F, nl), f32)
            return specs
        for j, (a, _) in enumerate(_factor_keys(ndim)):
            specs[f"inv{j}"] = (full, f32)
            specs[f"cp{j}"] = (full, f32)
            specs[f"scale{j}"] = ((F,), f32)
            specs[f"k{j}"] = ((F,), f32)
            specs[f"base{j}"] = ((shape[a] * F,), f32)
    else:
        specs["w"] = (tuple(shape), f64)
        for a in range(ndim):
            for part in ("inv", "kinv", "cp"):
                specs[f"lod_{part}{a}"] = ((shape[a], F), f64)
    return specs


def field_workspace_bytes(sc: Scenario) -> int:
    """Bytes of device memory a KernelFieldSolver for ``sc`` allocates, beyond the fields array
    (F, n_sites) float32 and the cell state it is given: for lod 8 B per voxel (one field's
    float64 work array), for adi 4 F (8 + 2 ndim) B per voxel, plus 3 B per voxel with a stirred
    medium (pin codes and distances) and small tables. Exact for a
    step given a tumor_state (a step without one adds a zero state array, 1 B per voxel) and not
    counting the few-element temporaries of the reductions."""
    F = len(sc.fields)
    if F == 0:
        return 0
    specs = _array_specs(
        sc.solver.method, F, tuple(sc.grid.shape), sc.medium.stirred, sc.solver.preconditioner
    )
    return int(sum(math.prod(shp) * np.dtype(dt).itemsize for shp, dt in specs.values()))


class KernelFieldSolver:
    """Advances every field by one agent step on the kernels: twin of FieldSolver (same
    ``step``, ``set_supply``, ``rates``, ``last_sweeps``, ``F``, ``method``, ``vessel_value``,
    ``n_sub``, ``dt``).

    Args:
        sc: the scenario (fields, solver settings).
        grid: the lattice.
        launcher: where to run (``backend.launcher()``); arrays given to ``step`` and
            returned by ``rates`` are ``launcher.xp`` arrays.
    """

    def __init__(self, sc: Scenario, grid: Grid, *, launcher):
        self.L = L = launcher
        self.xp = xp = L.xp
        self.ref = ref = FieldSolver(sc, grid, threads=1)
        self.sc, self.grid, self.ndim = sc, grid, grid.ndim
        self.F, self.method, self.n_sub, self.dt = ref.F, ref.method, ref.n_sub, ref.dt
        self.last_sweeps = 0
        self._warned = False  # max_iterations reached (warned once per solver)
        self._zero_state = None  # tumor_state of a step given none (allocated if needed)
        self._arrays = {}
        if self.F == 0:
            return
        self.stirred, self.bath_cap = ref.stirred, ref.bath_cap
        self.multigrid = sc.solver.preconditioner == "multigrid"
        specs = _array_specs(
            self.method, self.F, grid.shape, self.stirred, sc.solver.preconditioner
        )
        for name, (shape, dtype) in specs.items():
            self._arrays[name] = xp.zeros(shape, dtype=dtype)
        a = self._arrays
        F, nd = self.F, self.ndim
        # float32 tables as FieldSolver.rates casts them
        a["U_table"][...] = xp.asarray(ref.U_table.reshape(F, -1).astype(np.float32))
        a["S_table"][...] = xp.asarray(ref.S_table.reshape(F, -1).astype(np.float32))
        if self.method == "adi":
            a["D_over_h2"][...] = xp.asarray(ref.D_over_h2.reshape(F))
            a["ghosts0"][...] = xp.asarray(pack_ghosts(np, ref.ghosts0, F, nd))
            a["ones"][...] = 1
            if self.multigrid:
                dirichlet = np.zeros((F, nd, 2), dtype=np.uint8)
                for ax, (lo, hi) in enumerate(ref.dirichlet):
                    dirichlet[:, ax, 0], dirichlet[:, ax, 1] = lo, hi
                a["mg_dir"][...] = xp.asarray(dirichlet)
                self._mg = _mg_shapes(tuple(grid.shape))
                self._sync_supply()
                return
            tau = ref.tau.astype(np.float32)
            self._plan = []  # per factor of the product: index of its key
            keys = _factor_keys(nd)
            for axis, share, k, base in ref.adi_factors:
                j = keys.index((axis, float(share)))
                self._plan.append(j)
                # the float32 scale numpy uses: tau * np.float32(share)
                a[f"scale{j}"][...] = xp.asarray(tau * np.float32(share))
                a[f"k{j}"][...] = xp.asarray(k.reshape(F))
                a[f"base{j}"][...] = xp.asarray(base.reshape(-1))
        else:
            for ax, co in enumerate(ref.lod_coeffs):
                m = grid.shape[ax]
                for part in ("inv", "kinv", "cp"):
                    a[f"lod_{part}{ax}"][...] = xp.asarray(getattr(co, part).reshape(m, F))
        self._sync_supply()

    @property
    def last_field_sweeps(self) -> np.ndarray:
        """(F,) int64 host array: per field the CG iterations it took part in during the last
        step (adi), or its LOD substeps (FieldSolver.last_field_sweeps)."""
        if self.method == "lod" or self.F == 0:
            return np.full(self.F, self.last_sweeps, dtype=np.int64)
        return _host(self._arrays["field_sweeps"]).astype(np.int64)

    # ----------------------------------------------------------------------------- supply, rates
    @property
    def vessel_value(self) -> np.ndarray:
        """(F, 1) float32 vessel values (host array, shared with the numpy solver)."""
        return self.ref.vessel_value

    def _sync_supply(self) -> None:
        """Device copies of what set_supply changes: vessel values and (adi) packed ghosts."""
        xp, a = self.xp, self._arrays
        a["vessel"][...] = xp.asarray(self.ref.vessel_value.reshape(self.F))
        a["bath"][...] = xp.asarray(self.ref.bath_value.reshape(self.F))
        if self.method == "adi":
            a["ghosts"][...] = xp.asarray(pack_ghosts(np, self.ref.ghosts, self.F, self.ndim))

    def set_supply(self, values) -> None:
        """Set the value that vessels and Dirichlet faces hold each field at, (F,) in field units
        (NaN keeps a field's values): FieldSolver.set_supply, then the device copies."""
        if self.F == 0:
            return
        self.ref.set_supply(values)
        self._sync_supply()

    def rates(self, kind, tumor_state=None):
        """Per-voxel implicit rate U (1/min, decay included) and source S (units/min), (F, n)
        float32 xp arrays, by tm_rates: FieldSolver.rates."""
        if tumor_state is None:
            tumor_state = self.xp.zeros_like(kind)
        a = self._arrays
        nk, ns = len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES)
        return rates(
            kind,
            tumor_state,
            a["U_table"].reshape(self.F, nk, ns),
            a["S_table"].reshape(self.F, nk, ns),
            launcher=self.L,
        )

    def workspace_bytes(self) -> int:
        """Bytes of the device arrays this solver holds now (field_workspace_bytes(sc) plus the
        zero tumor state, once a step was given none)."""
        n = sum(int(v.nbytes) for v in self._arrays.values())
        return n + (0 if self._zero_state is None else int(self._zero_state.nbytes))

    # ----------------------------------------------------------------------------- stepping
    def step(self, fields, kind, tumor_state=None):
        """Advance ``fields`` (F, n_sites) float32 by one agent step in place, given occupants
        ``kind`` and ``tumor_state`` ((n_sites,) uint8; xp arrays, C-contiguous)."""
        if self.F == 0:
            return fields
        xp = self.xp
        check_arrays(fields, dtype=np.float32)
        if tumor_state is None:
            if self._zero_state is None or self._zero_state.shape != kind.shape:
                self._zero_state = xp.zeros_like(kind)
            tumor_state = self._zero_state
        check_arrays(kind, tumor_state, dtype=np.uint8)
        c = fields.reshape((self.F,) + self.grid.shape)
        a = self._arrays
        # pin codes: the kinds, or with a stirred medium the kinds with held voxels marked
        # (FieldSolver.pins); the rates read the true kinds
        pin = kind
        if self.stirred:
            pin = medium_pins(
                kind, self.grid.shape, self.bath_cap, a["bath_dist"], a["pin"], launcher=self.L
            )
        set_pinned(c, pin, a["vessel"], a["bath"], launcher=self.L)
        if self.method == "adi":
            self._arrays["field_sweeps"][...] = 0
            self._adi_prepare(c, kind, tumor_state, pin)
            sweeps = 0
            for _ in range(self.n_sub):
                sweeps += self._adi_step(c, pin)
        else:
            self._lod_run(c, pin, tumor_state)
            sweeps = self.n_sub
        self.last_sweeps = sweeps
        # largest and smallest value per field: NaN propagates through both and an infinity
        # shows in one, so this is isfinite(fields).all() without a (F, n) boolean temporary
        flat = fields.reshape(self.F, -1)
        ext = xp.concatenate([flat.max(axis=1), flat.min(axis=1)])
        if not bool(xp.isfinite(ext).all()):
            ok = np.isfinite(_host(ext)).reshape(2, self.F).all(axis=0)
            bad = [self.sc.fields[i].name for i in range(self.F) if not ok[i]]
            raise FieldSolverError(f"field(s) {', '.join(bad)} became non-finite")
        return fields

    # ----------------------------------------------------------------------------- adi (CG)
    def _apply_dot(self, p, q, g, pin):
        """q = A p, 0 at pinned voxels, for the fields g (p, q: that run) with the homogeneous
        ghosts, and the (F_run,) float64 dots p.q (tm_apply_pinned_dot, tm_reduce_tree)."""
        a = self._arrays
        nz, ny, nx, ndim = grid3(self.grid.shape)
        m0, P = self._cols_shape()
        F = p.shape[0]
        cols = a["cols"][:F]
        self.L(
            "tm_apply_pinned_dot",
            F * int(P),
            np.int32(F),
            nz,
            ny,
            nx,
            ndim,
            m0,
            P,
            p,
            a["diag"][g],
            a["D_over_h2"][g],
            a["ghosts0"][g],
            pin,
            q,
            cols,
        )
        return self._tree(cols)

    def _adi_prepare(self, c, kind, tumor_state, pin):
        """Once per agent step: rates (from the kinds), the operator's diagonal, and every
        distinct line factor's elimination factors, pinned where ``pin`` says
        (FieldSolver._adi_prepare)."""
        a, L, F = self._arrays, self.L, self.F
        n = self.grid.n_sites
        nk, ns = len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES)
        inv_dt = np.float32(1.0 / self.dt)
        if self.multigrid:
            # diag = U + 1/dt and S in one pass (U is not needed again)
            L(
                "tm_rates_diag",
                F * n,
                np.int32(F),
                np.int64(n),
                np.int32(nk * ns),
                np.int32(ns),
                kind,
                tumor_state,
                a["U_table"],
                a["S_table"],
                inv_dt,
                a["diag"],
                a["S"],
            )
            self._mg_prepare(pin)
            return
        U, S = a["U"], a["S"]
        L(
            "tm_rates",
            F * n,
            np.int32(F),
            np.int64(n),
            np.int32(nk * ns),
            np.int32(ns),
            kind,
            tumor_state,
            a["U_table"],
            a["S_table"],
            U,
            S,
        )
        # diag = U + 1/dt (b is redone by every field step)
        L("tm_cg_setup", c.size, np.int64(c.size), inv_dt, c, U, S, a["diag"], a["b"])
        extra = U  # U is not needed again this agent step
        for j, (axis, _) in enumerate(_factor_keys(self.ndim)):
            factor_diag(a["diag"], a[f"scale{j}"], pin, F_.PIN, extra, launcher=L)
            thomas_factor_diag(
                axis, a[f"k{j}"], a[f"base{j}"], extra, a[f"inv{j}"], a[f"cp{j}"], launcher=L
            )

    def _mg_level(self, lvl: int, g=slice(None)):
        """(w, e, d, free, x, t) device arrays of multigrid level ``lvl`` for the fields g, each
        (f1 - f0, n_lvl) (e: (f1 - f0, ndim, n_lvl)); level 0 keeps w in U, its iterate in b and
        its residual in q, the arrays the CG leaves free while the V-cycle runs."""
        a = self._arrays
        if lvl == 0:  # w, e, d, free recomputed per site by the level-0 kernels
            F = self.F
            x, t = (a[n].reshape(F, -1)[g] for n in ("b", "q"))
            return None, None, None, None, x, t
        return tuple(
            a[f"mg_{n}{lvl}"] if n == "free" else a[f"mg_{n}{lvl}"][g]
            for n in ("w", "e", "d", "free", "x", "t")
        )

    def _mg_dims(self, lvl: int):
        """(nz, ny, nx, ndim) of level ``lvl`` as kernel arguments."""
        return grid3(self._mg[lvl])

    def _mg_prepare(self, pin):
        """Once per agent step: every multigrid level below the fine one, from the operator's
        diagonal and the pin codes (tm_mg0_coarsen, then tm_mg_coarsen; tm_mg_diag on each):
        multigrid.hierarchy. Level 0 is not stored: its kernels recompute it per site."""
        a, L, F = self._arrays, self.L, self.F
        F32 = np.int32(F)
        fine0 = (a["diag"], pin, a["D_over_h2"], a["mg_dir"])
        for lvl in range(1, len(self._mg)):
            wc, ec, dc, fc, _, _ = self._mg_level(lvl)
            fine, coarse = self._mg_dims(lvl - 1), self._mg_dims(lvl)
            nc = math.prod(self._mg[lvl])
            if lvl == 1:
                L("tm_mg0_coarsen", F * nc, F32, *fine[:3], *coarse, *fine0, wc, ec, fc)
            else:
                wf, ef, _, ff, _, _ = self._mg_level(lvl - 1)
                L("tm_mg_coarsen", F * nc, F32, *fine[:3], *coarse, wf, ef, ff, wc, ec, fc)
            L("tm_mg_diag", F * nc, F32, *coarse, wc, ec, dc)

    def _vcycle(self, lvl: int, r, g, pin, out=None, cols=None):
        """One V-cycle from level ``lvl`` on r ((f1 - f0, n_lvl) device array, the fields g);
        returns the array holding the result (``out`` when given; on level 0 it is 0 at pinned
        voxels): multigrid.vcycle, then (level 0) FieldSolver._precondition's pinning."""
        L, a = self.L, self._arrays
        F = r.shape[0]
        F32 = np.int32(F)
        om = np.float32(MG.OMEGA)
        w, e, d, free, x, t = self._mg_level(lvl, g)
        dims = self._mg_dims(lvl)
        n = F * math.prod(self._mg[lvl])
        last = lvl == len(self._mg) - 1
        # level 0 recomputes w, e and d per site from the diagonal and the pin codes
        fine = (a["diag"][g], pin, a["D_over_h2"][g], a["mg_dir"][g]) if lvl == 0 else None
        if fine is not None:
            L("tm_mg0_smooth0", n, F32, *dims, om, *fine, r, x)
        else:
            L("tm_mg_smooth0", n, np.int64(n), om, r, d, x)
        if last:
            cur, nxt = x, t
            for k in range(MG.COARSEST_SWEEPS - 1):
                final = fine is not None and k == MG.COARSEST_SWEEPS - 2 and out is not None
                if final:  # the last sweep straight into out, pinned voxels 0
                    self._mg0_last_sweep(cur, r, out, g, pin, cols)
                    return out
                if fine is not None:
                    L("tm_mg0_jacobi", n, F32, *dims, om, *fine, cur, r, nxt)
                else:
                    L("tm_mg_jacobi", n, F32, *dims, om, w, e, d, cur, r, nxt)
                cur, nxt = nxt, cur
            if out is not None and cur is not out:
                self.xp.copyto(out, cur)
                if fine is not None:  # one sweep only: pin it as the sweeps do
                    set_pinned(out, pin, a["zeros"][g], a["zeros"][g], launcher=L)
                    if cols is not None:
                        self._dot_columns(r, out, cols)
                return out
            return cur
        coarse = self._mg_dims(lvl + 1)
        rc = a[f"mg_r{lvl + 1}"][g]
        nc = F * math.prod(self._mg[lvl + 1])
        if fine is not None:  # the residual restricted as it is computed, never stored
            L("tm_mg0_residual_restrict", nc, F32, *dims[:3], *coarse, *fine, x, r, rc)
        else:
            L("tm_mg_residual", n, F32, *dims, w, e, x, r, t)
            L("tm_mg_restrict", nc, F32, *dims[:3], *coarse, free, t, rc)
        xc = self._vcycle(lvl + 1, rc, g, pin)
        if fine is not None and out is not None and cols is not None:
            # the prolongation recomputed where the last sweep reads it, never stored
            m0, P = self._cols_shape()
            L(
                "tm_mg0_jacobi_dot",
                F * int(P),
                F32,
                *dims[:3],
                *coarse[:3],
                dims[3],
                m0,
                P,
                om,
                *fine,
                x,
                np.int32(1),  # prolong first
                xc,
                r,
                out,
                cols,
            )
            return out
        if fine is not None:
            raise AssertionError("level 0 ends in tm_mg0_jacobi_dot")
        L("tm_mg_prolong_add", n, F32, *dims[:3], *coarse[:3], dims[3], free, xc, x)
        dest = t if out is None else out
        L("tm_mg_jacobi", n, F32, *dims, om, w, e, d, x, r, dest)
        return dest

    def _mg0_last_sweep(self, x, r, out, g, pin, cols):
        """The V-cycle's last sweep on level 0 into out (pinned voxels 0), with the column sums
        of r out into cols when given (tm_mg0_jacobi_dot: the CG's r.z, pass 1)."""
        a, L = self._arrays, self.L
        F = r.shape[0]
        dims = self._mg_dims(0)
        fine = (a["diag"][g], pin, a["D_over_h2"][g], a["mg_dir"][g])
        om = np.float32(MG.OMEGA)
        if cols is None:
            L("tm_mg0_jacobi", r.size, np.int32(F), *dims, om, *fine, x, r, out)
            return
        m0, P = self._cols_shape()
        nz, ny, nx, ndim = dims
        one = np.int32(1)  # no coarse grid: nothing prolonged (x stands in for xc, unread)
        L(
            "tm_mg0_jacobi_dot",
            F * P,
            np.int32(F),
            nz,
            ny,
            nx,
            one,
            one,
            one,
            ndim,
            m0,
            P,
            om,
            *fine,
            x,
            np.int32(0),
            x,
            r,
            out,
            cols,
        )

    def _cols_shape(self):
        """(m0, P) of the grid as kernel arguments: grid axis 0's length, sites per plane."""
        m0 = int(self.grid.shape[0])
        return np.int64(m0), np.int64(self.grid.n_sites // m0)

    def _dot_columns(self, x, y, cols):
        """Pass 1 of the dots of x and y ((F_run, ...) arrays) into cols (tm_dots_columns)."""
        m0, P = self._cols_shape()
        F = x.shape[0]
        self.L("tm_dots_columns", F * int(P), np.int32(F), m0, P, x, y, cols)

    def _tree(self, cols):
        """Pass 2: (F_run,) float64 totals of (F_run, P) column sums (tm_reduce_tree)."""
        F, P = cols.shape
        out = self.xp.empty(F, dtype=self.xp.float64)
        self.L("tm_reduce_tree", F * 256, cols, np.int64(F), np.int64(P), out)
        return out

    def _precondition(self, r, out, kind, g=slice(None)):
        """out = M^-1 r for the fields g (r, out: that run): one V-cycle (multigrid) or the
        symmetric product of line factors (adi), 0 at pinned voxels: FieldSolver._precondition.
        Returns the (F_run,) float64 dots r.out (the CG's r.z; multigrid reduces them in its
        last sweep)."""
        a, L, xp = self._arrays, self.L, self.xp
        F = r.shape[0]
        cols = a["cols"][:F]
        if self.multigrid:
            self._vcycle(0, r.reshape(F, -1), g, kind, out.reshape(F, -1), cols)
            return self._tree(cols)
        xp.copyto(out, r)
        keys = _factor_keys(self.ndim)
        for j in self._plan:
            thomas_solve_factored(
                out, keys[j][0], a[f"k{j}"][g], a[f"inv{j}"][g], a[f"cp{j}"][g], launcher=L
            )
        set_pinned(out, kind, a["zeros"][g], a["zeros"][g], launcher=L)
        return self._dots(r, out)

    def _dots(self, x, y):
        """Per-field inner products in float64 of (F_run, ...) arrays, in tmesim.reduce's order
        (tm_dots_columns, tm_reduce_tree): numpy's FieldSolver dots bit for bit."""
        cols = self._arrays["cols"][: x.shape[0]]
        self._dot_columns(x, y, cols)
        return self._tree(cols)

    def _adi_step(self, c, kind) -> int:
        """One implicit-Euler field step by preconditioned CG: FieldSolver._adi_step. A field
        that has converged leaves the iteration: the host reads which fields are still active
        at the iteration's one sync and launches every kernel of the next iteration on the
        contiguous runs of active fields only (the fields are independent, so the runs do not
        change a bit)."""
        a, L, xp = self._arrays, self.L, self.xp
        S, r, z, p, q = (a[n] for n in ("S", "r", "z", "p", "q"))
        f32 = np.float32
        F = self.F
        # r = b - A c with b = c/dt + S and the true boundary values, 0 at pinned voxels, and
        # the largest |r| and |b| (b itself is not stored: multigrid keeps its level-0 iterate
        # there), in one pass
        nz, ny, nx, ndim = grid3(self.grid.shape)
        m0, P = self._cols_shape()
        L(
            "tm_cg_start",
            F * int(P),
            np.int32(F),
            nz,
            ny,
            nx,
            ndim,
            m0,
            P,
            f32(1.0 / self.dt),
            c,
            S,
            a["diag"],
            a["D_over_h2"],
            a["ghosts"],
            kind,
            r,
            a["colmax"],
            a["colmax_b"],
        )
        r0, bmax = a["colmax"].max(axis=1), a["colmax_b"].max(axis=1)
        rz = self._precondition(r, z, kind)
        xp.copyto(p, z)
        tol = self.sc.solver.tolerance
        # numpy evaluates tol * r0 with the Python float as a float32 (NEP 50): the same here,
        # spelled with the array first so that a cupy array's operator handles it
        thresh = xp.maximum(xp.maximum(r0 * f32(tol), bmax * f32(min(tol, 1e-6))), F_.RESIDUAL_ZERO)
        # a non-finite residual iterates (and spreads into the field, which the step's
        # finiteness check then reports) instead of passing for converged
        active = (r0 > thresh) | ~xp.isfinite(r0)
        act = _host(active)  # the host's copy: which runs of fields the launches cover
        n = np.int64(c.size // F)
        ones = a["ones"]
        beta = None
        it = 0
        rmax = r0
        if not act.any():
            return 0
        for it in range(1, self.sc.solver.max_iterations + 1):  # noqa: B007 - read after the loop
            a["field_sweeps"] += active
            runs = _runs(act)
            pq = xp.zeros(F, dtype=xp.float64)
            for f0, f1 in runs:
                g = slice(f0, f1)
                k = np.int32(f1 - f0)
                if beta is not None:
                    L("tm_cg_direction", (f1 - f0) * int(n), k, n, ones[g], beta[g], z[g], p[g])
                pq[g] = self._apply_dot(p[g], q[g], g, kind)
            alpha = xp.where(pq > 0, rz / xp.where(pq > 0, pq, 1.0), 0.0).astype(f32)
            new_rmax = rmax.copy()
            for f0, f1 in runs:
                g = slice(f0, f1)
                k = np.int32(f1 - f0)
                m0, P = self._cols_shape()
                colmax = a["colmax"][: f1 - f0]
                L(
                    "tm_cg_update_absmax",
                    (f1 - f0) * int(P),
                    k,
                    m0,
                    P,
                    ones[g],
                    alpha[g],
                    p[g],
                    q[g],
                    c[g],
                    r[g],
                    colmax,
                )
                new_rmax[g] = colmax.max(axis=1)
            rmax = xp.where(active, new_rmax, rmax)
            active = active & (rmax > thresh)
            act = _host(active)  # the one host sync of an iteration
            if not act.any():
                break
            runs = _runs(act)
            rz_new = rz.copy()
            for f0, f1 in runs:
                g = slice(f0, f1)
                rz_new[g] = self._precondition(r[g], z[g], kind, g)
            beta = xp.where(rz > 0, rz_new / xp.where(rz > 0, rz, 1.0), 0.0).astype(f32)
            rz = xp.where(active, rz_new, rz)
        else:
            if not self._warned:
                self._warned = True
                F_.warn_max_iterations(it, float(rmax.max()), float(r0.max()))
        return it

    # ----------------------------------------------------------------------------- lod
    def _lod_run(self, c, kind, tumor_state):
        """All n_sub LOD substeps, one field at a time in the float64 work array:
        FieldSolver._lod_run (per substep the line solves along each grid axis in turn, vessel
        reset after each, the reaction after the last)."""
        a, L, xp, ref = self._arrays, self.L, self.xp, self.ref
        nd, F = self.ndim, self.F
        w = a["w"]
        kg = self._lod_ghost_terms()
        vessel = ref.vessel_value.astype(np.float64).reshape(F)
        bath = ref.bath_value.astype(np.float64).reshape(F)
        for f in range(F):
            xp.copyto(w, c[f])
            for _ in range(self.n_sub):
                for ax in range(nd):
                    lod_sweep(
                        w,
                        ax,
                        f,
                        a[f"lod_inv{ax}"],
                        a[f"lod_kinv{ax}"],
                        a[f"lod_cp{ax}"],
                        kg[ax][0][f],
                        kg[ax][1][f],
                        kind,
                        vessel[f],
                        ax == nd - 1,
                        tumor_state,
                        a["U_table"],
                        a["S_table"],
                        ref.decay[f],
                        ref.dt,
                        bath[f],
                        launcher=L,
                    )
            xp.copyto(c[f], w, casting="same_kind")

    def _lod_ghost_terms(self):
        """Per grid axis (lo, hi) the (F,) float64 Dirichlet terms k g as FieldSolver._lod_run
        computes them (NaN -> 0 per field), or all NaN where numpy's ghost is None (no term)."""
        ref, F = self.ref, self.F
        out = []
        for pair in ref.ghosts:
            terms = []
            for gh in pair:
                if gh is None:
                    terms.append(np.full(F, np.nan))
                else:
                    terms.append(
                        np.nan_to_num(gh.astype(np.float64).reshape(F) * ref.lod_k64, nan=0.0)
                    )
            out.append(terms)
        return out


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """The contiguous runs [f0, f1) of True in a host bool vector."""
    out, f, F = [], 0, len(active)
    while f < F:
        if active[f]:
            f1 = f
            while f1 < F and active[f1]:
                f1 += 1
            out.append((f, f1))
            f = f1
        else:
            f += 1
    return out


def _host(x) -> np.ndarray:
    """A host copy of a numpy or cupy array."""
    return x.get() if hasattr(x, "get") else np.asarray(x)


_CUPY_DOT = None


def _cupy_dot():
    """Per-row float64 inner product of float32 arrays as a cupy reduction (no temporaries;
    each product of two float32 values is exact in float64, so only the sum order differs from
    numpy's einsum)."""
    global _CUPY_DOT
    if _CUPY_DOT is None:
        import cupy

        _CUPY_DOT = cupy.ReductionKernel(
            "float32 x, float32 y",
            "float64 out",
            "(double)x * (double)y",
            "a + b",
            "out = a",
            "0",
            "tm_field_dot",
        )
    return _CUPY_DOT
