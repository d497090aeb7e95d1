"""Writing run files (schema in tmesim.io.schema; opened for reading by tmesim.io.runfile).

The writer creates every dataset up front, then switches the file to SWMR mode: from then on each
write is followed by a flush, so a reader can follow the run live, and a process killed with
SIGKILL leaves a file that opens with everything flushed before the kill. Time-series rows are
buffered and flushed every ``flush_every_steps`` steps, at every snapshot, and at the end.

The file is built under a temporary name (``run.h5.part``) and renamed once SWMR mode is on, so a
process killed while creating it never leaves a half-made file under the run's name. When given
the state's arrays the writer also creates the checkpoint slots (tmesim.io.checkpoint);
:meth:`RunWriter.reopen` opens a run for appending after its writer ended, cut back to its
checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import h5py
import numpy as np

from .. import __version__, codes
from ..errors import RunFileError
from . import checkpoint, schema
from .xdmf import write_xdmf


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
        checkpoint_arrays: {name: array} of the state (only shapes and dtypes are used): create
            the checkpoint slots for it; None makes a file without them.
    """

    #: the "a writer is alive" lock on the file, held from creation (or reopening) to close
    _lock: checkpoint.WriterLock | None
    #: the checkpoint a reopened run continues from (see :meth:`reopen`); None otherwise
    resumed_checkpoint: checkpoint.Checkpoint | None

    def __init__(
        self,
        path,
        scenario,
        grid,
        columns: dict,
        backend: str = "cpu",
        device: str = "",
        flush_every_steps: int = 50,
        xdmf: bool = True,
        checkpoint_arrays: dict | None = None,
    ):
        self._setup(path, scenario, grid, columns, flush_every_steps, xdmf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_name(self.path.name + ".part")
        f = self.f = h5py.File(part, "w", libver="latest")
        a = f.attrs
        a["format"] = schema.FORMAT
        a["format_version"] = schema.FORMAT_VERSION
        a["tmesim_version"] = __version__
        a["backend"] = backend
        a["device"] = device
        a["seed"] = np.int64(scenario.run.seed)
        a["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        a["scenario"] = scenario.text
        a["name"] = scenario.run.name
        a["dx_um"] = float(grid.dx_um)
        a["dt_min"] = float(scenario.run.dt_min)
        a["axes"] = ["z", "y", "x"][3 - grid.ndim :]
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
        opts = dict(
            maxshape=(None,) + shape,
            chunks=chunks,
            compression="gzip",
            compression_opts=4,
            shuffle=True,
        )
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
        ev.create_dataset(
            "kind", (0,), maxshape=(None,), dtype=f"S{schema.EVENT_KIND_BYTES}", chunks=(64,)
        )
        ev.create_dataset(
            "detail",
            (0,),
            maxshape=(None,),
            dtype=f"S{schema.EVENT_DETAIL_BYTES}",
            chunks=(64,),
            compression="gzip",
            compression_opts=1,
        )
        if checkpoint_arrays is not None:
            checkpoint.create_slots(f, checkpoint_arrays, getattr(scenario, "base_dir", "."))
        f.swmr_mode = True
        f.flush()
        # HDF5 dropped its own lock when SWMR started; ours says a writer is alive from now on
        self._lock = checkpoint.WriterLock(part)
        self._lock.shared()
        os.replace(part, self.path)

    def _setup(self, path, scenario, grid, columns, flush_every_steps, xdmf) -> None:
        self.path = Path(path)
        self.grid = grid
        self.sc = scenario
        self.columns = list(columns)
        self.flush_every = max(1, flush_every_steps)
        self.xdmf = xdmf
        self._rows: list[dict] = []
        self._snap_times: list[float] = []
        self._lock = None
        self.resumed_checkpoint = None

    @classmethod
    def reopen(
        cls, path, scenario, grid, columns: dict, flush_every_steps: int = 50, xdmf: bool = True
    ) -> RunWriter:
        """Open an existing run for appending, cut back to its committed checkpoint.

        The checkpoint is read under the writer lock and kept as ``self.resumed_checkpoint``
        (None when none was committed yet: the file is then cut back to nothing, a restart).
        Snapshot rows, time-series rows and events written after the checkpoint are removed
        (datasets shrink along their first axis; SWMR allows it), so appending continues exactly
        where the checkpoint was taken."""
        self = cls.__new__(cls)
        self._setup(path, scenario, grid, columns, flush_every_steps, xdmf)
        self.f, self._lock = checkpoint.open_for_append(self.path)
        try:
            f = self.f
            if not checkpoint.has_slots(f):
                raise RunFileError(
                    f"{path}: has no checkpoint slots (written before tmesim "
                    "had checkpoints); run the scenario again"
                )
            self.resumed_checkpoint = ck = checkpoint.read(f)
            ts = f[schema.TIMESERIES]
            missing = set(self.columns) - set(ts)
            if missing and missing <= set(schema.DTEP_COLUMNS):
                # written before expanded persisters: the columns were 0 throughout, and the
                # run goes on without them (stored_scenario resumes it without P -> E)
                self.columns = [c for c in self.columns if c in ts]
            if set(ts) != set(self.columns):
                raise RunFileError(
                    f"{path}: time-series columns {sorted(ts)} differ from this "
                    f"scenario's {sorted(self.columns)}"
                )
            n_snap = ck.n_snapshots if ck else 0
            n_rows = ck.n_rows if ck else 0
            n_ev = ck.n_events if ck else 0
            have = (
                f[schema.SNAPSHOTS]["time"].shape[0],
                ts["time_min"].shape[0],
                f[schema.EVENTS]["time_min"].shape[0],
            )
            if any(h < n for h, n in zip(have, (n_snap, n_rows, n_ev))):
                raise RunFileError(
                    f"{path}: holds fewer rows (snapshots, time series, events = "
                    f"{have}) than its checkpoint recorded {(n_snap, n_rows, n_ev)}"
                    "; the file is damaged"
                )
            snaps = f[schema.SNAPSHOTS]
            for ds in snaps.values():
                if isinstance(ds, h5py.Dataset):
                    ds.resize(n_snap, axis=0)
            for ds in f[schema.FIELDS].values():
                ds.resize(n_snap, axis=0)
            for ds in ts.values():
                ds.resize(n_rows, axis=0)
            for ds in f[schema.EVENTS].values():
                ds.resize(n_ev, axis=0)
            f.attrs["status"] = "running".ljust(64)
            f.flush()
            self._snap_times = [float(t) for t in snaps["time"][:]]
            if self.xdmf:
                self._write_xdmf()
            self._lock.shared()
        except BaseException:
            self.f.close()
            self._lock.release()
            raise
        return self

    def checkpoint(self, state_arrays: dict, step: int, time_min: float, extra: dict) -> int:
        """Write a checkpoint of the state (host arrays) after flushing the buffered rows.

        Returns the slot written. Counts of snapshots, rows and events are taken from the file as
        it stands, which is what a resume cuts back to."""
        self.flush_rows()
        f = self.f
        n_rows = f[schema.TIMESERIES][self.columns[0]].shape[0]
        if n_rows != step + 1:
            raise RuntimeError(f"checkpoint at step {step} but the file holds {n_rows} rows")
        counts = {
            "step": int(step),
            "n_snapshots": f[schema.SNAPSHOTS]["time"].shape[0],
            "n_rows": n_rows,
            "n_events": f[schema.EVENTS]["time_min"].shape[0],
        }
        return checkpoint.write(f, state_arrays, time_min, counts, extra)

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
            self._write_xdmf()

    def _write_xdmf(self) -> None:
        arrays = [
            ("kind", f"{schema.SNAPSHOTS}/kind", "uint8"),
            ("tumor_state", f"{schema.SNAPSHOTS}/tumor_state", "uint8"),
            ("memory", f"{schema.SNAPSHOTS}/memory", "float32"),
        ]
        arrays += [(fc.name, f"{schema.FIELDS}/{fc.name}", "float32") for fc in self.sc.fields]
        write_xdmf(self.path, self.grid.shape, self.grid.dx_um, self._snap_times, arrays)

    def last_row(self) -> dict:
        """The last time-series row on disk (see :func:`last_row`)."""
        return last_row(self.f, self.columns)

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
        """Record an event (treatment decision, stop, checkpoint, ...); detail is stored as JSON.

        A detail longer than ``schema.EVENT_DETAIL_BYTES`` in UTF-8 is kept as
        ``{"truncated": true, "text": <its JSON cut to fit>}`` rather than failing the run.
        """
        kind_b = kind.encode("ascii")
        if len(kind_b) > schema.EVENT_KIND_BYTES:
            raise ValueError(f"event kind {kind!r} is longer than {schema.EVENT_KIND_BYTES} bytes")
        text = json.dumps(detail or {}, sort_keys=True)
        detail_b = text.encode("utf-8")
        if len(detail_b) > schema.EVENT_DETAIL_BYTES:
            room = schema.EVENT_DETAIL_BYTES - 64
            while True:  # cut on whole characters, then re-escape, until the JSON fits
                cut = json.dumps({"truncated": True, "text": text[:room]}, sort_keys=True)
                detail_b = cut.encode("utf-8")
                if len(detail_b) <= schema.EVENT_DETAIL_BYTES:
                    break
                room -= max(1, len(detail_b) - schema.EVENT_DETAIL_BYTES)
        ev = self.f[schema.EVENTS]
        self._append(ev["time_min"], [time_min])
        self._append(ev["kind"], np.array([kind_b], dtype=f"S{schema.EVENT_KIND_BYTES}"))
        self._append(ev["detail"], np.array([detail_b], dtype=f"S{schema.EVENT_DETAIL_BYTES}"))
        self.f.flush()

    def close(self, status: str = "finished") -> None:
        if self.f.id.valid:
            self.flush_rows()
            self.f.attrs["status"] = status.ljust(64)[:64]
            self.f.flush()
            self.f.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close("finished" if exc[0] is None else "failed")


def last_row(f: h5py.File, columns) -> dict:
    """The last time-series row of an open run file, {column: value} (integral values as int,
    NaN for an empty column)."""
    ts = f[schema.TIMESERIES]
    out = {}
    for col in columns:
        ds = ts[col]
        v = float(ds[ds.shape[0] - 1]) if ds.shape[0] else float("nan")
        out[col] = int(v) if v.is_integer() else v
    return out
