"""Output writers: what a simulation records, each on its own schedule (tmesim.schedules).

:class:`tmesim.simulation.Simulation` holds a dict of named writers, ``sim.output_writers``.
After each agent step its loop asks each writer's ``schedule`` whether to fire and calls
``write(sim)`` when it does; it calls ``start(sim, fresh)`` once before the first step and
``finish(sim, status)`` once after the last. The run-file writers (time series, snapshots,
checkpoints) write into the simulation's open run file, ``sim.writer`` (a
:class:`tmesim.io.hdf5.RunWriter`), which the simulation opens when it has at least one of them;
:class:`InMemoryWriter` keeps the time-series rows in memory and writes no file::

    sim = Simulation(sc)                       # the run-file writers of the scenario's [run]
    sim.output_writers["snapshots"] = SnapshotWriter(TimeInterval(2 * 60))   # every 2 h
    sim.run("run.h5")

    sim = Simulation(sc)
    sim.output_writers = {"in_memory": InMemoryWriter()}
    sim.run()                                  # writes no file
    series = sim.output_writers["in_memory"].series()

Schedules are evaluated every step for the writers, and by the loop in dict order; a
:class:`Checkpointer` fires after the callbacks, and only when the run goes on past the step
(a checkpoint of the last step would never be used).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .schedules import IterationInterval, TimeInterval


class OutputWriter:
    """What every writer has: a ``schedule`` (a callable of the simulation, see
    tmesim.schedules, or None: never on a step) and the three calls of the loop.

    Class attributes:
        needs_file: writes into the simulation's run file (``sim.writer``).
        after_callbacks: fires after the callbacks, only when the run goes on past the step.
    """

    needs_file = False
    after_callbacks = False

    def __init__(self, schedule=None) -> None:
        self.schedule = schedule

    def start(self, sim, fresh: bool) -> None:
        """Before the first step; ``fresh``: the run starts at step 0 (else it continues from
        a checkpoint, and a schedule with ``reset`` continues from the state's time)."""
        if not fresh:
            _continue(self.schedule, sim)

    def write(self, sim) -> None:
        """Record what this writer records, now (after a step, when the schedule fires)."""
        raise NotImplementedError

    def finish(self, sim, status: str) -> None:
        """After the last step; ``status`` is how the run ends ("finished", "stopped" or
        "interrupted")."""


def _continue(schedule, sim) -> None:
    # a continued run's schedules go on as if they had run all along: after any step each one
    # waits for the first multiple of its interval beyond time + its tolerance
    reset = getattr(schedule, "reset", None)
    if reset is not None:
        reset(sim.state.time_min + 1e-6 * sim.dt_min)


class TimeSeriesWriter(OutputWriter):
    """One row of observables ({column: value}, tmesim.observables) into the run file's
    ``/timeseries`` after each step, and the row of the initial state at a fresh start.

    A checkpoint needs a row for every step (a resume cuts the file back to them), so
    the default schedule, every step, is the one to keep when a :class:`Checkpointer` runs.
    """

    needs_file = True

    def __init__(self, schedule=None) -> None:
        super().__init__(IterationInterval(1) if schedule is None else schedule)

    def start(self, sim, fresh: bool) -> None:
        super().start(sim, fresh)
        if fresh:
            self.write(sim)

    def write(self, sim) -> None:
        sim.writer.row(sim.last_row)


class SnapshotWriter(OutputWriter):
    """The lattice and fields into the run file's ``/snapshots``: at a fresh start, when the
    schedule fires, and at the end of a run that was not interrupted (unless the last
    snapshot is of that step).

    The per-site arrays are copied to the host here (see :func:`host_array`).
    """

    needs_file = True

    def __init__(self, schedule):
        super().__init__(schedule)

    def start(self, sim, fresh: bool) -> None:
        if fresh:
            self.schedule(sim)  # the start's snapshot is the schedule's first
            self.write(sim)
        else:
            _continue(self.schedule, sim)

    def write(self, sim) -> None:
        st = sim.state
        # only what a snapshot stores is copied (time_in_P_min stays where it is)
        sim.writer.snapshot(
            dataclasses.replace(st, **{k: host_array(sim, getattr(st, k)) for k in SNAPSHOT_SITE})
        )

    def finish(self, sim, status: str) -> None:
        if status == "interrupted":
            return  # the run goes on after a resume: its end is not this step
        if sim.writer.last_snapshot_step != sim.state.step:
            self.write(sim)


#: the per-site arrays of the state a snapshot stores
SNAPSHOT_SITE = ("kind", "tumor_state", "memory", "fields")


def host_array(sim, a):
    """``a`` (an array of ``sim``'s state) on the host, for its run file: a copy of its own
    when the file is written in the background (tmesim.io.background: the next step changes
    the state's arrays while the writer thread may still read them), else possibly ``a``
    itself (the CPU's arrays are on the host already)."""
    h = sim.backend.to_host(a)
    # plain ndarray views of both: a host-side stand-in for device arrays (an ndarray subclass,
    # as in tests/test_simulation_backends.py) refuses to meet host arrays
    if (
        sim.writer.background
        and isinstance(a, np.ndarray)
        and np.may_share_memory(np.asarray(h), np.asarray(a))
    ):
        h = np.array(h, copy=True)
    return h


def write_checkpoint(sim) -> int | None:
    """Write a checkpoint of ``sim``'s state (copied to the host) and of the steps' own state
    (``sim.model.extra_state()``) into its open run file; returns the slot written, or None
    when the file is written in the background (``sim.writer.checkpoint_slot`` once it is
    drained)."""
    arrays = {k: host_array(sim, v) for k, v in sim.state.arrays().items()}
    # extra_state() returns copies of its own (Controllers.state)
    extra = sim.model.extra_state()
    slot = sim.writer.checkpoint(arrays, sim.state.step, sim.state.time_min, extra)
    sim.checkpoints_written += 1
    return slot


class Checkpointer(OutputWriter):
    """A checkpoint of the state into the run file (tmesim.io.checkpoint) when the schedule
    fires (None: never on a schedule) and when the run is interrupted (signal, wall time),
    so that :meth:`Simulation.resume` can continue it.

    A simulation with a checkpointer handles interrupts (SIGTERM, SIGUSR1, wall time, its
    ``wall_deadline``) by checkpointing and ending "interrupted"; one without runs through.
    """

    needs_file = True
    after_callbacks = True

    def write(self, sim) -> None:
        write_checkpoint(sim)

    def finish(self, sim, status: str) -> None:
        if status == "interrupted":
            write_checkpoint(sim)


class InMemoryWriter(OutputWriter):
    """The time-series rows in memory, no file: ``rows`` ({column: value} each; the first is
    the state the run starts from, then one after each step when the schedule fires, by default
    every step), and :meth:`series`, the same as arrays.

    A run continued from a checkpoint starts its rows at the checkpoint's row.
    """

    def __init__(self, schedule=None) -> None:
        super().__init__(IterationInterval(1) if schedule is None else schedule)
        self.rows: list[dict] = []

    def start(self, sim, fresh: bool) -> None:
        super().start(sim, fresh)
        self.rows = [sim.last_row]

    def write(self, sim) -> None:
        self.rows.append(sim.last_row)

    def series(self) -> dict:
        """{column: array over the rows, "day": time_min / 1440}."""
        out = {k: np.array([r[k] for r in self.rows]) for k in self.rows[0]}
        out["day"] = out["time_min"] / 1440.0
        return out


def run_file_writers(sc) -> dict:
    """The writers of a run file as the scenario's ``[run]`` asks: the time series every step,
    snapshots every ``snapshot_every_hours``, checkpoints every ``checkpoint_every_hours``
    (0: only when interrupted)."""
    every = sc.run.checkpoint_every_hours * 60.0
    return {
        "timeseries": TimeSeriesWriter(),
        "snapshots": SnapshotWriter(TimeInterval(sc.run.snapshot_every_hours * 60.0)),
        "checkpointer": Checkpointer(TimeInterval(every, first=False) if every > 0 else None),
    }
