"""Interactive mode: load a scenario, change key parameters, run it with the layers updating live.

The user edits ``key.path=value`` overrides (one a line, prefilled with the run's duration, seed and
snapshot interval and with every drug's schedule and dose keys), exactly what ``tmesim run --set``
takes; they are applied through ``tmesim.load_scenario(path, overrides=...)``, so a mistake is
reported with its key path, the value and what was expected, before anything runs.

The run is a plain ``tmesim.Simulation`` writing its HDF5 file as usual, in a background thread
(``napari.qt.threading``). A callback on the simulation (the simulator's own callback mechanism:
a ``schedule(sim) -> bool`` and ``__call__(sim)``) reports progress to the GUI thread through a Qt
signal after every new snapshot (and at most twice a second in between, for the time series),
blocks the worker while paused, and asks the simulation to stop (``sim.stop(reason)``) when the
user presses Stop, so the file ends with status "stopped" and a stop event, like any other stop.
The layers are read from the file as it grows, the same code path as following a run written by
another process.
"""

from __future__ import annotations

import threading
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .._layers import remove_run, run_layers
from .explorer import RunExplorer

if TYPE_CHECKING:  # napari is imported when a run starts, not when the plugin loads
    import napari.viewer  # napari injects the viewer by this annotation, spelled out
    from napari.qt.threading import FunctionWorker, GeneratorWorker

STOP_REASON = "stopped in the viewer"
# leaves of a [drugs.*] table offered for editing: the schedule and anything dose-like
_DRUG_KEY_WORDS = ("schedule", "dose")


def _leaves(data, prefix=""):
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, data


def default_overrides(scenario_path) -> list[str]:
    """The ``key.path=value`` lines offered for a scenario: ``run.duration_days``, ``run.seed``,
    ``run.snapshot_every_hours`` (their values after validation, so defaults show too) and the
    schedule and dose keys of every drug the file defines (as written in the file).

    Raises ``tmesim.ScenarioError`` (a UserError) for a scenario that does not validate."""
    import tmesim
    from tmesim.scenario import toml_value

    sc = tmesim.load_scenario(scenario_path)
    lines = [
        f"run.duration_days={toml_value(sc.run.duration_days)}",
        f"run.seed={toml_value(sc.run.seed)}",
        f"run.snapshot_every_hours={toml_value(sc.run.snapshot_every_hours)}",
    ]
    with open(scenario_path, "rb") as fh:
        raw = tomllib.load(fh)
    drugs = raw.get("drugs")
    if isinstance(drugs, dict):
        for key, value in _leaves(drugs, "drugs"):
            if any(w in key.lower() for w in _DRUG_KEY_WORDS):
                lines.append(f"{key}={toml_value(value)}")
    return lines


