"""Field solver: diffusion, decay, uptake, secretion and vessel exchange of every field at once.

Each field c (units of the field) obeys, on the lattice (MODEL.md section 4),

    dc/dt = D lap(c) - (decay + uptake[kind]) c + secretion[kind]

with a 2*ndim+1 point Laplacian, and vessel voxels held at the vessel value c_v (Dirichlet nodes,
as in BioFVM): they are the sources of oxygen (and later of drugs). A face is either no-flux
(ghost voxel = edge voxel) or Dirichlet: the domain sits in a bath at the boundary value, i.e. the
ghost voxel just outside the face holds the value.

Two time integrators, both built on line-wise tridiagonal (Thomas) solves with coefficients that
are precomputed once, vectorized over all lines and all fields:

``adi`` (default): one implicit-Euler step per field step,

    (I/dt + U - L) c_new = c_old/dt + S,          U = decay + uptake, S = secretion

solved *without operator splitting* by conjugate gradients preconditioned with a symmetric ADI
product of line factors, (X/2)(Y/2)(Z)(Y/2)(X/2) in 3D and (X/2)(Y)(X/2) in 2D, each factor
I + share*tau*(1/dt + U) - tau_a L_a solved by a Thomas sweep with the per-voxel diagonal, at one
pseudo-step tau = 0.3/sqrt(a_min a_max) of the operator's spectrum. On the free (non-vessel) voxels
the system is symmetric positive definite and the preconditioner is too (a congruence of positive
factors), so the iteration converges for any rates, boundaries and vessel layout. It stops when the
residual has fallen to ``tolerance`` times its value at the start of the step (or to
min(tolerance, 1e-6) of the right-hand side's largest value). At convergence c is the exact implicit-Euler solution: the steady
state is exact whatever the agent step, and uptake and diffusion are never split. Vessel voxels
are pinned: residual and update zero there, and a huge diagonal in every line factor.

Why not plain LOD: for a tumour taking up oxygen at 10 /min (diffusion length 100 um), LOD's
splitting error at steady state is of order dt * uptake; measured on a 2 mm disk in 2D against a
sparse direct solve, LOD's largest error is 0.37 mmHg at dt = 0.01 min (BioFVM's default: 600
substeps per 6-min agent step), 2.7 mmHg at 0.1 min and 11 mmHg at 1 min; this solver's is 1e-5
mmHg. Why not a plain ADI iteration with cycled pseudo-steps (an earlier version): vessel pins and
uneven rates make the line factors non-commuting, and the cycled iteration then stalled (512^2
with 0.4 % vessels) or diverged (1024^2: oxygen 49, 110, 489 mmHg in three steps under 38 mmHg
boundaries). Mass is conserved to rounding with no decay, uptake or source and no-flux faces.

``lod``: BioFVM's scheme (Ghaffarizadeh et al. 2016, Bioinformatics 32:1256): per substep, implicit
1D solves along x, y, z in turn with decay split equally among them, then the per-voxel implicit
update c = (c + dt S) / (1 + dt U). First order, unconditionally stable, but accurate only when
dt * uptake << 1. Vessel voxels are reset to their value after each line solve, as BioFVM does;
inside a solve they are free unknowns, so the supply from vessels is short by an error that scales
with dt D / dx^2 (13 % at dt D/dx^2 = 0.25, 4 % at 0.0625 in tests/test_fields.py). Kept for
comparison with BioFVM; use adi for results.

The arrays: ``fields`` is (n_fields, n_sites) float32, viewed as (n_fields, *grid.shape).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .. import codes
from ..errors import UserError
from ..grid import Grid
from ..scenario import Scenario, face_conditions

_PIN = np.float32(1e20)   # diagonal of a pinned (vessel) voxel in the line solves: fixes it to 0

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


def line_diagonal(k: np.ndarray, m: int, dirichlet_lo: np.ndarray,
                  dirichlet_hi: np.ndarray) -> np.ndarray:
    """Diagonal (m, F) of I - tau L along a line: 1 + k x (neighbours counted in the line), where a
    Dirichlet end's ghost voxel counts as a neighbour and a no-flux end's does not."""
    F = k.shape[0]
    nbrs = np.full((m, F), 2.0)
    nbrs[0] = 1.0 + dirichlet_lo
    nbrs[-1] = 1.0 + dirichlet_hi
    if m == 1:
        nbrs[0] = dirichlet_lo.astype(float) + dirichlet_hi.astype(float)
    return 1.0 + nbrs * k[None, :]


def thomas_coefficients(k: np.ndarray, m: int, dirichlet_lo: np.ndarray,
                        dirichlet_hi: np.ndarray, diag_extra: np.ndarray, ndim: int,
                        dtype=np.float64) -> ThomasCoefficients:
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
    prev = np.zeros(F)                       # c'_{i-1}; sub- and super-diagonal are both -k
    for i in range(m):
        inv[i] = 1.0 / (diag[i] + k * prev)  # 1 / (b_i - a c'_{i-1})
        cp[i] = -k * inv[i]
        prev = cp[i]
    # forward: d'_i = (d_i + k d'_{i-1}) inv_i ; back: x_i = d'_i - cp_i x_{i+1}
    shape = (m, F) + (1,) * (ndim - 1)
    return ThomasCoefficients(inv=inv.reshape(shape).astype(dtype),
                              kinv=(k[None, :] * inv).reshape(shape).astype(dtype),
                              cp=cp.reshape(shape).astype(dtype))


def thomas_solve(x: np.ndarray, axis: int, co: ThomasCoefficients, tmp=None) -> np.ndarray:
    """Solve the precomputed tridiagonal systems along grid ``axis`` of x (F, *grid), in place.

    numpy twin of the CUDA line solve: one line per thread, rows in order.
    """
    xa = np.moveaxis(x, axis + 1, 0)          # (m, F, other axes...) view, no copy
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


def thomas_solve_diag(x: np.ndarray, axis: int, k: np.ndarray, base: np.ndarray,
                      extra: np.ndarray, cp: np.ndarray, tmp: np.ndarray) -> np.ndarray:
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
        np.add(ea[i], base[i], out=tmp)           # b_i
        if i:
            tmp -= kk * ca[i - 1]                 # b_i - a c'_{i-1}, with a = -k, c' <= 0 stored
        np.reciprocal(tmp, out=tmp)               # 1 / denominator
        if i:
            xa[i] += kk * xa[i - 1]
        xa[i] *= tmp
        np.multiply(tmp, kk, out=ca[i])           # -c'_i = k / denominator (kept positive)
    for i in range(m - 2, -1, -1):
        xa[i] += ca[i] * xa[i + 1]
    return x


def _dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-field inner products of two (F, ...) arrays, accumulated in float64."""
    n = a.shape[0]
    return np.einsum("fi,fi->f", a.reshape(n, -1), b.reshape(n, -1), dtype=np.float64)


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

        def at(i):
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


