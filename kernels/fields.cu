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
#include "lattice.cuh"

#include "pins.cuh"
#include "reduce.cuh"

typedef unsigned short u16;

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

/* |v| folded into a running maximum; a NaN sticks (numpy's max propagates it). */
TM_HD float tm_absmax_step(float acc, float v) {
    const float a = v < 0.0f ? -v : v;
    return (tm_isnan(a) || a > acc) ? (tm_isnan(acc) ? acc : a) : acc;
}

/* tm_rates_diag: the operator's diagonal diag = U + 1/dt and the source S from the rate tables
 * in one pass, U never stored (tm_rates then the diag line of tm_cg_setup; numpy's
 * "np.add(U, inv_dt, out=diag)" with U its float32 rate).
 *   F, n, n_codes, n_states, kind, tumor_state, U_table, S_table as tm_rates; inv_dt float32
 *   diag, S (F, n) float32 outputs (1/min; units/min)
 * One work item per (field, site). */
TM_KERNEL void tm_rates_diag(int F, long long n, int n_codes, int n_states,
                             const u8* __restrict__ kind, const u8* __restrict__ tumor_state,
                             const float* __restrict__ U_table,
                             const float* __restrict__ S_table, float inv_dt,
                             float* __restrict__ diag, float* __restrict__ S) {
    TM_FOR_EACH(i, (long long)F * n) {
        const int f = (int)(i / n);
        const long long s = i % n;
        const int idx = (int)kind[s] * n_states + (int)tumor_state[s];
        diag[i] = __fadd_rn(U_table[f * n_codes + idx], inv_dt);
        S[i] = S_table[f * n_codes + idx];
    }
}

/* tm_cg_start: the start of a CG field step in one pass, one column at a time: the residual
 * r = (c inv_dt + S) - A c with the true boundary values, 0 at pinned voxels, and the column
 * maxima of |r| and of |b| = |c inv_dt + S| (b itself is not stored). Twin of
 * "np.multiply(c, inv_dt, out=b); b += S", "_apply(c, ..., r, ghosts)", "r = b - r;
 * r[:, pinned] = 0" and the absmax of r and b in FieldSolver._adi_step.
 *   F, nz, ny, nx, ndim; m0, P (grid axis 0's length, sites per plane); inv_dt float32
 *   c, S, diag (F, n) float32; D_over_h2 (F,); ghosts (F, 3, 2) as tm_laplacian; pin (n,)
 *   r (F, n) float32 output; colmax_r, colmax_b (F, P) float32 outputs
 * One work item per (field, column). */
