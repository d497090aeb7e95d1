/* fields.cu -- primitives of the field solver (tmesim/steps/fields.py), every field at once.
 *
 * Layout: a field array is float32, (F, n_sites) in C order, n_sites = nz*ny*nx with the grid's
 * C order (site = (z*ny + y)*nx + x); a 2D grid is passed as nz = 1, ndim = 2. Kernel axes are
 * numbered in 3D terms: 0 = z, 1 = y, 2 = x (a 2D grid's numpy axis a is kernel axis a + 1).
 * Per-field parameters are small (F,) arrays; per-row coefficients are (m, F), row-major.
 *
 * Arithmetic mirrors numpy operation for operation, in the same order and precision, with the
 * round-to-nearest intrinsics (__fmul_rn, __fadd_rn, ...): nvcc may not fuse them into FMAs, so
 * each value is rounded exactly as numpy rounds it and the kernels agree with numpy bit for bit
 * (float32 add, multiply, divide and reciprocal are correctly rounded in IEEE 754 on both sides).
 * The numpy twin of each kernel is named in its comment; tests/steps/test_fields_kernel.py checks them.
 *
 * Units: concentrations in each field's units (mmHg, ng/mL, uM); rates in 1/min; D/h^2 in 1/min;
 * line-solve coefficients dimensionless.
 */
#include "common.cuh"

/* Number of lines along kernel axis `axis` in F fields: the work items of a line solve. */
TM_HD long long tm_n_lines(int F, int nz, int ny, int nx, int axis) {
    const int m_axis = axis == 0 ? nz : axis == 1 ? ny : nx;
    return (long long)F * ((long long)nz * ny * nx / m_axis);
}

/* Position of work item l among the lines along kernel axis `axis`:
 * field f, first site `base` (flat index into the (F, n_sites) array), element stride, length m.
 * Lines of one field are numbered so that neighbouring work items are neighbouring x positions
 * for the y and z axes (coalesced on the GPU); along x each line is contiguous instead. */
TM_HD void tm_line(long long l, int nz, int ny, int nx, int axis, long long* base,
                   long long* stride, int* m, int* field) {
    const long long n_sites = (long long)nz * ny * nx;
    const int mm = axis == 0 ? nz : axis == 1 ? ny : nx;
    const long long per_field = n_sites / mm;
    const long long f = l / per_field;
    const long long r = l % per_field;
    long long b;
    long long s;
    if (axis == 2) {            /* r = z*ny + y */
        b = r * nx;
        s = 1;
    } else if (axis == 1) {     /* r = z*nx + x */
        b = (r / nx) * (long long)ny * nx + r % nx;
        s = nx;
    } else {                    /* r = y*nx + x */
        b = r;
        s = (long long)ny * nx;
    }
    *base = f * n_sites + b;
    *stride = s;
    *m = mm;
    *field = (int)f;
}

/* D lap(c) at site s of field f (before the D/h^2 factor): the sum over axes of the difference
 * of the two face fluxes, each face flux c[i+1] - c[i]; at a domain face the ghost value g stands
 * for the missing neighbour (Dirichlet: the bath value), or the face carries no flux (g = NaN).
 * Same order of operations as fields.laplacian: acc = 0, acc += (hi - lo) per axis. */
TM_HD float tm_lap_axis(const float* c, long long at, float cs, int i, int m, long long stride,
                        float g_lo, float g_hi) {
    const float lo = i > 0 ? __fsub_rn(cs, c[at - stride])
                           : (tm_isnan(g_lo) ? 0.0f : __fsub_rn(cs, g_lo));
    const float hi = i < m - 1 ? __fsub_rn(c[at + stride], cs)
                               : (tm_isnan(g_hi) ? 0.0f : __fsub_rn(g_hi, cs));
    return __fsub_rn(hi, lo);
}

TM_HD float tm_lap_sum(const float* c, const float* ghosts, long long F_off, long long s, int f,
                       int nz, int ny, int nx, int ndim) {
    /* axes written out (no local arrays indexed by the axis: they would live in stack memory) */
    const long long plane = (long long)ny * nx;
    const long long at = F_off + s;
    const float cs = c[at];
    const float* g = ghosts + f * 6;
    float acc = 0.0f;
    if (ndim == 3)
        acc = __fadd_rn(acc, tm_lap_axis(c, at, cs, (int)(s / plane), nz, plane, g[0], g[1]));
    acc = __fadd_rn(acc, tm_lap_axis(c, at, cs, (int)((s / nx) % ny), ny, nx, g[2], g[3]));
    acc = __fadd_rn(acc, tm_lap_axis(c, at, cs, (int)(s % nx), nx, 1, g[4], g[5]));
    return acc;
}

