"""Therapy controllers: doses decided from observables as the run goes (MODEL.md section 5).

A drug with a ``[drugs.NAME.controller]`` table is dosed by its controller instead of its
schedule. Every ``decide_every_h`` (from ``start_day`` until ``stop_day``) the controller reads
the last time-series row and sets the drug's dose level:

- ``adaptive`` (Zhang et al. 2017): the baseline is the burden at the first decision; treat at
  ``dose_uM`` until the burden falls to ``lower_fraction`` x baseline, then pause until it is back
  to ``upper_fraction`` x baseline, then treat again (hysteresis between the two thresholds).
- ``modulation`` (Gatenby et al. 2009): keep the burden near ``target_fraction`` x baseline:
  when it is above by more than ``tolerance`` the dose rises by ``step_fraction`` (from
  ``min_dose_uM`` if it was 0), when below by more than ``tolerance`` it falls by
  ``step_fraction``, within [0, ``max_dose_uM``]; a dose under ``min_dose_uM`` becomes 0.
- ``biomarker``: a simulated biopsy samples ``biopsy_cells`` tumor cells (without replacement,
  from the counter-based generator) in a box of ``biopsy_size_um`` around ``biopsy_center_um``
  and measures their persister fraction; the drug starts at ``dose_uM`` when the measurement
  exceeds ``on_fraction`` and stops when it falls below ``off_fraction``.
- a Python function (``Simulation(sc, controllers={"drug": fn})``): ``fn(row, time_h)`` returns
  the dose level in uM (or None to keep it); an exception stops the run with a clear error
  naming the controller.

The dose level acts through the drug's PK: a square-wave drug has that plasma level; a
one-compartment drug gets a bolus of the level every ``interval_h`` of its schedule while the
level is above zero. Every decision that changes the level, and every biopsy, is an event in the
run file. Controller state (level, baseline, timers) is saved in checkpoints, so a resumed run
decides as the uninterrupted one (Python controllers must be stateless for that to hold).
"""

from __future__ import annotations

import math

import numpy as np

from . import codes, rng
from .backend import as_host
from .errors import UserError

BIOPSY = 30  # random stream of biopsy sampling


class ControllerError(UserError):
    """A controller could not decide (a user function raised or returned a bad value)."""


