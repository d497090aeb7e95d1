/* rng.cu -- batch access to the counter-based generator (rng.cuh) at arbitrary sites.
 * GPU twins of tmesim.rng.raw_at and tmesim.rng.uniform_at; the rules call rng.cuh inline instead.
 */
#include "common.cuh"
#include "rng.cuh"

/* tm_rng_raw_at: out[i] = word of (seed, step, sites[i], stream).
 *   n        number of sites (work items)
 *   sites    (n,) int64 flat site indices, any order, repeats allowed
 *   out      (n,) uint64 Philox words
 * One work item per entry of sites. Twin of tmesim.rng.raw_at.
 */
TM_KERNEL void tm_rng_raw_at(long long n, u64 seed, u64 step, u64 stream,
                             const long long* __restrict__ sites,
                             u64* __restrict__ out) {
    TM_FOR_EACH(i, n) { out[i] = tm_rng_word(seed, step, (u64)sites[i], stream); }
}

/* tm_rng_uniform_at: out[i] = uniform double in [0, 1) of (seed, step, sites[i], stream).
 *   n, sites as tm_rng_raw_at; out (n,) float64. Twin of tmesim.rng.uniform_at.
 */
TM_KERNEL void tm_rng_uniform_at(long long n, u64 seed, u64 step, u64 stream,
                                 const long long* __restrict__ sites,
                                 double* __restrict__ out) {
    TM_FOR_EACH(i, n) { out[i] = tm_rng_uniform(seed, step, (u64)sites[i], stream); }
}
