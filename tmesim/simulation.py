"""The model (an ordered list of steps over the state) and the simulation loop around it.

    model.step():  fields -> tumor rules -> (observables, taken by the loop)
    Simulation.run(): step, record a time-series row, fire schedules (snapshots, progress, stop
                      conditions), until the duration or a stop.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import observables
from .backend import CPU, get_backend
from .callbacks import Progress, StopAfterWallTime, StopAtBurden, StopOnExtinction
from .grid import Grid
from .initial import initial_state
from .io.hdf5 import RunWriter
from .scenario import Scenario, load_scenario
from .schedules import TimeInterval
from .steps.fields import FieldSolver
from .steps.tumor import TumorRules


class Model:
    """Grid, state and the ordered steps of one scenario.

    Args:
        sc: a validated scenario.
        backend: where the arrays live (only the CPU in this version).
    """

    def __init__(self, sc: Scenario, backend=None):
        self.sc = sc
        self.backend = backend or CPU()
        self.grid = Grid(sc.grid.shape, sc.grid.dx_um, sc.grid.neighbourhood)
        self.state = initial_state(sc, self.grid)
        self.field_solver = FieldSolver(sc, self.grid)
        self.tumor_rules = TumorRules(sc.tumor, self.grid, sc.run.seed, sc.run.dt_min)
        self.oxygen = sc.field_names.index("oxygen")
        self.last_counts = None

    def step(self):
        """Advance one agent step: fields over dt with the current cells, then the cell rules."""
        st = self.state
        self.field_solver.step(st.fields, st.kind, st.tumor_state)
        self.last_counts = self.tumor_rules.apply(st.kind, st.tumor_state,
                                                  st.fields[self.oxygen], st.step)
        st.step += 1
        st.time_min = st.step * self.sc.run.dt_min
        return self.last_counts

    def extra_state(self) -> dict:
        """State the steps keep outside :class:`State` (controllers), as {name: numpy array}.

        A checkpoint stores it beside the state's arrays; :meth:`load_extra_state` restores it.
        Empty while no step keeps any."""
        return {}

    def load_extra_state(self, arrays: dict) -> None:
        """Restore what :meth:`extra_state` returned."""

    def observe(self) -> dict:
        return observables.observe(self.state, self.sc, self.last_counts,
                                   self.field_solver.last_sweeps)


class Simulation:
    """Runs a scenario to its end (or a stop condition) and writes the run file.

    Args:
        scenario: a :class:`Scenario` or the path of a scenario file.
        backend: "auto", "cpu" or "gpu" (or a backend object).
    """

    def __init__(self, scenario, backend="auto"):
        if isinstance(scenario, (str, os.PathLike)):
            scenario = load_scenario(scenario)
        self.sc = scenario
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.model = Model(scenario, self.backend)
        self.dt_min = scenario.run.dt_min
        self.callbacks: list = []
        self.stop_reason: str | None = None
        self.last_row: dict = self.model.observe()
        self.writer: RunWriter | None = None
        self.wall_seconds = 0.0

    @property
    def state(self):
        return self.model.state

    def stop(self, reason: str) -> None:
        """Ask the loop to end after the current step."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def _default_callbacks(self):
        st = self.sc.run.stop
        cbs = []
        if st.on_extinction:
            cbs.append(StopOnExtinction())
        if st.max_burden > 0:
            cbs.append(StopAtBurden(st.max_burden))
        if st.wall_time_hours > 0:
            cbs.append(StopAfterWallTime(st.wall_time_hours * 3600))
        return cbs

    def run(self, path=None, progress: bool = False) -> Path:
        """Run to the end and write ``path`` (default: ``<run.name>.h5`` in the working folder).

        Returns the path of the run file. A KeyboardInterrupt closes the file cleanly (status
        "interrupted") and is re-raised.
        """
        sc = self.sc
        path = Path(path) if path else Path(f"{sc.run.name}.h5")
        cols = observables.columns(sc)
        self.writer = w = RunWriter(path, sc, self.model.grid, cols, backend=self.backend.name,
                                    device=self.backend.device)
        snap = TimeInterval(sc.run.snapshot_every_hours * 60.0)
        callbacks = self._default_callbacks() + list(self.callbacks)
        bar = Progress(sc.n_steps, disable=not progress)
        t0 = time.monotonic()
        status = "finished"
        w.event(self.state.time_min, "start", {"steps": sc.n_steps, "seed": sc.run.seed})
        w.row(self.last_row)
        snap(self)
        w.snapshot(self.state)
        try:
            while self.state.step < sc.n_steps and self.stop_reason is None:
                self.model.step()
                self.last_row = self.model.observe()
                w.row(self.last_row)
                if snap(self):
                    w.snapshot(self.state)
                bar(self)
                for cb in callbacks:
                    if cb.schedule(self):
                        cb(self)
            if self.stop_reason is not None:
                status = "stopped"
                w.event(self.state.time_min, "stop", {"reason": self.stop_reason})
            last = w.f["snapshots/step"]
            if last.shape[0] == 0 or last[-1] != self.state.step:
                w.snapshot(self.state)
        except KeyboardInterrupt:
            status = "interrupted"
            w.event(self.state.time_min, "interrupted", {})
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            self.wall_seconds = time.monotonic() - t0
            bar.close()
            w.close(status)
        return path
