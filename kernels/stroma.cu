/* stroma.cu -- stromal rules (tmesim/steps/stroma.py): TAM turnover, CAF and TAM moves, TAM
 * chemotaxis up the recruitment signal, TAM recruitment at vessels, all applied at once.
 *
 * A step is three launches over all sites, each reading the lattice as it was when the stroma
 * step began (after this step's tumor rules):
 *   tm_stroma_decide  every TAM, CAF and vessel voxel takes its decisions from (seed, step, site,
 *                     stream); a mover (CAF, surviving TAM) or a recruiting vessel picks a target
 *                     among its empty neighbours and claims it with an integer atomicMax;
 *   tm_stroma_apply   every voxel applies its own change: a dead TAM leaves an empty voxel, a mover
 *                     that won its claim leaves an empty voxel, a claimed voxel takes the winner's
 *                     cell (a new TAM for a vessel);
 *   tm_stroma_finish  every voxel that received a cell resets its claim to 0.
 * As in numpy, only voxels EMPTY at the start of the step can be claimed: a voxel vacated by a
 * mover or by a dead TAM is free from the next step on.
 *
 * Claims: the key is numpy's, (low 32 bits of the MOVE_DIRECTION word << 32) | source site
 * (tumor.resolve_claims), and the largest key wins. claims[t] stores key + 1, so that 0 means
 * "unclaimed" even for the key 0 (site 0 with priority 0): the +1 is monotone and cannot overflow
 * (sites < 2^32 - 1), so the winner is the same. The caller's claims array must be all 0 on entry
 * and is all 0 again after tm_stroma_finish (it can be shared with the tumor rules).
 *
 * Codes written to `action` (uint8, per site): the TM_SA_* below. A claim also records which
 * neighbour it chose, so no per-site target array is needed: action = class << 6 | j, class 1 CAF,
 * 2 TAM, 3 vessel, j the index into `offsets` (< 64). The host counts events with a bincount of
 * `action` (no floating-point atomics anywhere). Scratch per site: claims 8 B + action 1 B.
 *
 * Layout: per-site arrays are flat over n_sites = nz*ny*nx in C order (2D: nz = 1). Scalars that
 * configure the rules are one float64 array `params` indexed by TM_SP_* below;
 * tmesim/steps/stroma_kernel.py reads these #defines from this file to fill it by name.
 */
#include "common.cuh"
#include "rng.cuh"
#include "decisions.cuh"
#include "lattice.cuh"

#define TM_SA_NONE 0
#define TM_SA_DIED 1             /* TAM turned over: its voxel becomes empty */
#define TM_SA_ARRIVED_CAF 2      /* empty voxel received a moving CAF (set by tm_stroma_apply) */
#define TM_SA_ARRIVED_TAM 3      /* empty voxel received a moving TAM (set by tm_stroma_apply) */
#define TM_SA_RECRUITED 4        /* empty voxel received a TAM recruited at a vessel (apply) */
#define TM_SA_CLAIM_CAF 64       /* 64 + j: CAF claims neighbour j (won or lost) */
#define TM_SA_CLAIM_TAM 128      /* 128 + j: TAM claims neighbour j */
#define TM_SA_CLAIM_VESSEL 192   /* 192 + j: vessel claims neighbour j for a new TAM */
#define TM_SA_CLASS_SHIFT 6
#define TM_SA_NEIGHBOUR_MASK 63
#define TM_SA_CLASS_CAF 1
#define TM_SA_CLASS_TAM 2
#define TM_SA_CLASS_VESSEL 3

/* params[] indices: float64, units in the names. The probabilities are computed on the host by
 * the numpy code itself (tumor.probability), so they are identical by construction. */
#define TM_SP_DT_MIN 0                  /* agent step (min) */
#define TM_SP_DEATH_PROBABILITY 1       /* per-step TAM turnover probability (0: off) */
#define TM_SP_CAF_MOVE_PROBABILITY 2    /* per-step CAF move probability (0: off) */
#define TM_SP_TAM_MOVE_PROBABILITY 3    /* per-step TAM move probability (0: off) */
#define TM_SP_CHEMOTAXIS 4              /* probability that a TAM move follows the signal */
#define TM_SP_RECRUIT_PER_H 5           /* recruitment per vessel voxel without signal (1/h) */
#define TM_SP_RECRUIT_GAIN_PER_H 6      /* extra recruitment at saturating signal (1/h) */
#define TM_SP_SIGNAL_HALF_MAX 7         /* signal for half the extra recruitment (signal units) */
#define TM_SP_RECRUIT_PROBABILITY 8     /* per-step probability without the gain term (host) */
#define TM_N_STROMA_PARAMS 9

/* Recruitment probability at a vessel voxel of signal s (float32). With the gain term: rate =
 * recruitment + gain s / (s + half_max) in double (numpy's order: (gain s) / (s + half_max)), then
 * tumor.probability(rate / 60, dt) per voxel (decisions.cuh); without it the host's constant. */
