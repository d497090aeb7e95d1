/* tumor.cu -- tumor-cell rules (tmesim/steps/tumor.py): necrosis, clearance, drug kill, phenotype
 * transitions of drug-tolerant persisters, memory, division with deterministic claims, applied
 * all at once.
 *
 * Tumor states (tmesim/codes.py): S sensitive, P drug-tolerant persister, R resistant, E the
 * drug-tolerant expanded persister (DTEP): killed as P, reverts to S (at its own exit rate) or
 * becomes R as P does, divides at its own state factor through division-blocking drugs (as R);
 * P -> E at expansion E_target clip((time_in_P - delay) / ramp, 0, 1). time_in_P counts P and E
 * alike.
 *
 * A step is three launches over all sites, each reading the state at the start of the step:
 *   tm_tumor_decide  every cell and necrotic voxel takes its decisions from (seed, step, site,
 *                    stream): necrosis, else drug kill, else a phenotype transition, division
 *                    and the memory / time-in-P update. A dividing cell picks the k-th empty
 *                    neighbour and claims it with an integer atomicMax of
 *                    key = (32-bit priority << 32) | source site. The cell's own tumor_state,
 *                    memory and time_in_P are written here, already in their end-of-step values
 *                    (numpy updates memory and time in P among its decisions, and no thread of
 *                    this launch reads another site's state, memory or time); `kind`, which
 *                    other threads read to find empty neighbours, is left for tm_tumor_apply;
 *   tm_tumor_apply   every voxel applies its change of kind: cleared -> empty, dying -> necrotic,
 *                    killed -> empty, and an empty voxel with a claim becomes the daughter of the
 *                    claim's winner, copying its end-of-step phenotype, memory and time in P
 *                    (numpy: tumor_state[targets] = tumor_state[sources] after the transitions,
 *                    memory[targets] = memory[sources] after the memory update);
 *   tm_tumor_finish  every newborn voxel records its mother and resets its claim to 0.
 * Integer max is associative and commutative, so the winner does not depend on the order in which
 * threads claim: the same as np.maximum.at in the numpy twin (TumorRules.apply).
 *
 * Layout: per-site arrays are flat over n_sites = nz*ny*nx in C order (2D: nz = 1); oxygen, hgf
 * and igf1 are rows of the (F, n_sites) float32 fields (mmHg, ng/mL), drug_conc the drugs' rows
 * (n_drugs, n_sites) float32 uM. Scalars that configure the rules are one float64 array `params`
 * indexed by TM_TP_* below, per-tumor-state factors are rows of `state_table`
 * (TM_N_STATE_TABLES, TM_N_STATES), indexed by tmesim.codes' state (none, S, P, R, E), and the
 * drugs' pharmacodynamic effects are rows of `effects` (n_effects, TM_N_EFFECT_COLUMNS) float64,
 * one per (drug, effect) in the order of tmesim.drugs.Effects.at (drug by drug, each drug's
 * effects in their table order: the order of the Bliss products and kill sums).
 * tmesim/steps/tumor_kernel.py reads these #defines from this file to fill the arrays by name.
 *
 * `action` (uint8, per site): the event in the low 4 bits (TM_ACT_*), the phenotype transition in
 * bits 4-6 (TM_TRANSITION_*), bit 7 unused; read back by the host to count events with one
 * bincount (no counters, no atomics). A blocked mother's push outcome (mechanics.cu) is an event
 * of its own, TM_ACT_PUSH_*, written over TM_ACT_BLOCKED (its transition bits kept): a push
 * outcome exists only for a blocked mother, so it needs no bits beside the event's, and the
 * action stays one byte (the stroma kernels share this array as their uint8 action).
 * Per-site memory: kind, tumor_state, action (1 byte each), memory, time_in_P (float32), target
 * (uint32), claims (uint64); the persister biology added no scratch.
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
#define TM_ACT_KILLED_S 6    /* sensitive cell killed by drugs: the voxel becomes empty */
#define TM_ACT_KILLED_P 7    /* persister (P or E) killed by drugs or turnover: voxel empty */
#define TM_ACT_KILLED_R 8    /* resistant cell dead of basal turnover: the voxel becomes empty */
#define TM_ACT_PUSH_WON 9    /* blocked mother whose push path won every voxel (mechanics.cu) */
#define TM_ACT_PUSH_LOST 10  /* blocked mother with a push path that lost a voxel */
#define TM_ACT_PUSH_FAR 11   /* blocked mother with no empty voxel within the push reach */
#define TM_ACT_EVENT_MASK 15
#define TM_TRANSITION_SHIFT 4
#define TM_TRANSITION_TO_P 1 /* S -> P */
#define TM_TRANSITION_TO_S 2 /* P -> S or E -> S */
#define TM_TRANSITION_TO_R 3 /* P -> R or E -> R */
#define TM_TRANSITION_TO_E 4 /* P -> E */

