"""Tumor-cell rules on the lattice: oxygen-dependent division, necrosis and clearance.

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
persister biology). The daughter goes to a uniformly chosen empty neighbour; a cell with no empty
neighbour does not divide (contact inhibition). When several cells choose the same voxel, the one
with the largest key ``(32-bit random priority << 32) | source site`` wins -- the rule a CUDA
``atomicMax`` on 64-bit keys applies, mirrored here by ``np.maximum.at``; the losers do not divide
this step.

Necrosis: rate rising linearly from zero at the necrosis threshold to its maximum at
``necrosis_max_mmHg`` and below. Necrotic voxels become empty at the clearance rate; a voxel
emptied in a step can receive a daughter from the next step on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import codes, rng
from ..grid import Grid
from ..scenario import TumorConfig


@dataclass
class RuleCounts:
    """What one application of the rules did (numbers of cells)."""
    divisions: int = 0
    necroses: int = 0
    cleared: int = 0
    blocked: int = 0      # cells that would divide but had no empty neighbour
    lost_conflicts: int = 0  # cells that chose a voxel another cell won


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


class TumorRules:
    """Applies division, necrosis and clearance to the state arrays in place.

    Args:
        params: the scenario's [tumor] table.
        grid: the lattice.
        seed: the run's seed.
        dt_min: agent step in minutes.
    """

    def __init__(self, params: TumorConfig, grid: Grid, seed: int, dt_min: float):
        self.p = params
        self.grid = grid
        self.seed = seed
        self.dt = dt_min
        self.r_max = math.log(2.0) / (params.doubling_time_h * 60.0)   # 1/min
        # division factor by tumor state (none, S, P, R): only S cells exist in this version
        self.state_factor = np.array([0.0, 1.0, 1.0, 1.0])
        self._claims = np.zeros(grid.n_sites, dtype=np.uint64)

    def apply(self, kind: np.ndarray, tumor_state: np.ndarray, oxygen: np.ndarray,
              step: int) -> RuleCounts:
        """One agent step of the rules. ``oxygen`` is (n_sites,) in mmHg after this step's fields."""
        out = RuleCounts()
        seed, dt = self.seed, self.dt
        cells = np.flatnonzero(kind == codes.TUMOR)
        necrotic = np.flatnonzero(kind == codes.NECROTIC)

        # --- decisions, all from the state at the start of the step
        cleared = np.empty(0, dtype=np.int64)
        if necrotic.size and self.p.necrotic_clearance_per_h > 0:
            p_clear = probability(self.p.necrotic_clearance_per_h / 60.0, dt)
            cleared = necrotic[rng.uniform_at(seed, step, rng.CLEARANCE, necrotic) < p_clear]

        dying = np.empty(0, dtype=np.int64)
        sources = targets = np.empty(0, dtype=np.int64)
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
            rate = self.r_max * oxygen_factor(o2, self.p) * self.state_factor[tumor_state[cells]]
            grow = rate > 0
            cand = cells[grow]
            p_div = division_probability(rate[grow], dt)
            sources = cand[rng.uniform_at(seed, step, rng.DIVIDE, cand) < p_div]
        if sources.size:
            nbr, inside = self.grid.neighbours(sources)
            empty = inside & (kind[nbr] == codes.EMPTY)
            has_room = empty.any(axis=1)
            out.blocked = int((~has_room).sum())
            sources, nbr, empty = sources[has_room], nbr[has_room], empty[has_room]
            words = rng.raw_at(seed, step, rng.DIRECTION, sources)
            targets = choose_target(words, empty, nbr)
            keys = ((words & np.uint64(0xFFFFFFFF)) << np.uint64(32)) | sources.astype(np.uint64)
            np.maximum.at(self._claims, targets, keys)
            won = self._claims[targets] == keys
            self._claims[targets] = 0
            out.lost_conflicts = int((~won).sum())
            sources, targets = sources[won], targets[won]

        # --- apply: the three sets of voxels are disjoint (necrotic, tumor, empty at the start)
        kind[cleared] = codes.EMPTY
        kind[dying] = codes.NECROTIC
        tumor_state[dying] = codes.NONE
        kind[targets] = codes.TUMOR
        tumor_state[targets] = tumor_state[sources]
        out.divisions = int(targets.size)
        out.necroses = int(dying.size)
        out.cleared = int(cleared.size)
        self.last_division = (sources, targets)
        return out