TM_KERNEL void tm_cg_start(int F, int nz, int ny, int nx, int ndim, long long m0, long long P,
                           float inv_dt, const float* __restrict__ c,
                           const float* __restrict__ S, const float* __restrict__ diag,
                           const float* __restrict__ D_over_h2,
                           const float* __restrict__ ghosts, const u8* __restrict__ pin,
                           float* __restrict__ r, float* __restrict__ colmax_r,
                           float* __restrict__ colmax_b) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(w, (long long)F * P) {
        const int f = (int)(w / P);
        const long long j = w % P;
        float mr = 0.0f, mb = 0.0f;
        for (long long i = m0 - 1; i >= 0; --i) {
            const long long s = i * P + j;
            const long long at = (long long)f * n + s;
            const float b = __fadd_rn(__fmul_rn(c[at], inv_dt), S[at]);
            const float lap = __fmul_rn(tm_lap_sum(c, ghosts, (long long)f * n, s, f, nz, ny, nx,
                                                   ndim),
                                        D_over_h2[f]);
            const float Ac = __fsub_rn(__fmul_rn(diag[at], c[at]), lap);
            const float rr = tm_pinned(pin[s]) ? 0.0f : __fsub_rn(b, Ac);
            r[at] = rr;
            mr = tm_absmax_step(mr, rr);
            mb = tm_absmax_step(mb, b);
        }
        colmax_r[w] = mr;
        colmax_b[w] = mb;
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

/* tm_residual: r = b - r, then 0 at pinned voxels (vessels, held bath).
 * Twin of "np.subtract(b, r, out=r); r[:, pinned] = 0" in FieldSolver._adi_step.
 *   b, r       (F, n) float32 (units/min); r holds A c on entry, the residual on exit
 *   pin        (n,) uint8 pin codes (kind, TM_PIN_BATH at held medium); tm_pinned voxels are
 *              pinned
 * One work item per (field, site). */
TM_KERNEL void tm_residual(int F, long long n, const float* __restrict__ b,
                           float* __restrict__ r, const u8* __restrict__ pin) {
    TM_FOR_EACH(i, (long long)F * n) {
        r[i] = tm_pinned(pin[i % n]) ? 0.0f : __fsub_rn(b[i], r[i]);
    }
}

/* tm_set_pinned: x[f, s] = value[f] at vessel voxels and bath[f] at held bath voxels, untouched
 * elsewhere. Twin of "x[:, pinned] = values" (FieldSolver.pins: vessel and bath values; or 0 for
 * residuals and search directions, both arrays zero).
 *   x (F, n) float32; pin (n,) uint8 pin codes; value, bath (F,) float32 in the field's units
 * One work item per (field, site). */
TM_KERNEL void tm_set_pinned(int F, long long n, float* __restrict__ x,
                             const u8* __restrict__ pin,
                             const float* __restrict__ value,
                             const float* __restrict__ bath) {
    TM_FOR_EACH(i, (long long)F * n) {
        const u8 k = pin[i % n];
        if (k == TM_VESSEL) x[i] = value[i / n];
        else if (k == TM_PIN_BATH) x[i] = bath[i / n];
    }
}

/* tm_factor_diag: out = diag * scale[f], and `pin_diag` at pinned voxels: the per-voxel diagonal
 * of an ADI line factor (scale = tau * share, float32, computed by the caller exactly as numpy
 * does). Twin of "np.multiply(diag, tau * share, out=extra); extra[:, pinned] = _PIN".
 *   diag (F, n) float32 1/min; scale (F,) float32 min; pin (n,) uint8 pin codes;
 *   pin_diag the pinned diagonal (1e20)
 *   out  (F, n) float32, dimensionless
 * One work item per (field, site). */
TM_KERNEL void tm_factor_diag(int F, long long n, const float* __restrict__ diag,
                              const float* __restrict__ scale,
                              const u8* __restrict__ pin, float pin_diag,
                              float* __restrict__ out) {
    TM_FOR_EACH(i, (long long)F * n) {
        out[i] = tm_pinned(pin[i % n]) ? pin_diag : __fmul_rn(diag[i], scale[i / n]);
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
 *   kind         (n_sites,) uint8 pin codes: vessel voxels are reset to `vessel` and held bath
 *                voxels (TM_PIN_BATH) to `bath` once their line is solved
 *   vessel, bath this field's vessel and bath values (float32 values widened, field units)
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
                            const u8* __restrict__ kind, double vessel, double bath,
                            int react,
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
            } else if (kind[at] == TM_PIN_BATH) {
                out = bath;
            } else if (react) {
                const int idx = (int)kind[at] * n_states + (int)tumor_state[at];
                out = tm_lod_react(prev, Uf[idx], Sf[idx], decay, dt);
            }
            x[at] = out;
        }
    }
}

/* ---------------------------------------------------------------------------- the stirred bath
 * Which empty voxels a stirred bath holds (tmesim.steps.medium, the specification; driver
 * tmesim.steps.fields_kernel.medium_pins), once per agent step, into a pin code array `pin`
 * (n_sites,) uint8 with the help of a distance buffer D (n_sites,) uint16:
 *   tm_medium_exterior   once per grid axis (the first with first = 1): pin[s] = 1 where the
 *                        voxel and every voxel from it to the lo or hi face along that axis are
 *                        empty, OR-ed over the axes (the ray test, medium.exterior);
 *   tm_medium_distance_first, then tm_medium_distance medium.n_passes(cap) - 1 times: the
 *                        capped chamfer distance from the occupied voxels, in place in D
 *                        (medium.distance; weights 10, 14, 17 over the full Moore
 *                        neighbourhood, whatever grid.neighbourhood says);
 *   tm_medium_pins       pin[s] = TM_PIN_BATH where kind[s] is empty, pin[s] (the ray flag) is
 *                        set and D[s] > cap; else pin[s] = kind[s].
 * Races. tm_medium_exterior: a work item reads kind along its own line and writes pin only
 * there; the lines of one axis are disjoint, and launches are ordered, so each OR reads the
 * previous launch's value. tm_medium_distance_first writes its own D[s] only (D not read).
 * tm_medium_distance lowers its own D[s] only, reading neighbours' D while their work items may
 * be lowering them: the benign races of kernels/mechanics.cu's tm_push_distance, with the same
 * argument ("Races" there, with "empty" for "pushable occupied"): every stored value is a real
 * path length <= cap or INF, values only fall, so the in-place field is bounded by the Jacobi
 * field pass by pass and after n_passes(cap) passes equals the true capped distance, whatever
 * the order (tests/steps/test_medium.py runs forward, reverse and scrambled orders).
 * tm_medium_pins reads and writes its own site only.
 * Memory: D 2 B and pin 1 B per site, allocated only when the medium is stirred. */