/* tm_laplacian: out = D lap(c) with ghost values per face.   Twin of fields.laplacian.
 *   F, nz, ny, nx, ndim   fields and grid (2D: nz = 1, ndim = 2)
 *   c          (F, n_sites) float32, concentrations
 *   D_over_h2  (F,) float32, D / h^2 in 1/min
 *   ghosts     (F, 3, 2) float32, bath value beyond the (lo, hi) face of kernel axis 0..2; NaN
 *              means no-flux for that field and face (a numpy ghost of None is all NaN)
 *   out        (F, n_sites) float32, field units per minute
 * One work item per (field, site). */
TM_KERNEL void tm_laplacian(int F, int nz, int ny, int nx, int ndim,
                            const float* __restrict__ c,
                            const float* __restrict__ D_over_h2,
                            const float* __restrict__ ghosts,
                            float* __restrict__ out) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(i, (long long)F * n) {
        const int f = (int)(i / n);
        const long long s = i % n;
        out[i] = __fmul_rn(tm_lap_sum(c, ghosts, f * n, s, f, nz, ny, nx, ndim), D_over_h2[f]);
    }
}

/* tm_apply_operator: out = diag p - D lap(p), the CG operator (1/dt + U - L) p.
 * Twin of FieldSolver._apply (laplacian into lap, then diag*p - lap).
 *   p, diag, out  (F, n_sites) float32 (diag = 1/dt + U in 1/min; out in units/min)
 *   D_over_h2, ghosts as tm_laplacian (the CG products use ghosts of 0 at Dirichlet faces)
 * One work item per (field, site). */
TM_KERNEL void tm_apply_operator(int F, int nz, int ny, int nx, int ndim,
                                 const float* __restrict__ p,
                                 const float* __restrict__ diag,
                                 const float* __restrict__ D_over_h2,
                                 const float* __restrict__ ghosts,
                                 float* __restrict__ out) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(i, (long long)F * n) {
        const int f = (int)(i / n);
        const long long s = i % n;
        const float lap = __fmul_rn(tm_lap_sum(p, ghosts, f * n, s, f, nz, ny, nx, ndim),
                                    D_over_h2[f]);
        out[i] = __fsub_rn(__fmul_rn(diag[i], p[i]), lap);
    }
}

/* tm_rates: per-voxel implicit rate and source from the (field, kind, state) tables.
 * Twin of FieldSolver.rates.
 *   n          sites
 *   kind, tumor_state  (n,) uint8 (tmesim.codes)
 *   U_table, S_table   (F, n_kinds * n_states) float32: uptake + decay (1/min), secretion
 *                      (units/min), entry kind * n_states + state
 *   U, S       (F, n) float32 outputs
 * One work item per (field, site). */
TM_KERNEL void tm_rates(int F, long long n, int n_codes, int n_states,
                        const u8* __restrict__ kind,
                        const u8* __restrict__ tumor_state,
                        const float* __restrict__ U_table,
                        const float* __restrict__ S_table,
                        float* __restrict__ U, float* __restrict__ S) {
    TM_FOR_EACH(i, (long long)F * n) {
        const int f = (int)(i / n);
        const long long s = i % n;
        const int idx = (int)kind[s] * n_states + (int)tumor_state[s];
        U[i] = U_table[f * n_codes + idx];
        S[i] = S_table[f * n_codes + idx];
    }
}

/* tm_cg_setup: diag = U + 1/dt and b = c/dt + S (computed as c * inv_dt + S, as numpy does).
 * Twin of the first lines of FieldSolver._adi_step.
 *   c, U, S    (F*n,) float32 (field units; 1/min; units/min)
 *   inv_dt     1/dt in 1/min (the float32 numpy uses)
 *   diag, b    (F*n,) float32 outputs (1/min; units/min)
 * One work item per (field, site). */
TM_KERNEL void tm_cg_setup(long long n_total, float inv_dt,
                           const float* __restrict__ c,
                           const float* __restrict__ U,
                           const float* __restrict__ S,
                           float* __restrict__ diag, float* __restrict__ b) {
    TM_FOR_EACH(i, n_total) {
        diag[i] = __fadd_rn(U[i], inv_dt);
        b[i] = __fadd_rn(__fmul_rn(c[i], inv_dt), S[i]);
    }
}