#define TM_NO_TARGET 0xFFFFFFFFu

/* Tumor states beside common.cuh's TM_STATE_NONE: tmesim/codes.py (never renumbered). */
#define TM_SENSITIVE 1
#define TM_PERSISTER 2
#define TM_RESISTANT 3
#define TM_EXPANDED 4

/* `fields` bits: which optional signalling fields the launch passes. */
#define TM_HAS_HGF 1
#define TM_HAS_IGF1 2

/* params[] indices: float64, units in the names; flags are 0 or 1. */
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
#define TM_TP_PER_MIN 11                  /* 1.0 / 60.0 (host): per-hour rates times this */
#define TM_TP_HYPOXIC_MMHG 12             /* hypoxia level 0 at or above this oxygen */
#define TM_TP_HYPOXIA_SPAN_MMHG 13        /* hypoxic - necrosis threshold (host double) */
#define TM_TP_HYPOXIA_STEP 14             /* 1 if hypoxic <= necrosis threshold: h = o2 < hi */
#define TM_TP_PERSISTER_TOLERANCE 15      /* persisters die at this fraction of kill_S */
#define TM_TP_DRUGS_ON 16                 /* 1 if the rules have drugs (numpy: effects not None) */
#define TM_TP_ENTRY_BASAL_ON 17           /* transitions.pre_existing */
#define TM_TP_ENTRY_BASAL_PER_H 18
#define TM_TP_ENTRY_INDUCED_ON 19         /* transitions.drug_induced */
#define TM_TP_ENTRY_INDUCED_PER_H 20
#define TM_TP_HYPOXIA_WEIGHT 21
#define TM_TP_EXIT_PER_H 22
#define TM_TP_MEMORY_EXIT_SLOWING 23
#define TM_TP_HYPOXIA_EXIT_SLOWING 24
#define TM_TP_RESISTANCE_PER_H 25
#define TM_TP_ADAPTIVE_MUTABILITY 26
#define TM_TP_MUTABILITY_RAMP_MIN 27      /* mutability_ramp_h * 60.0 (host) */
#define TM_TP_MEMORY_GAIN_PER_MIN 28      /* memory_gain_per_h / 60.0 (host) */
#define TM_TP_MEMORY_DECAY_PER_MIN 29     /* memory_decay_per_h / 60.0 (host) */
#define TM_TP_NODRUG_MEMORY_K_PER_MIN 30  /* relax_memory's k at E = 0 (host) */
#define TM_TP_NODRUG_MEMORY_FACTOR 31     /* relax_memory's np.exp(-k dt) at E = 0 (host numpy) */
#define TM_TP_HGF_HALF_MAX 32             /* ng/mL */
#define TM_TP_IGF1_HALF_MAX 33            /* ng/mL */
#define TM_TP_MET_PROTECTION_MAX 34
#define TM_TP_IGF1R_PROTECTION_MAX 35
#define TM_TP_HGF_GROWTH_GAIN 36
#define TM_TP_IGF1_GROWTH_GAIN 37
#define TM_TP_ENTRY_WEIGHT 38             /* signalling.entry_weight */
#define TM_TP_DEATH_PER_H 39              /* basal turnover of every tumor cell (1/h) */
#define TM_TP_EXPANSION_PER_H 40          /* P -> E at full targeted-drug effect (1/h) */
#define TM_TP_EXPANSION_RAMP_MIN 41       /* expansion_ramp_h * 60.0 (host) */
#define TM_TP_EXPANDED_EXIT_PER_H 42      /* E -> S off drug without memory (1/h) */
#define TM_TP_EXPANSION_DELAY_MIN 43      /* expansion_delay_h * 60.0 (host) */
#define TM_N_TUMOR_PARAMS 44