#define TM_MEDIUM_INF 0xFFFF

/* Chamfer weight of a Moore step across `n` axes (1, 2 or 3): 10, 14, 17 tenths of an edge. */
TM_HD int tm_medium_weight(int n) { return n == 1 ? 10 : (n == 2 ? 14 : 17); }

/* tm_medium_exterior: the ray test along kernel axis `axis`, one work item per line.
 *   nz, ny, nx   grid (2D: nz = 1; launch only the grid's axes, 1 and 2 in 2D)
 *   first        1: write the flag (the first axis); 0: OR it into pin
 *   kind         (n_sites,) uint8 occupants
 *   pin          (n_sites,) uint8: 1 where the voxel is empty and so is every voxel between it
 *                and the line's lo end, or its hi end; 0 elsewhere (OR-ed with the value there
 *                unless first) */
TM_KERNEL void tm_medium_exterior(int nz, int ny, int nx, int axis, int first,
                                  const u8* __restrict__ kind, u8* __restrict__ pin) {
    TM_FOR_EACH(l, tm_n_lines(1, nz, ny, nx, axis)) {
        long long base, stride;
        int m, f0;
        tm_line(l, nz, ny, nx, axis, &base, &stride, &m, &f0);
        int lo = 0;                 /* the first occupied voxel (m: none) */
        while (lo < m && kind[base + lo * stride] == TM_EMPTY) ++lo;
        int hi = m - 1;             /* the last occupied voxel (-1: none) */
        while (hi >= 0 && kind[base + hi * stride] == TM_EMPTY) --hi;
        for (int i = 0; i < m; ++i) {
            const long long at = base + i * stride;
            const u8 v = (u8)(i < lo || i > hi);
            pin[at] = first ? v : (u8)(pin[at] | v);
        }
    }
}

/* tm_medium_distance_first: the first Jacobi pass of the capped distance from the occupied
 * voxels (medium.distance's first pass from 0 at occupied voxels, INF at empty ones).
 *   n_sites, nz, ny, nx  the grid (2D: nz = 1)
 *   kind                 (n_sites,) uint8 occupants (read only)
 *   cap                  the unstirred layer in tenths of a voxel edge (medium.layer_units)
 *   D                    (n_sites,) uint16 out (not read): 0 at occupied voxels; at an empty
 *                        voxel the least weight of a step to an occupied in-grid neighbour if
 *                        that is at most cap, else INF
 * One work item per site; it writes D[s] only. */
TM_KERNEL void tm_medium_distance_first(long long n_sites, int nz, int ny, int nx,
                                        const u8* __restrict__ kind, int cap,
                                        u16* __restrict__ D) {
    TM_FOR_EACH(s, n_sites) {
        int out = 0;
        if (kind[s] == TM_EMPTY) {
            out = TM_MEDIUM_INF;
            int z, y, x;
            tm_site_coords(s, ny, nx, &z, &y, &x);
            for (int dz = -1; dz <= 1; ++dz)
                for (int dy = -1; dy <= 1; ++dy)
                    for (int dx = -1; dx <= 1; ++dx) {
                        const int zz = z + dz, yy = y + dy, xx = x + dx;
                        if (zz < 0 || zz >= nz || yy < 0 || yy >= ny || xx < 0 || xx >= nx)
                            continue;  /* also the (0, 0, 0) step: it is empty, s itself */
                        if (kind[((long long)zz * ny + yy) * nx + xx] == TM_EMPTY) continue;
                        const int w = tm_medium_weight((dz != 0) + (dy != 0) + (dx != 0));
                        out = w < out ? w : out;
                    }
            out = out > cap ? TM_MEDIUM_INF : out;
        }
        D[s] = (u16)out;
    }
}

