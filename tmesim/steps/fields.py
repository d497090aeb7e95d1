"""Field solver: diffusion, decay, uptake, secretion and vessel exchange of every field at once.

Each field c (units of the field) obeys, on the lattice (MODEL.md section 4),

    dc/dt = D lap(c) - (decay + uptake[kind]) c + secretion[kind]

with a 2*ndim+1 point Laplacian, and vessel voxels held at the vessel value c_v (Dirichlet nodes,
as in BioFVM): they are the sources of oxygen (and later of drugs). A face is either no-flux
(ghost voxel = edge voxel) or Dirichlet: the domain sits in a bath at the boundary value, i.e. the
ghost voxel just outside the face holds the value.

Where decay acts (``[fields.X] decay_in``): "everywhere" (the default) adds the decay to every
entry of the rate table and keeps it as the uniform part ``decay`` too (LOD splits it among its
line solves; the CG spectrum bound reads it); "tissue" adds it only to the entries of occupied
kinds (every kind but empty), so the medium around the cells loses nothing, and the uniform part
is 0 (both integrators then see the decay only through the per-voxel rate U, which they handle
exactly as uptake). Units: 1/min.

The stirred bath (``[medium] stirred``, tmesim.steps.medium): every agent step the held medium
voxels -- empty, open to a face along an axis, farther than the unstirred layer from every
occupied voxel -- are Dirichlet nodes like vessel voxels, held at each field's bath value (the
one value of its Dirichlet faces; set_supply moves it with a drug's plasma level). The mask is
recomputed from the occupants at each step (:meth:`FieldSolver.pins`); the kernels read the same
set as pin codes (the kind, or medium.BATH at a held voxel).

Two time integrators, both built on line-wise tridiagonal (Thomas) solves with coefficients that
are precomputed once, vectorized over all lines and all fields:

``adi`` (default): one implicit-Euler step per field step,

    (I/dt + U - L) c_new = c_old/dt + S,          U = decay + uptake, S = secretion

solved *without operator splitting* by conjugate gradients. The preconditioner
(``[solver] preconditioner``) is by default one V-cycle of aggregation multigrid
(tmesim.steps.multigrid: iterations flat with the grid size); the alternative is a symmetric ADI
product of line factors, (Z/2)(Y/2)(X)(Y/2)(Z/2) in 3D and (Y/2)(X)(Y/2) in 2D (grid axes
(z, y, x), x contiguous), each factor
I + share*tau*(1/dt + U) - tau_a L_a solved by a Thomas sweep with the per-voxel diagonal, at one
pseudo-step tau = 0.3/sqrt(a_min a_max) of the operator's spectrum. On the free (non-vessel) voxels
the system is symmetric positive definite and the preconditioner is too (a congruence of positive
factors; the V-cycle too), so the iteration converges for any rates, boundaries and vessel layout.
A field stops when its residual has fallen to ``tolerance`` times its value at the start of the
step (or to min(tolerance, 1e-6) of the right-hand side's largest value), and leaves the
iteration then: its values are final whatever the other fields still do. The per-field inner
products are summed in tmesim.reduce's fixed order, which the kernels follow too. At convergence
c is the exact implicit-Euler solution: the steady state is exact whatever the agent step, and
uptake and diffusion are never split. Vessel voxels
are pinned: residual and update zero there, and a huge diagonal in every line factor. The line
factors depend only on the occupants, so their elimination factors are computed once per agent
step (thomas_factor_diag) and every iteration runs plain forward and back substitutions
(thomas_solve_factored, bit for bit thomas_solve_diag's result).

Why not plain LOD: for a tumour taking up oxygen at 10 /min (diffusion length 100 um), LOD's
splitting error at steady state is of order dt * uptake; measured on a 2 mm disk in 2D against a
sparse direct solve, LOD's largest error is 0.37 mmHg at dt = 0.01 min (BioFVM's default: 600
substeps per 6-min agent step), 2.7 mmHg at 0.1 min and 11 mmHg at 1 min; this solver's is 1e-5
mmHg. Why not a plain ADI iteration with cycled pseudo-steps: vessel pins and uneven rates make
the line factors non-commuting, and the cycled iteration then stalls (512^2 with 0.4 % vessels)
or diverges (1024^2: oxygen 49, 110, 489 mmHg in three steps under 38 mmHg boundaries). Mass is
conserved to rounding with no decay, uptake or source and no-flux faces.

``lod``: BioFVM's scheme (Ghaffarizadeh et al. 2016, Bioinformatics 32:1256): per substep, implicit
1D solves along x, y, z in turn with decay split equally among them, then the per-voxel implicit
update c = (c + dt S) / (1 + dt U). First order, unconditionally stable, but accurate only when
dt * uptake << 1. Vessel voxels are reset to their value after each line solve, as BioFVM does;
inside a solve they are free unknowns, so the supply from vessels is short by an error that scales
with dt D / dx^2 (13 % at dt D/dx^2 = 0.25, 4 % at 0.0625 in tests/steps/test_fields.py). Kept for
comparison with BioFVM; use adi for results. Its work arrays are float64, BioFVM's precision:
with float32 elimination factors a no-flux line solve shifts the line's total by about 1e-8, always
the same way (1.3e-5 after 240 steps in tests/steps/test_fields.py; a float32 path would be about
twice as fast but needs a conservative formulation first).

Speed (numpy only, so every pass over memory is one array operation; benchmarks/README.md):
line solves run row by row over all lines at once, so a row must be a large contiguous block.
Along the first grid axis it is; the y lines of a 3D grid are solved in a copy with the first two
axes swapped, and the x lines (contiguous in memory, a row would stride by the line length) in a
copy with the last two axes swapped (each plane transposed), where a row is a set of contiguous y
runs. Work arrays are kept between steps. Groups of fields run on worker threads (``threads``;
numpy releases the GIL inside array operations): LOD runs a whole agent step per group without
synchronizing; CG synchronizes three times per iteration for its per-field inner products and the
common stopping test. A field's arithmetic is the same in any grouping, so the thread count never
changes results (tested bit for bit).

The arrays: ``fields`` is (n_fields, n_sites) float32, viewed as (n_fields, *grid.shape).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import codes, reduce
from ..backend import array_module
from ..errors import UserError
from ..grid import Grid
from ..scenario import Scenario, face_conditions
from . import medium, multigrid
from .medium import layer_units

#: diagonal of a pinned (vessel) voxel in the line solves: fixes it to 0
PIN = np.float32(1e20)
# below this many sites a solver stays on one thread: its rows are so short that the numpy calls
# hold the GIL most of the time, and threads would only take turns
_THREAD_MIN_SITES = 1 << 15

FACE_NAMES = {3: (("z-", "z+"), ("y-", "y+"), ("x-", "x+")), 2: (("y-", "y+"), ("x-", "x+"))}


@dataclass(frozen=True)
class ThomasCoefficients:
    """Precomputed elimination factors of (I - tau*L_axis) for every field, one axis.

    Shapes (m, n_fields, 1, ..., 1) so that row i broadcasts over a slice of all lines.
    inv[i] = 1/(b_i - a c'_{i-1}), kinv[i] = k inv[i] (k = tau D / h^2), cp[i] = c'_i.
    """

    inv: np.ndarray
    kinv: np.ndarray
    cp: np.ndarray


def line_diagonal(
    k: np.ndarray, m: int, dirichlet_lo: np.ndarray, dirichlet_hi: np.ndarray
) -> np.ndarray:
    """Diagonal (m, F) of I - tau L along a line: 1 + k x (neighbours counted in the line), where a
    Dirichlet end's ghost voxel counts as a neighbour and a no-flux end's does not."""
    F = k.shape[0]
    nbrs = np.full((m, F), 2.0)
    nbrs[0] = 1.0 + dirichlet_lo
    nbrs[-1] = 1.0 + dirichlet_hi
    if m == 1:
        nbrs[0] = dirichlet_lo.astype(float) + dirichlet_hi.astype(float)
    return 1.0 + nbrs * k[None, :]


def thomas_coefficients(
    k: np.ndarray,
    m: int,
    dirichlet_lo: np.ndarray,
    dirichlet_hi: np.ndarray,
    diag_extra: np.ndarray,
    ndim: int,
    dtype=np.float64,
) -> ThomasCoefficients:
    """Factor the symmetric tridiagonal systems  -k c_{i-1} + (1 + extra + n_i k) c_i - k c_{i+1}.

    Args:
        k: (F,) coupling tau*D/h^2 per field (dimensionless).
        m: line length (voxels along the axis).
        dirichlet_lo, dirichlet_hi: (F,) bool, whether each end is a Dirichlet face (the ghost
            neighbour counts in the diagonal) or no-flux (it does not).
        diag_extra: (F,) extra diagonal term (LOD's decay share), dimensionless.
        ndim: grid dimension (sets the broadcast shape).
    """
    F = k.shape[0]
    k = k.astype(np.float64)
    diag = line_diagonal(k, m, dirichlet_lo, dirichlet_hi) + diag_extra[None, :]
    inv = np.empty((m, F))
    cp = np.empty((m, F))
    prev = np.zeros(F)  # c'_{i-1}; sub- and super-diagonal are both -k
    for i in range(m):
        inv[i] = 1.0 / (diag[i] + k * prev)  # 1 / (b_i - a c'_{i-1})
        cp[i] = -k * inv[i]
        prev = cp[i]
    # forward: d'_i = (d_i + k d'_{i-1}) inv_i ; back: x_i = d'_i - cp_i x_{i+1}
    shape = (m, F) + (1,) * (ndim - 1)
    return ThomasCoefficients(
        inv=inv.reshape(shape).astype(dtype),
        kinv=(k[None, :] * inv).reshape(shape).astype(dtype),
        cp=cp.reshape(shape).astype(dtype),
    )


def thomas_solve(x: np.ndarray, axis: int, co: ThomasCoefficients, tmp=None) -> np.ndarray:
    """Solve the precomputed tridiagonal systems along grid ``axis`` of x (F, *grid), in place.

    numpy twin of the CUDA line solve: one line per thread, rows in order.
    """
    xa = np.moveaxis(x, axis + 1, 0)  # (m, F, other axes...) view, no copy
    m = xa.shape[0]
    if tmp is None or tmp.shape != xa.shape[1:]:
        tmp = np.empty(xa.shape[1:], dtype=x.dtype)
    xa[0] *= co.inv[0]
    for i in range(1, m):
        np.multiply(xa[i - 1], co.kinv[i], out=tmp)
        xa[i] *= co.inv[i]
        xa[i] += tmp
    for i in range(m - 2, -1, -1):
        np.multiply(xa[i + 1], co.cp[i], out=tmp)
        xa[i] -= tmp
    return x


def thomas_solve_diag(
    x: np.ndarray,
    axis: int,
    k: np.ndarray,
    base: np.ndarray,
    extra: np.ndarray,
    cp: np.ndarray,
    tmp: np.ndarray,
) -> np.ndarray:
    """Solve  -k x_{i-1} + (base_i + extra_i) x_i - k x_{i+1} = x_i  along grid ``axis``, in place.

    The diagonal varies per voxel (``extra``), so the elimination factors are computed in the
    sweep: numpy twin of the CUDA line solve with a per-voxel diagonal.

    Args:
        x: (F, *grid) right-hand side, overwritten with the solution.
        k: (F, 1, ..., 1) off-diagonal coupling tau D / h^2, shaped like one slice (ndim dims).
        base: (m, F, 1, ..., 1) constant part of the diagonal, 1 + (neighbours in the line) k.
        extra: (F, *grid) per-voxel part of the diagonal (>= 0).
        cp, tmp: scratch of x's shape and of one slice's shape.
    """
    xa = np.moveaxis(x, axis + 1, 0)
    ea = np.moveaxis(extra, axis + 1, 0)
    ca = np.moveaxis(cp, axis + 1, 0)
    m = xa.shape[0]
    kk = k
    for i in range(m):
        np.add(ea[i], base[i], out=tmp)  # b_i
        if i:
            tmp -= kk * ca[i - 1]  # b_i - a c'_{i-1}, with a = -k, c' <= 0 stored
        np.reciprocal(tmp, out=tmp)  # 1 / denominator
        if i:
            xa[i] += kk * xa[i - 1]
        xa[i] *= tmp
        np.multiply(tmp, kk, out=ca[i])  # -c'_i = k / denominator (kept positive)
    for i in range(m - 2, -1, -1):
        xa[i] += ca[i] * xa[i + 1]
    return x


def thomas_factor_diag(
    axis: int,
    k: np.ndarray,
    base: np.ndarray,
    extra: np.ndarray,
    inv: np.ndarray,
    cp: np.ndarray,
    tmp: np.ndarray | None = None,
) -> None:
    """Elimination factors of thomas_solve_diag's systems, per voxel, for thomas_solve_factored.

    Same system and the same float32 operations as thomas_solve_diag's forward sweep, so that
    thomas_factor_diag + thomas_solve_factored give bit for bit what thomas_solve_diag gives; used
    where one diagonal serves many right-hand sides (the CG preconditioner: once per agent step
    instead of once per iteration).

    Args:
        axis: grid axis of the lines.
        k, base, extra: as in thomas_solve_diag.
        inv: (F, *grid) output, 1 / (b_i - a c'_{i-1}) per voxel.
        cp: (F, *grid) output, k inv_i per voxel (= -c'_i, kept positive).
        tmp: scratch of one slice's shape (allocated if None).
    """
    ea = np.moveaxis(extra, axis + 1, 0)
    ia = np.moveaxis(inv, axis + 1, 0)
    ca = np.moveaxis(cp, axis + 1, 0)
    if tmp is None:
        tmp = np.empty(ea.shape[1:], dtype=extra.dtype)
    for i in range(ea.shape[0]):
        np.add(ea[i], base[i], out=tmp)
        if i:
            tmp -= k * ca[i - 1]
        np.reciprocal(tmp, out=ia[i])
        np.multiply(ia[i], k, out=ca[i])


def thomas_solve_factored(
    x: np.ndarray,
    axis: int,
    k: np.ndarray,
    inv: np.ndarray,
    cp: np.ndarray,
    tmp: np.ndarray | None = None,
) -> np.ndarray:
    """Solve along grid ``axis`` of x (F, *grid) in place with per-voxel factors from
    thomas_factor_diag (bit for bit thomas_solve_diag's result): forward x_i = (x_i + k x_{i-1})
    inv_i, back x_i += cp_i x_{i+1}. k: (F, 1, ..., 1); tmp: scratch of one slice's shape
    (allocated if None)."""
    xa = np.moveaxis(x, axis + 1, 0)
    ia = np.moveaxis(inv, axis + 1, 0)
    ca = np.moveaxis(cp, axis + 1, 0)
    m = xa.shape[0]
    if tmp is None:
        tmp = np.empty(xa.shape[1:], dtype=x.dtype)
    xa[0] *= ia[0]
    for i in range(1, m):
        np.multiply(xa[i - 1], k, out=tmp)
        xa[i] += tmp
        xa[i] *= ia[i]
    for i in range(m - 2, -1, -1):
        np.multiply(ca[i], xa[i + 1], out=tmp)
        xa[i] += tmp
    return x


def dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-field inner products of two (F, *grid) arrays, in float64: each product exact, the
    sums in tmesim.reduce's fixed order (columns down grid axis 0, then a tree), which the
    kernels follow too, so CG iterates are the same bits on every backend. A field's value does
    not depend on which other fields share the call (threads over groups of fields give the
    single-threaded result bit for bit)."""
    return reduce.field_dots(a, b)


def absmax(x: np.ndarray) -> np.ndarray:
    """Per-field largest |x| of an (F, ...) array, without an |x| temporary."""
    x2 = x.reshape(x.shape[0], -1)
    return np.maximum(x2.max(axis=1), -x2.min(axis=1))


def laplacian(c: np.ndarray, D_over_h2: np.ndarray, ghosts, out: np.ndarray) -> np.ndarray:
    """out = D lap(c) for c (F, *grid), with ghost values per face.

    Args:
        D_over_h2: (F, 1, ..., 1) D / h^2 in 1/min.
        ghosts: per axis a pair (lo, hi), each None (no-flux) or an (F, 1, ..., 1) array of the
            bath value (Dirichlet) -- a field without a Dirichlet face on that side has NaN there
            and is treated as no-flux.
    """
    ndim = c.ndim - 1
    out[...] = 0
    for a in range(ndim):
        ax = a + 1
        m = c.shape[ax]
        flux_shape = list(c.shape)
        flux_shape[ax] = m + 1
        flux = np.zeros(flux_shape, dtype=c.dtype)
        sl = [slice(None)] * c.ndim

        def at(i, sl=sl, ax=ax):
            s = list(sl)
            s[ax] = i
            return tuple(s)

        np.subtract(c[at(slice(1, None))], c[at(slice(None, -1))], out=flux[at(slice(1, m))])
        lo, hi = ghosts[a]
        if lo is not None:
            flux[at(slice(0, 1))] = np.where(np.isnan(lo), 0.0, c[at(slice(0, 1))] - lo)
        if hi is not None:
            flux[at(slice(m, m + 1))] = np.where(np.isnan(hi), 0.0, hi - c[at(slice(m - 1, m))])
        out += np.diff(flux, axis=ax)
    out *= D_over_h2
    return out


def lod_line_solve(
    xa: np.ndarray,
    co: ThomasCoefficients,
    g: slice,
    kg,
    tmp: np.ndarray,
    ra: np.ndarray | None = None,
    rb: np.ndarray | None = None,
) -> None:
    """One LOD line solve of the rows xa (m, Fc, ...) in place (float64), for the fields g.

    thomas_solve's sweep, plus: kg = (lo, hi) Dirichlet terms k g ((F, 1, ...) or None) added to
    the edge rows first; and, when ra, rb (rows like xa) are given, each row's final value x is
    replaced by x ra + rb as soon as the back substitution no longer needs it (row i + 1 after
    row i is solved), so the per-voxel reaction update costs no separate pass over memory.
    """
    m = xa.shape[0]
    inv, kinv, cp = co.inv[:, g], co.kinv[:, g], co.cp[:, g]
    lo, hi = kg
    if lo is not None:
        xa[0] += lo[g]
    if hi is not None:
        xa[m - 1] += hi[g]
    xa[0] *= inv[0]
    for i in range(1, m):
        np.multiply(xa[i - 1], kinv[i], out=tmp)
        xa[i] *= inv[i]
        xa[i] += tmp
    for i in range(m - 2, -1, -1):
        np.multiply(xa[i + 1], cp[i], out=tmp)
        xa[i] -= tmp
        if ra is not None and rb is not None:
            xa[i + 1] *= ra[i + 1]
            xa[i + 1] += rb[i + 1]
    if ra is not None and rb is not None:
        xa[0] *= ra[0]
        xa[0] += rb[0]


def lod_sweep(
    x: np.ndarray,
    axis: int,
    f: int,
    inv,
    kinv,
    cp,
    kg_lo: float,
    kg_hi: float,
    kind: np.ndarray,
    vessel: float,
    react: bool,
    tumor_state: np.ndarray,
    U_table,
    S_table,
    decay: float,
    dt: float,
    bath: float = math.nan,
) -> np.ndarray:
    """One LOD line solve of field ``f`` along grid ``axis``, with the vessel reset and (``react``)
    the reaction update: the operations of FieldSolver._lod_run for one field and one axis, in
    place on x (*grid) float64. Twin of :func:`tmesim.steps.fields_kernel.lod_sweep` (same
    arguments): lod_line_solve, then ``x[pinned] = value``, and with ``react`` the reaction
    ``x = x ra + rb`` with ra, rb built as _lod_run builds them, then ``x[pinned] = value`` again.

    Args:
        x: (*grid) float64 work array of one field.
        inv, kinv, cp: (m, F) float64 ThomasCoefficients of that axis.
        kg_lo, kg_hi: Dirichlet terms k g of this field (0.0 without a bath on the face; NaN when
            the face is no-flux for every field, i.e. the solver's ghost is None).
        kind: (n_sites,) uint8 pin codes (FieldSolver.pins): the occupant kind, or medium.BATH at
            a voxel the stirred bath holds; tumor_state: (n_sites,) uint8.
        vessel: the field's vessel value; U_table, S_table: (F, n_codes) float32 rate tables
            indexed by kind * n_states + tumor_state; decay: 1/min; dt: the field step, min;
            bath: the field's bath value (held at BATH voxels).
    """
    nd = x.ndim
    m = x.shape[axis]
    bshape = (m, 1) + (1,) * (nd - 1)
    co = ThomasCoefficients(
        inv=inv[:, f].reshape(bshape), kinv=kinv[:, f].reshape(bshape), cp=cp[:, f].reshape(bshape)
    )
    one = (1,) + (1,) * (nd - 1)
    kg = tuple(None if np.isnan(v) else np.full(one, v, dtype=np.float64) for v in (kg_lo, kg_hi))
    xa = np.moveaxis(x[None], axis + 1, 0)
    lod_line_solve(xa, co, slice(None), kg, np.empty(xa.shape[1:], np.float64))
    flat = x.reshape(-1)
    at_bath = kind == medium.BATH
    pinned = np.flatnonzero((kind == codes.VESSEL) | at_bath)
    value = np.where(at_bath[pinned], bath, vessel)
    flat[pinned] = value
    if react:
        # a held voxel's rates are never used (it is reset next): read the empty voxel's entry
        k = np.where(at_bath, codes.EMPTY, kind)
        idx = k.astype(np.intp) * len(codes.TUMOR_STATE_NAMES) + tumor_state
        ra = U_table[f][idx].astype(np.float64)
        ra -= decay
        ra *= dt
        ra += 1.0
        np.reciprocal(ra, out=ra)
        rb = S_table[f][idx].astype(np.float64)
        rb *= dt
        rb *= ra
        flat *= ra
        flat += rb
        flat[pinned] = value
    return x


def default_threads() -> int:
    """Worker threads of a FieldSolver: ``TMESIM_THREADS`` if set, else the cores this process
    may run on, at most 8."""
    env = os.environ.get("TMESIM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UserError(f"TMESIM_THREADS = {env!r}: expected a whole number >= 1") from None
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(n: int) -> ThreadPoolExecutor:
    """One shared pool of n worker threads per process (solvers come and go; threads should not)."""
    with _POOLS_LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tmesim-fields")
        return _POOLS[n]


def _forget_pools() -> None:
    """In a forked child: the parent's pools have no threads here (fork copies only the forking
    thread), so work given to them would wait forever; start afresh (a lock another thread held
    at the fork stays held in the child, so it is replaced too)."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


#: residual (field units) below which a CG solve counts as converged whatever its start: far
#: below any physical concentration, above where float32 residuals of near-empty fields stall
RESIDUAL_ZERO = np.float32(1e-30)


def warn_max_iterations(it: int, rmax: float, r0: float) -> None:
    """The once-per-solver warning of a CG solve that reached solver.max_iterations (shown at
    the caller of the solver's step)."""
    warnings.warn(
        f"field solve stopped at solver.max_iterations = {it} with residual "
        f"{rmax:.3g} (start {r0:.3g}); raise solver.max_iterations or "
        "solver.tolerance",
        RuntimeWarning,
        stacklevel=4,
    )


class FieldSolverError(UserError):
    """The field solve produced non-finite values."""


class FieldSolver:
    """Advances every field of a scenario by one agent step (see the module docstring).

    Args:
        sc: the scenario (fields, solver settings).
        grid: the lattice.
        threads: worker threads for large grids (None: the ``TMESIM_THREADS`` environment
            variable, else the cores this process may use, at most 8). Work is split by groups
            of fields and each field's arithmetic is the same whatever the grouping, so results
            do not depend on this number (tests/steps/test_fields.py checks them bit for bit).
    """

    _swap_y = True  # CG: solve 3D y lines in the z/y-swapped layout (see _line_layout)

    def __init__(self, sc: Scenario, grid: Grid, threads: int | None = None):
        self.sc = sc
        self.grid = grid
        self.ndim = grid.ndim
        fcs = sc.fields
        self.F = F = len(fcs)
        self.dtype = np.float32
        bshape = (F,) + (1,) * self.ndim
        h = grid.dx_um
        self.D = np.array([f.diffusion_um2_per_min for f in fcs], dtype=np.float64)
        self.decay = np.array([f.decay_per_min for f in fcs], dtype=np.float64)
        self.D_over_h2 = (self.D / h**2).reshape(bshape).astype(self.dtype)
        # rate tables by (field, kind, tumor state): uptake and decay in 1/min, secretion in
        # units/min; a tumor cell's rate is its state's entry if the scenario names the state
        # ("sensitive", "persister", "resistant", "expanded"; an expanded persister takes the
        # "persister" entry unless "expanded" is named: codes.state_rate), else the "tumor" entry
        nk, ns = len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES)
        self.U_table = np.zeros((F, nk, ns))
        self.S_table = np.zeros((F, nk, ns))
        for i, f in enumerate(fcs):
            if f.decay_in == "tissue":
                # decay only where there is an occupant: in the table, not in the uniform part
                # (self.decay, which LOD splits among its line solves and the CG spectrum bound
                # reads), so the medium loses nothing
                self.U_table[i, codes.EMPTY + 1 :] += f.decay_per_min
                self.decay[i] = 0.0
            else:
                self.U_table[i] += f.decay_per_min
            for table, spec in (
                (self.U_table, f.uptake_per_min),
                (self.S_table, f.secretion_per_min),
            ):
                for kname, rate in spec.items():
                    if kname in codes.KIND_CODES:
                        table[i, codes.KIND_CODES[kname]] += rate
                for code in codes.STATE_KEY_CHAIN:
                    table[i, codes.TUMOR, code] += codes.state_rate(spec, code) - spec.get(
                        "tumor", 0.0
                    )
        self.vessel_value = np.array([f.vessel_value for f in fcs], dtype=self.dtype)[:, None]
        # boundaries: per axis (lo, hi) ghost arrays; NaN marks a no-flux face for that field
        self.dirichlet = []  # per axis: (lo bool (F,), hi bool (F,))
        self.ghosts = []
        faces = FACE_NAMES[self.ndim]
        conds = [face_conditions(f, self.ndim) for f in fcs]
        for lo_name, hi_name in faces:
            pair_d, pair_g = [], []
            for name in (lo_name, hi_name):
                is_d = np.array([c[name][0] == "dirichlet" for c in conds])
                val = np.array([c[name][1] if c[name][0] == "dirichlet" else np.nan for c in conds])
                pair_d.append(is_d)
                pair_g.append(val.reshape(bshape).astype(self.dtype) if is_d.any() else None)
            self.dirichlet.append(tuple(pair_d))
            self.ghosts.append(tuple(pair_g))
        # the stirred bath (tmesim.steps.medium): each field's bath value is the one value of
        # its Dirichlet faces (the scenario checks there is one when the medium is stirred)
        self.stirred = sc.medium.stirred
        self.bath_cap = layer_units(sc.medium.boundary_layer_um, grid.dx_um)
        bath = [next((v for k, v in c.values() if k == "dirichlet"), np.nan) for c in conds]
        self.bath_value = np.array(bath, dtype=self.dtype)[:, None]
        dt_agent = sc.run.dt_min
        dt_f = sc.solver.dt_min or dt_agent
        self.n_sub = max(1, int(math.ceil(dt_agent / dt_f - 1e-9)))
        self.dt = dt_agent / self.n_sub
        self.method = sc.solver.method
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._ws: dict[str, np.ndarray] = {}  # work arrays, kept between steps (see _buf)
        self._warned = False  # max_iterations reached (warned once per solver)
        if self.method == "adi":
            self._setup_adi()
        else:
            self._setup_lod()
        self.last_sweeps = 0  # CG iterations (adi) or LOD substeps of the last step
        # per field: the CG iterations it took part in (adi) or the LOD substeps, last step
        self.last_field_sweeps = np.zeros(self.F, dtype=np.int64)

    # ----------------------------------------------------------------------------- coefficients
    def _setup_adi(self):
        h = self.grid.dx_um
        L = max(self.grid.shape) * h
        U_max = self.U_table.reshape(self.F, -1).max(axis=1)
        # spectrum of (1/dt + U - L): the preconditioner's pseudo-step sits below its geometric
        # middle, because warm-started steps leave mostly local (high-frequency) error: on the 3D
        # spheroid (48^3) 0.3x the middle took 12 iterations per step, 1x took 52, 3x took 195
        a_min = 1.0 / self.dt + self.decay + self.D * (math.pi / L) ** 2
        a_max = 1.0 / self.dt + U_max + 4.0 * self.ndim * self.D / h**2
        self.tau = 0.3 / np.sqrt(a_min * a_max)
        # symmetric product of line factors: x/2, y/2, ..., z, ..., y/2, x/2 (2 ndim - 1 factors);
        # each entry: (axis, share of tau, (k, base) for that share)
        sl = (self.F,) + (1,) * (self.ndim - 1)
        order = list(range(self.ndim - 1)) + [self.ndim - 1] + list(range(self.ndim - 2, -1, -1))
        self.adi_factors = []
        for a in order:
            share = 1.0 if a == self.ndim - 1 else 0.5
            k = share * self.tau * self.D / h**2
            lo, hi = self.dirichlet[a]
            base = line_diagonal(k, self.grid.shape[a], lo, hi)
            self.adi_factors.append(
                (
                    a,
                    share / self.ndim,
                    k.reshape(sl).astype(self.dtype),
                    base.reshape((-1,) + sl).astype(self.dtype),
                )
            )
        # homogeneous boundary values (for products with corrections): Dirichlet ghosts hold 0
        self.ghosts0 = [
            tuple(
                None if g is None else np.where(np.isnan(g), np.nan, 0.0).astype(self.dtype)
                for g in pair
            )
            for pair in self.ghosts
        ]

    def _setup_lod(self):
        k = self.dt * self.D / self.grid.dx_um**2
        extra = self.dt * self.decay / self.ndim
        # float64 coefficients: with float32 ones a no-flux solve shifts the line's sum by about
        # 1e-8 each time, always the same way (LOD's mass then drifts 1e-5 in 240 steps)
        self.lod_coeffs = [
            thomas_coefficients(
                k, self.grid.shape[a], *self.dirichlet[a], extra, self.ndim, np.float64
            )
            for a in range(self.ndim)
        ]
        self.lod_k = k.reshape((self.F,) + (1,) * self.ndim).astype(self.dtype)
        self.lod_k64 = k

    # ----------------------------------------------------------------------------- stepping
    def rates(self, kind: np.ndarray, tumor_state: np.ndarray | None = None):
        """Per-voxel implicit rate U (1/min, decay included) and source S (units/min), (F, n)."""
        if tumor_state is None:
            tumor_state = np.zeros_like(kind)
        idx = kind.astype(np.intp) * self.U_table.shape[2] + tumor_state
        U = self.U_table.reshape(self.F, -1).astype(self.dtype)[:, idx]
        S = self.S_table.reshape(self.F, -1).astype(self.dtype)[:, idx]
        return U, S

    def set_supply(self, values) -> None:
        """Set the value that vessels and Dirichlet faces hold each field at, (F,) in field units.

        NaN keeps a field's configured values. Drugs use this every step: their vessels and
        bath follow the plasma concentration."""
        values = np.asarray(values, dtype=np.float64)
        for i, v in enumerate(values):
            if not np.isfinite(v):
                continue
            self.vessel_value[i] = v
            if np.isfinite(self.bath_value[i, 0]):
                self.bath_value[i] = v
            for pair in self.ghosts:
                for g in pair:
                    if g is not None and np.isfinite(g[i]).all():
                        g[i] = v

    def pins(self, kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The Dirichlet nodes of this agent step: flat indices of the pinned voxels (vessels,
        and with a stirred medium the held bath voxels, tmesim.steps.medium) and the values they
        hold, (F, 1) (vessels only: the vessel values) or (F, n_pinned) (vessel or bath value per
        voxel), float32."""
        if not self.stirred:
            return np.flatnonzero(kind == codes.VESSEL), self.vessel_value
        pin = medium.pin_codes(kind, self.grid.shape, self.bath_cap)
        pinned = np.flatnonzero((pin == codes.VESSEL) | (pin == medium.BATH))
        at_bath = pin[pinned] == medium.BATH
        return pinned, np.where(at_bath[None, :], self.bath_value, self.vessel_value)

    def step(
        self, fields: np.ndarray, kind: np.ndarray, tumor_state: np.ndarray | None = None
    ) -> np.ndarray:
        """Advance ``fields`` (F, n_sites) float32 by one agent step in place, given occupants."""
        if self.F == 0:
            return fields
        c = fields.reshape((self.F,) + self.grid.shape)
        U, S = self.rates(kind, tumor_state)
        U = U.reshape(c.shape)
        S = S.reshape(c.shape)
        pinned, pin_value = self.pins(kind)
        fields[:, pinned] = pin_value
        self.last_field_sweeps = np.zeros(self.F, dtype=np.int64)
        if self.method == "adi":
            prep = self._adi_prepare(U, pinned)
            sweeps = 0
            for _ in range(self.n_sub):
                sweeps += self._adi_step(c, S, pinned, prep)
        else:
            self._lod_run(c, U, S, pinned, pin_value)
            sweeps = self.n_sub
            self.last_field_sweeps[:] = self.n_sub
        self.last_sweeps = sweeps
        if not np.isfinite(fields).all():
            bad = [
                self.sc.fields[i].name for i in range(self.F) if not np.isfinite(fields[i]).all()
            ]
            raise FieldSolverError(f"field(s) {', '.join(bad)} became non-finite")
        return fields

    # ----------------------------------------------------------------------------- threads, buffers
    def _groups(self, min_sites: int = 0) -> list[tuple[int, int]]:
        """Contiguous groups of fields, one per worker: all fields in one group when there is one
        thread, one field, or fewer than ``min_sites`` sites (threads would cost more than they
        save)."""
        n = min(self.threads, self.F)
        if n <= 1 or self.grid.n_sites < min_sites:
            return [(0, self.F)]
        edges = [round(i * self.F / n) for i in range(n + 1)]
        return [(edges[i], edges[i + 1]) for i in range(n)]

    def _map(self, fn, groups):
        """fn(f0, f1) for every group, on the worker threads (numpy releases the GIL inside its
        array operations); results in group order."""
        if len(groups) == 1:
            return [fn(*groups[0])]
        return list(_pool(self.threads).map(lambda g: fn(*g), groups))

    def _buf(self, name: str, shape, dtype=np.float32) -> np.ndarray:
        """A work array kept between steps (allocating and page-faulting fresh arrays every
        iteration cost as much as some of the arithmetic)."""
        a = self._ws.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != dtype:
            a = self._ws[name] = np.empty(shape, dtype=dtype)
        return a

    def _swapped_shape(self, sw) -> tuple:
        """Grid shape with the grid axes ``sw`` (a pair, or None) swapped."""
        s = list(self.grid.shape)
        if sw is not None:
            s[sw[0]], s[sw[1]] = s[sw[1]], s[sw[0]]
        return tuple(s)

    def _tshape(self):
        """Grid shape with the last two axes swapped: the layout of the x-axis line solves."""
        return self._swapped_shape((self.ndim - 2, self.ndim - 1))

    def _pinned_in(self, pinned, sw):
        """Flat indices, in the layout with grid axes ``sw`` swapped, of the flat grid indices
        ``pinned``."""
        if pinned.size == 0 or sw is None:
            return pinned
        idx = list(np.unravel_index(pinned, self.grid.shape))
        idx[sw[0]], idx[sw[1]] = idx[sw[1]], idx[sw[0]]
        return np.ravel_multi_index(tuple(idx), self._swapped_shape(sw))

    def _pinned_t(self, pinned):
        """Flat indices in the x-axis layout (_tshape) of the flat grid indices ``pinned``."""
        return self._pinned_in(pinned, (self.ndim - 2, self.ndim - 1))

    def _line_layout(self, a):
        """The layout in which lines along grid axis a are solved: the pair of grid axes swapped
        (None: the grid's own) and the lines' axis there. A sweep works row by row over all lines,
        so a row must be a large block: along axis 0 it is; a y row of a 3D grid is a set of x runs,
        solved faster (with two copies of x runs) with z and y swapped; an x row would stride by
        the line length, so x lines are solved with the last two axes swapped (each plane
        transposed), where a row is a set of contiguous y runs."""
        nd = self.ndim
        if nd > 1 and a == nd - 1:
            return (nd - 2, nd - 1), nd - 2
        if nd == 3 and a == 1 and self._swap_y:
            return (0, 1), 0
        return None, a

    # ----------------------------------------------------------------------------- adi (CG)
    def _adi_prepare(self, U, pinned):
        """Once per agent step: the operator's diagonal 1/dt + U and the elimination factors of
        every distinct preconditioner line factor (they depend on the occupants only, so every
        CG iteration of every field step of this agent step reuses them)."""
        F, nd = self.F, self.ndim
        inv_dt = np.float32(1.0 / self.dt)
        diag = self._buf("diag", U.shape)
        np.add(U, inv_dt, out=diag)
        if self.sc.solver.preconditioner == "multigrid":
            free = np.ones(self.grid.shape, dtype=bool)
            free.reshape(-1)[pinned] = False
            levels = multigrid.hierarchy(diag, self.D_over_h2.reshape(F), free, self.dirichlet)
            # kept on the solver until the next agent step: what the memory estimate counts
            self._mg_levels = levels
            self._mg_work = multigrid.work_arrays(levels, F, getattr(self, "_mg_work", None))
            return dict(diag=diag, levels=levels, work=self._mg_work)
        bshape = (F,) + (1,) * nd
        tau = self.tau.astype(self.dtype).reshape(bshape)
        factors = {}
        plan = []
        for a, share, k, base in self.adi_factors:
            key = (a, float(share))
            plan.append((key, k))
            if key in factors:
                continue
            sw, ax = self._line_layout(a)
            shp = (F,) + self._swapped_shape(sw)
            extra = self._buf(f"extra{shp}", shp)
            src = diag if sw is None else diag.swapaxes(sw[0] + 1, sw[1] + 1)
            np.multiply(src, tau * np.float32(share), out=extra)
            extra.reshape(F, -1)[:, self._pinned_in(pinned, sw)] = PIN
            inv = self._buf(f"inv{len(factors)}", shp)
            cp = self._buf(f"cp{len(factors)}", shp)
            tmp = self._buf(f"row{ax}{shp}", np.moveaxis(extra, ax + 1, 0).shape[1:])
            thomas_factor_diag(ax, k, base, extra, inv, cp, tmp)
            factors[key] = (sw, ax, inv, cp)
        for name in [n for n in self._ws if n.startswith("extra")]:
            del self._ws[name]  # needed again only at the next agent step
        return dict(diag=diag, factors=factors, plan=plan)

    def _flux_bufs(self, shape):
        """Per axis a flux array (m + 1 along the axis), faces zero (they are written only
        for Dirichlet faces, the same ones every call), and one scratch of the grid's shape (the
        "tmp" array of _adi_step: the two are never in use at once)."""
        fl = []
        for a in range(self.ndim):
            s = list(shape)
            s[a + 1] += 1
            name = f"flux{a}"
            if name not in self._ws or self._ws[name].shape != tuple(s):
                self._ws[name] = np.zeros(s, dtype=self.dtype)
            fl.append(self._ws[name])
        return fl, self._buf("tmp", shape)

    def _laplacian(self, c, ghosts, out, fluxes, tmp, g):
        """out = D lap(c) for the fields g (a slice): laplacian() with work arrays kept between
        calls, the same operations in the same order (bit for bit laplacian()'s result)."""
        nd = self.ndim
        for a in range(nd):
            ax = a + 1
            m = c.shape[ax]
            flux = fluxes[a][g]

            def at(i, ax=ax):
                s = [slice(None)] * c.ndim
                s[ax] = i
                return tuple(s)

            np.subtract(c[at(slice(1, None))], c[at(slice(None, -1))], out=flux[at(slice(1, m))])
            lo, hi = ghosts[a]
            if lo is not None:
                flux[at(slice(0, 1))] = np.where(np.isnan(lo[g]), 0.0, c[at(slice(0, 1))] - lo[g])
            if hi is not None:
                flux[at(slice(m, m + 1))] = np.where(
                    np.isnan(hi[g]), 0.0, hi[g] - c[at(slice(m - 1, m))]
                )
            if a == 0:
                np.subtract(flux[at(slice(1, None))], flux[at(slice(None, -1))], out=out)
            else:
                np.subtract(flux[at(slice(1, None))], flux[at(slice(None, -1))], out=tmp)
                out += tmp
        out *= self.D_over_h2[g]
        return out

    def _apply(self, p, diag, out, lap, ghosts, fluxes, tmp, g):
        """out = (1/dt + U) p - D lap(p) with the given ghost values, for the fields g."""
        self._laplacian(p, ghosts, lap, fluxes, tmp, g)
        np.multiply(diag, p, out=out)
        out -= lap
        return out

    def _precondition(self, r, out, prep, work, pinned, g):
        """out = M^-1 r for the fields g, with M the symmetric product of line factors
        (I + share tau w - tau_a L_a), w = 1/dt + U, factored in _adi_prepare; pinned voxels
        carry a huge diagonal in every factor, so out is 0 there. ``work``: per factor key, the
        swapped-layout copy (or None) and a row scratch, for the fields g. With the multigrid
        preconditioner: one V-cycle (tmesim.steps.multigrid)."""
        if "levels" in prep:
            levels = [
                multigrid.Level(lv.w[g], lv.e[:, g], lv.d[g], lv.free) for lv in prep["levels"]
            ]
            work = [
                multigrid.Work(w.x[g], w.t[g], w.s[g], None if w.r is None else w.r[g])
                for w in prep["work"]
            ]
            multigrid.vcycle(levels, r, work, out)
            out.reshape(out.shape[0], -1)[:, pinned] = 0
            return out
        np.copyto(out, r)
        factors = prep["factors"]
        for key, k in prep["plan"]:
            sw, ax, inv, cp = factors[key]
            buf, row = work[key]
            if sw is not None:
                np.copyto(buf, out.swapaxes(sw[0] + 1, sw[1] + 1))
                thomas_solve_factored(buf, ax, k[g], inv[g], cp[g], row)
                np.copyto(out, buf.swapaxes(sw[0] + 1, sw[1] + 1))
            else:
                thomas_solve_factored(out, ax, k[g], inv[g], cp[g], row)
        out.reshape(out.shape[0], -1)[:, pinned] = 0
        return out

    def _adi_step(self, c, S, pinned, prep) -> int:
        """One implicit-Euler step by conjugate gradients preconditioned with the ADI product.

        The system (1/dt + U - L) c = c_old/dt + S on the free (non-vessel) voxels is symmetric
        positive definite, and so is the preconditioner (a congruence of positive line factors),
        so the iteration converges for any rates and vessel layout. Each field's iteration is
        independent of the others' (its own alpha and beta), except that all stop together;
        groups of fields run on worker threads between the per-iteration reductions."""
        nd = self.ndim
        inv_dt = np.float32(1.0 / self.dt)
        diag = prep["diag"]
        shape = c.shape
        b, r, z, p, q, lap, tmp = (
            self._buf(n, shape) for n in ("b", "r", "z", "p", "q", "lap", "tmp")
        )
        fluxes, ltmp = self._flux_bufs(shape)
        groups = self._groups(min_sites=_THREAD_MIN_SITES)
        bcast = (1,) * nd
        # per factor key: its swapped-layout copy and a row scratch (all fields; sliced per group)
        work_all = {}
        for key, (sw, ax, inv, _) in prep.get("factors", {}).items():
            buf = None if sw is None else self._buf(f"sw{sw}", inv.shape)
            row = self._buf(f"row{ax}{sw}", np.moveaxis(inv, ax + 1, 0).shape[1:])
            work_all[key] = (buf, row)

        def work_for(g):
            return {
                key: (None if buf is None else buf[g], row[g])
                for key, (buf, row) in work_all.items()
            }

        def start(f0, f1):
            g = slice(f0, f1)
            np.multiply(c[g], inv_dt, out=b[g])
            b[g] += S[g]
            # r = b - A c with the true boundary values; 0 at pinned voxels
            self._apply(c[g], diag[g], r[g], lap[g], self.ghosts, fluxes, ltmp[g], g)
            np.subtract(b[g], r[g], out=r[g])
            r[g].reshape(f1 - f0, -1)[:, pinned] = 0
            self._precondition(r[g], z[g], prep, work_for(g), pinned, g)
            np.copyto(p[g], z[g])
            return dots(r[g], z[g]), absmax(r[g]), absmax(b[g])

        def direction(f0, f1, beta):
            g = slice(f0, f1)
            if beta is not None:
                p[g] *= beta[f0:f1].astype(self.dtype).reshape((-1,) + bcast)
                p[g] += z[g]
            self._apply(p[g], diag[g], q[g], lap[g], self.ghosts0, fluxes, ltmp[g], g)
            q[g].reshape(f1 - f0, -1)[:, pinned] = 0
            return dots(p[g], q[g])

        def update(f0, f1, alpha):
            g = slice(f0, f1)
            a_b = alpha[f0:f1].astype(self.dtype).reshape((-1,) + bcast)
            np.multiply(p[g], a_b, out=tmp[g])
            c[g] += tmp[g]
            np.multiply(q[g], a_b, out=tmp[g])
            r[g] -= tmp[g]
            return absmax(r[g])

        def precondition(f0, f1):
            g = slice(f0, f1)
            self._precondition(r[g], z[g], prep, work_for(g), pinned, g)
            return dots(r[g], z[g])

        res = self._map(start, groups)
        rz = np.concatenate([x[0] for x in res])
        r0 = np.concatenate([x[1] for x in res])
        tol = self.sc.solver.tolerance
        floor = min(tol, 1e-6) * np.concatenate([x[2] for x in res])
        # converged when the residual has fallen by the tolerance from its value at the start
        # of the step (so small steps are resolved as well as large ones), or to near float32
        # rounding of the right-hand side; a residual under RESIDUAL_ZERO field units is
        # zero (a field that is all but absent stalls there in float32 arithmetic). A field
        # that has converged leaves the iteration: its values are final, whatever the others do
        thresh = np.maximum(np.maximum(tol * r0, floor), RESIDUAL_ZERO)
        # a non-finite residual iterates (and spreads into the field, which the step's
        # finiteness check then reports) instead of passing for converged
        active = (r0 > thresh) | ~np.isfinite(r0)
        beta = None
        it = 0
        rmax = r0.copy()
        if not active.any():
            return 0
        for it in range(1, self.sc.solver.max_iterations + 1):  # noqa: B007 - read after the loop
            self.last_field_sweeps += active
            run = self._active_groups(active, _THREAD_MIN_SITES)
            pq = self._gather(run, self._map(functools.partial(direction, beta=beta), run))
            alpha = np.where(pq > 0, rz / np.where(pq > 0, pq, 1.0), 0.0)
            new_rmax = self._gather(run, self._map(functools.partial(update, alpha=alpha), run))
            rmax = np.where(active, new_rmax, rmax)
            active &= rmax > thresh
            if not active.any():
                break
            run = self._active_groups(active, _THREAD_MIN_SITES)
            rz_new = self._gather(run, self._map(precondition, run))
            beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
            rz = np.where(active, rz_new, rz)
        else:
            if not self._warned:
                self._warned = True
                warn_max_iterations(it, float(rmax.max()), float(r0.max()))
        return it

    def _active_groups(self, active: np.ndarray, min_sites: int) -> list[tuple[int, int]]:
        """The contiguous runs of active fields, split among the worker threads as _groups
        splits all fields (a field's arithmetic is the same in any grouping)."""
        runs, f = [], 0
        while f < self.F:
            if not active[f]:
                f += 1
                continue
            f1 = f
            while f1 < self.F and active[f1]:
                f1 += 1
            runs.append((f, f1))
            f = f1
        n = self.threads if self.grid.n_sites >= min_sites else 1
        out = []
        for f0, f1 in runs:
            k = max(1, min(n, f1 - f0))
            edges = [f0 + round(i * (f1 - f0) / k) for i in range(k + 1)]
            out += [(edges[i], edges[i + 1]) for i in range(k)]
        return out

    def _gather(self, groups, results) -> np.ndarray:
        """(F,) float64 of per-group results (NaN for fields in no group)."""
        out = np.full(self.F, np.nan)
        for (f0, f1), v in zip(groups, results, strict=True):
            out[f0:f1] = v
        return out

    # ----------------------------------------------------------------------------- lod
    def _lod_run(self, c, U, S, pinned, pin_value):
        """All n_sub LOD substeps of an agent step, in float64 (BioFVM's precision, and what
        keeps a no-flux solve from drifting the total: see _setup_lod).

        Per substep, as BioFVM: implicit line solves along each grid axis in turn (axis 0 first;
        Dirichlet ghosts enter the edge rows' right-hand side; vessel voxels reset after each
        solve), then the per-voxel implicit update c = (c + dt S) / (1 + dt U'), U' = U - decay,
        done here as c a + b with a = 1 / (1 + dt U') and b = dt S a precomputed for the agent
        step, inside the x sweep's back substitution (while the row is in cache). The x lines
        are solved in the layout with the last two axes swapped (_tshape). The fields are
        independent, so groups of fields run all substeps on their own threads."""
        F, nd = self.F, self.ndim
        f64 = np.float64
        bshape = (F,) + (1,) * nd
        tshape = (F,) + self._tshape()
        w = self._buf("lod_c", c.shape, f64)
        np.copyto(w, c)
        t = self._buf("lod_t", tshape, f64)
        dt = self.dt
        # reaction coefficients, in the x layout
        ra = self._buf("lod_a", tshape, f64)
        rb = self._buf("lod_b", tshape, f64)
        np.copyto(ra, U.swapaxes(-1, -2))
        ra -= self.decay.reshape(bshape)
        ra *= dt
        ra += 1.0
        np.reciprocal(ra, out=ra)
        np.copyto(rb, S.swapaxes(-1, -2))
        rb *= dt
        rb *= ra
        v = pin_value.astype(f64)  # (F, 1), or (F, n_pinned) with a stirred bath
        pinned_t = self._pinned_t(pinned)  # the same order: v's columns serve both
        # Dirichlet ghosts: k g added to the edge rows (0 for a field without one on that face)
        kg = []
        for a in range(nd):
            pair = []
            for gh in self.ghosts[a]:
                pair.append(
                    None
                    if gh is None
                    else np.nan_to_num(
                        gh.astype(f64) * self.lod_k64.reshape(bshape), nan=0.0
                    ).reshape((F,) + (1,) * (nd - 1))
                )
            kg.append(pair)
        co = self.lod_coeffs
        n_sub = self.n_sub
        if nd == 3:
            z, y, x = self.grid.shape
            t_sw = self._buf("lod_sw", (F, y, z, x), f64)

        def run(f0, f1):
            g = slice(f0, f1)
            wg, tg, cg = w[g], t[g], c[g]
            wflat, tflat = wg.reshape(f1 - f0, -1), tg.reshape(f1 - f0, -1)
            # the y lines (3D) are solved in the layout with the first two grid axes swapped, a
            # copy of contiguous x runs: there a row of the sweep is one contiguous block per
            # field, and a sweep over runs of x values cost more than the two copies
            sw = t_sw[g] if nd == 3 else None
            vg, rag, rbg = v[g], ra[g], rb[g]
            rows = {}

            def sweep(arr, ax, a):
                xa = np.moveaxis(arr, ax, 0)
                if (a, xa.shape) not in rows:
                    rows[a, xa.shape] = np.empty(xa.shape[1:], f64)
                lod_line_solve(xa, co[a], g, kg[a], rows[a, xa.shape])

            for s in range(n_sub):
                sweep(wg, 1, 0)
                wflat[:, pinned] = vg
                if nd == 3:
                    np.copyto(sw, wg.swapaxes(1, 2))
                    sweep(sw, 1, 1)
                    np.copyto(wg, sw.swapaxes(1, 2))
                    wflat[:, pinned] = vg
                # x lines in the layout with the last two axes swapped, then the reaction there
                np.copyto(tg, wg.swapaxes(-1, -2))
                sweep(tg, nd - 1, nd - 1)
                tflat[:, pinned_t] = vg
                tg *= rag
                tg += rbg
                tflat[:, pinned_t] = vg
                np.copyto(cg if s == n_sub - 1 else wg, tg.swapaxes(-1, -2))

        self._map(run, self._groups(min_sites=_THREAD_MIN_SITES))


# ------------------------------------------------------------------------ well-mixed drug fields
def transported(sc: Scenario) -> tuple[int, ...]:
    """Rows of the fields that are solved: all but the fields of well-mixed drugs
    (``transport = "uniform"``), whose level Therapy sets everywhere after each step."""
    uniform = {d.name for d in sc.drugs if d.transport == "uniform"}
    return tuple(i for i, f in enumerate(sc.fields) if f.name not in uniform)


def transported_scenario(sc: Scenario) -> Scenario:
    """``sc`` with only the fields that are solved (what a solver of them allocates for)."""
    import dataclasses

    keep = transported(sc)
    if len(keep) == len(sc.fields):
        return sc
    return dataclasses.replace(sc, fields=tuple(sc.fields[i] for i in keep))


class TransportedFields:
    """A field solver (numpy or kernel class) over the transported fields only.

    A well-mixed drug's field is one number everywhere, overwritten after every step: solving it
    cost as much as any diffusing field (the therapy library's tumor has four, half its solve
    time). Same interface as the solver: ``step(fields, kind, tumor_state)`` on all F rows (the
    well-mixed rows are left as they are), ``set_supply`` with F values, ``last_sweeps``.
    """

    def __init__(self, solver_cls, sc: Scenario, grid: Grid, **kw):
        keep = transported(sc)
        self.sc = sc
        self.F = len(sc.fields)
        self.rows = np.array(keep, dtype=np.intp)
        # consecutive rows (all of them, or none) are a view of the state's fields: the solver
        # works in place; scattered rows are gathered and written back
        first = keep[0] if keep else 0
        consecutive = keep == tuple(range(first, first + len(keep)))
        self.span = slice(first, first + len(keep)) if consecutive else None
        self.inner = solver_cls(transported_scenario(sc), grid, **kw)

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    def set_supply(self, values) -> None:
        self.inner.set_supply(np.asarray(values, dtype=np.float64)[self.rows])

    def step(self, fields, kind, tumor_state=None):
        if self.span is not None:
            self.inner.step(fields[self.span], kind, tumor_state)
            return fields
        rows = array_module(fields).asarray(self.rows)  # cupy takes no numpy index arrays
        sub = fields[rows]
        self.inner.step(sub, kind, tumor_state)
        fields[rows] = sub
        return fields
