"""The simulation state: a struct of flat arrays over lattice sites, plus a few scalars.

Every per-voxel quantity is one flat array of length ``n_sites`` (C order over the grid), so a
CUDA kernel sees the same layout with one thread per site. Bytes per voxel: 10 + 4 x n_fields
(kind and tumor state as uint8; memory and time in P as float32; each field float32).

Where the arrays live: the per-site arrays (kind, tumor_state, memory, time_in_P_min, fields) are
on the backend's device (numpy on the CPU, cupy on a GPU, see :meth:`State.to_backend`); plasma and
dose_total, a few scalars per drug that therapy and the controllers update on the host, are always
numpy.

Everything that determines the rest of a run is in here (the random numbers are a pure function
of seed, step, site and stream): a checkpoint is this object, and a run resumed from it continues
exactly. :meth:`State.arrays` lists the arrays by name, so writers and checkpoints need not be
changed when a variable is added.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .grid import Grid


@dataclass
class State:
    """All that changes during a run.

    Attributes:
        kind: (n_sites,) uint8, occupant kind (tmesim.codes).
        tumor_state: (n_sites,) uint8, S/P/R of tumor cells, NONE elsewhere.
        memory: (n_sites,) float32 in [0, 1], epigenetic tolerance memory of tumor cells
            (0 elsewhere); daughters inherit it.
        time_in_P_min: (n_sites,) float32, minutes the tumor cell has spent as a persister
            (cumulative over its lineage's persister episodes; 0 elsewhere).
        fields: (n_fields, n_sites) float32, concentrations in each field's units.
        plasma: (n_drugs,) float64, plasma concentration of each drug (uM).
        dose_total: (n_drugs,) float64, cumulative dose per drug: the sum of boluses (uM) of a
            one-compartment drug, or the time integral of a square wave's level (uM h).
        step: agent steps taken.
        time_min: simulated time in minutes.
    """

    kind: np.ndarray
    tumor_state: np.ndarray
    fields: np.ndarray
    memory: np.ndarray
    time_in_P_min: np.ndarray
    plasma: np.ndarray
    dose_total: np.ndarray
    step: int = 0
    time_min: float = 0.0

    @classmethod
    def empty(cls, grid: Grid, n_fields: int, n_drugs: int = 0, xp=np) -> State:
        n = grid.n_sites
        return cls(
            kind=xp.zeros(n, dtype=xp.uint8),
            tumor_state=xp.zeros(n, dtype=xp.uint8),
            fields=xp.zeros((n_fields, n), dtype=xp.float32),
            memory=xp.zeros(n, dtype=xp.float32),
            time_in_P_min=xp.zeros(n, dtype=xp.float32),
            plasma=np.zeros(n_drugs, dtype=np.float64),
            dose_total=np.zeros(n_drugs, dtype=np.float64),
        )

    #: the per-site arrays, which live on the backend's device (the rest stays on the host)
    SITE_ARRAYS = ("kind", "tumor_state", "fields", "memory", "time_in_P_min")

    @staticmethod
    def bytes_per_voxel(n_fields: int) -> int:
        """Bytes of the per-site arrays per voxel: uint8 kind and tumor_state, float32 memory and
        time_in_P_min, one float32 per field."""
        return 10 + 4 * n_fields

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the state by attribute name (site arrays, fields, plasma), numpy or
        cupy as they are."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if _is_array(getattr(self, f.name))
        }

    def to_backend(self, convert) -> State:
        """This state with its per-site arrays passed through ``convert`` (a backend's
        ``to_device`` or ``to_host``); plasma, dose_total and the scalars are shared as they are.
        """
        return dataclasses.replace(self, **{k: convert(getattr(self, k)) for k in self.SITE_ARRAYS})

    def copy(self) -> State:
        """A deep copy (each array copied where it lives)."""
        return State(
            **{k: v.copy() for k, v in self.arrays().items()},
            step=self.step,
            time_min=self.time_min,
        )


def _is_array(v) -> bool:
    # numpy or cupy (checked by duck type: this module never imports cupy)
    return isinstance(v, np.ndarray) or (
        hasattr(v, "__cuda_array_interface__") and hasattr(v, "dtype")
    )
