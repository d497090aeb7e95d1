"""The model (an ordered list of steps over the state) and the simulation loop around it.

model.step():  fields -> tumor rules -> (observables, taken by the loop)
Simulation.run(): step, record a time-series row, fire schedules (snapshots, progress, stop
                  conditions), until the duration or a stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import __version__, memory, observables
from .backend import CPU, get_backend
from .callbacks import Progress, StopAtBurden, StopOnExtinction, StopOnRows
from .controllers import Controllers
from .errors import RunFileError
from .grid import Grid
from .initial import initial_state
from .io import checkpoint as ckpt
from .io import schema
from .io.background import BackgroundWriter, available_bytes, background_bytes
from .io.diskspace import DiskFilledError, DiskFullError
from .io.hdf5 import RunWriter, last_row
from .io.runfile import attr_str, check_format, open_run_file, reading
from .scenario import Scenario, load_scenario, loads_scenario
from .steps.fields import TransportedFields
from .steps.therapy import Therapy
from .writers import Checkpointer, InMemoryWriter, run_file_writers, write_checkpoint


class StepClasses(NamedTuple):
    """The classes of the three stepping families of one backend, and the launcher they take
    (None: the numpy reference classes, which take none)."""

    fields: type
    tumor: type
    stroma: type
    launcher: object = None


def step_classes(backend) -> StepClasses:
    """The step classes for ``backend``, chosen by the launcher it gives: None (the CPU) gives
    the numpy reference classes of tmesim.steps.<family>, a launcher (GPU, Portable) their kernel
    twins of tmesim.steps.<family>_kernel, which take it. The kernel modules are imported only
    then, so the CPU path never imports them."""
    launcher = backend.launcher()
    if launcher is None:
        from .steps.fields import FieldSolver
        from .steps.stroma import StromaRules
        from .steps.tumor import TumorRules

        return StepClasses(FieldSolver, TumorRules, StromaRules)
    from .steps.fields_kernel import KernelFieldSolver
    from .steps.stroma_kernel import KernelStromaRules
    from .steps.tumor_kernel import KernelTumorRules

    return StepClasses(KernelFieldSolver, KernelTumorRules, KernelStromaRules, launcher)


class Model:
    """Grid, state and the ordered steps of one scenario.

    One step: therapy (plasma levels over the step, drug supply) -> fields (over dt with the
    current cells) -> tumor rules -> stromal rules. Observables are taken by the loop.

    Where things live: the state's per-site arrays on the backend's device (built on the host by
    tmesim.initial, moved once); plasma and dose_total on the host (therapy's PK and the
    controllers run there, on a few scalars per drug). The steps are the numpy classes on the
    CPU and their kernel twins on the GPU and Portable backends (:func:`step_classes`); within a
    step nothing is copied to the host but small results (counts, a biopsy's region).

    Args:
        sc: a validated scenario.
        backend: a backend object (default CPU()).
        controllers: {drug name: function}, see tmesim.controllers.

    Raises:
        UserError: on a GPU, when the run's estimated memory (tmesim.memory) exceeds the
            device's free memory.
    """

    def __init__(self, sc: Scenario, backend=None, controllers=None):
        self.sc = sc
        self.backend = backend or CPU()
        memory.check_fits(sc, self.backend)  # before anything is allocated on the device
        self.classes = cls = step_classes(self.backend)
        L = {} if cls.launcher is None else {"launcher": cls.launcher}
        self.grid = Grid(sc.grid.shape, sc.grid.dx_um, sc.grid.neighbourhood)
        self.state = initial_state(sc, self.grid).to_backend(self.backend.to_device)
        self.field_solver = TransportedFields(cls.fields, sc, self.grid, **L)
        self.controllers = Controllers(sc, self.grid, controllers)
        self.therapy = Therapy(sc, self.field_solver, self.controllers)
        self.last_row: dict | None = None
        if sc.drugs:
            # the supply of the first step is the plasma at time 0 (the initial fields hold it)
            self.field_solver.set_supply(self.therapy.supply(self.state))
        self.tumor_rules = cls.tumor(sc.tumor, self.grid, sc.run.seed, sc.run.dt_min, sc.drugs, **L)
        if L:
            # the stroma step runs after the tumor step has read its counts back: it can reuse
            # the tumor rules' claim and action arrays (9 bytes per voxel less on the device)
            L = dict(L, claims=self.tumor_rules.claims, action=self.tumor_rules.action)
        self.stroma_rules = cls.stroma(sc.caf, sc.tam, self.grid, sc.run.seed, sc.run.dt_min, **L)
        names = sc.field_names
        self.oxygen = names.index("oxygen")
        self.index = {
            n: (names.index(n) if n in names else None) for n in ("hgf", "igf1", "signal")
        }
        self.last_counts = None
        self.last_stroma = None

    def _field(self, name):
        i = self.index[name]
        return None if i is None else self.state.fields[i]

    def step(self):
        """Advance one agent step: therapy, fields over dt, tumor rules, stromal rules."""
        st = self.state
        if self.controllers.active:
            # decisions from the observables of the state the step starts from
            self.controllers.decide(self.last_row or self.observe(), st, st.step)
        self.therapy.before_fields(st)
        self.field_solver.step(st.fields, st.kind, st.tumor_state)
        self.therapy.after_fields(st)
        drugs = self.therapy.tissue_levels(st) if self.sc.drugs else None
        self.last_counts = self.tumor_rules.apply(
            st.kind,
            st.tumor_state,
            st.fields[self.oxygen],
            st.step,
            st.memory,
            st.time_in_P_min,
            self._field("hgf"),
            self._field("igf1"),
            drugs,
        )
        if self.stroma_rules.active(st.kind):
            self.last_stroma = self.stroma_rules.apply(st.kind, self._field("signal"), st.step)
        st.step += 1
        st.time_min = st.step * self.sc.run.dt_min
        return self.last_counts

    def extra_state(self) -> dict:
        """State the steps keep outside :class:`State` (the controllers'), as {name: array}.

        A checkpoint stores it beside the state's arrays; :meth:`load_extra_state` restores it."""
        return self.controllers.state() if self.controllers.active else {}

    def load_extra_state(self, arrays: dict) -> None:
        """Restore what :meth:`extra_state` returned (called with the restored state)."""
        self.controllers.load(arrays)
        self.last_row = None  # the next decision observes the restored state afresh

    def observe(self) -> dict:
        self.last_row = observables.observe(
            self.state,
            self.sc,
            self.last_counts,
            self.field_solver.last_sweeps,
            self.therapy.last_given,
            self.last_stroma,
            launcher=self.classes.launcher,
        )
        return self.last_row


class Simulation:
    """Runs a scenario to its end (or a stop condition), firing its output writers and callbacks.

    After each agent step the loop records the row of observables, fires the output writers
    whose schedules say so (:attr:`output_writers`, tmesim.writers: by default the run file's
    time series, snapshots and checkpoints, as the scenario's ``[run]`` asks), then the
    callbacks (:attr:`callbacks`: the progress bar, the scenario's stop conditions, the user's).
    A simulation whose writers are all in memory (:class:`tmesim.writers.InMemoryWriter`) writes
    no file.

    Checkpoints: the state is written into the run file (tmesim.io.checkpoint) every
    ``run.checkpoint_every_hours`` of simulated time, before a wall-time stop
    (``run.stop.wall_time_hours``, or :attr:`wall_deadline`) and when the process receives
    SIGTERM or SIGUSR1 (what Slurm sends before a job's time limit; handled when the run is in
    the main thread). After a wall-time stop or a signal the run ends with status "interrupted",
    and :meth:`resume` (``tmesim resume run.h5``) continues it: the finished file is the same,
    dataset for dataset and bit for bit, as that of a run never interrupted, except for the
    root attribute ``created`` (of the first start), the ``resume`` rows of ``/events`` and the
    ``/checkpoint`` group itself.

    Args:
        scenario: a :class:`Scenario` or the path of a scenario file.
        backend: "auto", "cpu" or "gpu" (or "portable", or a backend object).

    Attributes:
        output_writers: {name: writer} (tmesim.writers), fired in this order after each step.
        callbacks: [callback] (tmesim.callbacks), called after the writers in this order when
            their schedules fire; it starts with the scenario's stop conditions
            (``[run.stop]``: extinction, maximum burden).
        status: how the last :meth:`run` ended: "finished", "stopped" (a stop condition),
            "interrupted" (signal, wall time, Ctrl-C or a full disk: resume it) or "failed";
            None before.
        wall_deadline: optional absolute wall-clock time (``time.time()`` seconds) at which to
            checkpoint and end as "interrupted", e.g. the end of a cluster job minus the time a
            checkpoint (and the writes still waiting for the writer thread) takes.
        background_writes: write the run file on a thread of its own
            (tmesim.io.background), so that the loop hands over host copies of the arrays and
            steps on while they are compressed and written; it does where the host has room for
            the copies (:func:`tmesim.io.background.background_bytes`). False: every write is
            made in the loop (for debugging, or to time the writes). The file is the same.
        resumed_from: the step the last run continued from (None for a fresh start).
    """

    #: statuses a resume continues; "finished" and "stopped" runs have nothing left to do
    RESUMABLE = ("running", "interrupted", "failed")
    #: signals that ask for a checkpoint and a clean end
    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, scenario, backend="auto", controllers=None) -> None:
        if isinstance(scenario, (str, os.PathLike)):
            scenario = load_scenario(scenario)
        self.sc = scenario
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.model = Model(scenario, self.backend, controllers)
        self.dt_min = scenario.run.dt_min
        self.output_writers: dict = run_file_writers(scenario)
        self.callbacks: list = self._default_callbacks()
        self.stop_reason: str | None = None
        self.interrupt_reason: str | None = None
        self.status: str | None = None
        self.wall_deadline: float | None = None
        self.resumed_from: int | None = None
        self.checkpoints_written = 0
        self.last_row: dict = self.model.observe()
        self.writer: RunWriter | BackgroundWriter | None = None
        self.background_writes = True
        self.wall_seconds = 0.0
        self._signal: str | None = None

    @property
    def state(self):
        return self.model.state

    def stop(self, reason: str) -> None:
        """Ask the loop to end after the current step."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def _default_callbacks(self):
        # the wall-time limit is not a stop condition here: the loop checkpoints and ends the run
        # as "interrupted", so that it can be resumed (see _interrupt_due)
        st = self.sc.run.stop
        cbs = []
        if st.on_extinction:
            cbs.append(StopOnExtinction())
        if st.max_burden > 0:
            cbs.append(StopAtBurden(st.max_burden))
        return cbs

    # ------------------------------------------------------------------ running

    def run(self, path=None, progress: bool = False, resume: bool = False) -> Path | None:
        """Run to the end and write ``path`` (default: ``<run.name>.h5`` in the working folder).

        With ``resume=True`` and an existing ``path`` written for this same scenario, continue
        it from its checkpoint instead (see :meth:`resume`); a run already "finished" or
        "stopped" is left as it is. Returns the path of the run file; :attr:`status` says how it
        ended. A KeyboardInterrupt closes the file cleanly (status "interrupted") and is
        re-raised; the run can be resumed from its last scheduled checkpoint. So does a full
        disk: the writer claims the room of each write first (tmesim.io.diskspace), and where
        there is none the run stops before writing (status "interrupted") and raises
        :class:`~tmesim.io.diskspace.DiskFullError`, which says where the run stopped; once
        space is freed, :meth:`resume` continues it as if it had never stopped. A ``path`` that
        another live process is writing is refused
        (:class:`~tmesim.io.checkpoint.RunLockedError`); a finished or abandoned run there is
        replaced.

        When no output writer needs a run file (only :class:`tmesim.writers.InMemoryWriter`),
        nothing is written and None is returned; ``path`` and ``resume`` must then be left out.
        """
        sc = self.sc
        if not any(x.needs_file for x in self.output_writers.values()):
            if path is not None or resume:
                raise ValueError(
                    "Simulation.run: no output writer writes a run file; give no "
                    f"path (got {path!r}) and no resume (got {resume!r})"
                )
            self.writer = None
            self._loop(progress, fresh=True)
            return None
        path = Path(path) if path else Path(f"{sc.run.name}.h5")
        fresh = True
        if resume and path.exists():
            w = self._reopen(path)
            if w is None:
                return path
            fresh = w.resumed_checkpoint is None
        else:
            cols = observables.columns(sc)
            arrays = {k: self.backend.to_host(v) for k, v in self.state.arrays().items()}
            w = RunWriter(
                path,
                sc,
                self.model.grid,
                cols,
                backend=self.backend.name,
                device=self.backend.device,
                checkpoint_arrays=arrays,
            )
        self.writer = self._background(w)
        self._loop(progress, fresh)
        return path

    def _background(self, w: RunWriter) -> RunWriter | BackgroundWriter:
        """``w``, or a BackgroundWriter around it where :attr:`background_writes` is on and the
        host has room for the copies handed over to it."""
        if not self.background_writes:
            return w
        state_bytes = sum(int(a.nbytes) for a in self.state.arrays().values())
        room = background_bytes(state_bytes, available_bytes())
        if room == 0:
            return w
        return BackgroundWriter(w, room, lambda: (self.state.step, self.state.time_min))

    @classmethod
    def resume(cls, path, backend="auto", progress: bool = False, callbacks=()) -> Simulation:
        """Continue the run in ``path`` from its last checkpoint, to its end.

        The scenario is the one stored in the file. Time-series rows, snapshots and events
        written after the checkpoint are removed first, so the finished file is what an
        uninterrupted run writes (see the class docstring for what differs). A file whose
        checkpoint is from another format major version is refused; one with no checkpoint yet
        is run again from the start. ``callbacks`` are added before continuing (a user's own
        callbacks keep no state across a resume). Returns the simulation (its :attr:`status`,
        :attr:`state`, :attr:`last_row`).
        """
        sim = cls(stored_scenario(path), backend)
        sim.callbacks.extend(callbacks)
        sim.run(path, progress=progress, resume=True)
        return sim

    def _reopen(self, path: Path) -> RunWriter | None:
        """Check ``path`` can be resumed by this simulation and open it, cut back to its
        checkpoint, with the state restored. None when the run has already ended."""
        f = open_run_file(path)
        try:
            check_format(f, str(path), resume=True)
            if attr_str(f, "scenario") != self.sc.text:
                raise RunFileError(
                    f"{path}: was written by another scenario than the one given; "
                    f"resume it with `tmesim resume {path}`, which uses its own"
                )
            status = attr_str(f, "status").strip()
        except OSError as e:
            raise RunFileError(
                f"{path}: its root attributes cannot be read ({e}): the writer was "
                "probably killed while rewriting its status; the time series and "
                "snapshots up to the last checkpoint are still readable with h5py"
            ) from None
        finally:
            f.close()
        if status not in self.RESUMABLE:
            self.status = status
            # a writer killed after its final status but before closing left the file flagged
            # as open: clear that, so plain HDF5 opens the ended run too
            ckpt.clear_ended(path)
            with open_run_file(path) as g, reading(str(path), "its last time-series row"):
                self.last_row = last_row(g, list(g[schema.TIMESERIES]))
                # where it ended, for messages (the state's arrays stay the initial ones)
                self.state.step = g[schema.TIMESERIES]["time_min"].shape[0] - 1
                self.state.time_min = float(self.last_row["time_min"])
            return None
        w = RunWriter.reopen(path, self.sc, self.model.grid, observables.columns(self.sc))
        try:
            ck = w.resumed_checkpoint
            if ck is not None:
                self._restore(ck, path)
                self.last_row = w.last_row()
            self.resumed_from = ck.step if ck is not None else 0
        except BaseException:
            w.close("failed")
            raise
        return w

    def _restore(self, ck, path) -> None:
        arrays = self.state.arrays()
        if set(ck.arrays) != set(arrays):
            raise RunFileError(
                f"{path}: its checkpoint holds state arrays {sorted(ck.arrays)}, "
                f"this tmesim's state has {sorted(arrays)}"
            )
        for name, a in arrays.items():
            src = ck.arrays[name]
            if src.shape != a.shape or src.dtype != a.dtype:
                raise RunFileError(
                    f"{path}: checkpoint array {name} is {src.dtype}{src.shape}, "
                    f"expected {a.dtype}{a.shape}"
                )
            # in place (steps may hold references); host arrays (plasma and dose_total always,
            # everything on the CPU) take the host copy as it is
            a[...] = src if isinstance(a, np.ndarray) else self.backend.to_device(src)
        self.state.step = ck.step
        self.state.time_min = ck.time_min
        self.model.load_extra_state(ck.extra)

    def checkpoint(self) -> int:
        """Write a checkpoint of the current state into the open run file; returns the slot
        (once written: a background writer is drained first)."""
        if self.writer is None:
            raise RuntimeError("Simulation.checkpoint: no run file is open")
        write_checkpoint(self)
        self.writer.drain()
        slot = self.writer.checkpoint_slot
        assert slot is not None  # a checkpoint was just committed
        return slot

    def _event(self, time_min: float, kind: str, detail: dict) -> None:
        """Record an event in the run file (a run without one keeps none)."""
        if self.writer is not None:
            self.writer.event(time_min, kind, detail)

    def _on_signal(self, signum, frame) -> None:
        # only a flag: the loop checkpoints at the end of the step, when the state is whole
        self._signal = f"{signal.Signals(signum).name} received"

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python delivers signals to the main thread only (e.g. Dask workers)
        prev = {}
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                prev[sig] = signal.signal(sig, self._on_signal)
        return prev

    def _interrupt_due(self, wall_end: float) -> str | None:
        if self._signal:
            return self._signal
        if time.monotonic() >= wall_end:
            return f"wall time {self.sc.run.stop.wall_time_hours:g} h reached"
        if self.wall_deadline is not None and time.time() >= self.wall_deadline:
            return "wall-clock deadline reached"
        return None

    def _loop(self, progress: bool, fresh: bool) -> None:
        sc = self.sc
        writers = list(self.output_writers.values())
        each_step = [x for x in writers if not x.after_callbacks]
        going_on = [x for x in writers if x.after_callbacks]
        # an interrupt ends a run to be resumed: only a run that checkpoints can be
        interruptible = any(isinstance(x, Checkpointer) for x in writers)
        bar = Progress(sc.n_steps, disable=not progress)
        callbacks = [bar] + list(self.callbacks)
        t0 = time.monotonic()
        hours = sc.run.stop.wall_time_hours
        wall_end = t0 + hours * 3600.0 if hours > 0 else float("inf")
        status = "finished"
        raising = False
        self.stop_reason = self.interrupt_reason = self._signal = None
        handlers = self._install_signal_handlers() if interruptible else {}
        try:
            if fresh:
                self._event(
                    self.state.time_min, "start", {"steps": sc.n_steps, "seed": sc.run.seed}
                )
            for x in writers:
                x.start(self, fresh)
            if self.resumed_from is not None:
                self._event(
                    self.state.time_min,
                    "resume",
                    {
                        "from_step": self.resumed_from,
                        "backend": self.backend.name,
                        "tmesim_version": __version__,
                    },
                )
            while self.state.step < sc.n_steps and self.stop_reason is None:
                self.model.step()
                for t_ev, kind_ev, detail in self.model.controllers.pop_events():
                    self._event(t_ev, kind_ev, detail)
                self.last_row = self.model.observe()
                for x in each_step:
                    if x.schedule is not None and x.schedule(self):
                        x.write(self)
                for cb in callbacks:
                    if cb.schedule(self):
                        cb(self)
                if self.stop_reason is not None or self.state.step >= sc.n_steps:
                    break  # the run ends here: a checkpoint would never be used
                if interruptible:
                    self.interrupt_reason = self._interrupt_due(wall_end)
                    if self.interrupt_reason is not None:
                        break
                for x in going_on:
                    if x.schedule is not None and x.schedule(self):
                        x.write(self)
            if self.stop_reason is not None:
                status = "stopped"
                self._event(self.state.time_min, "stop", {"reason": self.stop_reason})
            elif self.interrupt_reason is not None:
                status = "interrupted"
            for x in writers:
                x.finish(self, status)  # an interrupted run's checkpoint, a last snapshot
            if status == "interrupted":
                self._event(
                    self.state.time_min,
                    "interrupted",
                    {"reason": self.interrupt_reason, "checkpoint_step": self.state.step},
                )
            if self.writer is not None:
                self.writer.drain()  # a write that fails in the writer thread fails the run here
        except DiskFullError as exc:
            # nothing of the write that found no room was written: the file stands as its last
            # flush left it, resumable from its last checkpoint once space is freed
            status = "interrupted"
            raising = True
            self.interrupt_reason = exc.reason
            _, time_min = self._stopped_at()
            with contextlib.suppress(DiskFullError):
                self._event(time_min, "interrupted", {"reason": exc.reason})
            raise self._disk_full(exc) from None
        except KeyboardInterrupt:
            status = "interrupted"
            raising = True
            with contextlib.suppress(DiskFullError):
                self._event(self.state.time_min, "interrupted", {"reason": "KeyboardInterrupt"})
            raise
        except BaseException:
            status = "failed"
            raising = True
            raise
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.wall_seconds = time.monotonic() - t0
            self.status = status
            bar.close()
            if self.writer is not None:
                try:
                    self.writer.close(status)
                except DiskFullError as exc:
                    # no room for the last rows or the status: the file closed as its last flush
                    # left it; said here unless an exception on its way out says more
                    if not raising:
                        self.status = "interrupted"
                        self.interrupt_reason = exc.reason
                        raise self._disk_full(exc) from None

    def _stopped_at(self) -> tuple[int, float]:
        """(step, time_min) where the run's file stopped after a failed write: that of the
        write, which a background writer makes after the loop has stepped on."""
        at = getattr(self.writer, "failed_at", None)
        return at if at is not None else (self.state.step, self.state.time_min)

    def _disk_full(self, exc: DiskFullError) -> DiskFullError:
        """``exc`` saying where the run stopped and how to continue it."""
        w = self.writer
        if w is None:
            return exc
        step, _ = self._stopped_at()
        if isinstance(exc, DiskFilledError):
            return exc.with_after(
                f"the run stopped at step {step}, and its file may be damaged past its last "
                f"checkpoint; once space is freed, try `tmesim resume {w.path}`"
            )
        if w.checkpoint_step is None:
            after = (
                f"the run stopped at step {step}, before its first checkpoint; once space is "
                f"freed, `tmesim resume {w.path}` runs it again from the start"
            )
        else:
            after = (
                f"the run stopped at step {step}; once space is freed, `tmesim resume {w.path}` "
                f"continues it from its checkpoint of step {w.checkpoint_step}"
            )
        return exc.with_after(after)


def stored_scenario(path) -> Scenario:
    """The scenario a run file was written for (its stored TOML text; relative mask paths are
    resolved from the folder of the scenario file it was first loaded from)."""
    f = open_run_file(path)
    try:
        check_format(f, str(path), resume=True)
        text = attr_str(f, "scenario")
        version = schema.parse_version(attr_str(f, "format_version"))
        base = "."
        if ckpt.GROUP in f:
            base = attr_str(f[ckpt.GROUP], "scenario_base_dir", ".")
    finally:
        f.close()
    sc = loads_scenario(text, base_dir=base)
    if version < schema.PUSH_DEFAULT_SINCE and "push_reach_um" not in (
        tomllib.loads(text).get("tumor", {}).get("mechanics", {})
    ):
        # written before cells pushed by default: the run went on without pushing, and goes on so
        mech = dataclasses.replace(sc.tumor.mechanics, push_reach_um=0.0)
        sc = dataclasses.replace(sc, tumor=dataclasses.replace(sc.tumor, mechanics=mech))
    if version < schema.DTEP_SINCE:
        # written before expanded persisters and the recalibrated P -> R rate: the run went on
        # without P -> E and with the old rate where its scenario named none, and goes on so
        named = tomllib.loads(text).get("tumor", {}).get("transitions", {})
        tr = dataclasses.replace(sc.tumor.transitions, expansion_per_h=0.0)
        if "resistance_per_h" not in named:
            tr = dataclasses.replace(tr, resistance_per_h=schema.OLD_RESISTANCE_PER_H)
        sc = dataclasses.replace(sc, tumor=dataclasses.replace(sc.tumor, transitions=tr))
    return sc


# ------------------------------------------------------------------ one scenario, many runs


@dataclass
class ScenarioRun:
    """What :func:`run_scenario` returns: the simulation as it ended (its ``status``,
    ``stop_reason``, ``resumed_from``, ``state``), its run file (None for an in-memory run) and
    its time series (None for a run written to a file)."""

    simulation: Simulation
    path: Path | None
    series: dict | None

    @property
    def status(self) -> str | None:
        return self.simulation.status


def run_scenario(
    scenario,
    overrides=None,
    *,
    out=None,
    stop=None,
    backend="cpu",
    resume: bool = False,
    wall_deadline: float | None = None,
    progress: bool = False,
) -> ScenarioRun:
    """Run one scenario, into a run file or in memory: how validation, compare and sweep run.

    With ``out``, the run writes that file with the scenario's writers and stop conditions, as
    ``tmesim run`` does. Without, it runs in memory (a :class:`tmesim.writers.InMemoryWriter`,
    no file) with the caller's stop condition only: the scenario's ``[run.stop]`` (extinction,
    maximum burden, wall time) is not applied, and the run takes all ``n_steps`` steps unless
    ``stop`` ends it.

    Args:
        scenario: a :class:`Scenario`, or the path of a scenario file.
        overrides: for a path: ``["key.path=value", ...]`` or ``{"key.path": value}``.
        out: the run file to write; None: in memory.
        stop: in memory: None, or a callable of the rows so far ({column: value} each, the first
            that of the initial state) returning True to end the run after the latest row.
        backend: "cpu" (default), "auto", "gpu", "portable" or a backend object.
        resume: with ``out``: continue it from its checkpoint when it has one
            (:meth:`Simulation.run`).
        wall_deadline: with ``out``: :attr:`Simulation.wall_deadline`.
        progress: show a progress bar on stderr.

    Returns:
        a :class:`ScenarioRun`; ``series`` is {column: array, "day": array} in memory.
    """
    if isinstance(scenario, Scenario):
        if overrides:
            raise ValueError(
                "run_scenario: overrides apply to a scenario file, not to a "
                f"Scenario (got {overrides!r})"
            )
    else:
        scenario = load_scenario(scenario, overrides=overrides)
    sim = Simulation(scenario, backend=backend)
    if out is None:
        if resume or wall_deadline is not None:
            raise ValueError("run_scenario: resume and wall_deadline need a run file (out)")
        mem = InMemoryWriter()
        sim.output_writers = {"in_memory": mem}
        sim.callbacks = [] if stop is None else [StopOnRows(stop, mem, "stop(rows) was true")]
        sim.run(progress=progress)
        return ScenarioRun(sim, None, mem.series())
    if stop is not None:
        raise ValueError("run_scenario: stop(rows) is for in-memory runs (out=None)")
    sim.wall_deadline = wall_deadline
    return ScenarioRun(sim, sim.run(out, progress=progress, resume=resume), None)


def run_in_memory(path, overrides=None, stop=None) -> dict:
    """The time series {column: array, "day": array} of a scenario file run in memory on the
    CPU (:func:`run_scenario` without ``out``: only ``stop`` ends it early)."""
    series = run_scenario(path, overrides, stop=stop).series
    assert series is not None  # an in-memory run always has its series
    return series


def run_series(tasks, jobs: int = 1) -> list[dict]:
    """:func:`run_in_memory` of each task (scenario path, overrides, stop), in task order: in
    this process, or in ``jobs`` worker processes (the tasks are pickled: stop must be a
    module-level callable or an object of a module-level class)."""
    tasks = list(tasks)
    if jobs > 1 and tasks:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(run_in_memory, *zip(*tasks)))
    return [run_in_memory(*t) for t in tasks]
