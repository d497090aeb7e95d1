"""The tumor rules on the kernels (``kernels/tumor.cu``): :class:`KernelTumorRules`, the twin of
:class:`tmesim.steps.tumor.TumorRules` (same constructor and ``apply`` signature plus the launcher
to run on, same result bit for bit), and the tables that configure the kernels from the scenario:
:func:`tumor_param_values` (the ``TM_TP_*`` parameter vector) and :func:`tumor_effect_table`
(one row per drug effect).

Three launches per step (decide, apply, finish; see the file comment of ``tumor.cu``) on the
launcher's arrays (numpy with :class:`tmesim.launch.PortableLauncher`, cupy with
:class:`tmesim.launch.CupyLauncher`), then, when the push rule is on (``[tumor.mechanics]``), the
push launches of :class:`tmesim.steps.mechanics_kernel.KernelPushing` on the lattice they left.
Counts come from one bincount of the action byte (event in bits 0-3, a blocked mother's push
outcome being an event of its own, phenotype transition in bits 4-6): no floating-point atomics.
"""

from __future__ import annotations

import math

import numpy as np

from .. import codes
from ..drugs import KILL_TARGETS
from ..grid import Grid
from ..launch import KernelSourceError, check_arrays, grid3, kernel_defines, offsets3, param_vector
from ..scenario import EFFECT_TARGETS
from .mechanics_kernel import EVENT_MASK, OUTCOMES, KernelPushing
from .tumor import RuleCounts, TumorRules, probability

#: events in the low 4 bits of the tumor kernels' action byte (kernels/tumor.cu TM_ACT_*); the
#: push rule writes a blocked mother's outcome over ``blocked`` (push_won, push_lost, push_far:
#: tmesim.steps.mechanics_kernel.OUTCOMES)
ACTIONS = {
    "none": 0,
    "clear": 1,
    "necrosis": 2,
    "claim": 3,
    "blocked": 4,
    "born": 5,
    "killed_S": 6,
    "killed_P": 7,  # P or E
    "killed_R": 8,
    **{f"push_{k}": v for k, v in OUTCOMES.items()},
}
#: phenotype transitions in bits 4-6 of the action byte (TM_TRANSITION_*, shifted by
#: TRANSITION_SHIFT); to_S and to_R from P or E, to_E from P
TRANSITIONS = {"none": 0, "to_P": 1, "to_S": 2, "to_R": 3, "to_E": 4}
TRANSITION_SHIFT = 4