/* tm_residual: r = b - r, then 0 at pinned (vessel) voxels.
 * Twin of "np.subtract(b, r, out=r); r[:, pinned] = 0" in FieldSolver._adi_step.
 *   b, r       (F, n) float32 (units/min); r holds A c on entry, the residual on exit
 *   kind       (n,) uint8; vessel voxels are pinned
 * One work item per (field, site). */
TM_KERNEL void tm_residual(int F, long long n, const float* __restrict__ b,
                           float* __restrict__ r, const u8* __restrict__ kind) {
    TM_FOR_EACH(i, (long long)F * n) {
        r[i] = kind[i % n] == TM_VESSEL ? 0.0f : __fsub_rn(b[i], r[i]);
    }
}

/* tm_set_pinned: x[f, s] = value[f] at vessel voxels, untouched elsewhere.
 * Twin of "x[:, pinned] = value" (vessel values, or 0 for residuals and search directions).
 *   x (F, n) float32; kind (n,) uint8; value (F,) float32 in the field's units
 * One work item per (field, site). */
TM_KERNEL void tm_set_pinned(int F, long long n, float* __restrict__ x,
                             const u8* __restrict__ kind,
                             const float* __restrict__ value) {
    TM_FOR_EACH(i, (long long)F * n) {
        if (kind[i % n] == TM_VESSEL) x[i] = value[i / n];
    }
}

/* tm_factor_diag: out = diag * scale[f], and `pin` at vessel voxels: the per-voxel diagonal of an
 * ADI line factor (scale = tau * share, float32, computed by the caller exactly as numpy does).
 * Twin of "np.multiply(diag, tau * share, out=extra); extra[:, pinned] = _PIN".
 *   diag (F, n) float32 1/min; scale (F,) float32 min; pin the pinned diagonal (1e20)
 *   out  (F, n) float32, dimensionless
 * One work item per (field, site). */
TM_KERNEL void tm_factor_diag(int F, long long n, const float* __restrict__ diag,
                              const float* __restrict__ scale,
                              const u8* __restrict__ kind, float pin,
                              float* __restrict__ out) {
    TM_FOR_EACH(i, (long long)F * n) {
        out[i] = kind[i % n] == TM_VESSEL ? pin : __fmul_rn(diag[i], scale[i / n]);
    }
}

/* tm_axpy: y += alpha[f] * x (the product rounded first, as numpy's "y += a * x").
 * Twin of "c += a_b * p" and, with -alpha, of "r -= a_b * q" (r - a q == r + (-a) q exactly:
 * negation is exact in IEEE arithmetic).
 *   y, x (F, n) float32; alpha (F,) float32
 * One work item per (field, site). */
TM_KERNEL void tm_axpy(int F, long long n, float* __restrict__ y,
                       const float* __restrict__ alpha,
                       const float* __restrict__ x) {
    TM_FOR_EACH(i, (long long)F * n) {
        y[i] = __fadd_rn(y[i], __fmul_rn(alpha[i / n], x[i]));
    }
}

/* tm_scale_add: p = p * beta[f] + z (two roundings, as numpy's "p *= beta; p += z").
 *   p, z (F, n) float32; beta (F,) float32
 * One work item per (field, site). */
TM_KERNEL void tm_scale_add(int F, long long n, float* __restrict__ p,
                            const float* __restrict__ beta,
                            const float* __restrict__ z) {
    TM_FOR_EACH(i, (long long)F * n) {
        p[i] = __fadd_rn(__fmul_rn(p[i], beta[i / n]), z[i]);
    }
}

/* tm_thomas_solve: solve the precomputed tridiagonal systems along kernel axis `axis` in place.
 * Twin of fields.thomas_solve (LOD's implicit 1D steps).
 *   x          (F, n_sites) float32, right-hand side in, solution out (field units)
 *   inv, kinv, cp  (m, F) float64: ThomasCoefficients (1/(b_i - a c'_{i-1}), k times it, c'_i),
 *              dimensionless; m = the axis length
 * numpy multiplies the float32 values by the float64 coefficients in float64 and rounds the
 * product to float32 (in-place ufuncs with a float32 output); so do we. A float32 coefficient
 * gives the same result (the double product of two floats is exact, so rounding it once is the
 * float32 product).
 * One work item per line: F * n_sites / m lines. */