/* tm_medium_distance: a further pass, in place: at an empty voxel s,
 * D[s] = min(D[s], min over in-grid Moore neighbours of D[nb] + w), stored only when that is
 * below D[s] and at most cap (the capped Jacobi update); occupied voxels keep 0.
 *   n_sites, nz, ny, nx, kind, cap  as tm_medium_distance_first; D (n_sites,) uint16 in place
 * One work item per site; it writes D[s] only, and only to lower it (benign races: see above). */
TM_KERNEL void tm_medium_distance(long long n_sites, int nz, int ny, int nx,
                                  const u8* __restrict__ kind, int cap,
                                  u16* __restrict__ D) {
    TM_FOR_EACH(s, n_sites) {
        if (kind[s] != TM_EMPTY) continue;
        const int old = D[s];
        int best = old;
        int z, y, x;
        tm_site_coords(s, ny, nx, &z, &y, &x);
        for (int dz = -1; dz <= 1; ++dz)
            for (int dy = -1; dy <= 1; ++dy)
                for (int dx = -1; dx <= 1; ++dx) {
                    const int zz = z + dz, yy = y + dy, xx = x + dx;
                    if (zz < 0 || zz >= nz || yy < 0 || yy >= ny || xx < 0 || xx >= nx) continue;
                    const int n_axes = (dz != 0) + (dy != 0) + (dx != 0);
                    if (n_axes == 0) continue;
                    const int t = (int)D[((long long)zz * ny + yy) * nx + xx] +
                                  tm_medium_weight(n_axes);
                    best = t < best ? t : best;
                }
        if (best < old && best <= cap) D[s] = (u16)best;
    }
}

/* tm_medium_pins: the pin codes: TM_PIN_BATH at an empty voxel open to a face (pin[s] set by
 * tm_medium_exterior) farther than cap from every occupied voxel (D[s] > cap); kind[s] elsewhere.
 * Twin of medium.pin_codes.
 *   n_sites; kind (n_sites,) uint8; D (n_sites,) uint16 final distances; cap as above
 *   pin (n_sites,) uint8: the ray flags on entry, the pin codes on exit
 * One work item per site (its own site only). */
TM_KERNEL void tm_medium_pins(long long n_sites, const u8* __restrict__ kind,
                              const u16* __restrict__ D, int cap, u8* __restrict__ pin) {
    TM_FOR_EACH(s, n_sites) {
        const u8 k = kind[s];
        pin[s] = (k == TM_EMPTY && pin[s] != 0 && (int)D[s] > cap) ? (u8)TM_PIN_BATH : k;
    }
}

/* The multigrid preconditioner's kernels (tm_mg_*). */
#include "multigrid.cuh"

/* tm_cg_direction: p = p beta[f] + z (two roundings, numpy's "p *= beta; p += z") for the fields
 * still iterating (active[f]). Twin of the direction update of FieldSolver._adi_step.
 *   p, z (F, n) float32; active (F,) uint8; beta (F,) float32
 * One work item per (field, site). */
TM_KERNEL void tm_cg_direction(int F, long long n, const u8* __restrict__ active,
                               const float* __restrict__ beta, const float* __restrict__ z,
                               float* __restrict__ p) {
    TM_FOR_EACH(i, (long long)F * n) {
        const long long f = i / n;
        if (!active[f]) continue;
        p[i] = __fadd_rn(__fmul_rn(p[i], beta[f]), z[i]);
    }
}

/* ------------------------------------------------------------------- reductions of the CG
 * The CG's per-field dot products follow tmesim.reduce's order, so that every backend gives the
 * same bits: pass 1 sums each column (the sites sharing a position j off grid axis 0: site
 * i P + j, P = n_sites / m0) from i = m0 - 1 down to 0 in float64, each product of two float32
 * exact; pass 2 is reduce.cuh's tm_reduce_tree over the (F, P) column sums. The largest |x| needs
 * no order (max is exact); it goes by columns too, then the array library's max over them.
 * One work item per (field, column): it walks its column, writing only its own outputs; a
 * stencil reads neighbours of an array no work item of the launch writes. */