/* state_table rows: one factor per tumor state (none, S, P, R, E). */
#define TM_TS_DIVISION 0                  /* f_state of the division rate */
#define TM_N_STATE_TABLES 1

/* effects[] columns (float64) and the effect targets (tmesim.scenario.EFFECT_TARGETS). */
#define TM_EF_DRUG 0                      /* row of drug_conc */
#define TM_EF_TARGET 1                    /* TM_EFFECT_* */
#define TM_EF_EMAX 2
#define TM_EF_EC50_UM 3
#define TM_EF_HILL 4
#define TM_EF_COEF 5                      /* rate_per_h (kill_*), fold (exit_speedup), else 0 */
#define TM_N_EFFECT_COLUMNS 6
#define TM_EFFECT_KILL_S 0
#define TM_EFFECT_KILL_P 1
#define TM_EFFECT_EXIT_SPEEDUP 2
#define TM_EFFECT_BLOCK_ENTRY 3
#define TM_EFFECT_BLOCK_DIVISION 4
#define TM_EFFECT_CANCEL_MET 5
#define TM_EFFECT_CANCEL_IGF1R 6

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

/* Hypoxia level h in [0, 1] (TumorRules.hypoxia_level): a step (o2 < hi, float32 comparison)
 * when hi <= lo, else clip((hi - float64(o2)) / (hi - lo), 0, 1) in double. */
TM_HD double tm_hypoxia_level(float o2, const double* params) {
    if (params[TM_TP_HYPOXIA_STEP] != 0.0)
        return o2 < (float)params[TM_TP_HYPOXIC_MMHG] ? 1.0 : 0.0;
    return tm_clip01d(__ddiv_rn(__dadd_rn(params[TM_TP_HYPOXIC_MMHG], -(double)o2),
                                params[TM_TP_HYPOXIA_SPAN_MMHG]));
}

/* Receptor activation L / (L + half_max) before inhibitors (TumorRules.receptor_activation):
 * numpy divides float64(L) by the float32 sum L + half_max (half_max cast to float32). */
TM_HD double tm_activation(float ligand, double half_max) {
    return __ddiv_rn((double)ligand, (double)__fadd_rn(ligand, (float)half_max));
}

/* Combined drug effects at one site: tmesim.drugs.Effects.at for one cell. Kill rates (1/h) and
 * the exit speedup add in row order; the fractions are 1 - prod(1 - E) (Bliss), the products
 * taken in row order. */
struct TmEffects {
    double kill_S, kill_P, exit_speedup;
    double target, block_entry, block_division, cancel_met, cancel_igf1r;
};

TM_HD TmEffects tm_drug_effects(long long s, long long n_sites, const float* drug_conc,
                                const double* effects, int n_effects) {
    double kill_S = 0.0, kill_P = 0.0, speedup = 0.0;
    double k_target = 1.0, k_entry = 1.0, k_division = 1.0, k_met = 1.0, k_igf1r = 1.0;
    for (int j = 0; j < n_effects; ++j) {
        const double* row = effects + (long long)j * TM_N_EFFECT_COLUMNS;
        const float c = drug_conc[(long long)row[TM_EF_DRUG] * n_sites + s];
        const double E = tm_hill(c, row[TM_EF_EMAX], row[TM_EF_EC50_UM], row[TM_EF_HILL]);
        const double keep = __dadd_rn(1.0, -E);
        switch ((int)row[TM_EF_TARGET]) {
            case TM_EFFECT_KILL_S:
                kill_S = __dadd_rn(kill_S, __dmul_rn(row[TM_EF_COEF], E));
                k_target = __dmul_rn(k_target, keep);
                break;
            case TM_EFFECT_KILL_P:
                kill_P = __dadd_rn(kill_P, __dmul_rn(row[TM_EF_COEF], E));
                break;
            case TM_EFFECT_EXIT_SPEEDUP:
                speedup = __dadd_rn(speedup, __dmul_rn(row[TM_EF_COEF], E));
                break;
            case TM_EFFECT_BLOCK_ENTRY: k_entry = __dmul_rn(k_entry, keep); break;
            case TM_EFFECT_BLOCK_DIVISION: k_division = __dmul_rn(k_division, keep); break;
            case TM_EFFECT_CANCEL_MET: k_met = __dmul_rn(k_met, keep); break;
            default: k_igf1r = __dmul_rn(k_igf1r, keep); break;   /* TM_EFFECT_CANCEL_IGF1R */
        }
    }
    TmEffects e;
    e.kill_S = kill_S;
    e.kill_P = kill_P;
    e.exit_speedup = speedup;
    e.target = __dadd_rn(1.0, -k_target);
    e.block_entry = __dadd_rn(1.0, -k_entry);
    e.block_division = __dadd_rn(1.0, -k_division);
    e.cancel_met = __dadd_rn(1.0, -k_met);
    e.cancel_igf1r = __dadd_rn(1.0, -k_igf1r);
    return e;
}

