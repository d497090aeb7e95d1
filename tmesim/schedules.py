"""When something happens during a run: tiny callables shared by output writers and callbacks.

A schedule is called once per agent step, after the step, with the simulation, and answers whether
its action fires now.
"""

from __future__ import annotations

import time


class IterationInterval:
    """Every ``n`` agent steps (and at step 0 when ``first``)."""

    def __init__(self, n: int, first: bool = True):
        if n < 1:
            raise ValueError("IterationInterval needs n >= 1")
        self.n, self.first = int(n), first

    def __call__(self, sim) -> bool:
        step = sim.state.step
        return step % self.n == 0 and (self.first or step > 0)


class TimeInterval:
    """Every ``minutes`` of simulated time: fires at the first step at or after each multiple."""

    def __init__(self, minutes: float, first: bool = True):
        if minutes <= 0:
            raise ValueError("TimeInterval needs minutes > 0")
        self.interval = float(minutes)
        self.first = first
        self._next = 0.0 if first else self.interval

    def __call__(self, sim) -> bool:
        # a tolerance of a millionth of a step keeps float sums of dt from skipping a multiple
        if sim.state.time_min + 1e-6 * sim.dt_min >= self._next:
            k = int((sim.state.time_min + 1e-6 * sim.dt_min) // self.interval) + 1
            self._next = k * self.interval
            return True
        return False

    def reset(self, time_min: float) -> None:
        """Continue after ``time_min`` (used when a run resumes)."""
        self._next = (int(time_min // self.interval) + 1) * self.interval


class WallTimeInterval:
    """Every ``seconds`` of wall-clock time."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self._last = time.monotonic()

    def __call__(self, sim) -> bool:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            return True
        return False
