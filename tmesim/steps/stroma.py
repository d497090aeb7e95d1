"""Stromal cells on the lattice: CAF and TAM motion, TAM chemotaxis, recruitment and turnover.

One step, from the lattice after this step's tumor rules (MODEL.md section 3, "Stromal cells"):
1. TAM turnover (stream STROMA_DEATH): a TAM leaves at 1 - exp(-death dt); its voxel empties.
2. Moves (stream MOVE): a CAF or surviving TAM tries to move with probability 1 - exp(-motility
   dt) into an empty neighbour. A TAM goes, with probability ``chemotaxis`` (stream CHEMOTAXIS), to
   the empty neighbour with the most recruitment signal (uniformly among ties), otherwise to a
   uniformly chosen one; a CAF always to a uniformly chosen one.
3. Recruitment (stream RECRUIT): each vessel voxel adds a TAM to a uniformly chosen empty
   neighbour at rate recruitment + gain s / (s + half_max), s the signal at the vessel.
Moves and recruitments claim their target voxels together; a voxel claimed by several goes to the
largest key (32-bit random priority << 32 | source site), as a CUDA atomicMax would decide, and
the others stay put. Only voxels empty at the start of the stroma step can be claimed, so a voxel
vacated by a mover is free from the next step on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import codes, rng
from ..grid import Grid
from .tumor import choose_target, probability, resolve_claims


@dataclass
class StromaCounts:
    caf_moves: int = 0
    tam_moves: int = 0
    tam_recruited: int = 0
    tam_died: int = 0
    lost_conflicts: int = 0


class StromaRules:
    """Applies the stromal rules to ``kind`` in place.

    Args:
        caf, tam: the scenario's [caf] and [tam] tables.
        grid: the lattice.
        seed: the run's seed.
        dt_min: agent step in minutes.
    """

    def __init__(self, caf, tam, grid: Grid, seed: int, dt_min: float):
        self.caf, self.tam = caf, tam
        self.grid = grid
        self.seed = seed
        self.dt = dt_min
        self._claims = np.zeros(grid.n_sites, dtype=np.uint64)

    def active(self, kind: np.ndarray) -> bool:
        """Whether the step can change anything (stromal cells present or TAMs recruited)."""
        return bool(
            self.tam.recruitment_per_h > 0
            or self.tam.recruitment_signal_gain > 0
            or np.any((kind == codes.CAF) | (kind == codes.TAM))
        )

    def apply(self, kind: np.ndarray, signal: np.ndarray | None, step: int) -> StromaCounts:
        """One agent step. ``signal``: (n_sites,) recruitment signal, or None without it."""
        out = StromaCounts()
        seed, dt = self.seed, self.dt
        tams = np.flatnonzero(kind == codes.TAM)
        cafs = np.flatnonzero(kind == codes.CAF)
        died = np.empty(0, dtype=np.int64)
        if tams.size and self.tam.death_per_h > 0:
            p = probability(self.tam.death_per_h / 60.0, dt)
            gone = rng.uniform_at(seed, step, rng.STROMA_DEATH, tams) < p
            died, tams = tams[gone], tams[~gone]

        # who tries to move (or recruit), and where
        movers, chemo = [], []
        for cells, rate, bias in (
            (cafs, self.caf.motility_per_h, 0.0),
            (tams, self.tam.motility_per_h, self.tam.chemotaxis),
        ):
            if cells.size and rate > 0:
                go = rng.uniform_at(seed, step, rng.MOVE, cells) < probability(rate / 60.0, dt)
                cells = cells[go]
                movers.append(cells)
                if bias > 0 and signal is not None:
                    chemo.append(rng.uniform_at(seed, step, rng.CHEMOTAXIS, cells) < bias)
                else:
                    chemo.append(np.zeros(cells.size, dtype=bool))
        vessels = np.empty(0, dtype=np.int64)
        gain = self.tam.recruitment_signal_gain if signal is not None else 0.0
        if self.tam.recruitment_per_h > 0 or gain > 0:
            vessels = np.flatnonzero(kind == codes.VESSEL)
            if vessels.size:
                rate = np.full(vessels.size, self.tam.recruitment_per_h)
                if gain > 0 and signal is not None:
                    s = signal[vessels].astype(np.float64)
                    rate = rate + gain * s / (s + self.tam.signal_half_max)
                p = probability(rate / 60.0, dt)
                vessels = vessels[rng.uniform_at(seed, step, rng.RECRUIT, vessels) < p]
        sources = (
            np.concatenate(movers + [vessels])
            if movers or vessels.size
            else np.empty(0, dtype=np.int64)
        )
        follow = (
            np.concatenate(chemo + [np.zeros(vessels.size, dtype=bool)])
            if sources.size
            else np.zeros(0, dtype=bool)
        )
        won_src = won_tgt = np.empty(0, dtype=np.int64)
        if sources.size:
            nbr, inside = self.grid.neighbours(sources)
            empty = inside & (kind[nbr] == codes.EMPTY)
            room = empty.any(axis=1)
            sources, nbr, empty, follow = sources[room], nbr[room], empty[room], follow[room]
            words = rng.raw_at(seed, step, rng.MOVE_DIRECTION, sources)
            targets = choose_target(words, empty, nbr)
            if follow.any() and signal is not None:
                # the empty neighbours with the most signal; ties are broken uniformly by the
                # same random word, else a gradient along an axis would also push sideways
                s = np.where(empty[follow], signal[nbr[follow]], -np.inf)
                best = s == s.max(axis=1, keepdims=True)
                targets[follow] = choose_target(words[follow], best, nbr[follow])
            won = resolve_claims(self._claims, sources, targets, words)
            out.lost_conflicts = int((~won).sum())
            won_src, won_tgt = sources[won], targets[won]

        # apply
        kind[died] = codes.EMPTY
        src_kind = kind[won_src]
        recruited = src_kind == codes.VESSEL
        kind[won_tgt] = np.where(recruited, codes.TAM, src_kind)
        kind[won_src[~recruited]] = codes.EMPTY
        out.tam_died = int(died.size)
        out.tam_recruited = int(recruited.sum())
        out.caf_moves = int((src_kind == codes.CAF).sum())
        out.tam_moves = int((src_kind == codes.TAM).sum())
        return out