TM_KERNEL void tm_thomas_solve(int F, int nz, int ny, int nx, int axis,
                               float* __restrict__ x,
                               const double* __restrict__ inv,
                               const double* __restrict__ kinv,
                               const double* __restrict__ cp) {
    TM_FOR_EACH(l, tm_n_lines(F, nz, ny, nx, axis)) {
        long long base, stride;
        int m, f;
        tm_line(l, nz, ny, nx, axis, &base, &stride, &m, &f);
        float prev = (float)__dmul_rn((double)x[base], inv[f]);
        x[base] = prev;
        for (int i = 1; i < m; ++i) {
            const long long at = base + i * stride;
            const float t = (float)__dmul_rn((double)prev, kinv[i * F + f]);
            const float xi = (float)__dmul_rn((double)x[at], inv[i * F + f]);
            prev = __fadd_rn(xi, t);
            x[at] = prev;
        }
        for (int i = m - 2; i >= 0; --i) {
            const long long at = base + i * stride;
            const float t = (float)__dmul_rn((double)prev, cp[i * F + f]);
            prev = __fsub_rn(x[at], t);
            x[at] = prev;
        }
    }
}

/* tm_thomas_solve_diag: solve -k x_{i-1} + (base_i + extra_i) x_i - k x_{i+1} = rhs_i along kernel
 * axis `axis` in place, the diagonal varying per voxel (the ADI preconditioner's line factors).
 * Twin of fields.thomas_solve_diag, same float32 operations in the same order.
 *   x      (F, n_sites) float32, right-hand side in, solution out
 *   extra  (F, n_sites) float32, per-voxel part of the diagonal (>= 0, dimensionless)
 *   cp     (F, n_sites) float32 scratch: the (positive) elimination factors k / denominator
 *   k      (F,) float32, off-diagonal coupling tau D / h^2
 *   base   (m, F) float32, constant diagonal part 1 + (neighbours in the line) k
 * One work item per line. */
TM_KERNEL void tm_thomas_solve_diag(int F, int nz, int ny, int nx, int axis,
                                    float* __restrict__ x,
                                    const float* __restrict__ extra,
                                    float* __restrict__ cp,
                                    const float* __restrict__ k,
                                    const float* __restrict__ base_diag) {
    TM_FOR_EACH(l, tm_n_lines(F, nz, ny, nx, axis)) {
        long long base, stride;
        int m, f;
        tm_line(l, nz, ny, nx, axis, &base, &stride, &m, &f);
        const float kk = k[f];
        float xprev = 0.0f, cprev = 0.0f;
        for (int i = 0; i < m; ++i) {
            const long long at = base + i * stride;
            float d = __fadd_rn(extra[at], base_diag[i * F + f]);
            if (i) d = __fsub_rn(d, __fmul_rn(kk, cprev));
            d = __frcp_rn(d);
            float xi = x[at];
            if (i) xi = __fadd_rn(xi, __fmul_rn(kk, xprev));
            xi = __fmul_rn(xi, d);
            cprev = __fmul_rn(d, kk);
            x[at] = xi;
            cp[at] = cprev;
            xprev = xi;
        }
        for (int i = m - 2; i >= 0; --i) {
            const long long at = base + i * stride;
            xprev = __fadd_rn(x[at], __fmul_rn(cp[at], xprev));
            x[at] = xprev;
        }
    }
}

/* tm_thomas_factor_diag: per-voxel elimination factors of tm_thomas_solve_diag's systems, for
 * tm_thomas_solve_factored (one factorization serves every CG iteration of an agent step).
 * Twin of fields.thomas_factor_diag: the same float32 operations as the forward sweep of
 * tm_thomas_solve_diag, so factor + solve_factored == solve_diag bit for bit.
 *   extra  (F, n_sites) float32 per-voxel diagonal part; k (F,) float32; base (m, F) float32
 *   inv    (F, n_sites) float32 out: 1 / (b_i - a c'_{i-1})
 *   cp     (F, n_sites) float32 out: k inv_i (= -c'_i, positive)
 * One work item per line. */
