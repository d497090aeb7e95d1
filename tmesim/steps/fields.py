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

solved *without operator splitting* by Douglas-type ADI iteration: with the residual
r = b - A c, each sweep applies

    c += tau * (I - tau Lz)^-1 (I - tau Ly)^-1 (I - tau Lx)^-1 (I + tau (1/dt + U))^-1 r

for pseudo-steps tau cycling geometrically from h^2/(4D) (damps voxel-scale error) to the largest
scale of the problem (damps smooth error) -- the classical ADI-iteration cycle (Wachspress). At
convergence c is the exact implicit-Euler solution, so the steady state is exact whatever the agent
step, and uptake and diffusion are never split. Why not plain LOD: for a tumour taking up oxygen at
10 /min (diffusion length 100 um), LOD's splitting error at steady state is of order dt * uptake;
measured on a 2 mm disk in 2D against a sparse direct solve, LOD's largest error is 0.37 mmHg at
dt = 0.01 min (BioFVM's default: 600 substeps per 6-min agent step), 2.7 mmHg at 0.1 min and 11 mmHg
at 1 min, whereas this iteration reaches 0.03 mmHg in 24 sweeps from a flat start, and a few sweeps
per agent step from the previous solution. Vessel voxels are pinned: their residual and update are
zero. (An earlier version modelled vessels as a fast exchange term, 1000 /min; that made the
diagonal so uneven that the iteration diverged -- the iteration is proven only for commuting
factors. Rates up to about 100 /min were stable in trials; the solver stops with an error if an
iteration grows instead of converging.) Mass is conserved exactly by every sweep when there is
no decay, uptake or source and faces are no-flux (the sums of r and of each no-flux Thomas solve
vanish).

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
from dataclasses import dataclass

import numpy as np

from .. import codes
from ..errors import UserError
from ..grid import Grid
from ..scenario import Scenario, face_conditions

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
    nbrs = np.full((m, F), 2.0)
    nbrs[0] = 1.0 + dirichlet_lo
    nbrs[-1] = 1.0 + dirichlet_hi
    if m == 1:
        nbrs[0] = dirichlet_lo.astype(float) + dirichlet_hi.astype(float)
    diag = 1.0 + diag_extra[None, :] + nbrs * k[None, :]
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

        def at(i, arr=None):
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
    """The field solve failed (diverged or produced non-finite values)."""


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
        # per-kind rate tables, (F, n_kinds): uptake and decay in 1/min, secretion in units/min
        nk = len(codes.KIND_NAMES)
        self.U_table = np.zeros((F, nk))
        self.S_table = np.zeros((F, nk))
        for i, f in enumerate(fcs):
            self.U_table[i] += f.decay_per_min
            for kname, rate in f.uptake_per_min.items():
                self.U_table[i, codes.KIND_CODES[kname]] += rate
            for kname, rate in f.secretion_per_min.items():
                self.S_table[i, codes.KIND_CODES[kname]] += rate
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
        if self.method == "adi":
            self._setup_adi()
        else:
            self._setup_lod()
        self.last_sweeps = 0      # sweeps taken by the last step (adi), for diagnostics

    # ----------------------------------------------------------------------------- coefficients
    def _line_coefficients(self, taus: np.ndarray, diag_extra=None):
        """Thomas coefficients per axis for pseudo-steps taus (F,)."""
        h = self.grid.dx_um
        extra = np.zeros(self.F) if diag_extra is None else diag_extra
        out = []
        for a in range(self.ndim):
            k = taus * self.D / h ** 2
            lo, hi = self.dirichlet[a]
            # float64 coefficients: with float32 ones a no-flux solve shifts the line's sum by
            # about 1e-8 each time, always the same way (LOD's mass then drifts 1e-5 in 240 steps)
            out.append(thomas_coefficients(k, self.grid.shape[a], lo, hi, extra, self.ndim,
                                           np.float64))
        return out

    def _setup_adi(self):
        h = self.grid.dx_um
        L = max(self.grid.shape) * h
        # pseudo-step range per field: from the voxel scale to the slowest mode of the step
        slow = 1.0 / self.dt + self.decay + self.D * (math.pi / L) ** 2
        tau_hi = 1.0 / slow
        with np.errstate(divide="ignore"):
            tau_lo = np.where(self.D > 0, h ** 2 / (4 * np.maximum(self.D, 1e-300)), tau_hi)
        tau_lo = np.minimum(tau_lo, tau_hi)
        ratio = 4.0
        K = int(max(1, math.ceil(np.max(np.log(tau_hi / tau_lo)) / math.log(ratio)) + 1))
        # smallest pseudo-step first (voxel-scale error), largest last (smooth error); this order
        # converged faster than the reverse in trials
        fr = np.linspace(0.0, 1.0, K) if K > 1 else np.array([1.0])
        self.taus = np.exp(np.log(tau_lo)[None, :] + fr[:, None] * np.log(tau_hi / tau_lo)[None, :])
        self.adi_coeffs = [self._line_coefficients(t) for t in self.taus]

    def _setup_lod(self):
        dt = self.dt
        self.lod_coeffs = self._line_coefficients(np.full(self.F, dt),
                                                  diag_extra=dt * self.decay / self.ndim)

    # ----------------------------------------------------------------------------- stepping
    def rates(self, kind: np.ndarray):
        """Per-voxel implicit rate U (1/min, excluding decay for lod) and source S (units/min)."""
        U = self.U_table.astype(self.dtype)[:, kind]
        S = self.S_table.astype(self.dtype)[:, kind]
        return U, S

    def step(self, fields: np.ndarray, kind: np.ndarray) -> np.ndarray:
        """Advance ``fields`` (F, n_sites) float32 by one agent step in place, given occupants."""
        if self.F == 0:
            return fields
        c = fields.reshape((self.F,) + self.grid.shape)
        U, S = self.rates(kind)
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

    def _adi_step(self, c, U, S, pinned) -> int:
        dt = self.dt
        inv_dt = np.float32(1.0 / dt)
        c_start = c.copy()
        b = c * inv_dt + S                       # right-hand side of the implicit-Euler system
        diag = U + inv_dt                         # 1/dt + U per voxel
        lap = np.empty_like(c)
        r = np.empty_like(c)
        tol = self.sc.solver.tolerance
        sweeps = 0
        r_flat = r.reshape(self.F, -1)
        previous = None
        for cycle in range(self.sc.solver.max_cycles):
            biggest = np.zeros(self.F)
            for k, tau in enumerate(self.taus):
                self.laplacian(c, lap)
                # r = b - (1/dt + U) c + D lap c
                np.multiply(diag, c, out=r)
                np.subtract(b, r, out=r)
                r += lap
                t = tau.astype(self.dtype).reshape((self.F,) + (1,) * self.ndim)
                # delta = tau r / (1 + tau (1/dt + U)), then the line solves
                r *= t / (1.0 + t * diag)
                r_flat[:, pinned] = 0
                for a in range(self.ndim):
                    thomas_solve(r, a, self.adi_coeffs[k][a], self._scratch(r, a))
                r_flat[:, pinned] = 0
                c += r
                sweeps += 1
                if k == len(self.taus) - 1:
                    biggest = np.abs(r).reshape(self.F, -1).max(axis=1)
            # converged when the last update is a small fraction of what this step changed (so
            # tiny steps are resolved as well as large ones), or near float32 rounding level
            change = np.abs(c - c_start).reshape(self.F, -1).max(axis=1)
            scale = np.abs(c).reshape(self.F, -1).max(axis=1)
            if np.all(biggest <= np.maximum(tol * change, min(tol, 1e-6) * scale)):
                break
            if previous is not None and np.any(biggest > 4 * previous) and cycle >= 2:
                bad = [self.sc.fields[i].name for i in np.flatnonzero(biggest > 4 * previous)]
                raise FieldSolverError(
                    f"ADI iteration diverges for field(s) {', '.join(bad)} (update grew from "
                    f"{previous.max():.3g} to {biggest.max():.3g}); rates this uneven need "
                    "solver.method = 'lod' with a small solver.dt_min")
            previous = biggest
        return sweeps

    def _lod_step(self, c, U, S, pinned):
        dt = np.float32(self.dt)
        h2 = self.grid.dx_um ** 2
        for a in range(self.ndim):
            lo, hi = self.ghosts[a]
            ax = a + 1
            k = (self.dt * self.D / h2).reshape((self.F,) + (1,) * self.ndim).astype(self.dtype)
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

    def laplacian(self, c, out):
        return laplacian(c, self.D_over_h2, self.ghosts, out)

    def _scratch(self, x, axis):
        shape = np.moveaxis(x, axis + 1, 0).shape[1:]
        if shape not in self._tmp:
            self._tmp[shape] = np.empty(shape, dtype=x.dtype)
        return self._tmp[shape]