def parse_overrides(text: str) -> list[str]:
    """Override lines from the editor: blank lines and ``#`` comments are ignored."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


class _Bridge(QObject):
    """Lives in the GUI thread: a signal emitted from the worker is queued to it (Qt delivers
    cross-thread signals in the receiver's thread)."""

    progress = Signal(object)


class ViewerLink:
    """Simulation callback connecting a run to the viewer: progress, pause, stop.

    Args:
        bridge: emits progress dicts {step, n_steps, time_min, burden, snapshot} to the GUI.
        snapshot_every_min: the run's snapshot interval (mirrors Simulation's snapshot schedule,
            so the GUI re-reads the layers when the file has a new snapshot).
        n_steps: steps of the whole run, for the progress text.
        min_interval_s: least wall time between progress reports without a new snapshot.
    """

    def __init__(
        self, bridge: _Bridge, snapshot_every_min: float, n_steps: int, min_interval_s: float = 0.5
    ):
        from tmesim.schedules import IterationInterval, TimeInterval

        self.schedule = IterationInterval(1)  # every step: pause and stop act at once
        self._snap = TimeInterval(snapshot_every_min, first=False)
        self.bridge = bridge
        self.n_steps = n_steps
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._resume = threading.Event()
        self._resume.set()
        self.stop_requested = False
        self.paused_at_step: int | None = None

    # called from the GUI thread
    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def request_stop(self) -> None:
        self.stop_requested = True
        self._resume.set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    # called from the worker thread, after each step (and after its snapshot, if any)
    def __call__(self, sim) -> None:
        snapshot = self._snap(sim)
        now = time.monotonic()
        if snapshot or now - self._last >= self.min_interval_s:
            self._last = now
            self._emit(sim, snapshot)
        if not self._resume.is_set():
            self.paused_at_step = sim.state.step
            self._emit(sim, False, paused=True)
            self._resume.wait()
            self.paused_at_step = None
        if self.stop_requested:
            sim.stop(STOP_REASON)

    def _emit(self, sim, snapshot: bool, paused: bool = False) -> None:
        self.bridge.progress.emit(
            dict(
                step=sim.state.step,
                n_steps=self.n_steps,
                time_min=float(sim.state.time_min),
                burden=sim.last_row.get("burden"),
                snapshot=snapshot,
                paused=paused,
            )
        )


class ScenarioRunner(QWidget):
    """The interactive-run dock widget.

    Each run replaces the layers of this widget's previous run (its file stays on disk; File >
    Open shows it again), so the viewer shows one interactive run at a time.

    Args:
        viewer: the napari viewer (napari passes it by this argument's annotation when the widget
            is opened from the Plugins menu).
        scenario: a scenario file to load at once (optional).
        output: the run file to write (default: ``<run.name>.h5`` in the working folder).
    """

    def __init__(self, viewer: napari.viewer.Viewer, scenario=None, output=None) -> None:
        super().__init__()
        self.viewer = viewer
        self.explorer: RunExplorer | None = None
        self.worker: FunctionWorker | GeneratorWorker | None = None
        self.link: ViewerLink | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self.updates = 0  # progress reports handled (how "live" it was)
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self._out_path: str | None = None

        self.scenario_edit = QLineEdit()
        self.scenario_edit.setPlaceholderText("scenario .toml")
        browse = QPushButton("…")
        browse.setToolTip("choose a scenario file")
        browse.clicked.connect(self._browse)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(lambda: self.load(self.scenario_edit.text()))
        self.overrides_edit = QPlainTextEdit()
        self.overrides_edit.setPlaceholderText("key.path=value, one a line")
        self.overrides_edit.setToolTip("scenario overrides, as tmesim run --set takes them")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("run file (default: <run.name>.h5)")
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.start)
        self.pause_button = QPushButton("Pause")
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.status = QLabel("load a scenario")
        self.status.setWordWrap(True)

        row = QHBoxLayout()
        row.addWidget(self.scenario_edit, 1)
        row.addWidget(browse)
        row.addWidget(self.load_button)
        buttons = QHBoxLayout()
        for b in (self.run_button, self.pause_button, self.stop_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Scenario"))
        lay.addLayout(row)
        lay.addWidget(QLabel("Overrides (key.path=value)"))
        lay.addWidget(self.overrides_edit, 1)
        lay.addWidget(QLabel("Run file"))
        lay.addWidget(self.output_edit)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        self._set_running(False)
        if output is not None:
            self.output_edit.setText(str(output))
        if scenario is not None:
            self.load(scenario)

    # ------------------------------------------------------------------------------ actions
    def load(self, path) -> bool:
        """Load a scenario and prefill the overrides; False (and a message) if it is invalid."""
        from tmesim.errors import UserError

        path = str(path).strip()
        self.scenario_edit.setText(path)
        if not path or not Path(path).is_file():
            self._say(f"{path or '(none)'}: no such scenario file", error=True)
            return False
        try:
            lines = default_overrides(path)
        except (UserError, tomllib.TOMLDecodeError, OSError) as exc:
            self._say(str(exc), error=True)
            return False
        self.overrides_edit.setPlainText("\n".join(lines))
        self._say(f"loaded {Path(path).name}: edit the overrides, then Run")
        return True

    def start(self) -> bool:
        """Validate the scenario with the overrides and start the run in a worker thread."""
        from napari.qt.threading import create_worker

        import tmesim

        if self.running:
            return False
        path = self.scenario_edit.text().strip()
        try:
            sc = tmesim.load_scenario(
                path, overrides=parse_overrides(self.overrides_edit.toPlainText())
            )
        except (tmesim.UserError, tomllib.TOMLDecodeError, OSError, ValueError) as exc:
            self._say(str(exc), error=True)
            return False
        out = Path(self.output_edit.text().strip() or f"{sc.run.name}.h5").resolve()
        # the old layers of this file would show a run that is about to be replaced, and the
        # previous run's would stack under the new one's under the same names
        remove_run(self.viewer, out)
        if self._out_path is not None:
            remove_run(self.viewer, self._out_path)
        self._out_path = str(out)
        self.result, self.error, self.updates = None, None, 0
        self.link = ViewerLink(self._bridge, sc.run.snapshot_every_hours * 60.0, sc.n_steps)
        self.worker = create_worker(_run, sc, out, self.link, _start_thread=False)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(lambda: self._set_running(False))
        self._set_running(True)
        self._say(f"running {sc.run.name}: {sc.n_steps} steps -> {out}")
        self.worker.start()
        return True

    def toggle_pause(self) -> None:
        if self.link is None or not self.running:
            return
        if self.link.paused:
            self.link.resume()
            self.pause_button.setText("Pause")
            self._say("running")
        else:
            self.link.pause()
            self.pause_button.setText("Resume")
            self._say("pausing after this step")

    def stop(self) -> None:
        if self.link is not None and self.running:
            self.link.request_stop()
            self.pause_button.setText("Pause")
            self._say("stopping after this step")

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_running

    # ------------------------------------------------------------------------------ slots
    def _on_progress(self, p: dict) -> None:
        self.updates += 1
        days = p["time_min"] / 1440.0
        state = "paused" if p["paused"] else "running"
        self._say(
            f"{state}: step {p['step']} of {p['n_steps']}, {days:.2f} d, burden {p['burden']}"
        )
        # a new snapshot brings new layer data; in between, the time series grows
        self._show()

    def _show(self) -> None:
        if self._out_path is None or not Path(self._out_path).exists():
            return
        if self.explorer is None:
            self.explorer = RunExplorer(self.viewer)
            window = getattr(self.viewer, "window", None)
            if window is not None and hasattr(window, "add_dock_widget"):
                window.add_dock_widget(self.explorer, name="tmesim run", area="right")
        if self.explorer.path is None or not run_layers(self.viewer, self._out_path):
            self.explorer.open_run(self._out_path)
        else:
            self.explorer.refresh()
        if self.viewer.dims.ndim == 4 and self.viewer.dims.ndisplay == 2:
            self.viewer.dims.ndisplay = 3

    def _on_done(self, result: dict) -> None:
        self.result = result
        self._show()
        reason = f" ({result['stop_reason']})" if result["stop_reason"] else ""
        self._say(
            f"{result['status']}{reason}: {result['steps']} steps, "
            f"{result['time_min'] / 1440:.2f} d, burden {result['burden']} -> "
            f"{result['path']}"
        )

    def _on_error(self, exc: BaseException) -> None:
        from tmesim.errors import UserError

        self.error = f"{type(exc).__name__}: {exc}"
        self._say(
            str(exc) if isinstance(exc, UserError) else f"run failed: {self.error}", error=True
        )
        if not isinstance(exc, UserError):
            from napari.utils.notifications import show_error

            show_error(f"tmesim run failed: {self.error}")

    # ----------------------------------------------------------------------------- helpers
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Scenario", "", "TOML scenarios (*.toml)")
        if path:
            self.load(path)

    def _set_running(self, on: bool) -> None:
        self.run_button.setEnabled(not on)
        self.load_button.setEnabled(not on)
        self.pause_button.setEnabled(on)
        self.stop_button.setEnabled(on)
        if not on:
            self.pause_button.setText("Pause")

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #e04040;" if error else "")


def _run(sc, out: Path, link: ViewerLink) -> dict:
    """The worker: one simulation to the end, a stop, or an error (runs off the GUI thread)."""
    import tmesim

    sim = tmesim.Simulation(sc, backend="auto")
    sim.callbacks.append(link)
    sim.run(out, progress=False)
    return dict(
        path=str(out),
        steps=sim.state.step,
        time_min=float(sim.state.time_min),
        burden=sim.last_row.get("burden"),
        stop_reason=sim.stop_reason,
        status="stopped" if sim.stop_reason else "finished",
    )
