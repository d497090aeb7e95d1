/* rng.cu -- batch access to the counter-based generator (rng.cuh) at arbitrary sites.
 * GPU twins of tmesim.rng.raw_at (lane 0 and any lane) and tmesim.rng.uniform_at; the rules call
 * rng.cuh inline instead. Driver: tmesim/rng_kernel.py.
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

/* tm_rng_raw_at_lane: out[i] = word of (seed, step, sites[i], stream, lane), the fourth counter
 * word set to lane (tm_rng_word_lane: the words the push walks of mechanics.cu draw, stream
 * TM_STREAM_PUSH_PATH, lane = hop).
 *   n, sites, out as tm_rng_raw_at
 * One work item per entry of sites. Twin of tmesim.rng.raw_at(..., lane=lane); lane 0 gives
 * tm_rng_raw_at's words.
 */
TM_KERNEL void tm_rng_raw_at_lane(long long n, u64 seed, u64 step, u64 stream, u64 lane,
                                  const long long* __restrict__ sites,
                                  u64* __restrict__ out) {
    TM_FOR_EACH(i, n) { out[i] = tm_rng_word_lane(seed, step, (u64)sites[i], stream, lane); }
}

/* tm_rng_uniform_at: out[i] = uniform double in [0, 1) of (seed, step, sites[i], stream).
 *   n, sites as tm_rng_raw_at; out (n,) float64. Twin of tmesim.rng.uniform_at.
 */
TM_KERNEL void tm_rng_uniform_at(long long n, u64 seed, u64 step, u64 stream,
                                 const long long* __restrict__ sites,
                                 double* __restrict__ out) {
    TM_FOR_EACH(i, n) { out[i] = tm_rng_uniform(seed, step, (u64)sites[i], stream); }
}
