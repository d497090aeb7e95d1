"""Tumor-cell rules on the lattice: division, necrosis, clearance, drug kill and the phenotype
transitions of drug-tolerant persisters (MODEL.md section 3).

Every decision of a step is taken from the state at the start of the step and from the
counter-based generator at (seed, step, site, stream), then all changes are applied at once. The
result therefore depends on nothing but the state and the seed: not on the order of cells, on
threads, or on a restart. Loss events (necrosis, clearance) fire with probability
``1 - exp(-rate * dt)``, the exact survival of a first-order process (MODEL.md section 3).
Division fires with ``exp(r dt) - 1`` instead: a mother and her daughter cannot both divide within
one step, so the mean population grows by (1 + p) per step, and only this p makes that equal to the
continuous-time growth exp(r dt). With MODEL.md's 1 - exp(-r dt) the realised doubling time would
be longer by a fraction r dt (0.29 % at 24 h and 6 min), which the growth test detects.

Division: rate ``r = ln2 / doubling_time * f_O2 * f_state``, with ``f_O2`` zero at or below the
proliferation threshold, rising linearly to one at saturation (PhysiCell's standard O2-based
model), and ``f_state`` one for sensitive cells (persister and resistant factors arrive with the
persister biology). The daughter goes to a uniformly chosen empty neighbour. When several cells
choose the same voxel, the one with the largest key ``(32-bit random priority << 32) | source
site`` wins -- the rule a CUDA ``atomicMax`` on 64-bit keys applies, mirrored here by
``np.maximum.at``; the losers do not divide this step. A cell with no empty neighbour pushes a
chain of cells toward free space within the push reach, after the rest of the step has been
applied (tmesim.steps.mechanics, the scenario's [tumor.mechanics]); with a reach of 0 it does not
divide (contact inhibition).

Necrosis: rate rising linearly from zero at the necrosis threshold to its maximum at
``necrosis_max_mmHg`` and below. Necrotic voxels become empty at the clearance rate; a voxel
emptied in a step can receive a daughter from the next step on.

Persister biology (the rates are written out in tmesim.scenario.TransitionConfig and
SignallingConfig). One step, for every tumor cell, from the state at the start of the step and
this step's fields:
1. necrosis (stream NECROSIS); a cell that does not become necrotic may be killed by drugs
   or die of basal turnover (one loss event, stream KILL): sensitive cells at
   kill_S (1 - protection) + death, persisters (P and E) at kill_S persister_tolerance + kill_P
   + death, resistant cells at death; killed cells leave an empty voxel (apoptotic cells are
   cleared within the step), which a neighbour may fill from the next step on. The counts killed,
   killed_S and killed_P (P and E) include turnover deaths.
2. survivors change phenotype (stream TRANSITION): S -> P; P -> S, P -> E or P -> R; E -> S or
   E -> R, competing (one draw decides whether any happens, with 1 - exp(-k_tot dt), k_tot the
   sum of the cell's rates, and which, splitting [0, p_any) in proportion to the rates in the
   order exit, expansion, resistance). E, the drug-tolerant expanded persister (DTEP), divides
   at expanded_cycle_factor of the sensitive rate through division-blocking drugs; its
   daughters are E.
3. survivors divide (stream DIVIDE) at r_max f_O2 f_state f_signal, f_state by the phenotype at
   the start of the step; the daughter copies the mother's phenotype, memory and time in P after
   this step's transition and memory update.
4. memory relaxes exactly over the step towards memory_gain E / (memory_gain E + memory_decay
   (1 - E)); time in P grows by dt for cells that were and stay persisters (P or E), restarts at
   0 on entry into P and on reversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import codes, rng
from ..drugs import Effects
from ..grid import Grid
from ..scenario import TumorConfig
from .mechanics import Pushing


@dataclass
class RuleCounts:
    """What one application of the rules did (numbers of cells)."""

    divisions: int = 0
    necroses: int = 0
    cleared: int = 0
    blocked: int = 0  # cells that would divide but had no empty neighbour (nor, with pushing,
    # free space within the push reach)
    lost_conflicts: int = 0  # cells that chose a voxel or push path another cell won
    pushes: int = 0  # divisions made by pushing (included in divisions)
    killed: int = 0  # cells killed by drugs
    killed_S: int = 0
    killed_P: int = 0
    entered_P: int = 0  # S -> P
    exited_P: int = 0  # P or E -> S
    became_R: int = 0  # P or E -> R
    became_E: int = 0  # P -> E (a persister resumes cycling in drug: DTEP founders)


def oxygen_factor(o2: np.ndarray, p: TumorConfig) -> np.ndarray:
    """f_O2 in [0, 1]: 0 at or below the proliferation threshold, 1 at or above saturation."""
    lo, hi = p.proliferation_threshold_mmHg, p.proliferation_saturation_mmHg
    return np.clip((o2 - lo) / (hi - lo), 0.0, 1.0)


def necrosis_rate_per_min(o2: np.ndarray, p: TumorConfig) -> np.ndarray:
    """Necrosis rate (1/min): 0 at or above the threshold, maximal at or below necrosis_max_mmHg."""
    top = p.necrosis_max_rate_per_h / 60.0
    thr, full = p.necrosis_threshold_mmHg, p.necrosis_max_mmHg
    if thr <= full:
        return np.where(o2 < thr, top, 0.0)
    return top * np.clip((thr - o2) / (thr - full), 0.0, 1.0)


def probability(rate_per_min, dt_min: float):
    """Probability that an event of this rate happens within one step: 1 - exp(-rate dt)."""
    return -np.expm1(-np.asarray(rate_per_min, dtype=np.float64) * dt_min)


def division_probability(rate_per_min, dt_min: float):
    """Probability of dividing within one step: exp(r dt) - 1, capped at 1 (see the module doc)."""
    x = np.minimum(np.asarray(rate_per_min, dtype=np.float64) * dt_min, math.log(2.0))
    return np.expm1(x)


def choose_target(words: np.ndarray, empty: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """The k-th empty neighbour, k = (high 32 bits of word * n_empty) >> 32 (exact, unbiased to
    2**-32). Rows of ``empty`` (n, k) must have at least one True."""
    n_empty = empty.sum(axis=1).astype(np.uint64)
    k = ((words >> np.uint64(32)) * n_empty) >> np.uint64(32)
    # position of the (k+1)-th True in each row
    rank = np.cumsum(empty, axis=1) - 1
    pick = empty & (rank == k[:, None].astype(np.int64))
    col = np.argmax(pick, axis=1)
    return nbr[np.arange(len(nbr)), col]


def resolve_claims(
    claims: np.ndarray, sources: np.ndarray, targets: np.ndarray, words: np.ndarray
) -> np.ndarray:
    """Which claims win: each target voxel goes to the largest key (low 32 bits of the source's
    random word << 32 | source site), the rule a CUDA 64-bit atomicMax applies.

    ``claims`` is a (n_sites,) uint64 scratch array of zeros, left zeroed. Returns a bool mask
    over the claims."""
    keys = ((words & np.uint64(0xFFFFFFFF)) << np.uint64(32)) | sources.astype(np.uint64)
    np.maximum.at(claims, targets, keys)
    won = claims[targets] == keys
    claims[targets] = 0
    return won


class TumorRules:
    """Applies the tumor rules to the state arrays in place.

    Args:
        params: the scenario's [tumor] table.
        grid: the lattice.
        seed: the run's seed.
        dt_min: agent step in minutes.
        drugs: the scenario's drugs (for their effects); () for none.
    """

    def __init__(self, params: TumorConfig, grid: Grid, seed: int, dt_min: float, drugs=()):
        self.p = params
        self.grid = grid
        self.seed = seed
        self.dt = dt_min
        self.r_max = math.log(2.0) / (params.doubling_time_h * 60.0)  # 1/min
        # division factor by tumor state (none, S, P, R, E)
        self.state_factor = np.array(
            [
                0.0,
                1.0,
                params.persister_cycle_factor,
                1.0 - params.resistance_cost,
                params.expanded_cycle_factor,
            ]
        )
        self.effects = Effects(drugs) if drugs else None
        self.n_drugs = len(drugs)
        self._claim_scratch: np.ndarray | None = None
        mech = params.mechanics
        self.pushing = Pushing(mech.push_reach_um, mech.pushable, grid, seed)
        self.last_division = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))

    @property
    def _claims(self) -> np.ndarray:
        """(n_sites,) uint64 claim scratch, all 0 between steps. Made on first use: the kernel
        rules build a TumorRules for its parameters only, and 8 bytes per voxel on the host
        would be 8.6 GB at 1024^3."""
        if self._claim_scratch is None:
            self._claim_scratch = np.zeros(self.grid.n_sites, dtype=np.uint64)
        return self._claim_scratch

    # ------------------------------------------------------------------ per-cell quantities
    def hypoxia_level(self, o2: np.ndarray) -> np.ndarray:
        """h in [0, 1]: 0 at or above the hypoxic threshold, 1 at or below the necrosis one."""
        hi, lo = self.p.hypoxic_threshold_mmHg, self.p.necrosis_threshold_mmHg
        if hi <= lo:
            return (np.asarray(o2) < hi).astype(np.float64)
        return np.clip((hi - np.asarray(o2, dtype=np.float64)) / (hi - lo), 0.0, 1.0)

    def receptor_activation(self, hgf, igf1, eff):
        """MET and IGF-1R activation in [0, 1] after inhibitors: a_L (1 - E_cancel) (arrays, or
        the scalar 0 without the ligand's field)."""
        sg = self.p.signalling
        a_met = 0.0 if hgf is None else hgf.astype(np.float64) / (hgf + sg.hgf_half_max_ng_per_mL)
        a_igf = (
            0.0 if igf1 is None else igf1.astype(np.float64) / (igf1 + sg.igf1_half_max_ng_per_mL)
        )
        return a_met * (1.0 - eff["cancel_met"]), a_igf * (1.0 - eff["cancel_igf1r"])

    def protection(self, a_met, a_igf):
        """Fraction of the kill of sensitive cells that survival signalling removes."""
        sg = self.p.signalling
        return 1.0 - (1.0 - sg.met_protection_max * a_met) * (1.0 - sg.igf1r_protection_max * a_igf)

    #: the drug effects without a drug (read only)
    _NO_DRUG: ClassVar[dict[str, float]] = {
        k: 0.0
        for k in (
            "kill_S",
            "kill_P",
            "exit_speedup",
            "block_entry",
            "block_division",
            "cancel_met",
            "cancel_igf1r",
            "target",
        )
    }

    def rates_per_min(self, ts, o2, memory, time_in_P, hgf, igf1, conc):
        """Every rate of the rules for cells with phenotype ``ts`` (1/min, float64 arrays).

        Returns a dict: division, kill, entry (S -> P), exit (P or E -> S), expansion (P -> E),
        resistance (P or E -> R), and
        the targeted-drug effect E_target (for the memory). Terms that cannot matter (no drugs,
        no ligand fields, no persisters) are skipped as scalars: the values are the same."""
        p, tr = self.p, self.p.transitions
        n = ts.size
        eff = self.effects.at(conc) if self.effects is not None else self._NO_DRUG
        h = self.hypoxia_level(o2)
        a_met, a_igf = self.receptor_activation(hgf, igf1, eff)
        sg = p.signalling
        f_signal = 1.0 + sg.hgf_growth_gain * a_met + sg.igf1_growth_gain * a_igf
        S, P = ts == codes.SENSITIVE, ts == codes.PERSISTER
        # P or E: the drug-tolerant states, alike in kill, reversion slowing and resistance
        tol = P | (ts == codes.EXPANDED)
        E = eff["target"]
        if self.effects is None:
            kill = np.zeros(n)
        else:
            kill = np.where(
                S,
                eff["kill_S"] * (1.0 - self.protection(a_met, a_igf)),
                np.where(tol, eff["kill_S"] * p.persister_tolerance + eff["kill_P"], 0.0),
            )
        if p.death_per_h > 0:
            # basal turnover competes with the drug kill as one loss event (stream KILL)
            kill = kill + p.death_per_h
        # (the arrays below are built only where a term exists: 0 + x and 1.0 * x are x exactly)
        induced = tr.drug_induced and self.effects is not None
        entry = np.zeros(n)
        if tr.pre_existing:
            entry = tr.entry_basal_per_h * (1.0 + tr.hypoxia_weight * h)
        if induced:
            m = memory.astype(np.float64)
            entry = entry + (
                tr.entry_induced_per_h
                * E
                * (1.0 + m + sg.entry_weight * (a_met + a_igf) + tr.hypoxia_weight * h)
            )
        entry *= (1.0 - eff["block_entry"]) * S
        per_min = 1.0 / 60.0
        # persister-only rates, on the persisters (P and E) alone
        exit_, res, expand = np.zeros(n), np.zeros(n), np.zeros(n)
        pi = np.flatnonzero(tol)
        if pi.size:

            def at(x):
                return x[pi] if isinstance(x, np.ndarray) else x

            Ep = at(E)
            m_p = memory[pi].astype(np.float64)
            is_P = P[pi]
            k_exit = np.where(is_P, tr.exit_per_h, tr.expanded_exit_per_h)
            # exit_speedup (KDM5/HDAC inhibition) undoes the persister state even under the
            # targeted drug, where the cell, sensitive again, is then killed
            exit_[pi] = (
                k_exit
                * (1.0 - Ep + at(eff["exit_speedup"]))
                / (1.0 + tr.memory_exit_slowing * m_p + tr.hypoxia_exit_slowing * h[pi])
            ) * per_min
            tip = time_in_P[pi].astype(np.float64)
            # a persister long in drug may resume cycling (DTEP): not in its first
            # expansion_delay_h as a persister, then the later the likelier
            onset = np.clip(
                (tip - tr.expansion_delay_h * 60.0) / (tr.expansion_ramp_h * 60.0), 0.0, 1.0
            )
            expand[pi] = np.where(is_P, tr.expansion_per_h * Ep * onset, 0.0) * per_min
            ramp = np.minimum(1.0, tip / (tr.mutability_ramp_h * 60.0))
            # stress-induced mutagenesis: raised under the targeted drug only, and more so the
            # longer the cell has been a persister (Russo et al. 2022)
            res[pi] = tr.resistance_per_h * (1.0 + tr.adaptive_mutability * ramp * Ep) * per_min
        division = self.r_max * oxygen_factor(o2, p) * self.state_factor[ts]
        if not (isinstance(f_signal, float) and f_signal == 1.0):
            division = division * f_signal
        if self.effects is not None:
            # resistant cells and expanded persisters divide through the drugs that stop the
            # others
            free = (ts == codes.RESISTANT) | (ts == codes.EXPANDED)
            division = division * (1.0 - np.where(free, 0.0, eff["block_division"]))
        return dict(
            division=division,
            kill=kill * per_min,
            entry=entry * per_min,
            exit=exit_,
            expansion=expand,
            resistance=res,
            target=np.broadcast_to(np.asarray(E, dtype=np.float64), (n,)),
        )

    def relax_memory(self, m: np.ndarray, E: np.ndarray | float) -> np.ndarray:
        """Memory after one step of dm/dt = g E (1 - m) - d (1 - E) m, solved exactly."""
        tr = self.p.transitions
        a = tr.memory_gain_per_h / 60.0 * E
        b = tr.memory_decay_per_h / 60.0 * (1.0 - E)
        k = a + b
        m_eq = np.where(k > 0, a / np.where(k > 0, k, 1.0), m)
        return (m_eq + (m - m_eq) * np.exp(-k * self.dt)).astype(np.float32)

    # ------------------------------------------------------------------ the step
    def apply(
        self,
        kind: np.ndarray,
        tumor_state: np.ndarray,
        oxygen: np.ndarray,
        step: int,
        memory: np.ndarray | None = None,
        time_in_P: np.ndarray | None = None,
        hgf: np.ndarray | None = None,
        igf1: np.ndarray | None = None,
        drug_conc: np.ndarray | None = None,
    ) -> RuleCounts:
        """One agent step of the rules, in place.

        Args:
            kind, tumor_state: (n_sites,) uint8 lattice arrays.
            oxygen: (n_sites,) mmHg after this step's fields.
            step: the agent step (a counter of the random numbers).
            memory, time_in_P: (n_sites,) float32 per-cell variables (None: zeros, not kept).
            hgf, igf1: (n_sites,) ng/mL, or None without those fields.
            drug_conc: (n_drugs, n_sites) free tissue concentrations in uM, or None.
        """
        out = RuleCounts()
        seed, dt = self.seed, self.dt
        n_sites = kind.shape[0]
        if memory is None:
            memory = np.zeros(n_sites, dtype=np.float32)
        if time_in_P is None:
            time_in_P = np.zeros(n_sites, dtype=np.float32)
        cells = np.flatnonzero(kind == codes.TUMOR)
        necrotic = np.flatnonzero(kind == codes.NECROTIC)

        # --- decisions, all from the state at the start of the step
        cleared = np.empty(0, dtype=np.int64)
        if necrotic.size and self.p.necrotic_clearance_per_h > 0:
            p_clear = probability(self.p.necrotic_clearance_per_h / 60.0, dt)
            cleared = necrotic[rng.uniform_at(seed, step, rng.CLEARANCE, necrotic) < p_clear]

        dying = killed = np.empty(0, dtype=np.int64)
        sources = targets = pushers = np.empty(0, dtype=np.int64)
        to_P = to_S = to_R = to_E = np.empty(0, dtype=np.int64)
        if cells.size:
            o2 = oxygen[cells]
            low = o2 < self.p.necrosis_threshold_mmHg
            if low.any() and self.p.necrosis_max_rate_per_h > 0:
                cand = cells[low]
                p_nec = probability(necrosis_rate_per_min(o2[low], self.p), dt)
                die = rng.uniform_at(seed, step, rng.NECROSIS, cand) < p_nec
                dying = cand[die]
                alive = np.ones(cells.size, dtype=bool)
                alive[np.flatnonzero(low)[die]] = False
                cells, o2 = cells[alive], o2[alive]
            ts = tumor_state[cells]
            conc = (
                drug_conc[:, cells]
                if drug_conc is not None and self.n_drugs
                else np.zeros((0, cells.size))
            )
            r = self.rates_per_min(
                ts,
                o2,
                memory[cells],
                time_in_P[cells],
                None if hgf is None else hgf[cells],
                None if igf1 is None else igf1[cells],
                conc,
            )
            # drug kill
            hit = r["kill"] > 0
            if hit.any():
                cand = cells[hit]
                die = rng.uniform_at(seed, step, rng.KILL, cand) < probability(r["kill"][hit], dt)
                killed = cand[die]
                out.killed_S = int((ts[hit][die] == codes.SENSITIVE).sum())
                out.killed_P = int(np.isin(ts[hit][die], codes.TOLERANT_STATES).sum())
                alive = np.ones(cells.size, dtype=bool)
                alive[np.flatnonzero(hit)[die]] = False
                cells, ts, o2 = cells[alive], ts[alive], o2[alive]
                r = {k: v[alive] for k, v in r.items()}
            # phenotype transitions: S -> P; P -> S, E or R; E -> S or R (competing)
            k_tot = r["entry"] + r["exit"] + r["expansion"] + r["resistance"]
            moving = k_tot > 0
            if moving.any():
                cand = cells[moving]
                kt = k_tot[moving]
                u = rng.uniform_at(seed, step, rng.TRANSITION, cand)
                p_any = probability(kt, dt)
                fire = u < p_any
                # which transition: split [0, p_any) in proportion to the rates
                is_S = ts[moving] == codes.SENSITIVE
                ex = r["exit"][moving]
                go_S = ~is_S & (u < p_any * ex / kt)
                go_E = ~is_S & ~go_S & (u < p_any * (ex + r["expansion"][moving]) / kt)
                to_P = cand[fire & is_S]
                to_S = cand[fire & go_S]
                to_E = cand[fire & go_E]
                to_R = cand[fire & ~is_S & ~go_S & ~go_E]
            rate = r["division"]
            grow = rate > 0
            cand = cells[grow]
            p_div = division_probability(rate[grow], dt)
            sources = cand[rng.uniform_at(seed, step, rng.DIVIDE, cand) < p_div]
            # memory of every surviving cell, time in P of persisters that stay persisters
            if self.effects is None:
                # no drug: pure relaxation, m exp(-decay dt), on the cells that have memory
                held = cells[memory[cells] > 0]
                if held.size:
                    memory[held] = self.relax_memory(memory[held].astype(np.float64), 0.0)
            else:
                memory[cells] = self.relax_memory(memory[cells].astype(np.float64), r["target"])
            stay_P = cells[(ts == codes.PERSISTER) | (ts == codes.EXPANDED)]
            time_in_P[stay_P] += np.float32(dt)
        if sources.size:
            nbr, inside = self.grid.neighbours(sources)
            empty = inside & (kind[nbr] == codes.EMPTY)
            has_room = empty.any(axis=1)
            out.blocked = int((~has_room).sum())
            pushers = sources[~has_room]
            sources, nbr, empty = sources[has_room], nbr[has_room], empty[has_room]
            words = rng.raw_at(seed, step, rng.DIRECTION, sources)
            targets = choose_target(words, empty, nbr)
            won = resolve_claims(self._claims, sources, targets, words)
            out.lost_conflicts = int((~won).sum())
            sources, targets = sources[won], targets[won]

        # --- apply: necrotic, tumor and empty voxels at the start are disjoint sets
        kind[cleared] = codes.EMPTY
        for gone, new_kind in ((dying, codes.NECROTIC), (killed, codes.EMPTY)):
            kind[gone] = new_kind
            tumor_state[gone] = codes.NONE
            memory[gone] = 0
            time_in_P[gone] = 0
        tumor_state[to_P] = codes.PERSISTER
        time_in_P[to_P] = 0
        tumor_state[to_S] = codes.SENSITIVE
        time_in_P[to_S] = 0
        tumor_state[to_R] = codes.RESISTANT
        tumor_state[to_E] = codes.EXPANDED
        kind[targets] = codes.TUMOR
        tumor_state[targets] = tumor_state[sources]
        memory[targets] = memory[sources]
        time_in_P[targets] = time_in_P[sources]
        out.divisions = int(targets.size)
        out.necroses = int(dying.size)
        out.killed = int(killed.size)
        out.cleared = int(cleared.size)
        out.entered_P = int(to_P.size)
        out.exited_P = int(to_S.size)
        out.became_R = int(to_R.size)
        out.became_E = int(to_E.size)
        if self.pushing.on and pushers.size:
            # blocked mothers push on the lattice these changes left (tmesim.steps.mechanics)
            pc, mothers, daughters = self.pushing.apply(
                kind, tumor_state, memory, time_in_P, pushers, step, self._claims
            )
            out.blocked = pc.far
            out.lost_conflicts += pc.lost
            out.divisions += pc.pushes
            out.pushes = pc.pushes
            order = np.argsort(np.concatenate([sources, mothers]), kind="stable")
            sources = np.concatenate([sources, mothers])[order]
            targets = np.concatenate([targets, daughters])[order]
        self.last_division = (sources, targets)
        return out
