/* multigrid.cuh -- the field solver's multigrid preconditioner (tmesim/steps/multigrid.py, the
 * specification; driver tmesim.steps.fields_kernel), included by fields.cu.
 *
 * One level of the hierarchy, every field at once, flat in C order:
 *   w     (F, n) float32  the reaction part of the graph-form operator, 1/min (1 off the free set)
 *   e     (F, ndim, n) float32  e[f][a, s]: the coupling of s and its upper neighbour along numpy
 *         grid axis a (kernel axis a + 3 - ndim), 1/min; 0 on the last layer and where an end is
 *         not free (field-major, so that the fields a launch works on are one contiguous run)
 *   d     (F, n) float32  w plus the incident edges (the Jacobi diagonal)
 *   free  (n,) uint8      1 where the voxel (block) takes part
 * (A x)_s = w_s x_s + sum over neighbours t of e_st (x_s - x_t).
 *
 * Every kernel computes what multigrid.py computes, operation for operation in the same order and
 * float32 precision (round-to-nearest intrinsics, no FMA), so the results are bit for bit numpy's:
 * sums over the children of a block run in C order of the child offsets from 0.0f, a missing child
 * (odd axis) or a non-free one adding 0.0f; A x adds per axis the lower neighbour's term, then the
 * upper one's; d adds per axis the lower edge, then the upper one.
 *
 * Races: every kernel writes only its own work item's outputs and reads arrays no work item of the
 * same launch writes (the Jacobi sweep writes a separate array; the prolongation reads only its
 * own site of the array it updates in place), so the result does not depend on the order in which
 * work items run. One work item per (field, site) of the level written; free is written by the
 * field-0 work items. */
#ifndef TM_MULTIGRID_CUH
#define TM_MULTIGRID_CUH

#include "common.cuh"
#include "pins.cuh"

/* Extent of numpy grid axis a (of ndim) in a (nz, ny, nx) kernel grid, its stride in sites, and
 * the coordinate of a site along it. */
TM_HD int tm_mg_len(int a, int ndim, int nz, int ny, int nx) {
    const int k = a + 3 - ndim;
    return k == 0 ? nz : (k == 1 ? ny : nx);
}
TM_HD long long tm_mg_stride(int a, int ndim, int ny, int nx) {
    const int k = a + 3 - ndim;
    return k == 0 ? (long long)ny * nx : (k == 1 ? (long long)nx : 1LL);
}
TM_HD int tm_mg_coord(long long s, int a, int ndim, int ny, int nx) {
    int z, y, x;
    tm_site_coords(s, ny, nx, &z, &y, &x);
    const int k = a + 3 - ndim;
    return k == 0 ? z : (k == 1 ? y : x);
}

/* tm_mg_diag: d = w + the incident edges (per axis the lower edge, then the upper one). Twin of
 * multigrid._diag. One work item per (field, site). */
TM_KERNEL void tm_mg_diag(int F, int nz, int ny, int nx, int ndim,
                          const float* __restrict__ w, const float* __restrict__ e,
                          float* __restrict__ d) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(i, (long long)F * n) {
        const long long f = i / n;
        const long long s = i % n;
        float acc = w[i];
        for (int a = 0; a < ndim; ++a) {
            const float* ea = e + (f * ndim + a) * n;
            const int m = tm_mg_len(a, ndim, nz, ny, nx);
            const long long st = tm_mg_stride(a, ndim, ny, nx);
            const int c = tm_mg_coord(s, a, ndim, ny, nx);
            if (c > 0) acc = __fadd_rn(acc, ea[s - st]);
            if (c < m - 1) acc = __fadd_rn(acc, ea[s]);
        }
        d[i] = acc;
    }
}

/* The flat fine site of child `k` (C order of offsets over the ndim grid axes; with axis `skip`
 * held at fine coordinate `fixed` instead when skip >= 0) of coarse site sc, or -1 when the child
 * lies past an odd axis's end. Fine grid (nz, ny, nx), coarse grid (cz, cy, cx). */