TM_HD double tm_recruit_probability(float s, bool gain_on, const double* params) {
    if (!gain_on) return params[TM_SP_RECRUIT_PROBABILITY];
    const double sd = (double)s;
    const double extra = __ddiv_rn(__dmul_rn(params[TM_SP_RECRUIT_GAIN_PER_H], sd),
                                   __dadd_rn(sd, params[TM_SP_SIGNAL_HALF_MAX]));
    const double rate_per_h = __dadd_rn(params[TM_SP_RECRUIT_PER_H], extra);
    return tm_probability(__ddiv_rn(rate_per_h, 60.0), params[TM_SP_DT_MIN]);
}

/* tm_stroma_decide: decisions of one step. Twin of the "decisions" half of StromaRules.apply.
 *   n_sites, nz, ny, nx  the grid (2D: nz = 1)
 *   kind                 (n_sites,) uint8 at the start of the stroma step (read only)
 *   signal               (n_sites,) float32 recruitment signal (signal units); read only when
 *                        has_signal != 0 (pass any 1-element array otherwise). Must hold no NaN
 *                        or -inf next to a following TAM (numpy's tie rule is then ill-defined)
 *   has_signal           0 when numpy's signal is None: no chemotaxis, no gain term
 *   offsets              (n_offsets, 3) int32 neighbour offsets (dz, dy, dx), Grid.offsets' order
 *   params               see TM_SP_*
 *   seed, step           the generator's key and counter (rng.cuh)
 *   action               (n_sites,) uint8 out: TM_SA_* of every site
 *   claims               (n_sites,) uint64, all 0 on entry; key + 1 of the largest claim per voxel
 * One work item per site. Only `claims` is shared between threads, through integer atomicMax;
 * `kind` and `signal` are read-only here, so every thread sees the start-of-step lattice.
 * Random words: STROMA_DEATH (a TAM turns over; it then neither moves nor claims), MOVE (a CAF or
 * surviving TAM tries to move), CHEMOTAXIS (a moving TAM follows the signal), RECRUIT (a vessel
 * recruits), MOVE_DIRECTION (high 32 bits choose the target, low 32 bits are the priority).
 * Target: among the in-grid neighbours EMPTY at the start, the k-th (tumor.choose_target); a
 * follower takes the k-th among those with the maximal signal (float32 equality: ties are exact),
 * k from the same word. A source without an empty neighbour does nothing (numpy drops it). */
TM_KERNEL void tm_stroma_decide(long long n_sites, int nz, int ny, int nx,
                                const u8* __restrict__ kind,
                                const float* __restrict__ signal, int has_signal,
                                const int* __restrict__ offsets, int n_offsets,
                                const double* __restrict__ params,
                                u64 seed, u64 step,
                                u8* __restrict__ action, u64* __restrict__ claims) {
    const double p_death = params[TM_SP_DEATH_PROBABILITY];
    const double p_caf = params[TM_SP_CAF_MOVE_PROBABILITY];
    const double p_tam = params[TM_SP_TAM_MOVE_PROBABILITY];
    const double bias = params[TM_SP_CHEMOTAXIS];
    const bool follow_on = has_signal != 0 && bias > 0.0;
    const bool gain_on = has_signal != 0 && params[TM_SP_RECRUIT_GAIN_PER_H] > 0.0;
    const bool recruit_on = gain_on || params[TM_SP_RECRUIT_PER_H] > 0.0;
    TM_FOR_EACH(s, n_sites) {
        u8 act = TM_SA_NONE;
        int cls = 0;
        bool follow = false;
        const u8 k = kind[s];
        /* "p > 0 &&" only skips draws: u >= 0, so u < p is false whenever p <= 0 (or NaN) */
        if (k == TM_TAM) {
            if (p_death > 0.0 &&
                tm_rng_uniform(seed, step, (u64)s, TM_STREAM_STROMA_DEATH) < p_death) {
                act = TM_SA_DIED;
            } else if (p_tam > 0.0 &&
                       tm_rng_uniform(seed, step, (u64)s, TM_STREAM_MOVE) < p_tam) {
                cls = TM_SA_CLASS_TAM;
                follow = follow_on &&
                         tm_rng_uniform(seed, step, (u64)s, TM_STREAM_CHEMOTAXIS) < bias;
            }
        } else if (k == TM_CAF) {
            if (p_caf > 0.0 && tm_rng_uniform(seed, step, (u64)s, TM_STREAM_MOVE) < p_caf)
                cls = TM_SA_CLASS_CAF;
        } else if (k == TM_VESSEL && recruit_on) {
            const double p = tm_recruit_probability(gain_on ? signal[s] : 0.0f, gain_on, params);
            if (p > 0.0 && tm_rng_uniform(seed, step, (u64)s, TM_STREAM_RECRUIT) < p)
                cls = TM_SA_CLASS_VESSEL;
        }
        if (cls != 0) {
            int z, y, x;
            tm_site_coords(s, ny, nx, &z, &y, &x);
            /* first pass: the empty neighbours, and for a follower the best signal among them
             * and how many share it (numpy: s == s.max() over the empty ones) */
            u64 n_empty = 0, n_best = 0;
            float best = 0.0f;
            for (int j = 0; j < n_offsets; ++j) {
                const long long nb = tm_neighbour(z, y, x, offsets, j, nz, ny, nx);
                if (nb == TM_OUTSIDE || kind[nb] != TM_EMPTY) continue;
                if (follow) {
                    const float v = signal[nb];
                    if (n_empty == 0 || v > best) {
                        best = v;
                        n_best = 1;
                    } else if (v == best) {
                        ++n_best;
                    }
                }
                ++n_empty;
            }
            if (n_empty > 0) {
                const u64 w = tm_rng_word(seed, step, (u64)s, TM_STREAM_MOVE_DIRECTION);
                const u64 pick = tm_pick_index(w, follow ? n_best : n_empty);
                /* second pass: the pick-th candidate, in offsets order */
                u64 seen = 0;
                int tj = -1;
                long long t = TM_OUTSIDE;
                for (int j = 0; j < n_offsets && tj < 0; ++j) {
                    const long long nb = tm_neighbour(z, y, x, offsets, j, nz, ny, nx);
                    if (nb == TM_OUTSIDE || kind[nb] != TM_EMPTY) continue;
                    if (follow && !(signal[nb] == best)) continue;
                    if (seen == pick) {
                        tj = j;
                        t = nb;
                    }
                    ++seen;
                }
                /* tj < 0 only if the signal holds NaN (see above): no claim, never a wild write */
                if (tj >= 0) {
                    atomicMax(&claims[t], tm_claim_key(w, s) + 1ull);
                    act = (u8)((cls << TM_SA_CLASS_SHIFT) | tj);
                }
            }
        }
        action[s] = act;
    }
}

