/* tumor.cu -- tumor-cell rules (tmesim/steps/tumor.py): necrosis, clearance, division with
 * deterministic claims, applied all at once.
 *
 * A step is three launches over all sites, each reading the state at the start of the step:
 *   tm_tumor_decide  every cell and necrotic voxel takes its decision from (seed, step, site,
 *                    stream); a dividing cell picks the k-th empty neighbour and claims it with an
 *                    integer atomicMax of key = (32-bit priority << 32) | source site;
 *   tm_tumor_apply   every voxel applies its own change: cleared -> empty, dying -> necrotic, and
 *                    an empty voxel with a claim becomes the daughter of the claim's winner;
 *   tm_tumor_finish  every newborn voxel records its mother and resets its claim to 0.
 * Integer max is associative and commutative, so the winner does not depend on the order in which
 * threads claim: the same as np.maximum.at in the numpy twin (TumorRules.apply).
 *
 * Layout: per-site arrays are flat over n_sites = nz*ny*nx in C order (2D: nz = 1); oxygen is the
 * oxygen row of the (F, n_sites) fields, float32 mmHg. Scalars that configure the rules are one
 * float64 array `params` indexed by TM_TP_* below, and per-tumor-state factors are rows of
 * `state_table` (TM_N_STATE_TABLES, TM_N_STATES), indexed by tmesim.codes' state (none, S, P, R):
 * a new rule (persister transitions, drug kill, memory) adds an index or a row, not arguments.
 * tmesim/kernels.py reads these #defines from this file to fill the arrays by name.
 *
 * Codes written to `action` (uint8, per site), read back by the host to count events.
 */
#include "common.cuh"
#include "rng.cuh"
#include "decisions.cuh"

#define TM_ACT_NONE 0
#define TM_ACT_CLEAR 1       /* necrotic voxel cleared to empty */
#define TM_ACT_NECROSIS 2    /* tumor cell becomes necrotic */
#define TM_ACT_CLAIM 3       /* tumor cell divides and claims target[site] (won or lost) */
#define TM_ACT_BLOCKED 4     /* tumor cell would divide but has no empty neighbour */
#define TM_ACT_BORN 5        /* empty voxel received a daughter (set by tm_tumor_apply) */

#define TM_NO_TARGET 0xFFFFFFFFu

/* params[] indices: float64, units in the names. */
#define TM_TP_DT_MIN 0                    /* agent step (min) */
#define TM_TP_R_MAX_PER_MIN 1             /* ln 2 / doubling time (1/min) */
#define TM_TP_DIVISION_CAP 2              /* cap of r dt in the division probability: ln 2 */
#define TM_TP_PROLIF_LO_MMHG 3            /* no division at or below this oxygen */
#define TM_TP_PROLIF_SPAN_MMHG 4          /* saturation - threshold (host double) */
#define TM_TP_NECROSIS_ON 5               /* 1 if the maximal necrosis rate is > 0 */
#define TM_TP_NECROSIS_THRESHOLD_MMHG 6   /* necrosis below this */
#define TM_TP_NECROSIS_SPAN_MMHG 7        /* threshold - necrosis_max_mmHg (host double) */
#define TM_TP_NECROSIS_STEP 8             /* 1 if threshold <= necrosis_max_mmHg: a step rate */
#define TM_TP_NECROSIS_TOP_PER_MIN 9      /* maximal necrosis rate (1/min) */
#define TM_TP_CLEAR_PROBABILITY 10        /* per-step clearance probability (host numpy) */
#define TM_N_TUMOR_PARAMS 11

/* state_table rows: one factor per tumor state (none, S, P, R). */
#define TM_TS_DIVISION 0                  /* f_state of the division rate */
#define TM_N_STATE_TABLES 1

/* Division rate (1/min) of a tumor cell at oxygen o2 (mmHg, float32): r_max f_O2 f_state.
 * f_O2 = clip((o2 - lo) / (hi - lo), 0, 1) in float32 and r_max * f_O2 rounded to float32, as
 * numpy computes them (tumor.oxygen_factor; r_max is a Python float, hence cast to float32);
 * the state factor multiplies in double. */