TM_HD long long tm_mg_child(long long sc, int k, int nchild_axes, int ndim, int nz, int ny,
                            int nx, int cy, int cx, int skip, int fixed) {
    int cc[3];
    tm_site_coords(sc, cy, cx, &cc[0], &cc[1], &cc[2]);
    const int fn[3] = {nz, ny, nx};
    int fc[3] = {cc[0], cc[1], cc[2]};  /* axes outside the grid's ndim: 0 */
    /* offsets: the last child axis varies fastest */
    int rem = k;
    for (int a = ndim - 1; a >= 0; --a) {
        const int kax = a + 3 - ndim;
        if (a == skip) {
            fc[kax] = fixed;
            continue;
        }
        const int off = rem & 1;
        rem >>= 1;
        fc[kax] = 2 * cc[kax] + off;
        if (fc[kax] >= fn[kax]) return -1;
    }
    (void)nchild_axes;
    return ((long long)fc[0] * ny + fc[1]) * nx + fc[2];
}

/* tm_mg_coarsen: the Galerkin coarse level (w, e, free; d from tm_mg_diag). Twin of
 * multigrid.coarsen.
 *   fine grid (nz, ny, nx) with w_f, e_f, free_f; coarse grid (cz, cy, cx) = halves rounded up
 *   w_c = sum of the free children's w (1 where no child is free); e_c[a] = sum of the fine
 *   edges leaving the block on its upper side along a (fine layer 2 I + 1; 0 when it does not
 *   exist) over the children along the other axes; free_c = some child free.
 * One work item per (field, coarse site). */
TM_KERNEL void tm_mg_coarsen(int F, int nz, int ny, int nx, int cz, int cy, int cx, int ndim,
                             const float* __restrict__ w_f, const float* __restrict__ e_f,
                             const u8* __restrict__ free_f,
                             float* __restrict__ w_c, float* __restrict__ e_c,
                             u8* __restrict__ free_c) {
    const long long n = (long long)nz * ny * nx;
    const long long nc = (long long)cz * cy * cx;
    const int nk = 1 << ndim;
    TM_FOR_EACH(i, (long long)F * nc) {
        const int f = (int)(i / nc);
        const long long sc = i % nc;
        float acc = 0.0f;
        bool any = false;
        for (int k = 0; k < nk; ++k) {
            const long long t = tm_mg_child(sc, k, ndim, ndim, nz, ny, nx, cy, cx, -1, 0);
            float v = 0.0f;
            if (t >= 0 && free_f[t]) {
                v = w_f[(long long)f * n + t];
                any = true;
            }
            acc = __fadd_rn(acc, v);
        }
        w_c[i] = any ? acc : 1.0f;
        if (f == 0) free_c[sc] = (u8)any;
        for (int a = 0; a < ndim; ++a) {
            const int kax = a + 3 - ndim;
            int cc[3];
            tm_site_coords(sc, cy, cx, &cc[0], &cc[1], &cc[2]);
            const int fn[3] = {nz, ny, nx};
            const int layer = 2 * cc[kax] + 1;
            float ea = 0.0f;
            if (layer < fn[kax]) {
                const float* ef = e_f + ((long long)f * ndim + a) * n;
                for (int k = 0; k < (nk >> 1); ++k) {
                    const long long t =
                        tm_mg_child(sc, k, ndim - 1, ndim, nz, ny, nx, cy, cx, a, layer);
                    ea = __fadd_rn(ea, t >= 0 ? ef[t] : 0.0f);
                }
            }
            e_c[((long long)f * ndim + a) * nc + sc] = ea;
        }
    }
}

/* (A x)_s on one level: w x, then per axis the lower neighbour's term e (x_s - x_lo) and the
 * upper one's e (x_s - x_hi). Twin of multigrid.apply at one site. */
TM_HD float tm_mg_Ax(int nz, int ny, int nx, int ndim, long long n, long long i,
                     const float* w, const float* e, const float* x) {
    const long long f = i / n;
    const long long s = i % n;
    const float xs = x[i];
    float y = __fmul_rn(w[i], xs);
    for (int a = 0; a < ndim; ++a) {
        const float* ea = e + (f * ndim + a) * n;
        const int m = tm_mg_len(a, ndim, nz, ny, nx);
        const long long st = tm_mg_stride(a, ndim, ny, nx);
        const int c = tm_mg_coord(s, a, ndim, ny, nx);
        if (c > 0) y = __fadd_rn(y, __fmul_rn(ea[s - st], __fsub_rn(xs, x[i - st])));
        if (c < m - 1) y = __fadd_rn(y, __fmul_rn(ea[s], __fsub_rn(xs, x[i + st])));
    }
    return y;
}