/* tm_tumor_decide: decisions of one step. Twin of the "decisions" half of TumorRules.apply.
 *   n_sites, nz, ny, nx  the grid (2D: nz = 1)
 *   kind                 (n_sites,) uint8 at the start of the step (read only)
 *   tumor_state          (n_sites,) uint8: in, the phenotype at the start of the step; out, after
 *                        this step's transition (NONE for cells that die)
 *   memory, time_in_P    (n_sites,) float32 (memory in [0, 1], time in P in min): updated in place
 *                        at tumor cells (0 for cells that die), untouched elsewhere
 *   oxygen               (n_sites,) float32 mmHg (this step's field)
 *   hgf, igf1            (n_sites,) float32 ng/mL, read only if `fields` has TM_HAS_HGF /
 *                        TM_HAS_IGF1 (numpy: the field is None, activation 0)
 *   drug_conc            (n_drugs, n_sites) float32 free tissue concentrations (uM); read only
 *                        through the `effects` rows (none without drugs)
 *   effects, n_effects   (n_effects, TM_N_EFFECT_COLUMNS) float64, see the file comment
 *   offsets              (n_offsets, 3) int32 neighbour offsets (dz, dy, dx) in Grid.offsets'
 *                        order (the order picks the k-th empty neighbour: it is reproducibility)
 *   params, state_table  see the file comment
 *   seed, step           the generator's key and counter (rng.cuh)
 *   action               (n_sites,) uint8 out: TM_ACT_* | TM_TRANSITION_* << TM_TRANSITION_SHIFT
 *   target               (n_sites,) uint32 out: claimed voxel of a CLAIM, TM_NO_TARGET otherwise
 *   claims               (n_sites,) uint64, all 0 on entry; the largest key claiming each voxel
 * One work item per site. Shared between threads: `claims`, through integer atomicMax only, and
 * `kind`, only read. tumor_state, memory and time_in_P are read and written at the thread's own
 * site only, so no thread sees another's update. Random uniforms: CLEARANCE, NECROSIS, KILL,
 * TRANSITION, DIVIDE against their probabilities; DIRECTION's high 32 bits choose the neighbour,
 * its low 32 bits are the claim's priority; all as in numpy. Rates follow
 * TumorRules.rates_per_min operation for operation (per hour, then times 1/60). */