/* tm_stroma_apply: apply the decisions of tm_stroma_decide. Twin of the "apply" half of
 * StromaRules.apply.
 *   n_sites, nz, ny, nx, offsets, n_offsets  as tm_stroma_decide
 *   kind     (n_sites,) uint8, updated in place
 *   action   (n_sites,) uint8: TM_SA_ARRIVED_CAF / _TAM / TM_SA_RECRUITED are written at the
 *            voxels that receive a cell
 *   claims   from tm_stroma_decide (read only here)
 * One work item per site s, and it writes only site s:
 *   - a dead TAM empties its voxel;
 *   - a claimer reads claims[t] of its target t; it won iff the winner's site is s (distinct
 *     sources have distinct low key bits). A CAF/TAM that won empties its voxel; a vessel stays;
 *   - a voxel with claims != 0 (empty at the start, action NONE) takes the winner src's cell: the
 *     class in action[src] says which (a vessel gives a TAM).
 * Races: `claims` is not written in this launch; action is written only at claimed voxels and
 * read only at winners, which are claimers (not empty at the start, never claimed), so no site is
 * both read by another item and written; `kind` is read and written only at the own site. */
TM_KERNEL void tm_stroma_apply(long long n_sites, int nz, int ny, int nx,
                               u8* __restrict__ kind, u8* __restrict__ action,
                               const int* __restrict__ offsets, int n_offsets,
                               const u64* __restrict__ claims) {
    (void)n_offsets;   /* the neighbour index comes from action, which decide bounded by it */
    TM_FOR_EACH(s, n_sites) {
        const u8 a = action[s];
        if (a == TM_SA_DIED) {
            kind[s] = TM_EMPTY;
        } else if (a >= TM_SA_CLAIM_CAF) {
            const int cls = a >> TM_SA_CLASS_SHIFT;
            int z, y, x;
            tm_site_coords(s, ny, nx, &z, &y, &x);
            const long long t =
                tm_neighbour(z, y, x, offsets, a & TM_SA_NEIGHBOUR_MASK, nz, ny, nx);
            if (cls != TM_SA_CLASS_VESSEL && tm_claim_source(claims[t] - 1ull) == s)
                kind[s] = TM_EMPTY;
        } else {
            const u64 c = claims[s];
            if (c != 0) {
                const int cls = action[tm_claim_source(c - 1ull)] >> TM_SA_CLASS_SHIFT;
                kind[s] = cls == TM_SA_CLASS_CAF ? TM_CAF : TM_TAM;
                action[s] = cls == TM_SA_CLASS_CAF   ? TM_SA_ARRIVED_CAF
                            : cls == TM_SA_CLASS_TAM ? TM_SA_ARRIVED_TAM
                                                     : TM_SA_RECRUITED;
            }
        }
    }
}

/* tm_stroma_finish: reset claims[t] to 0 at every voxel that received a cell. Every claimed voxel
 * has a winner, so this leaves all claims 0 for the next step (numpy's resolve_claims does the
 * same). A separate launch because tm_stroma_apply's claimers read claims[t] of other sites.
 *   action (n_sites,) uint8; claims (n_sites,) uint64
 * One work item per site; each writes only its own site. */
TM_KERNEL void tm_stroma_finish(long long n_sites, const u8* __restrict__ action,
                                u64* __restrict__ claims) {
    TM_FOR_EACH(t, n_sites) {
        const u8 a = action[t];
        if (a >= TM_SA_ARRIVED_CAF && a <= TM_SA_RECRUITED) claims[t] = 0;
    }
}