/* tm_mg_smooth0: x = (r omega) / d, the first damped Jacobi sweep from zero. Twin of the first
 * lines of multigrid.vcycle. One work item per (field, site). */
TM_KERNEL void tm_mg_smooth0(long long n_total, float omega, const float* __restrict__ r,
                             const float* __restrict__ d, float* __restrict__ x) {
    TM_FOR_EACH(i, n_total) { x[i] = __fdiv_rn(__fmul_rn(r[i], omega), d[i]); }
}

/* tm_mg_jacobi: out = x + ((r - A x) omega) / d, one damped Jacobi sweep (out is not x). Twin of
 * multigrid.jacobi. One work item per (field, site). */
TM_KERNEL void tm_mg_jacobi(int F, int nz, int ny, int nx, int ndim, float omega,
                            const float* __restrict__ w, const float* __restrict__ e,
                            const float* __restrict__ d, const float* __restrict__ x,
                            const float* __restrict__ r, float* __restrict__ out) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(i, (long long)F * n) {
        float t = __fsub_rn(r[i], tm_mg_Ax(nz, ny, nx, ndim, n, i, w, e, x));
        t = __fmul_rn(t, omega);
        t = __fdiv_rn(t, d[i]);
        out[i] = __fadd_rn(x[i], t);
    }
}

/* tm_mg_residual: res = r - A x. Twin of "r - apply(lv, x)" in multigrid.vcycle. One work item
 * per (field, site); res is not x. */
TM_KERNEL void tm_mg_residual(int F, int nz, int ny, int nx, int ndim,
                              const float* __restrict__ w, const float* __restrict__ e,
                              const float* __restrict__ x, const float* __restrict__ r,
                              float* __restrict__ res) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(i, (long long)F * n) {
        res[i] = __fsub_rn(r[i], tm_mg_Ax(nz, ny, nx, ndim, n, i, w, e, x));
    }
}

/* tm_mg_restrict: rc = P^T res, each block the sum of its free children's values. Twin of
 * multigrid.restrict. One work item per (field, coarse site). */
TM_KERNEL void tm_mg_restrict(int F, int nz, int ny, int nx, int cz, int cy, int cx, int ndim,
                              const u8* __restrict__ free_f, const float* __restrict__ res,
                              float* __restrict__ rc) {
    const long long n = (long long)nz * ny * nx;
    const long long nc = (long long)cz * cy * cx;
    const int nk = 1 << ndim;
    TM_FOR_EACH(i, (long long)F * nc) {
        const int f = (int)(i / nc);
        const long long sc = i % nc;
        float acc = 0.0f;
        for (int k = 0; k < nk; ++k) {
            const long long t = tm_mg_child(sc, k, ndim, ndim, nz, ny, nx, cy, cx, -1, 0);
            acc = __fadd_rn(acc, (t >= 0 && free_f[t]) ? res[(long long)f * n + t] : 0.0f);
        }
        rc[i] = acc;
    }
}

/* tm_mg_prolong_add: x = x + P xc, each free voxel adding its block's value (in place: a work
 * item reads and writes its own site of x only). Twin of multigrid.prolong_add. One work item
 * per (field, fine site). */
TM_KERNEL void tm_mg_prolong_add(int F, int nz, int ny, int nx, int cz, int cy, int cx,
                                 int ndim, const u8* __restrict__ free_f,
                                 const float* __restrict__ xc, float* __restrict__ x) {
    const long long n = (long long)nz * ny * nx;
    const long long nc = (long long)cz * cy * cx;
    TM_FOR_EACH(i, (long long)F * n) {
        const int f = (int)(i / n);
        const long long s = i % n;
        int z, y, xx;
        tm_site_coords(s, ny, nx, &z, &y, &xx);
        const int zc = ndim == 3 ? z / 2 : z;   /* a 2D grid's kernel z axis is not coarsened */
        const long long p = ((long long)zc * cy + y / 2) * cx + xx / 2;
        x[i] = __fadd_rn(x[i], free_f[s] ? xc[(long long)f * nc + p] : 0.0f);
    }
}

