"""The run explorer dock widget: legend, time series with a time marker and events, refresh.

It works on the run whose layers are in the viewer (the first one found, or the one given): the
plot shows the run's cell counts (n_S, n_P, n_R, n_caf, n_tam) and, when the run has them, drug
columns (``plasma_<drug>``, ``dose_<drug>``); a vertical line follows the time slider, dotted lines
mark the run's events (treatment decisions, stops). "Refresh" re-reads a run that is still being
written; "Follow" does that every few seconds until the run's status is no longer "running", and
shows each new snapshot as it comes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import _style
from .._layers import add_run, refresh_layers, run_layers, show_snapshot, time_axis
from .._reader import META_KEY, read_events, read_timeseries

if TYPE_CHECKING:  # napari injects the viewer by this annotation, spelled out (a string here)
    import napari.viewer

COUNT_COLUMNS = {  # column -> (label, colour); colours match the label layers
    "n_S": ("S (sensitive)", _style.TUMOR_STATE_COLORS["S"]),
    "n_P": ("P (persister)", _style.TUMOR_STATE_COLORS["P"]),
    "n_R": ("R (resistant)", _style.TUMOR_STATE_COLORS["R"]),
    "n_E": ("E (expanded persister)", _style.TUMOR_STATE_COLORS["E"]),
    "n_caf": ("CAF", _style.KIND_COLORS["caf"]),
    "n_tam": ("TAM", _style.KIND_COLORS["tam"]),
}
DRUG_PREFIXES = ("plasma_", "dose_")


def drug_columns(columns) -> list[str]:
    """The drug-level columns of a run (``plasma_<drug>``, ``dose_<drug>``), in file order."""
    return [c for c in columns if c.startswith(DRUG_PREFIXES)]


class Legend(QWidget):
    """Colour swatches of the kind and tumor-state labels, from the layers' metadata (so a code
    a newer file adds shows with the colour the layer really uses)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(6)
        self.entries: list[tuple[str, str, str]] = []  # (layer, name, colour) shown

    def set_layers(self, layers) -> None:
        while self._grid.count():
            item = self._grid.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self.entries = []
        col = 0
        for layer in layers:
            meta = layer.metadata[META_KEY]
            if "names" not in meta:
                continue
            title = QLabel(f"<b>{layer.name}</b>")
            self._grid.addWidget(title, 0, col, 1, 2)
            row = 1
            for code, name in enumerate(meta["names"]):
                color = meta["colors"].get(code)
                if color is None:
                    continue  # transparent: empty voxel / no tumor cell
                text = _style.TUMOR_STATE_LABELS.get(name, name)
                swatch = QLabel()
                swatch.setFixedSize(14, 14)
                swatch.setStyleSheet(f"background-color: {color}; border: 1px solid #444;")
                self._grid.addWidget(swatch, row, col)
                self._grid.addWidget(
                    QLabel(f"{name}" + (f" ({text})" if text != name else "")), row, col + 1
                )
                self.entries.append((layer.name, name, color))
                row += 1
            col += 2


