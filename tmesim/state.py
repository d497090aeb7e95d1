"""The simulation state: a struct of flat arrays over lattice sites.

Every per-voxel quantity is one flat array of length ``n_sites`` (C order over the grid), so a
CUDA kernel sees the same layout with one thread per site. Bytes per voxel: 2 + 4 x n_fields
(kind and tumor state as uint8, each field float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import Grid


@dataclass
class State:
    """All that changes during a run.

    Attributes:
        kind: (n_sites,) uint8, occupant kind (tmesim.codes).
        tumor_state: (n_sites,) uint8, S/P/R of tumor cells, NONE elsewhere.
        fields: (n_fields, n_sites) float32, concentrations in each field's units.
        step: agent steps taken.
        time_min: simulated time in minutes.
    """
    kind: np.ndarray
    tumor_state: np.ndarray
    fields: np.ndarray
    step: int = 0
    time_min: float = 0.0

    @classmethod
    def empty(cls, grid: Grid, n_fields: int, xp=np) -> "State":
        n = grid.n_sites
        return cls(kind=xp.zeros(n, dtype=xp.uint8),
                   tumor_state=xp.zeros(n, dtype=xp.uint8),
                   fields=xp.zeros((n_fields, n), dtype=xp.float32))

    @staticmethod
    def bytes_per_voxel(n_fields: int) -> int:
        return 2 + 4 * n_fields

    def copy(self) -> "State":
        return State(self.kind.copy(), self.tumor_state.copy(), self.fields.copy(),
                     self.step, self.time_min)