def tumor_param_values(params, dt_min: float, ref: TumorRules) -> dict[str, float]:
    """The float64 parameter vector of the tumor kernels by ``TM_TP_*`` name (without the
    prefix), from the scenario's [tumor] table, the agent step (min) and a numpy ``TumorRules``
    built from the same arguments. Constants that numpy computes once for every cell (the
    clearance probability, the no-drug memory decay) come from the same numpy expressions."""
    p, tr, sg = params, params.transitions, params.signalling
    # TumorRules.relax_memory at E = 0.0, as its no-drug path calls it (Python floats)
    a0 = tr.memory_gain_per_h / 60.0 * 0.0
    b0 = tr.memory_decay_per_h / 60.0 * (1.0 - 0.0)
    k0 = a0 + b0
    return {
        "DT_MIN": dt_min,
        "R_MAX_PER_MIN": ref.r_max,
        "DIVISION_CAP": math.log(2.0),
        "PROLIF_LO_MMHG": p.proliferation_threshold_mmHg,
        "PROLIF_SPAN_MMHG": p.proliferation_saturation_mmHg - p.proliferation_threshold_mmHg,
        "NECROSIS_ON": float(p.necrosis_max_rate_per_h > 0),
        "NECROSIS_THRESHOLD_MMHG": p.necrosis_threshold_mmHg,
        "NECROSIS_SPAN_MMHG": p.necrosis_threshold_mmHg - p.necrosis_max_mmHg,
        "NECROSIS_STEP": float(p.necrosis_threshold_mmHg <= p.necrosis_max_mmHg),
        "NECROSIS_TOP_PER_MIN": p.necrosis_max_rate_per_h / 60.0,
        # the same numpy call as TumorRules.apply: identical by construction
        "CLEAR_PROBABILITY": float(probability(p.necrotic_clearance_per_h / 60.0, dt_min))
        if p.necrotic_clearance_per_h > 0
        else 0.0,
        "PER_MIN": 1.0 / 60.0,
        "HYPOXIC_MMHG": p.hypoxic_threshold_mmHg,
        "HYPOXIA_SPAN_MMHG": p.hypoxic_threshold_mmHg - p.necrosis_threshold_mmHg,
        "HYPOXIA_STEP": float(p.hypoxic_threshold_mmHg <= p.necrosis_threshold_mmHg),
        "PERSISTER_TOLERANCE": p.persister_tolerance,
        "DEATH_PER_H": p.death_per_h,
        "DRUGS_ON": float(ref.effects is not None),
        "ENTRY_BASAL_ON": float(bool(tr.pre_existing)),
        "ENTRY_BASAL_PER_H": tr.entry_basal_per_h,
        "ENTRY_INDUCED_ON": float(bool(tr.drug_induced)),
        "ENTRY_INDUCED_PER_H": tr.entry_induced_per_h,
        "HYPOXIA_WEIGHT": tr.hypoxia_weight,
        "EXIT_PER_H": tr.exit_per_h,
        "EXPANDED_EXIT_PER_H": tr.expanded_exit_per_h,
        "EXPANSION_PER_H": tr.expansion_per_h,
        "EXPANSION_RAMP_MIN": tr.expansion_ramp_h * 60.0,
        "EXPANSION_DELAY_MIN": tr.expansion_delay_h * 60.0,
        "MEMORY_EXIT_SLOWING": tr.memory_exit_slowing,
        "HYPOXIA_EXIT_SLOWING": tr.hypoxia_exit_slowing,
        "RESISTANCE_PER_H": tr.resistance_per_h,
        "ADAPTIVE_MUTABILITY": tr.adaptive_mutability,
        "MUTABILITY_RAMP_MIN": tr.mutability_ramp_h * 60.0,
        "MEMORY_GAIN_PER_MIN": tr.memory_gain_per_h / 60.0,
        "MEMORY_DECAY_PER_MIN": tr.memory_decay_per_h / 60.0,
        "NODRUG_MEMORY_K_PER_MIN": k0,
        "NODRUG_MEMORY_FACTOR": float(np.exp(-k0 * dt_min)),
        "HGF_HALF_MAX": sg.hgf_half_max_ng_per_mL,
        "IGF1_HALF_MAX": sg.igf1_half_max_ng_per_mL,
        "MET_PROTECTION_MAX": sg.met_protection_max,
        "IGF1R_PROTECTION_MAX": sg.igf1r_protection_max,
        "HGF_GROWTH_GAIN": sg.hgf_growth_gain,
        "IGF1_GROWTH_GAIN": sg.igf1_growth_gain,
        "ENTRY_WEIGHT": sg.entry_weight,
    }


def tumor_effect_table(drugs) -> np.ndarray:
    """(n_effects, TM_N_EFFECT_COLUMNS) float64 rows (drug, target, emax, ec50_uM, hill, coef), one
    per (drug, effect) in the order of :meth:`tmesim.drugs.Effects.at` (the order of its sums and
    Bliss products); coef is rate_per_h for kill targets, fold for exit_speedup, else 0."""
    cols = kernel_defines("tumor.cu", "TM_EF_")
    code = {k.lower(): v for k, v in kernel_defines("tumor.cu", "TM_EFFECT_").items()}
    if set(code) != {t.lower() for t in EFFECT_TARGETS}:
        raise KernelSourceError(
            f"kernels/tumor.cu effect targets {sorted(code)} and "
            f"tmesim.scenario.EFFECT_TARGETS {sorted(EFFECT_TARGETS)} are "
            "out of sync"
        )
    n_cols = kernel_defines("tumor.cu", "TM_N_")["EFFECT_COLUMNS"]
    rows = []
    for i, d in enumerate(drugs):
        for tgt, e in d.effects.items():
            row = np.zeros(n_cols)
            row[cols["DRUG"]] = i
            row[cols["TARGET"]] = code[tgt.lower()]
            row[cols["EMAX"]] = e.emax
            row[cols["EC50_UM"]] = e.ec50_uM
            row[cols["HILL"]] = e.hill
            row[cols["COEF"]] = (
                e.rate_per_h if tgt in KILL_TARGETS else e.fold if tgt == "exit_speedup" else 0.0
            )
            rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(len(rows), n_cols)