class RunExplorer(QWidget):
    """Dock widget for one run in ``viewer``.

    Args:
        viewer: the napari viewer (napari passes it by this argument's annotation when the widget
            is opened from the Plugins menu).
        path: the run file; default: the run of the first tmesim layer in the viewer (and the
            first one added later, if there is none yet).
        refresh_s: how often "Follow" re-reads the file, in seconds.
    """

    def __init__(self, viewer: napari.viewer.Viewer, path=None, refresh_s: float = 2.0):
        super().__init__()
        self.viewer = viewer
        self.path: str | None = None
        self.columns: dict[str, np.ndarray] = {}
        self.units: dict[str, str] = {}
        self.events: list[tuple[float, str, dict]] = []
        self.marker_time_h: float | None = None
        self.snapshot_index: int | None = None

        self.header = QLabel("no tmesim run in the viewer")
        self.header.setWordWrap(True)
        self.time_label = QLabel("")
        self.legend = Legend()
        self.figure = Figure(figsize=(4, 4.2), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("re-read the run file (a run still being written grows)")
        self.refresh_button.clicked.connect(self.refresh)
        self.follow_box = QCheckBox("Follow")
        self.follow_box.setToolTip(f"refresh every {refresh_s:g} s while the run is running")
        self.follow_box.toggled.connect(self._on_follow)
        self.timer = QTimer(self)
        self.timer.setInterval(int(refresh_s * 1000))
        self.timer.timeout.connect(self._on_timer)

        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(self.follow_box)
        buttons.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addWidget(self.header)
        lay.addWidget(self.time_label)
        lay.addWidget(self.legend)
        lay.addWidget(self.canvas, 1)
        lay.addLayout(buttons)

        self._axes: list[Axes] = []
        self._markers: list[Line2D] = []  # the time marker of each of _axes
        viewer.dims.events.current_step.connect(self._on_step)
        viewer.layers.events.inserted.connect(self._on_inserted)
        # no callbacks into a deleted widget (a lambda: the bound method may be gone by then)
        hooks = (
            (viewer.dims.events.current_step, self._on_step),
            (viewer.layers.events.inserted, self._on_inserted),
        )
        self.destroyed.connect(lambda *_: _disconnect(hooks))
        if path is not None:
            self.open_run(path)
        else:
            layers = run_layers(viewer)
            if layers:
                self._attach(layers[0].metadata[META_KEY]["path"])

    # ---------------------------------------------------------------------------- public
    def open_run(self, path) -> None:
        """Show the run at ``path``: add its layers unless the viewer has them, plot it."""
        if not run_layers(self.viewer, path):
            add_run(self.viewer, path)
        self._attach(path)

    def refresh(self, to_last: bool | None = None) -> bool:
        """Re-read the run (layers, time series, events); True when it changed.

        ``to_last``: move the time slider to the newest snapshot when the run has new ones
        (True, what Follow does), or only if it showed the last one (None)."""
        if self.path is None:
            return False
        changed = refresh_layers(self.viewer, self.path, to_last=to_last)
        self._load_series()
        self._update_header()
        self._on_step()
        return changed

    def show_last(self) -> None:
        """Move the time slider to the run's newest snapshot."""
        layers = self._layers()
        if layers:
            n = len(layers[0].metadata[META_KEY]["times_min"])
            show_snapshot(self.viewer, layers[0], n - 1)

    def set_follow(self, on: bool) -> None:
        self.follow_box.setChecked(bool(on))

    @property
    def following(self) -> bool:
        return self.timer.isActive()

    # --------------------------------------------------------------------------- internals
    def _attach(self, path) -> None:
        layers = run_layers(self.viewer, path)
        self.path = layers[0].metadata[META_KEY]["path"] if layers else str(path)
        self._load_series()
        self._update_header()
        self._on_step()

    def _layers(self):
        return run_layers(self.viewer, self.path) if self.path else []

    def _meta(self) -> dict | None:
        layers = self._layers()
        return layers[0].metadata[META_KEY] if layers else None

    def _update_header(self) -> None:
        meta = self._meta()
        if meta is None:
            self.header.setText("no tmesim run in the viewer")
            return
        n = len(meta["times_min"])
        self.header.setText(
            f"<b>{meta.get('run') or 'run'}</b> — {meta.get('status') or '?'}, "
            f"{n} snapshot{'s' * (n != 1)}<br><small>{meta['path']}</small>"
        )
        self.legend.set_layers([ly for ly in self._layers() if "names" in ly.metadata[META_KEY]])

    def _load_series(self) -> None:
        self.columns, self.units = read_timeseries(self.path)
        self.events = read_events(self.path)
        self._plot()

    def _plot(self) -> None:
        fig = self.figure
        fig.clear()
        self._axes, self._markers = [], []
        cols = self.columns
        if "time_min" not in cols or not len(cols["time_min"]):
            self.canvas.draw_idle()
            return
        t_h = cols["time_min"] / 60.0
        drugs = drug_columns(cols)
        ax = fig.add_subplot(2 if drugs else 1, 1, 1)
        self._axes.append(ax)
        for col, (label, color) in COUNT_COLUMNS.items():
            if col in cols:
                ax.plot(t_h, cols[col], color=color, label=label, lw=1.5)
        ax.set_ylabel("cells")
        ax.legend(fontsize="small", loc="best")
        if drugs:
            axd = fig.add_subplot(2, 1, 2, sharex=ax)
            self._axes.append(axd)
            for col in drugs:
                u = self.units.get(col, "")
                axd.plot(t_h, cols[col], lw=1.2, label=f"{col} ({u})" if u else col)
            axd.set_ylabel("drug")
            axd.legend(fontsize="small", loc="best")
        self._axes[-1].set_xlabel("time (h)")
        shown = [e for e in self.events if e[1] != "start"]
        for a in self._axes:
            for t, _, _ in shown:
                a.axvline(t / 60.0, color="0.5", ls=":", lw=1)
        for t, kind, _ in shown[:12]:  # more labels than that would only clutter
            ax.annotate(
                kind,
                (t / 60.0, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize="x-small",
                color="0.3",
            )
        for a in self._axes:
            self._markers.append(a.axvline(0.0, color="k", lw=1.2))
        self.canvas.draw_idle()

    def _on_step(self, event=None) -> None:
        """Move the time marker to the snapshot the slider shows."""
        with contextlib.suppress(RuntimeError):  # the widget's Qt side is already deleted
            self._move_marker()

    def _move_marker(self) -> None:
        layers = self._layers()
        if not layers:
            return
        layer = layers[0]
        meta = layer.metadata[META_KEY]
        times = meta["times_min"]
        axis = time_axis(self.viewer, layer)
        if axis < 0 or not times:
            return
        point = float(self.viewer.dims.point[axis])
        idx = int(round((point - meta["t0_h"]) / meta["interval_h"]))
        idx = min(max(idx, 0), len(times) - 1)
        self.snapshot_index = idx
        self.marker_time_h = times[idx] / 60.0
        text = (
            f"t = {self.marker_time_h:.1f} h ({self.marker_time_h / 24:.2f} d), "
            f"snapshot {idx + 1} of {len(times)}"
        )
        self.time_label.setText(text)
        overlay = _text_overlay(self.viewer)
        overlay.text = f"t = {self.marker_time_h:.1f} h"
        overlay.visible = True
        for m in self._markers:
            m.set_xdata([self.marker_time_h, self.marker_time_h])
        self.canvas.draw_idle()

    def _on_inserted(self, event) -> None:
        if self.path is None and META_KEY in getattr(event.value, "metadata", {}):
            self._attach(event.value.metadata[META_KEY]["path"])

    def _on_follow(self, on: bool) -> None:
        if on:
            # following shows the newest snapshot, wherever the slider was
            self.refresh(to_last=True)
            self.show_last()
            self.timer.start()
        else:
            self.timer.stop()

    def _on_timer(self) -> None:
        self.refresh(to_last=True)
        meta = self._meta()
        if meta is not None and meta.get("status") not in ("running", ""):
            self.follow_box.setChecked(False)  # finished, stopped, failed: nothing will come


def _text_overlay(viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9, before that
    ``viewer.text_overlay``)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    text = getattr(overlays, "text", None)
    return text if text is not None else viewer.text_overlay


def _disconnect(hooks) -> None:
    for emitter, cb in hooks:
        # the viewer may be closing too: an emitter already gone or no longer holding cb is fine
        with contextlib.suppress(RuntimeError, TypeError, ValueError):
            emitter.disconnect(cb)
