"""Writing run files (schema in tmesim.io.schema) and checking them on the way in.

The writer creates every dataset up front, then switches the file to SWMR mode: from then on each
write is followed by a flush, so a reader can follow the run live, and a process killed with
SIGKILL leaves a file that opens with everything flushed before the kill. Time-series rows are
buffered and flushed every ``flush_every_steps`` steps, at every snapshot, and at the end.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import h5py
import numpy as np

from .. import __version__, codes
from ..errors import RunFileError
from . import schema
from .xdmf import write_xdmf

_STR = h5py.string_dtype("utf-8")


def _snapshot_chunks(shape) -> tuple[int, ...]:
    """One snapshot per chunk, split along the slowest axis when a snapshot is over 8 MB."""
    per_plane = int(np.prod(shape[1:])) * 4
    lead = max(1, min(shape[0], (8 << 20) // max(per_plane, 1)))
    return (1, lead) + tuple(shape[1:])


class RunWriter:
    """Writes one run file.

    Args:
        path: the .h5 file to create (replaced if it exists).
        scenario: the validated scenario (its TOML text is stored).
        grid: the lattice.
        columns: {time-series column: units}.
        backend, device: what ran it, stored as attributes.
        flush_every_steps: time-series rows buffered before a flush.
        xdmf: also write the ParaView sidecar.
    """

    def __init__(self, path, scenario, grid, columns: dict, backend: str = "cpu",
                 device: str = "", flush_every_steps: int = 50, xdmf: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.grid = grid
        self.sc = scenario
        self.columns = list(columns)
        self.flush_every = max(1, flush_every_steps)
        self.xdmf = xdmf
        self._rows: list[dict] = []
        self._snap_times: list[float] = []
        f = self.f = h5py.File(self.path, "w", libver="latest")
        a = f.attrs
        a["format"] = schema.FORMAT
        a["format_version"] = schema.FORMAT_VERSION
        a["tmesim_version"] = __version__
        a["backend"] = backend
        a["device"] = device
        a["seed"] = np.int64(scenario.run.seed)
        a["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        a["scenario"] = scenario.text
        a["name"] = scenario.run.name
        a["dx_um"] = float(grid.dx_um)
        a["dt_min"] = float(scenario.run.dt_min)
        a["axes"] = ["z", "y", "x"][3 - grid.ndim:]
        a["grid_shape"] = np.asarray(grid.shape, dtype=np.int64)
        a["kind_names"] = list(codes.KIND_NAMES)
        a["tumor_state_names"] = list(codes.TUMOR_STATE_NAMES)
        # fixed length, so it can be rewritten in place under SWMR at the end
        a.create("status", "running".ljust(64), dtype=h5py.string_dtype("ascii", 64))
        shape = grid.shape
        snaps = f.create_group(schema.SNAPSHOTS)
        snaps.create_dataset("time", (0,), maxshape=(None,), dtype="f8", chunks=(256,))
        snaps["time"].attrs["units"] = "min"
        snaps.create_dataset("step", (0,), maxshape=(None,), dtype="i8", chunks=(256,))
        chunks = _snapshot_chunks(shape)
        opts = dict(maxshape=(None,) + shape, chunks=chunks, compression="gzip",
                    compression_opts=4, shuffle=True)
        k = snaps.create_dataset("kind", (0,) + shape, dtype="u1", **opts)
        k.attrs["names"] = list(codes.KIND_NAMES)
        s = snaps.create_dataset("tumor_state", (0,) + shape, dtype="u1", **opts)
        s.attrs["names"] = list(codes.TUMOR_STATE_NAMES)
        m = snaps.create_dataset("memory", (0,) + shape, dtype="f4", **opts)
        m.attrs["units"] = "1"
        fg = f.create_group(schema.FIELDS)
        for fc in scenario.fields:
            d = fg.create_dataset(fc.name, (0,) + shape, dtype="f4", **opts)
            d.attrs["units"] = fc.units
        ts = f.create_group(schema.TIMESERIES)
        for col, units in columns.items():
            d = ts.create_dataset(col, (0,), maxshape=(None,), dtype="f8", chunks=(1024,))
            d.attrs["units"] = units
        ev = f.create_group(schema.EVENTS)
        ev.create_dataset("time_min", (0,), maxshape=(None,), dtype="f8", chunks=(64,))
        ev.create_dataset("kind", (0,), maxshape=(None,), dtype=_STR, chunks=(64,))
        ev.create_dataset("detail", (0,), maxshape=(None,), dtype=_STR, chunks=(64,))
        f.swmr_mode = True
        f.flush()

    # ------------------------------------------------------------------ writing
    @staticmethod
    def _append(ds, values):
        n = ds.shape[0]
        ds.resize(n + len(values), axis=0)
        ds[n:] = values

    def snapshot(self, state) -> None:
        """Append the lattice and fields of ``state`` (host arrays) as one snapshot."""
        snaps = self.f[schema.SNAPSHOTS]
        shape = self.grid.shape
        self._append(snaps["time"], [state.time_min])
        self._append(snaps["step"], [state.step])
        self._append(snaps["kind"], state.kind.reshape((1,) + shape))
        self._append(snaps["tumor_state"], state.tumor_state.reshape((1,) + shape))
        self._append(snaps["memory"], state.memory.reshape((1,) + shape))
        for i, fc in enumerate(self.sc.fields):
            self._append(self.f[schema.FIELDS][fc.name], state.fields[i].reshape((1,) + shape))
        self._snap_times.append(float(state.time_min))
        self.flush_rows()
        if self.xdmf:
            arrays = [("kind", f"{schema.SNAPSHOTS}/kind", "uint8"),
                      ("tumor_state", f"{schema.SNAPSHOTS}/tumor_state", "uint8"),
                      ("memory", f"{schema.SNAPSHOTS}/memory", "float32")]
            arrays += [(fc.name, f"{schema.FIELDS}/{fc.name}", "float32")
                       for fc in self.sc.fields]
            write_xdmf(self.path, shape, self.grid.dx_um, self._snap_times, arrays)

    def row(self, values: dict) -> None:
        """Buffer one time-series row (every column must be present)."""
        self._rows.append(values)
        if len(self._rows) >= self.flush_every:
            self.flush_rows()

    def flush_rows(self) -> None:
        if self._rows:
            ts = self.f[schema.TIMESERIES]
            for col in self.columns:
                self._append(ts[col], [r[col] for r in self._rows])
            self._rows = []
        self.f.flush()

    def event(self, time_min: float, kind: str, detail: dict | None = None) -> None:
        """Record an event (treatment decision, stop, checkpoint, ...); detail is stored as JSON."""
        ev = self.f[schema.EVENTS]
        self._append(ev["time_min"], [time_min])
        self._append(ev["kind"], [kind])
        self._append(ev["detail"], [json.dumps(detail or {}, sort_keys=True)])
        self.f.flush()

    def close(self, status: str = "finished") -> None:
        if self.f.id.valid:
            self.flush_rows()
            self.f.attrs["status"] = status.ljust(64)[:64]
            self.f.flush()
            self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close("finished" if exc[0] is None else "failed")


def open_h5(path, swmr: bool = True) -> h5py.File:
    """Open a run file for reading, refusing files that are not tmesim runs or are too new."""
    p = Path(path)
    if not p.is_file():
        raise RunFileError(f"{path}: no such file")
    try:
        f = h5py.File(p, "r", swmr=swmr)
    except OSError as exc:
        raise RunFileError(f"{path}: not a readable HDF5 file ({exc})") from None
    check_format(f, str(path))
    return f


def check_format(f: h5py.File, where: str) -> None:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != schema.FORMAT:
        f.close()
        raise RunFileError(f"{where}: not a tmesim run file (format attribute {fmt!r})")
    major, _ = schema.parse_version(f.attrs.get("format_version", "0.0"))
    if major > schema.MAJOR:
        ver = f.attrs.get("format_version")
        f.close()
        raise RunFileError(f"{where}: written by a newer tmesim (file format {ver}); this tmesim "
                           f"reads format {schema.MAJOR}.x -- upgrade tmesim to open it")


def attr_str(f, key, default="") -> str:
    v = f.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)