class Controllers:
    """The controllers of a scenario's drugs (and user functions), with their state.

    Args:
        sc: the scenario.
        grid: the lattice (for biopsies).
        user: {drug name: function(row, time_h) -> dose uM or None}.
    """

    def __init__(self, sc, grid, user=None) -> None:
        self.sc = sc
        self.grid = grid
        self.user = dict(user or {})
        names = sc.drug_names
        for name in self.user:
            if name not in names:
                raise ControllerError(
                    f"controller for '{name}': no such drug; drugs: {', '.join(names) or '(none)'}"
                )
        self.index = [
            i for i, d in enumerate(sc.drugs) if d.controller.kind != "none" or d.name in self.user
        ]
        n = len(sc.drugs)
        # state, all float64 arrays so checkpoints can hold it
        self.level = np.zeros(n)  # current dose level, uM
        self.baseline = np.full(n, np.nan)  # burden at the first decision
        self.next_decision_min = np.full(n, np.nan)
        self.last_bolus_min = np.full(n, -np.inf)
        self.measured = np.full(n, np.nan)  # last biopsy persister fraction
        self.events: list[tuple[float, str, dict]] = []

    @property
    def active(self) -> bool:
        return bool(self.index)

    def controlled(self, i: int) -> bool:
        return i in self.index

    # ------------------------------------------------------------------ state for checkpoints
    def state(self) -> dict:
        return {
            "ctrl_level": self.level.copy(),
            "ctrl_baseline": self.baseline.copy(),
            "ctrl_next_decision_min": self.next_decision_min.copy(),
            "ctrl_last_bolus_min": self.last_bolus_min.copy(),
            "ctrl_measured": self.measured.copy(),
        }

    def load(self, arrays: dict) -> None:
        for key, attr in (
            ("ctrl_level", "level"),
            ("ctrl_baseline", "baseline"),
            ("ctrl_next_decision_min", "next_decision_min"),
            ("ctrl_last_bolus_min", "last_bolus_min"),
            ("ctrl_measured", "measured"),
        ):
            if key in arrays:
                getattr(self, attr)[...] = np.asarray(arrays[key], dtype=np.float64)

    # ------------------------------------------------------------------ decisions
    def decide(self, row: dict, state, step: int) -> None:
        """Decisions due at the current time (state.time_min), from the last row."""
        t = state.time_min
        for i in self.index:
            d = self.sc.drugs[i]
            c = d.controller
            start, stop = c.start_day * 1440.0, c.stop_day * 1440.0
            if t < start - 1e-6:
                continue
            if t >= stop - 1e-6:
                if self.level[i] != 0:
                    self._set(i, 0.0, t, "controller stop time", row)
                continue
            if not np.isnan(self.next_decision_min[i]) and t < self.next_decision_min[i] - 1e-6:
                continue
            self.next_decision_min[i] = t + c.decide_every_h * 60.0
            burden = float(row["burden"])
            if np.isnan(self.baseline[i]):
                self.baseline[i] = burden
            if d.name in self.user:
                self._user(i, d.name, row, t)
                continue
            level, reason = self._rule(i, c, burden, state, step, t)
            if level is not None:
                self._set(i, level, t, reason, row)

    def _rule(self, i, c, burden, state, step, t):
        base = self.baseline[i]
        on = self.level[i] > 0
        if c.kind == "adaptive":
            if on and burden <= c.lower_fraction * base:
                return 0.0, f"burden {burden:.0f} <= {c.lower_fraction:g} x baseline {base:.0f}"
            if not on and burden >= c.upper_fraction * base:
                return c.dose_uM, (
                    f"burden {burden:.0f} >= {c.upper_fraction:g} x baseline {base:.0f}"
                )
            return None, ""
        if c.kind == "modulation":
            target = c.target_fraction * base
            lvl = self.level[i]
            if burden > target * (1 + c.tolerance):
                new = min(c.max_dose_uM, max(lvl * (1 + c.step_fraction), c.min_dose_uM))
                why = f"burden {burden:.0f} above target {target:.0f}"
            elif burden < target * (1 - c.tolerance):
                new = lvl * (1 - c.step_fraction)
                new = 0.0 if new < c.min_dose_uM else new
                why = f"burden {burden:.0f} below target {target:.0f}"
            else:
                return None, ""
            return (new, why) if new != lvl else (None, "")
        # biomarker
        frac, n = self.biopsy(state, step, c)
        self.measured[i] = frac
        self.events.append(
            (t, "biopsy", {"drug": self.sc.drugs[i].name, "cells": n, "persister_fraction": frac})
        )
        if np.isnan(frac):
            return None, ""
        on = self.level[i] > 0
        if not on and frac > c.on_fraction:
            return c.dose_uM, f"biopsy persister fraction {frac:.3g} > {c.on_fraction:g}"
        if on and frac < c.off_fraction:
            return 0.0, f"biopsy persister fraction {frac:.3g} < {c.off_fraction:g}"
        return None, ""

    def biopsy(self, state, step: int, c) -> tuple[float, int]:
        """Persister fraction among ``biopsy_cells`` tumor cells sampled in the biopsy box."""
        g = self.grid
        coords = [g.centers_um(a) for a in range(g.ndim)]
        centre = c.biopsy_center_um or tuple(n * g.dx_um / 2 for n in g.shape)
        if len(centre) != g.ndim:
            raise ControllerError(f"biopsy_center_um {list(centre)}: needs {g.ndim} entries")
        # the box is a range of indices per axis: only that block of the lattice is copied to
        # the host (the state may live on a GPU)
        ranges = []
        for x, c0 in zip(coords, centre):
            idx = np.flatnonzero(np.abs(x - c0) <= c.biopsy_size_um / 2)
            if idx.size == 0:
                return float("nan"), 0
            ranges.append(slice(int(idx[0]), int(idx[-1]) + 1))
        box = tuple(ranges)
        kind = as_host(state.kind.reshape(g.shape)[box])
        local = np.nonzero(kind == codes.TUMOR)  # C order within the box ...
        if local[0].size == 0:
            return float("nan"), 0
        cells = np.ravel_multi_index(tuple(i + s.start for i, s in zip(local, box)), g.shape)
        # ... which is ascending site order, as np.flatnonzero over the whole lattice
        k = min(int(c.biopsy_cells), cells.size)
        # sampling without replacement: the k cells with the smallest random keys
        keys = rng.raw_at(self.sc.run.seed, step, BIOPSY, cells)
        order = np.argsort(keys, kind="stable")[:k]
        states = as_host(state.tumor_state.reshape(g.shape)[box])[local]
        frac = float(np.mean(np.isin(states[order], codes.TOLERANT_STATES)))
        return frac, k

    def _user(self, i, name, row, t):
        fn = self.user[name]
        try:
            out = fn(dict(row), t / 60.0)
        except Exception as exc:  # the user's code: report it, named
            raise ControllerError(
                f"controller for '{name}' raised {type(exc).__name__}: {exc}"
            ) from None
        if out is None:
            return
        try:
            level = float(out)
        except (TypeError, ValueError):
            raise ControllerError(
                f"controller for '{name}' returned {out!r}; expected a dose "
                "in uM (a number >= 0) or None"
            ) from None
        if not math.isfinite(level) or level < 0:
            raise ControllerError(
                f"controller for '{name}' returned {out!r}; expected a dose "
                "in uM (a number >= 0) or None"
            )
        if level != self.level[i]:
            self._set(i, level, t, "user controller", row)

    def _set(self, i, level, t, reason, row):
        self.level[i] = level
        self.events.append(
            (
                t,
                "dose_decision",
                {
                    "drug": self.sc.drugs[i].name,
                    "dose_uM": float(level),
                    "reason": reason,
                    "burden": float(row["burden"]),
                },
            )
        )

    def pop_events(self) -> list:
        out, self.events = self.events, []
        return out

    # ------------------------------------------------------------------ PK under control
    def advance(self, i: int, plasma: np.ndarray, t_min: float, dt: float) -> float:
        """Plasma of controlled drug i from t to t + dt (uM); returns the dose given."""
        d = self.sc.drugs[i]
        level = self.level[i]
        if d.half_life_h <= 0:
            plasma[i] = level
            return float(level)
        k = math.log(2.0) / (d.half_life_h * 60.0)
        plasma[i] *= math.exp(-k * dt)
        given = 0.0
        if level > 0 and t_min - self.last_bolus_min[i] >= d.schedule.interval_h * 60.0 - 1e-6:
            # a bolus at the start of the step, decayed over it
            plasma[i] += level * math.exp(-k * dt)
            self.last_bolus_min[i] = t_min
            given = float(level)
        return given