TM_KERNEL void tm_thomas_factor_diag(int F, int nz, int ny, int nx, int axis,
                                     const float* __restrict__ extra,
                                     const float* __restrict__ k,
                                     const float* __restrict__ base_diag,
                                     float* __restrict__ inv,
                                     float* __restrict__ cp) {
    TM_FOR_EACH(l, tm_n_lines(F, nz, ny, nx, axis)) {
        long long base, stride;
        int m, f;
        tm_line(l, nz, ny, nx, axis, &base, &stride, &m, &f);
        const float kk = k[f];
        float cprev = 0.0f;
        for (int i = 0; i < m; ++i) {
            const long long at = base + i * stride;
            float d = __fadd_rn(extra[at], base_diag[i * F + f]);
            if (i) d = __fsub_rn(d, __fmul_rn(kk, cprev));
            d = __frcp_rn(d);
            cprev = __fmul_rn(d, kk);
            inv[at] = d;
            cp[at] = cprev;
        }
    }
}

/* tm_thomas_solve_factored: solve along kernel axis `axis` in place with the factors of
 * tm_thomas_factor_diag: forward x_i = (x_i + k x_{i-1}) inv_i, back x_i += cp_i x_{i+1}.
 * Twin of fields.thomas_solve_factored.
 *   x (F, n_sites) float32; k (F,) float32; inv, cp (F, n_sites) float32
 * One work item per line. */
TM_KERNEL void tm_thomas_solve_factored(int F, int nz, int ny, int nx, int axis,
                                        float* __restrict__ x,
                                        const float* __restrict__ k,
                                        const float* __restrict__ inv,
                                        const float* __restrict__ cp) {
    TM_FOR_EACH(l, tm_n_lines(F, nz, ny, nx, axis)) {
        long long base, stride;
        int m, f;
        tm_line(l, nz, ny, nx, axis, &base, &stride, &m, &f);
        const float kk = k[f];
        float xprev = __fmul_rn(x[base], inv[base]);
        x[base] = xprev;
        for (int i = 1; i < m; ++i) {
            const long long at = base + i * stride;
            xprev = __fmul_rn(__fadd_rn(x[at], __fmul_rn(xprev, kk)), inv[at]);
            x[at] = xprev;
        }
        for (int i = m - 2; i >= 0; --i) {
            const long long at = base + i * stride;
            xprev = __fadd_rn(x[at], __fmul_rn(cp[at], xprev));
            x[at] = xprev;
        }
    }
}

/* tm_cg_rhs: b = c * inv_dt + S, the right-hand side of one implicit-Euler field step (the
 * operator's diagonal is unchanged between the field steps of an agent step, so only b is redone).
 * Twin of "np.multiply(c, inv_dt, out=b); b += S" in FieldSolver._adi_step.
 *   c, S   (F*n,) float32 (field units; units/min)
 *   inv_dt 1/dt in 1/min (the float32 numpy uses)
 *   b      (F*n,) float32 output, units/min
 * One work item per (field, site); each writes only its own b[i]. */
TM_KERNEL void tm_cg_rhs(long long n_total, float inv_dt,
                         const float* __restrict__ c,
                         const float* __restrict__ S,
                         float* __restrict__ b) {
    TM_FOR_EACH(i, n_total) {
        b[i] = __fadd_rn(__fmul_rn(c[i], inv_dt), S[i]);
    }
}

/* NaN test for doubles (x != x, as tm_isnan). */
TM_HD bool tm_isnan64(double x) { return x != x; }

/* LOD's per-voxel implicit reaction c (1 + dt U') = c + dt S, U' = U - decay (decay is split
 * among the line solves), in float64 as FieldSolver._lod_run computes its coefficient arrays
 * ra = 1 / (((double)U - decay) dt + 1), rb = ((double)S dt) ra, then c ra + rb; here per voxel
 * from the float32 rate tables instead of two float64 arrays per field (16 B per voxel saved).
 * a - b is spelled a + (-b): negation is exact, so it is the same IEEE operation. */
TM_HD double tm_lod_react(double x, float u, float s, double decay, double dt) {
    double ra = __dadd_rn((double)u, -decay);
    ra = __dmul_rn(ra, dt);
    ra = __dadd_rn(ra, 1.0);
    ra = __ddiv_rn(1.0, ra);                       /* np.reciprocal: 1/x, correctly rounded */
    const double rb = __dmul_rn(__dmul_rn((double)s, dt), ra);
    return __dadd_rn(__dmul_rn(x, ra), rb);
}