class FieldSolverError(UserError):
    """The field solve produced non-finite values."""


class FieldSolver:
    """Advances every field of a scenario by one agent step (see the module docstring).

    Args:
        sc: the scenario (fields, solver settings).
        grid: the lattice.
    """

    def __init__(self, sc: Scenario, grid: Grid):
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
        self.D_over_h2 = (self.D / h ** 2).reshape(bshape).astype(self.dtype)
        # rate tables by (field, kind, tumor state): uptake and decay in 1/min, secretion in
        # units/min; a tumor cell's rate is its state's entry if the scenario names the state
        # ("sensitive", "persister", "resistant"), else the "tumor" entry
        nk, ns = len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES)
        self.U_table = np.zeros((F, nk, ns))
        self.S_table = np.zeros((F, nk, ns))
        for i, f in enumerate(fcs):
            self.U_table[i] += f.decay_per_min
            for table, spec in ((self.U_table, f.uptake_per_min),
                                (self.S_table, f.secretion_per_min)):
                for kname, rate in spec.items():
                    if kname in codes.KIND_CODES:
                        table[i, codes.KIND_CODES[kname]] += rate
                for sname, code in codes.STATE_KEYS.items():
                    if sname in spec:
                        table[i, codes.TUMOR, code] += spec[sname] - spec.get("tumor", 0.0)
        self.vessel_value = np.array([f.vessel_value for f in fcs], dtype=self.dtype)[:, None]
        # boundaries: per axis (lo, hi) ghost arrays; NaN marks a no-flux face for that field
        self.dirichlet = []     # per axis: (lo bool (F,), hi bool (F,))
        self.ghosts = []
        faces = FACE_NAMES[self.ndim]
        conds = [face_conditions(f, self.ndim) for f in fcs]
        for lo_name, hi_name in faces:
            pair_d, pair_g = [], []
            for name in (lo_name, hi_name):
                is_d = np.array([c[name][0] == "dirichlet" for c in conds])
                val = np.array([c[name][1] if c[name][0] == "dirichlet" else np.nan
                                for c in conds])
                pair_d.append(is_d)
                pair_g.append(val.reshape(bshape).astype(self.dtype) if is_d.any() else None)
            self.dirichlet.append(tuple(pair_d))
            self.ghosts.append(tuple(pair_g))
        dt_agent = sc.run.dt_min
        dt_f = sc.solver.dt_min or dt_agent
        self.n_sub = max(1, int(math.ceil(dt_agent / dt_f - 1e-9)))
        self.dt = dt_agent / self.n_sub
        self.method = sc.solver.method
        self._tmp = {}
        self._warned = False      # max_iterations reached (warned once per solver)
        if self.method == "adi":
            self._setup_adi()
        else:
            self._setup_lod()
        self.last_sweeps = 0      # CG iterations (adi) or LOD substeps of the last step

    # ----------------------------------------------------------------------------- coefficients
    def _setup_adi(self):
        h = self.grid.dx_um
        L = max(self.grid.shape) * h
        U_max = self.U_table.reshape(self.F, -1).max(axis=1)
        # spectrum of (1/dt + U - L): the preconditioner's pseudo-step sits below its geometric
        # middle, because warm-started steps leave mostly local (high-frequency) error: on the 3D
        # spheroid (48^3) 0.3x the middle took 12 iterations per step, 1x took 52, 3x took 195
        a_min = 1.0 / self.dt + self.decay + self.D * (math.pi / L) ** 2
        a_max = 1.0 / self.dt + U_max + 4.0 * self.ndim * self.D / h ** 2
        self.tau = 0.3 / np.sqrt(a_min * a_max)
        # symmetric product of line factors: x/2, y/2, ..., z, ..., y/2, x/2 (2 ndim - 1 factors);
        # each entry: (axis, share of tau, (k, base) for that share)
        sl = (self.F,) + (1,) * (self.ndim - 1)
        order = list(range(self.ndim - 1)) + [self.ndim - 1] + list(range(self.ndim - 2, -1, -1))
        self.adi_factors = []
        for a in order:
            share = 1.0 if a == self.ndim - 1 else 0.5
            k = share * self.tau * self.D / h ** 2
            lo, hi = self.dirichlet[a]
            base = line_diagonal(k, self.grid.shape[a], lo, hi)
            self.adi_factors.append((a, share / self.ndim,
                                     k.reshape(sl).astype(self.dtype),
                                     base.reshape((-1,) + sl).astype(self.dtype)))
        # homogeneous boundary values (for products with corrections): Dirichlet ghosts hold 0
        self.ghosts0 = [tuple(None if g is None else np.where(np.isnan(g), np.nan, 0.0)
                              .astype(self.dtype) for g in pair) for pair in self.ghosts]

    def _setup_lod(self):
        k = self.dt * self.D / self.grid.dx_um ** 2
        extra = self.dt * self.decay / self.ndim
        # float64 coefficients: with float32 ones a no-flux solve shifts the line's sum by about
        # 1e-8 each time, always the same way (LOD's mass then drifts 1e-5 in 240 steps)
        self.lod_coeffs = [thomas_coefficients(k, self.grid.shape[a], *self.dirichlet[a], extra,
                                               self.ndim, np.float64) for a in range(self.ndim)]
        self.lod_k = k.reshape((self.F,) + (1,) * self.ndim).astype(self.dtype)

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
            for pair in self.ghosts:
                for g in pair:
                    if g is not None and np.isfinite(g[i]).all():
                        g[i] = v

    def step(self, fields: np.ndarray, kind: np.ndarray,
             tumor_state: np.ndarray | None = None) -> np.ndarray:
        """Advance ``fields`` (F, n_sites) float32 by one agent step in place, given occupants."""
        if self.F == 0:
            return fields
        c = fields.reshape((self.F,) + self.grid.shape)
        U, S = self.rates(kind, tumor_state)
        U = U.reshape(c.shape)
        S = S.reshape(c.shape)
        pinned = np.flatnonzero(kind == codes.VESSEL)
        fields[:, pinned] = self.vessel_value
        sweeps = 0
        for _ in range(self.n_sub):
            if self.method == "adi":
                sweeps += self._adi_step(c, U, S, pinned)
            else:
                self._lod_step(c, U, S, pinned)
                sweeps += 1
        self.last_sweeps = sweeps
        if not np.isfinite(fields).all():
            bad = [self.sc.fields[i].name for i in range(self.F) if not np.isfinite(fields[i]).all()]
            raise FieldSolverError(f"field(s) {', '.join(bad)} became non-finite")
        return fields

    def _precondition(self, r, diag, pinned, out, extra, cp):
        """out = M^-1 r with M the symmetric product of line factors (I + share tau w - tau_a L_a),
        w = 1/dt + U; pinned voxels carry a huge diagonal in every factor, so out is 0 there."""
        np.copyto(out, r)
        out_flat = out.reshape(self.F, -1)
        extra_flat = extra.reshape(self.F, -1)
        bshape = (self.F,) + (1,) * self.ndim
        tau = self.tau.astype(self.dtype).reshape(bshape)
        last = self.ndim - 1
        for a, share, k, base in self.adi_factors:
            np.multiply(diag, tau * np.float32(share), out=extra)
            extra_flat[:, pinned] = _PIN
            if a == last and self.ndim > 1:
                # x lines are contiguous, so row operations along x would stride by the line
                # length: solve on an x-first copy instead (measured 3x faster at 2048^2)
                xt = np.ascontiguousarray(np.moveaxis(out, -1, 1))
                et = np.ascontiguousarray(np.moveaxis(extra, -1, 1))
                thomas_solve_diag(xt, 0, k, base, et, cp.reshape(xt.shape),
                                  self._scratch(xt, 0))
                np.copyto(out, np.moveaxis(xt, 1, -1))
            else:
                thomas_solve_diag(out, a, k, base, extra, cp, self._scratch(out, a))
        out_flat[:, pinned] = 0
        return out

    def _apply(self, p, diag, out, lap, ghosts):
        """out = (1/dt + U) p - D lap(p) with the given ghost values."""
        laplacian(p, self.D_over_h2, ghosts, lap)
        np.multiply(diag, p, out=out)
        out -= lap
        return out

    def _adi_step(self, c, U, S, pinned) -> int:
        """One implicit-Euler step by conjugate gradients preconditioned with the ADI product.

        The system (1/dt + U - L) c = c_old/dt + S on the free (non-vessel) voxels is symmetric
        positive definite, and so is the preconditioner (a congruence of positive line factors),
        so the iteration converges for any rates and vessel layout."""
        F = self.F
        inv_dt = np.float32(1.0 / self.dt)
        diag = U + inv_dt
        b = c * inv_dt + S
        r, z, p, q, lap, extra, cp = (np.empty_like(c) for _ in range(7))
        r_flat, q_flat = (a.reshape(F, -1) for a in (r, q))
        # r = b - A c with the true boundary values; 0 at pinned voxels
        self._apply(c, diag, r, lap, self.ghosts)
        np.subtract(b, r, out=r)
        r_flat[:, pinned] = 0
        self._precondition(r, diag, pinned, z, extra, cp)
        np.copyto(p, z)
        rz = _dots(r, z)
        tol = self.sc.solver.tolerance
        r0 = np.abs(r_flat).max(axis=1)
        floor = min(tol, 1e-6) * np.abs(b).reshape(F, -1).max(axis=1)
        it = 0
        for it in range(1, self.sc.solver.max_iterations + 1):
            self._apply(p, diag, q, lap, self.ghosts0)
            q_flat[:, pinned] = 0
            pq = _dots(p, q)
            alpha = np.where(pq > 0, rz / np.where(pq > 0, pq, 1.0), 0.0)
            a_b = alpha.astype(self.dtype).reshape((F,) + (1,) * self.ndim)
            c += a_b * p
            r -= a_b * q
            # converged when the residual has fallen by the tolerance from its value at the start
            # of the step (so small steps are resolved as well as large ones), or to near float32
            # rounding of the right-hand side
            if np.all(np.abs(r_flat).max(axis=1) <= np.maximum(tol * r0, floor)):
                break
            self._precondition(r, diag, pinned, z, extra, cp)
            rz_new = _dots(r, z)
            beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
            rz = rz_new
            p *= beta.astype(self.dtype).reshape((F,) + (1,) * self.ndim)
            p += z
        else:
            if not self._warned:
                self._warned = True
                warnings.warn(f"field solve stopped at solver.max_iterations = {it} with residual "
                              f"{np.abs(r_flat).max():.3g} (start {r0.max():.3g}); raise "
                              "solver.max_iterations or solver.tolerance", RuntimeWarning,
                              stacklevel=3)
        return it

    def _lod_step(self, c, U, S, pinned):
        dt = np.float32(self.dt)
        k = self.lod_k
        for a in range(self.ndim):
            lo, hi = self.ghosts[a]
            ax = a + 1
            for g, idx in ((lo, 0), (hi, c.shape[ax] - 1)):
                if g is None:
                    continue
                s = [slice(None)] * c.ndim
                s[ax] = slice(idx, idx + 1)
                c[tuple(s)] += np.where(np.isnan(g), 0.0, k * np.nan_to_num(g))
            thomas_solve(c, a, self.lod_coeffs[a], self._scratch(c, a))
            c.reshape(self.F, -1)[:, pinned] = self.vessel_value
        # decay is inside the line solves; uptake, secretion and vessels here, implicitly
        U_no_decay = U - self.decay.reshape((self.F,) + (1,) * self.ndim).astype(self.dtype)
        c += dt * S
        c /= 1.0 + dt * U_no_decay
        c.reshape(self.F, -1)[:, pinned] = self.vessel_value

    def _scratch(self, x, axis):
        shape = np.moveaxis(x, axis + 1, 0).shape[1:]
        if shape not in self._tmp:
            self._tmp[shape] = np.empty(shape, dtype=x.dtype)
        return self._tmp[shape]
