/* reduce.cuh -- the deterministic float64 reduction order of tmesim (numpy twin: tmesim/reduce.py).
 *
 * Q quantities of per-site float64 contributions over n_sites = m0 * P sites (m0 the length of
 * grid axis 0, P the product of the other axes, C order) are summed in two passes of fixed order:
 *   pass 1 (columns)  for every q and plane position j, cols[q*P + j] = the sequential sum over
 *                     i = m0-1 DOWN to 0 of the contribution of site i*P + j, from 0.0;
 *   pass 2 (tree)     for every q, W = 256 partials: partial t the sequential sum (from 0.0) of
 *                     cols[q*P + t], cols[q*P + t + W], ... (real entries only), then the halving
 *                     tree s = W/2 .. 1: sh[t] = sh[t] + sh[t + s] for t < s; out[q] = sh[0].
 * Every add is __dadd_rn (no contraction is possible in a pure sum, the intrinsic says so), so
 * the totals are the same bits on every GPU, in the portable build and in numpy.
 *
 * Pass 1 is usually fused into the kernel that produces the contributions (observe.cu);
 * tm_reduce_columns is the generic one over a (Q, n_sites) float64 array. Pass 2 is
 * tm_reduce_tree, launched with n_work = Q * TM_REDUCE_W: one block of TM_BLOCK = W threads per
 * quantity (a grid of fewer blocks loops over q). The portable build has no blocks or shared
 * memory: its branch does the same adds in loops.
 */
#ifndef TM_REDUCE_CUH
#define TM_REDUCE_CUH
#include "common.cuh"

#define TM_REDUCE_W 256
#if TM_BLOCK != TM_REDUCE_W
#error "tm_reduce_tree needs TM_BLOCK == TM_REDUCE_W (256 threads per block)"
#endif

/* tm_reduce_columns: pass 1 over explicit contributions.
 *   values  (Q, m0*P) float64 per-site contributions (read only)
 *   cols    (Q, P) float64 column sums (written)
 * One work item per (q, j); any work order gives the same result (each item owns its output). */
TM_KERNEL void tm_reduce_columns(const double* values, long long Q, long long m0, long long P,
                                 double* cols) {
    TM_FOR_EACH(w, Q * P) {
        const long long q = w / P, j = w - q * P;
        const double* v = values + q * m0 * P + j;
        double acc = 0.0;
        for (long long i = m0 - 1; i >= 0; --i) acc = __dadd_rn(acc, v[i * P]);
        cols[w] = acc;
    }
}

/* tm_reduce_tree: pass 2.
 *   cols    (Q, P) float64 column sums (read only)
 *   out     (Q,) float64 totals (written)
 * Launch with n_work = Q * TM_REDUCE_W (one block per quantity). */
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
extern "C" void tm_reduce_tree(const double* cols, long long Q, long long P, double* out) {
    double sh[TM_REDUCE_W];
    for (long long q = 0; q < Q; ++q) {
        const double* c = cols + q * P;
        for (int t = 0; t < TM_REDUCE_W; ++t) {
            double acc = 0.0;
            for (long long k = t; k < P; k += TM_REDUCE_W) acc = __dadd_rn(acc, c[k]);
            sh[t] = acc;
        }
        for (int s = TM_REDUCE_W / 2; s >= 1; s >>= 1)
            for (int t = 0; t < s; ++t) sh[t] = __dadd_rn(sh[t], sh[t + s]);
        out[q] = sh[0];
    }
}
#else
TM_KERNEL void tm_reduce_tree(const double* cols, long long Q, long long P, double* out) {
    __shared__ double sh[TM_REDUCE_W];
    const int t = threadIdx.x;
    for (long long q = blockIdx.x; q < Q; q += gridDim.x) { /* uniform per block */
        const double* c = cols + q * P;
        double acc = 0.0;
        for (long long k = t; k < P; k += TM_REDUCE_W) acc = __dadd_rn(acc, c[k]);
        sh[t] = acc;
        __syncthreads();
        for (int s = TM_REDUCE_W / 2; s >= 1; s >>= 1) {
            if (t < s) sh[t] = __dadd_rn(sh[t], sh[t + s]);
            __syncthreads();
        }
        if (t == 0) out[q] = sh[0];
        __syncthreads(); /* sh is rewritten by the next q */
    }
}
#endif

#endif /* TM_REDUCE_CUH */