/* tm_lod_sweep: one LOD line solve of ONE field in float64, in place, along kernel axis `axis`,
 * with BioFVM's vessel reset and, on the last axis, the reaction update fused into the back
 * substitution. Twin of one _lod_sweep call of FieldSolver._lod_run plus the lines after it
 * ("w[:, pinned] = v", and after the x sweep "t[pinned] = v; t *= ra; t += rb; t[pinned] = v").
 *   nz, ny, nx   grid (2D: nz = 1)
 *   F, f         number of fields and this field's index (column of the coefficient tables)
 *   x            (n_sites,) float64, this field's work array (field units)
 *   inv, kinv, cp  (m, F) float64 ThomasCoefficients of LOD's (1 + dt decay/ndim - dt D L_axis),
 *                dimensionless, m = the axis length
 *   kg_lo, kg_hi k g, the Dirichlet ghost terms added to the first / last row's right-hand side
 *                (0 for a field without a bath on that face); NaN: the face is no-flux for every
 *                field and numpy adds nothing (bit-exact even for a -0.0 value)
 *   kind         (n_sites,) uint8; vessel voxels are reset to `vessel` once their line is solved
 *   vessel       this field's vessel value (float32 value widened, field units)
 *   react        nonzero: non-vessel voxels get the reaction tm_lod_react (the last axis)
 *   tumor_state  (n_sites,) uint8; U_table, S_table (F, n_codes) float32 as tm_rates
 *                (uptake + decay in 1/min; secretion in units/min), n_codes = n_kinds * n_states
 *   decay        this field's decay (1/min, float64); dt the field step (min)
 * One work item per line (n_sites / m lines). The back substitution keeps the unreset value in a
 * register for the next row, so resetting/reacting row i+1 as soon as row i is solved gives what
 * numpy's separate passes give. A work item reads and writes only the m sites of its own line
 * (lines of one axis are disjoint) and reads the shared tables: no races, no atomics, and the
 * result does not depend on the order in which lines run. */
TM_KERNEL void tm_lod_sweep(int nz, int ny, int nx, int axis, int F, int f,
                            double* __restrict__ x,
                            const double* __restrict__ inv,
                            const double* __restrict__ kinv,
                            const double* __restrict__ cp,
                            double kg_lo, double kg_hi,
                            const u8* __restrict__ kind, double vessel, int react,
                            const u8* __restrict__ tumor_state, int n_codes, int n_states,
                            const float* __restrict__ U_table,
                            const float* __restrict__ S_table,
                            double decay, double dt) {
    const bool add_lo = !tm_isnan64(kg_lo), add_hi = !tm_isnan64(kg_hi);
    const float* Uf = U_table + (long long)f * n_codes;
    const float* Sf = S_table + (long long)f * n_codes;
    TM_FOR_EACH(l, tm_n_lines(1, nz, ny, nx, axis)) {
        long long base, stride;
        int m, f0;              /* one field's lines: f0 = 0, base within field f's slice */
        tm_line(l, nz, ny, nx, axis, &base, &stride, &m, &f0);
        /* forward: numpy adds k g to the edge rows first, then x_0 *= inv_0,
         * x_i = x_i inv_i + x_{i-1} kinv_i */
        double prev = x[base];
        if (add_lo) prev = __dadd_rn(prev, kg_lo);
        if (m == 1 && add_hi) prev = __dadd_rn(prev, kg_hi);
        prev = __dmul_rn(prev, inv[f]);
        if (m > 1) x[base] = prev;
        for (int i = 1; i < m; ++i) {
            const long long at = base + i * stride;
            double xi = x[at];
            if (i == m - 1 && add_hi) xi = __dadd_rn(xi, kg_hi);
            const double t = __dmul_rn(prev, kinv[i * F + f]);
            prev = __dadd_rn(__dmul_rn(xi, inv[i * F + f]), t);
            if (i < m - 1) x[at] = prev;
        }
        /* back: x_i -= cp_i x_{i+1}; each row's final value is reset (vessels) or reacted
         * before it is stored, while `prev` keeps the plain solution for the next row */
        for (int i = m - 1; i >= 0; --i) {
            const long long at = base + i * stride;
            if (i < m - 1) prev = __dadd_rn(x[at], -__dmul_rn(prev, cp[i * F + f]));
            double out = prev;
            if (kind[at] == TM_VESSEL) {
                out = vessel;
            } else if (react) {
                const int idx = (int)kind[at] * n_states + (int)tumor_state[at];
                out = tm_lod_react(prev, Uf[idx], Sf[idx], decay, dt);
            }
            x[at] = out;
        }
    }
}
