"""Drugs: named presets, pharmacokinetics (plasma level over time) and pharmacodynamics (effects).

Pharmacokinetics (MODEL.md section 5). A square-wave drug (``half_life_h = 0``) has a plasma level
equal to the schedule's dose while the schedule is on. A one-compartment drug receives boluses of
``dose_uM`` at its dosing times and decays with its half-life in between; one agent step advances
the level exactly:

    C(t + dt) = C(t) exp(-k dt) + sum over doses at tau in (t, t + dt] of D exp(-k (t + dt - tau))

The tissue sees the free fraction ``unbound_fraction * C`` at vessels (and at the domain faces
for ``transport = "bath"``, or everywhere for ``"uniform"``).

Pharmacodynamics: each effect is an Emax/Hill curve ``E = emax C^h / (C^h + EC50^h)`` of the local
free concentration. Several drugs on one target combine by Bliss independence,
``E = 1 - prod(1 - E_i)``; kill rates add (independent hazards).

Presets (tmesim.drug_presets) fill in what a scenario leaves out.
"""

from __future__ import annotations

import math

import numpy as np

FRACTION_TARGETS = ("block_entry", "block_division", "cancel_met", "cancel_igf1r")
KILL_TARGETS = ("kill_S", "kill_P")


def hill(c, emax: float, ec50: float, h: float):
    """Emax/Hill effect of concentration ``c`` (uM), in [0, emax]. Float64 on every backend.

    ``x = (c / EC50)^h`` overflows to inf for a potent drug (EC50 of 1e-300 uM, or c / EC50 of
    1e31 with h = 10), and ``emax x / (1 + x)`` is then inf / inf = NaN: there the effect is its
    limit, ``emax`` exactly. Everywhere x is finite the formula is the plain one, operation for
    operation (the kernels' tm_hill, kernels/decisions.cuh, computes the same; with x finite,
    emax x never overflows, emax <= 1, and 1 + x rounds to x before x does).
    """
    c = np.maximum(np.asarray(c, dtype=np.float64), 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        x = (c / ec50) ** h
        e = np.where(np.isinf(x), emax, emax * x / (1.0 + x))
    return e[()]  # a scalar for a scalar c, as the plain formula gives


# ------------------------------------------------------------------------------ pharmacokinetics
_EPS_MIN = 1e-6  # minutes: switch times given in days are compared to this tolerance


def _on(sched, t_min: float) -> bool:
    """Whether a continuous/intermittent schedule is on at time t (minutes).

    Computed in minutes with a tolerance, so that a switch falling on a step boundary (e.g.
    0.35 d = 504 min) switches exactly there despite the rounding of days in binary."""
    start, stop = sched.start_day * 1440.0, sched.stop_day * 1440.0
    if t_min < start - _EPS_MIN or t_min >= stop - _EPS_MIN:
        return False
    if sched.kind == "continuous":
        return True
    period = (sched.on_days + sched.off_days) * 1440.0
    t = t_min - start
    k = math.floor((t + _EPS_MIN) / period)
    return t - k * period < sched.on_days * 1440.0 - _EPS_MIN


def dose_times_h(sched, until_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Bolus times (h) and amounts (uM) of a one-compartment schedule up to ``until_h``."""
    if sched.kind == "none":
        return np.zeros(0), np.zeros(0)
    if sched.kind == "doses":
        t = np.asarray(sched.times_h, dtype=np.float64)
        d = np.asarray(sched.doses_uM, dtype=np.float64)
        keep = t <= until_h
        return t[keep], d[keep]
    start = sched.start_day * 24.0
    stop = min(sched.stop_day * 24.0, until_h + 1e-9)
    n = int(math.floor((stop - start) / sched.interval_h + 1e-9)) + 1 if stop >= start else 0
    t = start + sched.interval_h * np.arange(max(n, 0))
    t = t[t <= until_h]
    on = np.array([_on(sched, x * 60.0) for x in t], dtype=bool)
    t = t[on]
    return t, np.full(t.shape, sched.dose_uM)


def square_level(sched, t_min: float) -> float:
    """Plasma level (uM) of a square-wave schedule at time t (minutes)."""
    if sched.kind == "none":
        return 0.0
    if sched.kind == "doses":
        t_h = t_min / 60.0
        times = np.asarray(sched.times_h, dtype=np.float64)
        past = np.flatnonzero(times <= t_h + 1e-9)
        return float(sched.doses_uM[past[np.argmax(times[past])]]) if past.size else 0.0
    return float(sched.dose_uM) if _on(sched, t_min) else 0.0


class Pharmacokinetics:
    """Plasma levels of every drug of a scenario, advanced one agent step at a time.

    The level of a one-compartment drug is state (State.plasma) so that the controllers, which
    dose from observables, fit the same update; square waves are a function of time.
    """

    def __init__(self, drugs, dt_min: float, duration_min: float = 1e7):
        self.drugs = drugs
        self.dt = dt_min
        # bolus times (h) and amounts (uM) per drug; a square wave has none (its level is a
        # function of time)
        self._doses: list[tuple[np.ndarray, np.ndarray]] = []
        for d in drugs:
            if d.half_life_h > 0:
                horizon = (
                    max(d.schedule.times_h, default=0.0)
                    if d.schedule.kind == "doses"
                    else min(d.schedule.stop_day * 24.0, duration_min / 60.0 + 1.0)
                )
                self._doses.append(dose_times_h(d.schedule, horizon))
            else:
                self._doses.append((np.zeros(0), np.zeros(0)))

    def advance(self, plasma: np.ndarray, t_min: float, skip=()) -> np.ndarray:
        """Levels at t + dt from levels at t (uM), in place; returns the dose given per drug in
        (t, t + dt] (uM: the boluses, or the square-wave level). Drugs in ``skip`` (dosed by a
        controller) are left alone."""
        given = np.zeros(len(self.drugs))
        t1 = t_min + self.dt
        for i, d in enumerate(self.drugs):
            if i in skip:
                continue
            if d.half_life_h <= 0:
                plasma[i] = square_level(d.schedule, t1)
                given[i] = plasma[i]
                continue
            k = math.log(2.0) / (d.half_life_h * 60.0)  # 1/min
            times, amounts = self._doses[i]
            tm = times * 60.0
            now = (tm > t_min + 1e-9) & (tm <= t1 + 1e-9)
            plasma[i] = plasma[i] * math.exp(-k * self.dt) + float(
                np.sum(amounts[now] * np.exp(-k * (t1 - tm[now])))
            )
            given[i] = float(np.sum(amounts[now]))
        return given

    def initial(self) -> np.ndarray:
        """Levels at time 0 (doses at exactly t = 0 count as given before the first step)."""
        out = np.zeros(len(self.drugs))
        for i, d in enumerate(self.drugs):
            if d.half_life_h <= 0:
                out[i] = square_level(d.schedule, 0.0)
            else:
                times, amounts = self._doses[i]
                out[i] = float(np.sum(amounts[np.abs(times) < 1e-9]))
        return out


# ------------------------------------------------------------------------------ pharmacodynamics
class Effects:
    """Combined drug effects per cell from the local free concentrations.

    Args:
        drugs: the scenario's drugs (their ``effects`` tables).
    """

    def __init__(self, drugs):
        self.drugs = drugs

    def at(self, conc: np.ndarray) -> dict:
        """Effects for cells with local concentrations ``conc`` (n_drugs, n) in uM.

        Returns {"kill_S": rate 1/h, "kill_P": rate 1/h, "target": E_target,
        "block_entry", "block_division", "cancel_met", "cancel_igf1r": Bliss-combined fractions,
        "exit_speedup": summed fold x E} as float64 arrays of length n.
        """
        n = conc.shape[1] if conc.ndim == 2 else 0
        out = {k: np.zeros(n) for k in ("kill_S", "kill_P", "exit_speedup")}
        keep = {k: np.ones(n) for k in FRACTION_TARGETS + ("target",)}
        for i, d in enumerate(self.drugs):
            for target, e in d.effects.items():
                E = hill(conc[i], e.emax, e.ec50_uM, e.hill)
                if target in KILL_TARGETS:
                    out[target] += e.rate_per_h * E
                    if target == "kill_S":
                        keep["target"] *= 1.0 - E
                elif target == "exit_speedup":
                    out[target] += e.fold * E
                else:
                    keep[target] *= 1.0 - E
        for k, v in keep.items():
            out[k] = 1.0 - v
        return out