/* ------------------------------------------------------------------------- level 0 on the fly
 * The fine level's w, e and d follow from the CG's diagonal and the pin codes
 * (multigrid.fine_level), so the kernels the V-cycle runs on level 0 recompute them per site
 * with the same operations instead of reading 5 + ndim stored words per voxel and field: they
 * read diag and the pin codes (1 B per voxel, shared by the fields). Same bits as the stored
 * level (the same float32 operations in the same order).
 *   diag (F, n) float32 1/min; pin (n,) uint8 pin codes; D_over_h2 (F,) float32;
 *   dirichlet (F, ndim, 2) uint8: 1 where numpy grid axis a's (lo, hi) face holds a bath value */

/* w, d and the lower / upper edge weights per grid axis at work item i = f n + s of level 0. */
TM_HD void tm_mg0_site(int nz, int ny, int nx, int ndim, long long n, long long i,
                       const float* diag, const u8* pin, const float* D_over_h2,
                       const u8* dirichlet, float* w, float* d, float* e_lo, float* e_hi) {
    const long long f = i / n;
    const long long s = i % n;
    const bool fs = !tm_pinned(pin[s]);
    const float Dh = D_over_h2[f];
    float lost = 0.0f;
TM_UNROLL
    for (int a = 0; a < 3; ++a) {  /* unrolled: e_lo, e_hi stay in registers */
        if (a >= ndim) break;
        const int m = tm_mg_len(a, ndim, nz, ny, nx);
        const long long st = tm_mg_stride(a, ndim, ny, nx);
        const int c = tm_mg_coord(s, a, ndim, ny, nx);
        bool lo_free = false, up_free = false;
        if (c > 0) {
            lo_free = !tm_pinned(pin[s - st]);
            if (!lo_free) lost = __fadd_rn(lost, 1.0f);
        }
        if (c < m - 1) {
            up_free = !tm_pinned(pin[s + st]);
            if (!up_free) lost = __fadd_rn(lost, 1.0f);
        }
        if (c == 0 && dirichlet[(f * ndim + a) * 2 + 0]) lost = __fadd_rn(lost, 1.0f);
        if (c == m - 1 && dirichlet[(f * ndim + a) * 2 + 1]) lost = __fadd_rn(lost, 1.0f);
        e_lo[a] = (fs && lo_free) ? Dh : 0.0f;
        e_hi[a] = (fs && up_free) ? Dh : 0.0f;
    }
    const float ww = fs ? __fadd_rn(diag[i], __fmul_rn(Dh, lost)) : 1.0f;
    float dd = ww;
TM_UNROLL
    for (int a = 0; a < 3; ++a) {  /* unrolled: e_lo, e_hi stay in registers */
        if (a >= ndim) break;
        const int m = tm_mg_len(a, ndim, nz, ny, nx);
        const int c = tm_mg_coord(s, a, ndim, ny, nx);
        if (c > 0) dd = __fadd_rn(dd, e_lo[a]);
        if (c < m - 1) dd = __fadd_rn(dd, e_hi[a]);
    }
    *w = ww;
    *d = dd;
}

/* (A x) at work item i of level 0, from w and the edges of tm_mg0_site (tm_mg_Ax's order). */
TM_HD float tm_mg0_Ax(int nz, int ny, int nx, int ndim, long long n, long long i, float w,
                      const float* e_lo, const float* e_hi, const float* x) {
    const long long s = i % n;
    const float xs = x[i];
    float y = __fmul_rn(w, xs);
TM_UNROLL
    for (int a = 0; a < 3; ++a) {  /* unrolled: e_lo, e_hi stay in registers */
        if (a >= ndim) break;
        const int m = tm_mg_len(a, ndim, nz, ny, nx);
        const long long st = tm_mg_stride(a, ndim, ny, nx);
        const int c = tm_mg_coord(s, a, ndim, ny, nx);
        if (c > 0) y = __fadd_rn(y, __fmul_rn(e_lo[a], __fsub_rn(xs, x[i - st])));
        if (c < m - 1) y = __fadd_rn(y, __fmul_rn(e_hi[a], __fsub_rn(xs, x[i + st])));
    }
    return y;
}

