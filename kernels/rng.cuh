/* rng.cuh -- the counter-based generator of tmesim/rng.py, word for word.
 *
 * Philox4x64-10 (Salmon et al. 2011, SC'11; Random123, numpy's Philox) maps a 256-bit counter and
 * a 128-bit key to four 64-bit words. tmesim fixes (tmesim/rng.py)
 *
 *     key     = (seed, 0)
 *     counter = (site / 4 + 1, step, stream, lane)  the "+ 1": numpy increments before each block
 *     word    = output[site % 4]
 *
 * lane is 0 for every decision but those a cell takes several of in one step and stream (the hops
 * of a push path, mechanics.cu: lane j is the j-th; tm_rng_word_lane), so a site's number depends
 * on (seed, step, site, stream, lane) only: not on threads, launch shape or
 * which other sites asked. Uniform doubles take the top 53 bits: u = (word >> 11) * 2^-53, in
 * [0, 1), exact in double on every platform (no rounding happens: a 53-bit integer times a power
 * of two). Every function is __host__ __device__ so this header also compiles as plain C++
 * (portable.h), which is how CI checks it bit for bit against numpy without a GPU.
 */
#ifndef TM_RNG_CUH
#define TM_RNG_CUH
#include "common.cuh"

#define TM_PHILOX_M0 0xD2E7470EE14C6C93ull
#define TM_PHILOX_M1 0xCA5A826395121157ull
#define TM_PHILOX_W0 0x9E3779B97F4A7C15ull
#define TM_PHILOX_W1 0xBB67AE8584CAA73Bull

/* Streams: tmesim/rng.py (one per independent decision; never renumber). */
#define TM_STREAM_INIT_TUMOR 1
#define TM_STREAM_INIT_VESSELS 2
#define TM_STREAM_DIVIDE 10
#define TM_STREAM_DIRECTION 11
#define TM_STREAM_PRIORITY 12
#define TM_STREAM_NECROSIS 13
#define TM_STREAM_CLEARANCE 14
#define TM_STREAM_TRANSITION 15        /* S->P, P->S, P->R */
#define TM_STREAM_KILL 16              /* drug kill and basal turnover */
#define TM_STREAM_MOVE 17              /* a stromal cell attempts a move */
#define TM_STREAM_MOVE_DIRECTION 18    /* which neighbour (and the claim priority) */
#define TM_STREAM_RECRUIT 19           /* TAM recruitment at vessels */
#define TM_STREAM_STROMA_DEATH 20      /* TAM turnover */
#define TM_STREAM_CHEMOTAXIS 21        /* a TAM's step follows the signal or is random */
#define TM_STREAM_PUSH_PATH 22         /* the neighbour each push-path hop takes (lane = hop) */

/* Philox4x64-10 on counter c (in place) under key (k0, k1): rng.philox4x64_reference. */
TM_HD void tm_philox4x64_10(u64 c[4], u64 k0, u64 k1) {
    for (int r = 0; r < 10; ++r) {
        if (r) {
            k0 += TM_PHILOX_W0;
            k1 += TM_PHILOX_W1;
        }
        const u64 hi0 = __umul64hi(TM_PHILOX_M0, c[0]);
        const u64 lo0 = TM_PHILOX_M0 * c[0];
        const u64 hi1 = __umul64hi(TM_PHILOX_M1, c[2]);
        const u64 lo1 = TM_PHILOX_M1 * c[2];
        const u64 n0 = hi1 ^ c[1] ^ k0;
        const u64 n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

/* The 64-bit word of (seed, step, site, stream, lane):
 * tmesim.rng.raw_at(seed, step, stream, [site], lane=lane). */
TM_HD u64 tm_rng_word_lane(u64 seed, u64 step, u64 site, u64 stream, u64 lane) {
    u64 c[4] = {site / 4 + 1, step, stream, lane};
    tm_philox4x64_10(c, seed, 0);
    /* select without dynamic indexing so the array stays in registers on the GPU */
    const u64 q = site % 4;
    return q == 0 ? c[0] : q == 1 ? c[1] : q == 2 ? c[2] : c[3];
}

/* The 64-bit word of (seed, step, site, stream) at lane 0: tmesim.rng.raw_at(seed, step, stream,
 * [site]). */
TM_HD u64 tm_rng_word(u64 seed, u64 step, u64 site, u64 stream) {
    return tm_rng_word_lane(seed, step, site, stream, 0);
}

/* Uniform double in [0, 1) from a word: tmesim.rng.to_uniform. */
TM_HD double tm_word_to_uniform(u64 w) {
    return (double)(w >> 11) * (1.0 / 9007199254740992.0);
}

/* tmesim.rng.uniform_at(seed, step, stream, [site]). */
TM_HD double tm_rng_uniform(u64 seed, u64 step, u64 site, u64 stream) {
    return tm_word_to_uniform(tm_rng_word(seed, step, site, stream));
}

#endif /* TM_RNG_CUH */
