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
 *     float32) and double-with-double where numpy's are (u < p);
 *  4. per-cell pow (drug effects, tm_hill) and exp (memory relaxation, tm_decay_factor) are not
 *     correctly rounded either, and three implementations meet: numpy's own loops (on x86 with
 *     AVX-512 numpy 2 takes SVML's pow and its own AVX-512 exp: measured here, about 5 % of their
 *     float64 results differ from glibc's by one ulp), glibc in the portable C++ build, libdevice
 *     on the GPU. numpy's fast scalar powers (c ** 1, ** 2, ** 0.5 are a copy, x * x and sqrt, all
 *     correctly rounded) are mirrored exactly, so only other Hill exponents call pow. A one-ulp
 *     difference in an effect or a decay factor moves a probability by about an ulp (a decision
 *     flips once in ~1e16 cell-steps, as in 2.) and the float64 memory by an ulp or two before it
 *     is rounded to float32: that rounding differs only if the exact value lies within those ulps
 *     of a float32 rounding boundary, about 2^-29 ~ 2e-9 per differing cell-step. Over a 1024^3
 *     lattice under drug that is of order one memory value per step off by one float32 ulp (not a
 *     decision); the parity tests, with ~1e4 cell-steps, see none. The no-drug decay factor is a
 *     constant, computed on the host by numpy (identical by construction).
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

/* clip(v, 0, 1) in double, as np.clip(float64, 0.0, 1.0) (NaN passes through, as in numpy). */
TM_HD double tm_clip01d(double v) { return v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v); }

/* Emax/Hill effect of a float32 concentration c (uM): emax x / (1 + x), x = (c / ec50)^h, in
 * double. Twin of tmesim.drugs.hill, operation for operation: c = np.maximum(float64(c), 0.0);
 * x = (c / ec50) ** h, where numpy's scalar power takes a fast path for h = 1 (a copy), 2
 * (np.square) and 0.5 (np.sqrt), all three correctly rounded and mirrored here (double sqrt is
 * correctly rounded on the GPU too); any other h calls pow (see 4. above). */
TM_HD double tm_hill(float c_uM, double emax, double ec50_uM, double h) {
    double c = (double)c_uM;
    if (c < 0.0) c = 0.0;   /* np.maximum(c, 0.0): NaN stays NaN; -0.0 cannot change E's use */
    const double r = __ddiv_rn(c, ec50_uM);
    double x;
    if (h == 1.0) x = r;
    else if (h == 2.0) x = __dmul_rn(r, r);
    else if (h == 0.5) x = sqrt(r);
    else x = pow(r, h);
    if (isinf(x)) return emax;  /* a potent drug: inf / inf would be NaN; the limit is emax */
    return __ddiv_rn(__dmul_rn(emax, x), __dadd_rn(1.0, x));
}

/* exp(-k dt): the per-cell decay factor of the memory (TumorRules.relax_memory's
 * np.exp(-k * self.dt)), k in 1/min, dt in min. */
TM_HD double tm_decay_factor(double k_per_min, double dt_min) {
    return exp(__dmul_rn(-k_per_min, dt_min));
}

/* The memory after one step of dm/dt = a (1 - m) - b m with k = a + b, solved exactly:
 * m_eq + (m - m_eq) f, m_eq = a / k (m itself when k = 0), f = exp(-k dt), rounded once to
 * float32. Twin of TumorRules.relax_memory's last two lines (a, b, k computed by the caller). */
TM_HD float tm_relax_memory(double m, double a, double k, double f) {
    const double m_eq = k > 0.0 ? __ddiv_rn(a, k) : m;
    return (float)__dadd_rn(m_eq, __dmul_rn(__dadd_rn(m, -m_eq), f));
}

#endif /* TM_DECISIONS_CUH */