/* tm_dots_columns: cols[f, j] = the column sum of x[f] y[f] (pass 1 of reduce.field_dots).
 *   x, y (F, n) float32; cols (F, P) float64 */
TM_KERNEL void tm_dots_columns(int F, long long m0, long long P, const float* __restrict__ x,
                               const float* __restrict__ y, double* __restrict__ cols) {
    TM_FOR_EACH(w, (long long)F * P) {
        const long long f = w / P, j = w % P;
        const long long base = f * m0 * P + j;
        double acc = 0.0;
        for (long long i = m0 - 1; i >= 0; --i) {
            const long long at = base + i * P;
            acc = __dadd_rn(acc, __dmul_rn((double)x[at], (double)y[at]));
        }
        cols[w] = acc;
    }
}

/* tm_apply_pinned_dot: the CG's q = A p with "q[:, pinned] = 0" folded in, out = diag p - D lap(p),
 * 0 at pinned voxels, one column at a time, with the column sums of p q (pass 1 of the CG's p.q).
 *   F, nz, ny, nx, ndim, p, diag, D_over_h2, ghosts as tm_apply_operator; pin (n_sites,) uint8
 *   pin codes (tm_pinned voxels get 0); out (F, n_sites) float32
 *   m0, P   grid axis 0's length and the sites per plane; cols (F, P) float64 */
TM_KERNEL void tm_apply_pinned_dot(int F, int nz, int ny, int nx, int ndim, long long m0,
                                   long long P, const float* __restrict__ p,
                                   const float* __restrict__ diag,
                                   const float* __restrict__ D_over_h2,
                                   const float* __restrict__ ghosts,
                                   const u8* __restrict__ pin, float* __restrict__ out,
                                   double* __restrict__ cols) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(w, (long long)F * P) {
        const int f = (int)(w / P);
        const long long j = w % P;
        double acc = 0.0;
        for (long long i = m0 - 1; i >= 0; --i) {
            const long long s = i * P + j;
            const long long at = (long long)f * n + s;
            float q = 0.0f;
            if (!tm_pinned(pin[s])) {
                const float lap = __fmul_rn(tm_lap_sum(p, ghosts, (long long)f * n, s, f, nz, ny,
                                                       nx, ndim),
                                            D_over_h2[f]);
                q = __fsub_rn(__fmul_rn(diag[at], p[at]), lap);
            }
            out[at] = q;
            acc = __dadd_rn(acc, __dmul_rn((double)p[at], (double)q));
        }
        cols[w] = acc;
    }
}

/* tm_cg_update_absmax: c = c + alpha[f] p and r = r - alpha[f] q (each product rounded first, as
 * numpy's "tmp = p * a; c += tmp; tmp = q * a; r -= tmp") for the fields still iterating
 * (active[f]; a converged field is left as it is), one column at a time, with the column maxima
 * of the new |r|. Twin of the update of FieldSolver._adi_step.
 *   F, m0, P; active (F,) uint8; alpha (F,) float32; p, q (F, n) float32 (the search direction
 *   and A p); c, r (F, n) float32 in place (the iterate, field units; the residual, units/min);
 *   colmax (F, P) float32 (a field not active keeps its old entries) */
TM_KERNEL void tm_cg_update_absmax(int F, long long m0, long long P,
                                   const u8* __restrict__ active,
                                   const float* __restrict__ alpha,
                                   const float* __restrict__ p, const float* __restrict__ q,
                                   float* __restrict__ c, float* __restrict__ r,
                                   float* __restrict__ colmax) {
    TM_FOR_EACH(w, (long long)F * P) {
        const long long f = w / P, j = w % P;
        if (!active[f]) continue;
        const float a = alpha[f];
        const long long base = f * m0 * P + j;
        float acc = 0.0f;
        for (long long i = m0 - 1; i >= 0; --i) {
            const long long at = base + i * P;
            c[at] = __fadd_rn(c[at], __fmul_rn(p[at], a));
            const float rr = __fsub_rn(r[at], __fmul_rn(q[at], a));
            r[at] = rr;
            acc = tm_absmax_step(acc, rr);
        }
        colmax[w] = acc;
    }
}