/* x at work item i of level 0 after the prolongation x + P xc (multigrid.prolong_add): a free
 * voxel adds its block's value of the coarse iterate xc ((F, nc) float32, coarse grid
 * (cz, cy, cx)); computed where it is needed instead of stored. */
TM_HD float tm_mg0_prolonged(int ny, int nx, int cy, int cx, int ndim, long long n, long long nc,
                             long long i, const u8* pin, const float* x, const float* xc) {
    const long long f = i / n;
    const long long s = i % n;
    if (tm_pinned(pin[s])) return __fadd_rn(x[i], 0.0f);
    int z, y, xx;
    tm_site_coords(s, ny, nx, &z, &y, &xx);
    const int zc = ndim == 3 ? z / 2 : z;
    const long long p = ((long long)zc * cy + y / 2) * cx + xx / 2;
    return __fadd_rn(x[i], xc[f * nc + p]);
}

/* One damped Jacobi sweep's value at work item i of level 0: x' + ((r - A x') omega) / d, 0 at a
 * pinned voxel, with x' = x, or (prolong) x + P xc recomputed here for the site and each
 * neighbour (tm_mg0_prolonged): multigrid.jacobi, after multigrid.prolong_add when prolonging,
 * and FieldSolver._precondition's pinning. Coarse grid (cy, cx), nc coarse sites, and xc are read
 * only when prolonging. */
template <bool prolong>  /* a compile-time choice: each kernel path keeps its own registers */
TM_HD float tm_mg0_sweep(int nz, int ny, int nx, int ndim, long long n, long long i, float omega,
                         const float* diag, const u8* pin, const float* D_over_h2,
                         const u8* dirichlet, const float* x, const float* r, int cy, int cx,
                         long long nc, const float* xc) {
    const long long s = i % n;
    if (tm_pinned(pin[s])) return 0.0f;
    float w, d, e_lo[3], e_hi[3];
    tm_mg0_site(nz, ny, nx, ndim, n, i, diag, pin, D_over_h2, dirichlet, &w, &d, e_lo, e_hi);
    const float xs = prolong ? tm_mg0_prolonged(ny, nx, cy, cx, ndim, n, nc, i, pin, x, xc) : x[i];
    float y = __fmul_rn(w, xs);
    TM_UNROLL
    for (int a = 0; a < 3; ++a) {
        if (a >= ndim) break;
        const int m = tm_mg_len(a, ndim, nz, ny, nx);
        const long long st = tm_mg_stride(a, ndim, ny, nx);
        const int c = tm_mg_coord(s, a, ndim, ny, nx);
        if (c > 0) {
            const float xl =
                prolong ? tm_mg0_prolonged(ny, nx, cy, cx, ndim, n, nc, i - st, pin, x, xc)
                        : x[i - st];
            y = __fadd_rn(y, __fmul_rn(e_lo[a], __fsub_rn(xs, xl)));
        }
        if (c < m - 1) {
            const float xh =
                prolong ? tm_mg0_prolonged(ny, nx, cy, cx, ndim, n, nc, i + st, pin, x, xc)
                        : x[i + st];
            y = __fadd_rn(y, __fmul_rn(e_hi[a], __fsub_rn(xs, xh)));
        }
    }
    float t = __fsub_rn(r[i], y);
    t = __fmul_rn(t, omega);
    t = __fdiv_rn(t, d);
    return __fadd_rn(xs, t);
}

/* tm_mg0_smooth0: x = (r omega) / d on level 0 (tm_mg_smooth0 with d recomputed). */
TM_KERNEL void tm_mg0_smooth0(int F, int nz, int ny, int nx, int ndim, float omega,
                              const float* __restrict__ diag, const u8* __restrict__ pin,
                              const float* __restrict__ D_over_h2,
                              const u8* __restrict__ dirichlet, const float* __restrict__ r,
                              float* __restrict__ x) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(i, (long long)F * n) {
        float w, d, e_lo[3], e_hi[3];
        tm_mg0_site(nz, ny, nx, ndim, n, i, diag, pin, D_over_h2, dirichlet, &w, &d, e_lo, e_hi);
        x[i] = __fdiv_rn(__fmul_rn(r[i], omega), d);
    }
}

/* tm_mg0_jacobi: out = x + ((r - A x) omega) / d on level 0, and 0 at pinned voxels: the V-cycle's
 * last sweep, with FieldSolver._precondition's "out[:, pinned] = 0" folded in (numpy's values
 * there are +0 before that assignment too). */
