"""Therapy: each step, the drugs' plasma levels and what the tissue receives from them.

The plasma levels advance over the step (tmesim.drugs.Pharmacokinetics); the free level
``unbound_fraction * plasma`` is what vessels hold each drug field at, and the domain faces too
for ``transport = "bath"``. For ``transport = "uniform"`` the tissue level is the free level
everywhere (a well-mixed dish): the field is set after the solve.
"""

from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..drugs import Pharmacokinetics


class Therapy:
    """Plasma levels and tissue supply of every drug of a scenario.

    Args:
        sc: the scenario.
        field_solver: the FieldSolver whose drug fields follow the plasma.
    """

    def __init__(self, sc, field_solver, controllers=None):
        self.sc = sc
        self.drugs = sc.drugs
        self.pk = Pharmacokinetics(sc.drugs, sc.run.dt_min, sc.run.duration_days * 1440.0)
        names = sc.field_names
        self.field_index = np.array([names.index(d.name) for d in sc.drugs], dtype=np.intp)
        # drug fields in consecutive rows (as scenarios list them): tissue_levels is a view
        self.consecutive = bool(self.field_index.size) and bool(
            (np.diff(self.field_index) == 1).all()
        )
        self.unbound = np.array([d.unbound_fraction for d in sc.drugs])
        self.uniform = np.array([d.transport == "uniform" for d in sc.drugs], dtype=bool)
        self.solver = field_solver
        self.controllers = controllers
        self.square = np.array([d.half_life_h <= 0 for d in sc.drugs], dtype=bool)
        self.last_given = np.zeros(len(sc.drugs))

    def free_levels(self, plasma: np.ndarray) -> np.ndarray:
        """Free plasma levels (uM) that reach the tissue."""
        return self.unbound * plasma

    def before_fields(self, state) -> np.ndarray:
        """Advance the plasma over the coming step and set the drug fields' supply values.

        Returns the doses given in the step per drug (uM)."""
        if not self.drugs:
            return self.last_given
        ctl = self.controllers
        controlled = ctl.index if ctl is not None else ()
        self.last_given = self.pk.advance(state.plasma, state.time_min, skip=controlled)
        for i in controlled:
            self.last_given[i] = ctl.advance(i, state.plasma, state.time_min, self.sc.run.dt_min)
        # cumulative dose: boluses (uM), or the square wave's level over the step (uM h)
        state.dose_total += np.where(
            self.square, self.last_given * self.sc.run.dt_min / 60.0, self.last_given
        )
        self.solver.set_supply(self.supply(state))
        return self.last_given

    def supply(self, state) -> np.ndarray:
        """(n_fields,) values for FieldSolver.set_supply: the free plasma level of each drug's
        field, NaN (keep) for the others."""
        out = np.full(len(self.sc.fields), np.nan)
        out[self.field_index] = self.free_levels(state.plasma)
        return out

    def after_fields(self, state) -> None:
        """Well-mixed drugs: the tissue level is the free plasma level everywhere (a scalar
        written into the field where it lives, host or device)."""
        if self.uniform.any():
            free = self.free_levels(state.plasma)
            for i in np.flatnonzero(self.uniform):
                state.fields[self.field_index[i]] = np.float32(free[i])

    def tissue_levels(self, state) -> np.ndarray:
        """(n_drugs, n_sites) drug fields (uM), on the fields' device, for reading: a view of the
        consecutive drug rows (no copy of a grid per drug each step), else a copy (the index is
        moved to the device: cupy takes no numpy index arrays implicitly)."""
        if self.consecutive:
            return state.fields[self.field_index[0] : self.field_index[-1] + 1]
        return state.fields[array_module(state.fields).asarray(self.field_index)]