TM_HD double tm_division_rate(float o2, int state, const double* params,
                              const double* state_table) {
    const float lo = (float)params[TM_TP_PROLIF_LO_MMHG];
    const float span = (float)params[TM_TP_PROLIF_SPAN_MMHG];
    const float f_o2 = tm_clip01(__fdiv_rn(__fsub_rn(o2, lo), span));
    const float r = __fmul_rn((float)params[TM_TP_R_MAX_PER_MIN], f_o2);
    return __dmul_rn((double)r, state_table[TM_TS_DIVISION * TM_N_STATES + state]);
}

/* Necrosis rate (1/min) of a cell below the threshold: tumor.necrosis_rate_per_min. */
TM_HD double tm_necrosis_rate(float o2, const double* params) {
    const double top = params[TM_TP_NECROSIS_TOP_PER_MIN];
    if (params[TM_TP_NECROSIS_STEP] != 0.0) return top;
    const float thr = (float)params[TM_TP_NECROSIS_THRESHOLD_MMHG];
    const float span = (float)params[TM_TP_NECROSIS_SPAN_MMHG];
    const float frac = tm_clip01(__fdiv_rn(__fsub_rn(thr, o2), span));
    return (double)__fmul_rn((float)top, frac);
}

/* tm_tumor_decide: decisions of one step. Twin of the "decisions" half of TumorRules.apply.
 *   n_sites, nz, ny, nx  the grid (2D: nz = 1)
 *   kind, tumor_state    (n_sites,) uint8 at the start of the step (read only)
 *   oxygen               (n_sites,) float32 mmHg (this step's field)
 *   offsets              (n_offsets, 3) int32 neighbour offsets (dz, dy, dx) in Grid.offsets'
 *                        order (the order picks the k-th empty neighbour: it is reproducibility)
 *   params, state_table  see the file comment
 *   seed, step           the generator's key and counter (rng.cuh)
 *   action               (n_sites,) uint8 out: TM_ACT_* of every site
 *   target               (n_sites,) uint32 out: claimed voxel of a CLAIM, TM_NO_TARGET otherwise
 *   claims               (n_sites,) uint64, all 0 on entry; the largest key claiming each voxel
 * One work item per site. Only `claims` is shared between threads, through integer atomicMax.
 * Random words: CLEARANCE, NECROSIS, DIVIDE (uniforms against the probabilities), DIRECTION (its
 * high 32 bits choose the neighbour, its low 32 bits are the claim's priority), as in numpy. */
TM_KERNEL void tm_tumor_decide(long long n_sites, int nz, int ny, int nx,
                               const u8* __restrict__ kind,
                               const u8* __restrict__ tumor_state,
                               const float* __restrict__ oxygen,
                               const int* __restrict__ offsets, int n_offsets,
                               const double* __restrict__ params,
                               const double* __restrict__ state_table,
                               u64 seed, u64 step,
                               u8* __restrict__ action, u32* __restrict__ target,
                               u64* __restrict__ claims) {
    const double dt = params[TM_TP_DT_MIN];
    TM_FOR_EACH(s, n_sites) {
        u8 act = TM_ACT_NONE;
        u32 tgt = TM_NO_TARGET;
        const u8 k = kind[s];
        if (k == TM_NECROTIC) {
            if (tm_rng_uniform(seed, step, (u64)s, TM_STREAM_CLEARANCE) <
                params[TM_TP_CLEAR_PROBABILITY])
                act = TM_ACT_CLEAR;
        } else if (k == TM_TUMOR) {
            const float o2 = oxygen[s];
            if (params[TM_TP_NECROSIS_ON] != 0.0 &&
                o2 < (float)params[TM_TP_NECROSIS_THRESHOLD_MMHG]) {
                const double p = tm_probability(tm_necrosis_rate(o2, params), dt);
                if (tm_rng_uniform(seed, step, (u64)s, TM_STREAM_NECROSIS) < p)
                    act = TM_ACT_NECROSIS;
            }
            if (act == TM_ACT_NONE) {
                const double rate = tm_division_rate(o2, tumor_state[s], params, state_table);
                if (rate > 0.0 &&
                    tm_rng_uniform(seed, step, (u64)s, TM_STREAM_DIVIDE) <
                        tm_division_probability(rate, dt, params[TM_TP_DIVISION_CAP])) {
                    const int z = (int)(s / ((long long)ny * nx));
                    const int y = (int)((s / nx) % ny);
                    const int x = (int)(s % nx);
                    /* first pass: count the empty neighbours; second: take the k-th */
                    u64 n_empty = 0;
                    for (int j = 0; j < n_offsets; ++j) {
                        const int zz = z + offsets[3 * j], yy = y + offsets[3 * j + 1],
                                  xx = x + offsets[3 * j + 2];
                        if (zz < 0 || zz >= nz || yy < 0 || yy >= ny || xx < 0 || xx >= nx)
                            continue;
                        n_empty += kind[((long long)zz * ny + yy) * nx + xx] == TM_EMPTY;
                    }
                    if (n_empty == 0) {
                        act = TM_ACT_BLOCKED;
                    } else {
                        const u64 w = tm_rng_word(seed, step, (u64)s, TM_STREAM_DIRECTION);
                        /* tumor.choose_target: k = (high 32 bits * n_empty) >> 32 */
                        const u64 pick = ((w >> 32) * n_empty) >> 32;
                        u64 seen = 0;
                        long long t = -1;
                        for (int j = 0; j < n_offsets && t < 0; ++j) {
                            const int zz = z + offsets[3 * j], yy = y + offsets[3 * j + 1],
                                      xx = x + offsets[3 * j + 2];
                            if (zz < 0 || zz >= nz || yy < 0 || yy >= ny || xx < 0 || xx >= nx)
                                continue;
                            const long long nb = ((long long)zz * ny + yy) * nx + xx;
                            if (kind[nb] != TM_EMPTY) continue;
                            if (seen == pick) t = nb;
                            ++seen;
                        }
                        const u64 key = ((w & 0xFFFFFFFFull) << 32) | (u64)s;
                        atomicMax(&claims[t], key);
                        act = TM_ACT_CLAIM;
                        tgt = (u32)t;
                    }
                }
            }
        }
        action[s] = act;
        target[s] = tgt;
    }
}