TM_KERNEL void tm_tumor_decide(long long n_sites, int nz, int ny, int nx,
                               const u8* __restrict__ kind,
                               u8* __restrict__ tumor_state,
                               float* __restrict__ memory,
                               float* __restrict__ time_in_P,
                               const float* __restrict__ oxygen,
                               const float* __restrict__ hgf,
                               const float* __restrict__ igf1, int fields,
                               const float* __restrict__ drug_conc,
                               const double* __restrict__ effects, int n_effects,
                               const int* __restrict__ offsets, int n_offsets,
                               const double* __restrict__ params,
                               const double* __restrict__ state_table,
                               u64 seed, u64 step,
                               u8* __restrict__ action, u32* __restrict__ target,
                               u64* __restrict__ claims) {
    const double dt = params[TM_TP_DT_MIN];
    const double per_min = params[TM_TP_PER_MIN];
    const bool drugs = params[TM_TP_DRUGS_ON] != 0.0;
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
            const int ts = tumor_state[s];
            if (params[TM_TP_NECROSIS_ON] != 0.0 &&
                o2 < (float)params[TM_TP_NECROSIS_THRESHOLD_MMHG]) {
                const double p = tm_probability(tm_necrosis_rate(o2, params), dt);
                if (tm_rng_uniform(seed, step, (u64)s, TM_STREAM_NECROSIS) < p)
                    act = TM_ACT_NECROSIS;
            }
            /* effects and receptor activation; without drugs numpy's effects are scalar 0.0,
             * which these zeros reproduce exactly (1 - 0 = 1, x * 1 = x, x + 0 = x) */
            TmEffects eff = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
            double a_met = 0.0, a_igf = 0.0;
            if (act == TM_ACT_NONE) {
                if (drugs) eff = tm_drug_effects(s, n_sites, drug_conc, effects, n_effects);
                if (fields & TM_HAS_HGF)
                    a_met = __dmul_rn(tm_activation(hgf[s], params[TM_TP_HGF_HALF_MAX]),
                                      __dadd_rn(1.0, -eff.cancel_met));
                if (fields & TM_HAS_IGF1)
                    a_igf = __dmul_rn(tm_activation(igf1[s], params[TM_TP_IGF1_HALF_MAX]),
                                      __dadd_rn(1.0, -eff.cancel_igf1r));
                /* drug kill: S at kill_S (1 - protection), P and E at kill_S tolerance + kill_P */
                const bool tolerant = ts == TM_PERSISTER || ts == TM_EXPANDED;
                double kill = 0.0;
                if (drugs && ts == TM_SENSITIVE) {
                    const double keep_met =
                        __dadd_rn(1.0, -__dmul_rn(params[TM_TP_MET_PROTECTION_MAX], a_met));
                    const double keep_igf =
                        __dadd_rn(1.0, -__dmul_rn(params[TM_TP_IGF1R_PROTECTION_MAX], a_igf));
                    const double protection = __dadd_rn(1.0, -__dmul_rn(keep_met, keep_igf));
                    kill = __dmul_rn(eff.kill_S, __dadd_rn(1.0, -protection));
                } else if (drugs && tolerant) {
                    kill = __dadd_rn(__dmul_rn(eff.kill_S, params[TM_TP_PERSISTER_TOLERANCE]),
                                     eff.kill_P);
                }
                /* basal turnover joins the drug kill as one loss event (kill + 0.0 is exact,
                 * as numpy's skipped addition) */
                kill = __dadd_rn(kill, params[TM_TP_DEATH_PER_H]);
                kill = __dmul_rn(kill, per_min);
                if (kill > 0.0 && tm_rng_uniform(seed, step, (u64)s, TM_STREAM_KILL) <
                                      tm_probability(kill, dt))
                    act = ts == TM_SENSITIVE ? TM_ACT_KILLED_S
                        : (tolerant ? TM_ACT_KILLED_P : TM_ACT_KILLED_R);
            }
            if (act != TM_ACT_NONE) {
                /* necrotic or killed: numpy clears the cell's variables */
                tumor_state[s] = TM_STATE_NONE;
                memory[s] = 0.0f;
                time_in_P[s] = 0.0f;
            } else {
                const double m = (double)memory[s];
                const double E = eff.target;
                /* transition rates (1/h), then per minute, as rates_per_min */
                double entry = 0.0, exit_ = 0.0, expand = 0.0, res = 0.0;
                if (ts == TM_SENSITIVE) {
                    const double h = tm_hypoxia_level(o2, params);
                    const double hw_h = __dmul_rn(params[TM_TP_HYPOXIA_WEIGHT], h);
                    if (params[TM_TP_ENTRY_BASAL_ON] != 0.0)
                        entry = __dadd_rn(entry, __dmul_rn(params[TM_TP_ENTRY_BASAL_PER_H],
                                                           __dadd_rn(1.0, hw_h)));
                    if (drugs && params[TM_TP_ENTRY_INDUCED_ON] != 0.0) {
                        double f = __dadd_rn(1.0, m);
                        f = __dadd_rn(f, __dmul_rn(params[TM_TP_ENTRY_WEIGHT],
                                                   __dadd_rn(a_met, a_igf)));
                        f = __dadd_rn(f, hw_h);
                        entry = __dadd_rn(entry, __dmul_rn(
                            __dmul_rn(params[TM_TP_ENTRY_INDUCED_PER_H], E), f));
                    }
                    entry = __dmul_rn(entry, __dadd_rn(1.0, -eff.block_entry));
                } else if (ts == TM_PERSISTER || ts == TM_EXPANDED) {
                    /* P and E alike but for the exit rate constant and P -> E (E: 0) */
                    const bool is_P = ts == TM_PERSISTER;
                    const double h = tm_hypoxia_level(o2, params);
                    const double num = __dmul_rn(
                        params[is_P ? TM_TP_EXIT_PER_H : TM_TP_EXPANDED_EXIT_PER_H],
                        __dadd_rn(__dadd_rn(1.0, -E), eff.exit_speedup));
                    double den = __dadd_rn(1.0, __dmul_rn(params[TM_TP_MEMORY_EXIT_SLOWING], m));
                    den = __dadd_rn(den, __dmul_rn(params[TM_TP_HYPOXIA_EXIT_SLOWING], h));
                    exit_ = __ddiv_rn(num, den);
                    const double tip = (double)time_in_P[s];
                    if (is_P) {
                        /* (expansion E) clip((tip - delay) / ramp, 0, 1), numpy's order */
                        const double ramp_e = tm_clip01d(
                            __ddiv_rn(__dadd_rn(tip, -params[TM_TP_EXPANSION_DELAY_MIN]),
                                      params[TM_TP_EXPANSION_RAMP_MIN]));
                        expand = __dmul_rn(__dmul_rn(params[TM_TP_EXPANSION_PER_H], E), ramp_e);
                    }
                    double ramp = __ddiv_rn(tip, params[TM_TP_MUTABILITY_RAMP_MIN]);
                    ramp = ramp >= 1.0 ? 1.0 : ramp;      /* np.minimum(1.0, ramp) */
                    res = __dmul_rn(params[TM_TP_RESISTANCE_PER_H],
                                    __dadd_rn(1.0, __dmul_rn(__dmul_rn(
                                        params[TM_TP_ADAPTIVE_MUTABILITY], ramp), E)));
                }
                entry = __dmul_rn(entry, per_min);
                exit_ = __dmul_rn(exit_, per_min);
                expand = __dmul_rn(expand, per_min);
                res = __dmul_rn(res, per_min);
                /* one TRANSITION draw: whether any transition fires, and which, splitting
                 * [0, p_any) in proportion to the rates in the order exit, expansion,
                 * resistance: -> S below p_any exit / k_tot, -> E below
                 * p_any (exit + expansion) / k_tot (never for E: its expansion is 0), else -> R */
                int tr = 0;
                const double k_tot = __dadd_rn(__dadd_rn(__dadd_rn(entry, exit_), expand), res);
                if (k_tot > 0.0) {
                    const double u = tm_rng_uniform(seed, step, (u64)s, TM_STREAM_TRANSITION);
                    const double p_any = tm_probability(k_tot, dt);
                    if (u < p_any) {
                        if (ts == TM_SENSITIVE) tr = TM_TRANSITION_TO_P;
                        else if (u < __ddiv_rn(__dmul_rn(p_any, exit_), k_tot))
                            tr = TM_TRANSITION_TO_S;
                        else if (u < __ddiv_rn(__dmul_rn(p_any, __dadd_rn(exit_, expand)), k_tot))
                            tr = TM_TRANSITION_TO_E;
                        else tr = TM_TRANSITION_TO_R;
                    }
                }
                /* division at r_max f_O2 f_state(start phenotype) f_signal (1 - block), the
                 * resistant cells and expanded persisters unblocked */
                double rate = tm_division_rate(o2, ts, params, state_table);
                const double f_signal =
                    __dadd_rn(__dadd_rn(1.0, __dmul_rn(params[TM_TP_HGF_GROWTH_GAIN], a_met)),
                              __dmul_rn(params[TM_TP_IGF1_GROWTH_GAIN], a_igf));
                rate = __dmul_rn(rate, f_signal);
                if (drugs)
                    rate = __dmul_rn(rate, __dadd_rn(1.0, ts == TM_RESISTANT || ts == TM_EXPANDED
                                                              ? -0.0 : -eff.block_division));
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
                /* memory of every surviving cell: with drugs relaxed towards the effect E; without,
                 * numpy relaxes only cells with memory > 0, by its host constant exp(-k dt) */
                if (drugs) {
                    const double a = __dmul_rn(params[TM_TP_MEMORY_GAIN_PER_MIN], E);
                    const double b = __dmul_rn(params[TM_TP_MEMORY_DECAY_PER_MIN],
                                               __dadd_rn(1.0, -E));
                    const double kk = __dadd_rn(a, b);
                    memory[s] = tm_relax_memory(m, a, kk, tm_decay_factor(kk, dt));
                } else if (memory[s] > 0.0f) {
                    memory[s] = tm_relax_memory(m, 0.0, params[TM_TP_NODRUG_MEMORY_K_PER_MIN],
                                                params[TM_TP_NODRUG_MEMORY_FACTOR]);
                }
                /* time in P: += dt (float32) for cells that were P or E, then 0 on entry into P
                 * and on reversion (numpy zeroes to_P and to_S after the +=; to_R and to_E keep
                 * it) */
                if (ts == TM_PERSISTER || ts == TM_EXPANDED)
                    time_in_P[s] = __fadd_rn(time_in_P[s], (float)dt);
                if (tr == TM_TRANSITION_TO_P || tr == TM_TRANSITION_TO_S) time_in_P[s] = 0.0f;
                if (tr == TM_TRANSITION_TO_P) tumor_state[s] = TM_PERSISTER;
                else if (tr == TM_TRANSITION_TO_S) tumor_state[s] = TM_SENSITIVE;
                else if (tr == TM_TRANSITION_TO_R) tumor_state[s] = TM_RESISTANT;
                else if (tr == TM_TRANSITION_TO_E) tumor_state[s] = TM_EXPANDED;
                act = (u8)(act | (tr << TM_TRANSITION_SHIFT));
            }
        }
        action[s] = act;
        target[s] = tgt;
    }
}

