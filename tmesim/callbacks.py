"""Things that run alongside a simulation: progress display and stop conditions.

A callback is a callable ``cb(sim)`` with a ``schedule``; stop conditions call ``sim.stop(reason)``.
"""

from __future__ import annotations

from .schedules import IterationInterval


class Progress:
    """A progress bar (tqdm, on stderr): steps, simulated days, steps/s, ETA, burden."""

    def __init__(self, total_steps: int, every: int = 1, disable: bool = False):
        # plain text on stderr everywhere (tqdm.auto warns in Jupyter without ipywidgets)
        from tqdm import tqdm

        self.schedule = IterationInterval(every)
        self.bar = tqdm(
            total=total_steps,
            unit="step",
            disable=disable,
            dynamic_ncols=True,
            mininterval=1.0,
            smoothing=0.05,
        )
        self._done = 0

    def __call__(self, sim) -> None:
        self.bar.update(sim.state.step - self._done)
        self._done = sim.state.step
        row = sim.last_row
        self.bar.set_postfix_str(
            f"t={sim.state.time_min / 1440:.2f} d, burden={row['burden']}", refresh=False
        )

    def close(self):
        self.bar.close()


class StopOnExtinction:
    """Stop when no tumor cell is left."""

    schedule = IterationInterval(1)

    def __call__(self, sim) -> None:
        if sim.last_row["burden"] == 0:
            sim.stop("extinction")


class StopAtBurden:
    """Stop when the tumor burden reaches ``max_burden`` cells."""

    schedule = IterationInterval(1)

    def __init__(self, max_burden: int):
        self.max_burden = max_burden

    def __call__(self, sim) -> None:
        if sim.last_row["burden"] >= self.max_burden:
            sim.stop(f"burden reached {self.max_burden}")


class StopOnRows:
    """Stop when ``condition(rows)`` returns True: ``rows`` are the time-series rows an
    :class:`tmesim.writers.InMemoryWriter` holds so far ({column: value} each, the latest
    last), so the run ends after the row that made it True."""

    schedule = IterationInterval(1)

    def __init__(self, condition, writer, reason: str = "stop condition met"):
        self.condition, self.writer, self.reason = condition, writer, reason

    def __call__(self, sim) -> None:
        if self.condition(self.writer.rows):
            sim.stop(self.reason)