TM_KERNEL void tm_mg0_jacobi(int F, int nz, int ny, int nx, int ndim, float omega,
                             const float* __restrict__ diag, const u8* __restrict__ pin,
                             const float* __restrict__ D_over_h2,
                             const u8* __restrict__ dirichlet, const float* __restrict__ x,
                             const float* __restrict__ r, float* __restrict__ out) {
    const long long n = (long long)nz * ny * nx;
    TM_FOR_EACH(i, (long long)F * n) {
        out[i] = tm_mg0_sweep<false>(nz, ny, nx, ndim, n, i, omega, diag, pin, D_over_h2,
                                     dirichlet, x, r, 1, 1, 1, x);
    }
}

/* tm_mg0_jacobi_dot: the V-cycle's last sweep on level 0, one column at a time: out =
 * tm_mg0_sweep (0 at pinned voxels), after the prolongation x + P xc when ``prolong`` (recomputed
 * where the sweep reads it, never stored), with the column sums of r out (pass 1 of the CG's r.z,
 * z being the V-cycle's result). Twin of "prolong_add(lv, x, xc); jacobi(lv, x, r, out)" (or the
 * coarsest level's last sweep) and FieldSolver._precondition's pinning.
 *   as tm_mg0_jacobi, plus the coarse grid (cz, cy, cx) and xc (F, nc) float32 (read only when
 *   prolong), m0, P (grid axis 0's length, sites per plane) and cols (F, P) float64
 * One work item per (field, column). */
TM_KERNEL void tm_mg0_jacobi_dot(int F, int nz, int ny, int nx, int cz, int cy, int cx,
                                 int ndim, long long m0, long long P, float omega,
                                 const float* __restrict__ diag, const u8* __restrict__ pin,
                                 const float* __restrict__ D_over_h2,
                                 const u8* __restrict__ dirichlet, const float* __restrict__ x,
                                 int prolong, const float* __restrict__ xc,
                                 const float* __restrict__ r, float* __restrict__ out,
                                 double* __restrict__ cols) {
    const long long n = (long long)nz * ny * nx;
    const long long nc = (long long)cz * cy * cx;
    TM_FOR_EACH(w, (long long)F * P) {
        const long long f = w / P, j = w % P;
        double acc = 0.0;
        for (long long i = m0 - 1; i >= 0; --i) {
            const long long at = f * n + i * P + j;
            const float z =
                prolong ? tm_mg0_sweep<true>(nz, ny, nx, ndim, n, at, omega, diag, pin, D_over_h2,
                                             dirichlet, x, r, cy, cx, nc, xc)
                        : tm_mg0_sweep<false>(nz, ny, nx, ndim, n, at, omega, diag, pin,
                                              D_over_h2, dirichlet, x, r, cy, cx, nc, xc);
            out[at] = z;
            acc = __dadd_rn(acc, __dmul_rn((double)r[at], (double)z));
        }
        cols[w] = acc;
    }
}

/* tm_mg0_residual_restrict: rc = P^T (r - A x) on level 0, each coarse block the sum of its free
 * children's residuals (C order of the child offsets, from 0.0f): tm_mg_residual on level 0
 * and tm_mg_restrict in one pass, the residual never stored. Twin of "res = r - apply(lv, x);
 * restrict(lv, res, rc)" in multigrid.vcycle on level 0.
 *   F, nz, ny, nx (fine), cz, cy, cx (coarse), ndim; diag, pin, D_over_h2, dirichlet as
 *   tm_mg0_smooth0; x, r (F, n) float32; rc (F, nc) float32
 * One work item per (field, coarse site); children partition the fine sites, so each residual
 * is computed once. */