/* tm_tumor_apply: apply the decisions of tm_tumor_decide. Twin of the "apply" half of
 * TumorRules.apply (the sets cleared, dying, killed and targets are disjoint).
 *   kind               (n_sites,) uint8, updated in place
 *   tumor_state, memory, time_in_P  (n_sites,) as left by tm_tumor_decide; a daughter's voxel gets
 *                      its mother's
 *   action             (n_sites,) uint8: TM_ACT_BORN is written at voxels that get a daughter
 *   target, claims     from tm_tumor_decide (read only here)
 * One work item per site t, and it writes only site t. A claimed voxel t (empty at the start)
 * reads key = claims[t], whose low 32 bits are the winner s; s won iff target[s] == t. That also
 * covers the key 0 (site 0 with priority 0): an unclaimed voxel also reads 0, but then
 * target[0] != t. Reads of other sites touch only data no thread writes in this launch (target;
 * tumor_state, memory and time_in_P of a dividing cell: only voxels empty at the start of the step
 * are written, and a dividing cell was a tumor cell), so there is no race. */
TM_KERNEL void tm_tumor_apply(long long n_sites, u8* __restrict__ kind,
                              u8* __restrict__ tumor_state,
                              float* __restrict__ memory,
                              float* __restrict__ time_in_P,
                              u8* __restrict__ action,
                              const u32* __restrict__ target,
                              const u64* __restrict__ claims) {
    TM_FOR_EACH(t, n_sites) {
        const u8 ev = action[t] & TM_ACT_EVENT_MASK;
        if (ev == TM_ACT_CLEAR || ev == TM_ACT_KILLED_S || ev == TM_ACT_KILLED_P ||
            ev == TM_ACT_KILLED_R) {
            kind[t] = TM_EMPTY;
        } else if (ev == TM_ACT_NECROSIS) {
            kind[t] = TM_NECROTIC;
        } else if (kind[t] == TM_EMPTY) {
            const u64 s = claims[t] & 0xFFFFFFFFull;
            if (target[s] == (u32)t) {
                kind[t] = TM_TUMOR;
                tumor_state[t] = tumor_state[s];
                memory[t] = memory[s];
                time_in_P[t] = time_in_P[s];
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