class KernelTumorRules:
    """Tumor rules on the kernels: twin of :class:`tmesim.steps.tumor.TumorRules`, same
    constructor and ``apply`` signature, same result bit for bit (tests/steps/test_tumor_kernel.py;
    see kernels/decisions.cuh for the rare last-ulp exceptions of per-cell transcendental math).

    The numbers that configure the kernels come from a numpy ``TumorRules`` built from the same
    arguments (its ``r_max``, per-state factors and effects), so the two cannot drift apart
    silently; the parameter vector's layout is read from ``kernels/tumor.cu``'s ``TM_TP_*``
    defines, the effect table's from ``TM_EF_*`` / ``TM_EFFECT_*``.

    Args:
        params, grid, seed, dt_min, drugs: as TumorRules.
        launcher: where to run (``backend.launcher()``); the arrays given to ``apply`` are
            ``launcher.xp`` arrays.
    """

    def __init__(self, params, grid: Grid, seed: int, dt_min: float, drugs=(), *, launcher):
        self.L = L = launcher
        xp = L.xp
        self.ref = ref = TumorRules(params, grid, seed, dt_min, drugs)
        self.p, self.grid, self.seed, self.dt = params, grid, seed, dt_min
        self.n_drugs = len(drugs)
        if grid.n_sites >= 2**32 - 1:
            raise ValueError("the claim keys hold a site in 32 bits: at most 2**32 - 2 sites")
        vec = param_vector(
            tumor_param_values(params, dt_min, ref),
            "tumor.cu",
            "TM_TP_",
            "TUMOR_PARAMS",
            driver=__name__,
        )
        tables = kernel_defines("tumor.cu", "TM_TS_")
        n_tab = kernel_defines("tumor.cu", "TM_N_")["STATE_TABLES"]
        n_states = kernel_defines("common.cuh", "TM_N_")["STATES"]
        if n_states != len(codes.TUMOR_STATE_NAMES):
            raise KernelSourceError(
                f"kernels/common.cuh TM_N_STATES = {n_states}, but tmesim.codes has "
                f"{len(codes.TUMOR_STATE_NAMES)} tumor states"
            )
        st = np.zeros((n_tab, n_states))
        st[tables["DIVISION"]] = ref.state_factor
        offs = offsets3(grid.offsets)
        eff = tumor_effect_table(drugs)
        self.params_host, self.state_table_host, self.effects_host = vec, st, eff
        self.params = xp.asarray(vec)
        self.state_table = xp.asarray(st.reshape(-1))
        # a kernel never reads an absent array; a 1-element stand-in keeps the pointer valid
        self.effects = xp.asarray(eff.reshape(-1) if eff.size else np.zeros(1))
        self.n_effects = np.int32(len(eff))
        self.offsets = xp.asarray(offs.reshape(-1))
        self.n_offsets = np.int32(len(offs))
        self._absent = xp.zeros(1, dtype=xp.float32)
        self._has = kernel_defines("tumor.cu", "TM_HAS_")  # bits of the `fields` argument
        n_sites = grid.n_sites
        # scratch that the stroma kernels may share: claims (all 0 between steps) and action
        self.claims = xp.zeros(n_sites, dtype=xp.uint64)
        self.action = xp.zeros(n_sites, dtype=xp.uint8)
        self.target = xp.zeros(n_sites, dtype=xp.uint32)
        # the push rule (its distance buffer exists only when it is on)
        self.pushing = KernelPushing(ref.pushing, launcher=L)
        self.last_division = (np.empty(0, np.int64), np.empty(0, np.int64))

    def _field(self, a, name: str, shape):
        """A float32 input as the kernels read it, or the stand-in for None. float32 only: a
        cast here would feed the kernels other numbers than numpy's."""
        if a is None:
            return self._absent
        xp = self.L.xp
        a = xp.asarray(a)
        if a.dtype != np.float32 or a.shape != shape:
            raise ValueError(f"{name}: expected float32 of shape {shape}, got {a.dtype} {a.shape}")
        return xp.ascontiguousarray(a)

    def apply(
        self,
        kind,
        tumor_state,
        oxygen,
        step: int,
        memory=None,
        time_in_P=None,
        hgf=None,
        igf1=None,
        drug_conc=None,
    ) -> RuleCounts:
        """One agent step of the rules, in place: the arguments of TumorRules.apply, as xp arrays.

        Args:
            kind, tumor_state: (n_sites,) uint8, C-contiguous, updated in place.
            oxygen: (n_sites,) float32 mmHg.
            step: the agent step (a counter of the random numbers).
            memory, time_in_P: (n_sites,) float32 (time in min), updated in place; None: zeros,
                not kept.
            hgf, igf1: (n_sites,) float32 ng/mL, or None without those fields.
            drug_conc: (n_drugs, n_sites) float32 uM (required when the rules have drugs).
        """
        L, xp = self.L, self.L.xp
        n = self.grid.n_sites
        check_arrays(kind, tumor_state, dtype=np.uint8)
        oxygen = xp.ascontiguousarray(xp.asarray(oxygen, dtype=xp.float32))
        if memory is None:
            memory = xp.zeros(n, dtype=xp.float32)
        if time_in_P is None:
            time_in_P = xp.zeros(n, dtype=xp.float32)
        check_arrays(memory, time_in_P, dtype=np.float32)
        fields = (self._has["HGF"] if hgf is not None else 0) | (
            self._has["IGF1"] if igf1 is not None else 0
        )
        hgf = self._field(hgf, "hgf", (n,))
        igf1 = self._field(igf1, "igf1", (n,))
        if self.n_drugs:
            if drug_conc is None:
                raise ValueError("drug_conc (n_drugs, n_sites) is required: the rules have drugs")
            conc = self._field(drug_conc, "drug_conc", (self.n_drugs, n))
        else:
            conc = self._absent  # numpy ignores drug_conc without drugs
        nz, ny, nx, _ = grid3(self.grid.shape)
        L(
            "tm_tumor_decide",
            n,
            np.int64(n),
            nz,
            ny,
            nx,
            kind,
            tumor_state,
            memory,
            time_in_P,
            oxygen,
            hgf,
            igf1,
            np.int32(fields),
            conc,
            self.effects,
            self.n_effects,
            self.offsets,
            self.n_offsets,
            self.params,
            self.state_table,
            np.uint64(self.seed),
            np.uint64(step),
            self.action,
            self.target,
            self.claims,
        )
        L(
            "tm_tumor_apply",
            n,
            np.int64(n),
            kind,
            tumor_state,
            memory,
            time_in_P,
            self.action,
            self.target,
            self.claims,
        )
        L("tm_tumor_finish", n, np.int64(n), self.action, self.target, self.claims)
        push = self.pushing
        if push.on:
            # blocked mothers push on the lattice these launches left (tmesim.steps.mechanics)
            push.apply(
                kind, tumor_state, memory, time_in_P, self.action, self.target, self.claims, step
            )
        counts = xp.bincount(self.action, minlength=256)
        c = np.asarray(counts.get() if hasattr(counts, "get") else counts, dtype=np.int64)
        # [transition (bits 4-7), event (bits 0-3)]
        c = c.reshape(256 >> TRANSITION_SHIFT, 1 << TRANSITION_SHIFT)
        ev, tr = c.sum(axis=0), c.sum(axis=1)
        targets = xp.flatnonzero(self.action == ACTIONS["born"])
        sources = self.target[targets].astype(xp.int64)
        targets = targets.astype(xp.int64)
        pushes = int(ev[ACTIONS["push_won"]])
        if pushes:
            # a winning mother's daughter is at target[mother] (tm_push_apply)
            won = xp.flatnonzero((self.action & EVENT_MASK) == ACTIONS["push_won"])
            sources = xp.concatenate([sources, won.astype(xp.int64)])
            targets = xp.concatenate([targets, self.target[won].astype(xp.int64)])
        order = xp.argsort(sources)  # numpy lists divisions by mother, ascending
        self.last_division = (sources[order], targets[order])
        killed_S, killed_P = int(ev[ACTIONS["killed_S"]]), int(ev[ACTIONS["killed_P"]])
        born = int(ev[ACTIONS["born"]])
        lost = int(ev[ACTIONS["claim"]]) - born
        blocked = int(ev[ACTIONS["blocked"]])
        if push.on:
            # TumorRules.apply: blocked = far; lost paths are conflicts, pushes are divisions
            blocked = int(ev[ACTIONS["push_far"]])
            lost += int(ev[ACTIONS["push_lost"]])
        return RuleCounts(
            divisions=born + pushes,
            necroses=int(ev[ACTIONS["necrosis"]]),
            cleared=int(ev[ACTIONS["clear"]]),
            blocked=blocked,
            lost_conflicts=lost,
            pushes=pushes,
            killed=killed_S + killed_P + int(ev[ACTIONS["killed_R"]]),
            killed_S=killed_S,
            killed_P=killed_P,
            entered_P=int(tr[TRANSITIONS["to_P"]]),
            exited_P=int(tr[TRANSITIONS["to_S"]]),
            became_R=int(tr[TRANSITIONS["to_R"]]),
            became_E=int(tr[TRANSITIONS["to_E"]]),
        )