TM_KERNEL void tm_mg0_residual_restrict(int F, int nz, int ny, int nx, int cz, int cy, int cx,
                                        int ndim, const float* __restrict__ diag,
                                        const u8* __restrict__ pin,
                                        const float* __restrict__ D_over_h2,
                                        const u8* __restrict__ dirichlet,
                                        const float* __restrict__ x,
                                        const float* __restrict__ r, float* __restrict__ rc) {
    const long long n = (long long)nz * ny * nx;
    const long long nc = (long long)cz * cy * cx;
    const int nk = 1 << ndim;
    TM_FOR_EACH(i, (long long)F * nc) {
        const long long f = i / nc;
        const long long sc = i % nc;
        float acc = 0.0f;
        for (int k = 0; k < nk; ++k) {
            const long long t = tm_mg_child(sc, k, ndim, ndim, nz, ny, nx, cy, cx, -1, 0);
            float v = 0.0f;
            if (t >= 0 && !tm_pinned(pin[t])) {
                const long long at = f * n + t;
                float w, d, e_lo[3], e_hi[3];
                tm_mg0_site(nz, ny, nx, ndim, n, at, diag, pin, D_over_h2, dirichlet, &w, &d,
                            e_lo, e_hi);
                v = __fsub_rn(r[at], tm_mg0_Ax(nz, ny, nx, ndim, n, at, w, e_lo, e_hi, x));
            }
            acc = __fadd_rn(acc, v);
        }
        rc[i] = acc;
    }
}

/* tm_mg0_coarsen: level 1 straight from the CG's diagonal and the pin codes (multigrid.fine_level
 * then tm_mg_coarsen, level 0 never stored): w_c the sum of the free children's w, e_c[a] the sum of
 * the fine edges leaving the block on its upper side along a, free_c some child free. Twin of
 * multigrid.coarsen(fine_level(...)).
 *   F, nz, ny, nx (fine), cz, cy, cx (coarse), ndim; diag, pin, D_over_h2, dirichlet as
 *   tm_mg0_smooth0; w_c (F, nc), e_c (F, ndim, nc) float32, free_c (nc,) uint8 outputs
 * One work item per (field, coarse site). */
TM_KERNEL void tm_mg0_coarsen(int F, int nz, int ny, int nx, int cz, int cy, int cx, int ndim,
                              const float* __restrict__ diag, const u8* __restrict__ pin,
                              const float* __restrict__ D_over_h2,
                              const u8* __restrict__ dirichlet, float* __restrict__ w_c,
                              float* __restrict__ e_c, u8* __restrict__ free_c) {
    const long long n = (long long)nz * ny * nx;
    const long long nc = (long long)cz * cy * cx;
    const int nk = 1 << ndim;
    TM_FOR_EACH(i, (long long)F * nc) {
        const long long f = i / nc;
        const long long sc = i % nc;
        float acc = 0.0f;
        bool any = false;
        for (int k = 0; k < nk; ++k) {
            const long long t = tm_mg_child(sc, k, ndim, ndim, nz, ny, nx, cy, cx, -1, 0);
            float v = 0.0f;
            if (t >= 0 && !tm_pinned(pin[t])) {
                float w, d, e_lo[3], e_hi[3];
                tm_mg0_site(nz, ny, nx, ndim, n, f * n + t, diag, pin, D_over_h2, dirichlet, &w,
                            &d, e_lo, e_hi);
                v = w;
                any = true;
            }
            acc = __fadd_rn(acc, v);
        }
        w_c[i] = any ? acc : 1.0f;
        if (f == 0) free_c[sc] = (u8)any;
        int cc[3];
        tm_site_coords(sc, cy, cx, &cc[0], &cc[1], &cc[2]);
        const int fn[3] = {nz, ny, nx};
        for (int a = 0; a < ndim; ++a) {
            const int kax = a + 3 - ndim;
            const int layer = 2 * cc[kax] + 1;
            const long long st = tm_mg_stride(a, ndim, ny, nx);
            float ea = 0.0f;
            if (layer < fn[kax]) {
                for (int k = 0; k < (nk >> 1); ++k) {
                    const long long t =
                        tm_mg_child(sc, k, ndim - 1, ndim, nz, ny, nx, cy, cx, a, layer);
                    /* the fine edge from t to its upper neighbour: D/h^2 when both are free */
                    float e = 0.0f;
                    if (t >= 0 && layer < fn[kax] - 1 && !tm_pinned(pin[t]) &&
                        !tm_pinned(pin[t + st]))
                        e = D_over_h2[f];
                    ea = __fadd_rn(ea, e);
                }
            }
            e_c[(f * ndim + a) * nc + sc] = ea;
        }
    }
}

#endif /* TM_MULTIGRID_CUH */
