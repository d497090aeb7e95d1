/* decisions.cuh -- the transcendental and mixed-precision math behind random decisions, shared by
 * every rule kernel so that one formula means one computation.
 *
 * A decision is "u < p" with u a double in [0, 1) (53-bit grid, rng.cuh) and p a double computed
 * here. Where CPU (numpy) and GPU could decide differently, and what we do about it:
 *  1. float32 inputs (oxygen) are turned into rates with the float32 operations numpy uses (numpy 2
 *     casts a Python float operand to float32 and computes in float32), each one rounded
 *     (__fmul_rn, ...: no FMA contraction), so the rate is bit-identical on both sides;
 *  2. probabilities are computed in double, 1 - exp(-x) as -expm1(-x) (no cancellation for small x)
 *     on both sides. expm1 is not required to be correctly rounded: CUDA's double expm1 and the
 *     host libm (glibc, or numpy's SIMD loops) are each within 1-2 ulp, so two p may differ in the
 *     last bits. The decision flips only if u falls between them: u is a multiple of 2^-53 and the
 *     gap is about p * 2^-52, so the chance is of order p * 2^-52 ~ 1e-16 p per decision -- once
 *     in ~1e16 cell-steps at p = 1. Constants that are the same for every voxel (the clearance
 *     probability, the ln 2 cap) are computed once on the host by the numpy code itself and passed
 *     in, so they are identical by construction;
 *  3. comparisons are float32-with-float32 where numpy's are (oxygen against a threshold cast to
 *     float32) and double-with-double where numpy's are (u < p).
 */
#ifndef TM_DECISIONS_CUH
#define TM_DECISIONS_CUH
#include "common.cuh"

/* Probability of an event of rate `rate` (1/min) within dt (min): 1 - exp(-rate dt).
 * Twin of tmesim.steps.tumor.probability: -expm1(-rate * dt) in double. */
TM_HD double tm_probability(double rate_per_min, double dt_min) {
    return -expm1(__dmul_rn(-rate_per_min, dt_min));
}

/* Probability of dividing within dt: exp(min(r dt, cap)) - 1, cap = ln 2 (passed in, the host's
 * math.log(2.0)). Twin of tmesim.steps.tumor.division_probability. */
TM_HD double tm_division_probability(double rate_per_min, double dt_min, double cap) {
    double x = __dmul_rn(rate_per_min, dt_min);
    x = x < cap ? x : cap;   /* np.minimum: both are finite here */
    return expm1(x);
}

/* clip(v, 0, 1) in float32, as np.clip(float32, 0.0, 1.0). */
TM_HD float tm_clip01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

#endif /* TM_DECISIONS_CUH */