/* tm_tumor_apply: apply the decisions of tm_tumor_decide. Twin of the "apply" half of
 * TumorRules.apply (the sets cleared, dying and targets are disjoint).
 *   kind, tumor_state  (n_sites,) uint8, updated in place
 *   action             (n_sites,) uint8: TM_ACT_BORN is written at voxels that get a daughter
 *   target, claims     from tm_tumor_decide (read only here)
 * One work item per site t, and it writes only site t. A claimed voxel t (empty at the start)
 * reads key = claims[t], whose low 32 bits are the winner s; s won iff target[s] == t. That also
 * covers the key 0 (site 0 with priority 0): an unclaimed voxel also reads 0, but then
 * target[0] != t. Reads of other sites touch only data no thread writes in this launch (target;
 * tumor_state of a dividing cell, which does not die this step), so there is no race. */
TM_KERNEL void tm_tumor_apply(long long n_sites, u8* __restrict__ kind,
                              u8* __restrict__ tumor_state,
                              u8* __restrict__ action,
                              const u32* __restrict__ target,
                              const u64* __restrict__ claims) {
    TM_FOR_EACH(t, n_sites) {
        const u8 act = action[t];
        if (act == TM_ACT_CLEAR) {
            kind[t] = TM_EMPTY;
        } else if (act == TM_ACT_NECROSIS) {
            kind[t] = TM_NECROTIC;
            tumor_state[t] = TM_STATE_NONE;
        } else if (kind[t] == TM_EMPTY) {
            const u64 s = claims[t] & 0xFFFFFFFFull;
            if (target[s] == (u32)t) {
                kind[t] = TM_TUMOR;
                tumor_state[t] = tumor_state[s];
                action[t] = TM_ACT_BORN;
            }
        }
    }
}

/* tm_tumor_finish: at every newborn voxel, record the mother in target[t] (free: an empty voxel
 * claims nothing) and reset claims[t] to 0 for the next step. Every claimed voxel has a winner,
 * so this leaves all claims 0 (numpy resets its claims array the same way).
 *   action (n_sites,) uint8; target (n_sites,) uint32; claims (n_sites,) uint64
 * One work item per site; each writes only its own site. */
TM_KERNEL void tm_tumor_finish(long long n_sites, const u8* __restrict__ action,
                               u32* __restrict__ target, u64* __restrict__ claims) {
    TM_FOR_EACH(t, n_sites) {
        if (action[t] == TM_ACT_BORN) {
            target[t] = (u32)(claims[t] & 0xFFFFFFFFull);
            claims[t] = 0;
        }
    }
}
