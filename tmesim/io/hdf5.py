"""Writing run files (schema in tmesim.io.schema; opened for reading by tmesim.io.runfile).

The writer creates every dataset up front, then switches the file to SWMR mode: from then on each
write is followed by a flush, so a reader can follow the run live, and a process killed with
SIGKILL leaves a file that opens with everything flushed before the kill. Time-series rows are
buffered and flushed every ``flush_every_steps`` steps, at every snapshot, and at the end.

The file is built under a temporary name of its own (``run.h5.<pid>.<random>.part``) and put in
place once SWMR mode is on, so a process killed while creating it never leaves a half-made file
under the run's name (the next run of that name removes what it left:
:func:`remove_stale_parts`). It is put in place only when no live process holds the file already
there: two runs given one output path do not both write it (the second one is refused,
:class:`tmesim.io.checkpoint.RunLockedError`), and a finished or abandoned run there is replaced.
When given the state's arrays the writer also creates the checkpoint slots
(tmesim.io.checkpoint); :meth:`RunWriter.reopen` opens a run for appending after its writer
ended, cut back to its checkpoint.

Before each write (the file's creation, a snapshot, a flush of rows, an event, a checkpoint) the
writer claims the room it needs (tmesim.io.diskspace): when the disk is full it raises
:class:`~tmesim.io.diskspace.DiskFullError` before writing anything, and the file stays as its
last flush left it, resumable from its last checkpoint once space is freed. Every chunked dataset
carries a Fletcher-32 checksum per chunk, so a flipped bit fails the read instead of being read
as data.

The file is written in HDF5 1.10's file format (:data:`LIBVER`), which SWMR needs and HDF5 1.10
and later read: ParaView and VTK, whose HDF5 is older than the one h5py may bring, read the
snapshots through the XDMF sidecar (tmesim.io.xdmf). Each field dataset carries its ``units``
and its ``role`` (oxygen, growth_factor, signal, drug or other: what viewers style it by).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import fcntl
import json
import os
import secrets
import sys
import time
from glob import escape as glob_escape
from pathlib import Path

import h5py
import numpy as np

from .. import __version__, codes
from ..errors import RunFileError
from . import checkpoint, diskspace, runfile, schema, trust
from .diskspace import DiskFullError
from .xdmf import write_xdmf

#: room claimed to rewrite the status attribute at the end (none for the fixed-length status of
#: a new file; a new string in HDF5's global heap, 4 KiB measured, for an older file's)
STATUS_MARGIN = 16 << 10
#: bytes of the fixed-length status attribute
STATUS_BYTES = 64
#: the HDF5 file-format versions a run file is written in: 1.10's, the oldest that has SWMR, and no
#: newer, so that readers built on older HDF5 (ParaView and VTK ship 1.14 or older) read it;
#: "latest" under HDF5 2.0 writes dataset layout messages HDF5 1.14 cannot decode
LIBVER = ("v110", "v110")
#: the datasets of /snapshots (beside the fields) and of /events, each one row per snapshot / event
SNAPSHOT_ARRAYS = ("time", "step", "kind", "tumor_state", "memory")
EVENT_ARRAYS = ("time_min", "kind", "detail")
#: deflate level of the snapshot arrays (with the byte shuffle before it): measured on a 128^3
#: snapshot of the bench scenario (5 fields), level 1 writes in 58 % of level 4's time for 1 %
#: more bytes (the float fields' low mantissa bytes do not compress at any level); lzf is faster
#: still but only h5py reads it (ParaView, netCDF and plain HDF5 tools do not)
SNAPSHOT_GZIP_LEVEL = 1


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
    #: the step of the last checkpoint committed in the file (None before the first)
    checkpoint_step: int | None
    #: the slot of the last checkpoint committed in the file (None before the first)
    checkpoint_slot: int | None
    #: the step of the file's last snapshot (None while it has none)
    last_snapshot_step: int | None
    #: writes are made when called: arrays passed may be views (tmesim.io.background's writer
    #: needs copies of their own)
    background = False

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
        need = creation_bytes(scenario, columns, checkpoint_arrays)
        # before there is a file to claim room in: a disk too full to create it refuses here
        try:
            diskspace.make_room(
                self.path, None, 0, need + diskspace.METADATA_MARGIN, "creating the run file"
            )
        except DiskFullError as exc:
            raise exc.with_after("no run file was made") from None
        remove_stale_parts(self.path)
        # a name of its own: another run creating the same path never truncates this one
        part = self.path.with_name(f"{self.path.name}.{os.getpid()}.{secrets.token_hex(3)}.part")
        try:
            self.f = h5py.File(part, "w-", libver=LIBVER)
        except OSError as exc:
            part.unlink(missing_ok=True)
            if diskspace.is_no_space(exc):  # another process took the room meanwhile
                free = diskspace.free_bytes(self.path)
                raise DiskFullError(
                    self.path, "creating the run file", need, free, "no run file was made"
                ) from None
            raise
        try:
            self._room(need, "creating the run file")
            self._build(scenario, grid, columns, backend, device, checkpoint_arrays)
            self.f.swmr_mode = True
            self.f.flush()
            # HDF5 dropped its own lock when SWMR started; ours says a writer is alive from now on
            self._lock = checkpoint.WriterLock(part)
            self._lock.shared()
            self._publish(part)
        except BaseException as err:
            with contextlib.suppress(Exception):  # a half-made temporary file, removed below
                self.f.close()
            if self._lock is not None:
                self._lock.release()
            part.unlink(missing_ok=True)
            if not isinstance(err, DiskFullError) and diskspace.is_no_space(err):
                free = diskspace.free_bytes(self.path)
                raise DiskFullError(
                    self.path, "creating the run file", need, free, "no run file was made"
                ) from None
            raise

    def _build(self, scenario, grid, columns, backend, device, checkpoint_arrays) -> None:
        """Create the attributes and the (empty) datasets of a new run file."""
        f = self.f
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
        a.create(
            "status",
            "running".ljust(STATUS_BYTES),
            dtype=h5py.string_dtype("ascii", STATUS_BYTES),
        )
        shape = grid.shape
        snaps = f.create_group(schema.SNAPSHOTS)
        # every chunk checksummed: a flipped bit fails the read instead of being read as data
        grow = dict(maxshape=(None,), fletcher32=True)
        snaps.create_dataset("time", (0,), dtype="f8", chunks=(256,), **grow)
        snaps["time"].attrs["units"] = "min"
        snaps.create_dataset("step", (0,), dtype="i8", chunks=(256,), **grow)
        chunks = _snapshot_chunks(shape)
        opts = dict(
            maxshape=(None,) + shape,
            chunks=chunks,
            compression="gzip",
            compression_opts=SNAPSHOT_GZIP_LEVEL,
            shuffle=True,
            fletcher32=True,
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
            # what the field is (oxygen, growth_factor, signal, drug, other): viewers style by it
            d.attrs["role"] = fc.role
        ts = f.create_group(schema.TIMESERIES)
        for col, units in columns.items():
            d = ts.create_dataset(col, (0,), dtype="f8", chunks=(1024,), **grow)
            d.attrs["units"] = units
        ev = f.create_group(schema.EVENTS)
        ev.create_dataset("time_min", (0,), dtype="f8", chunks=(64,), **grow)
        ev.create_dataset("kind", (0,), dtype=f"S{schema.EVENT_KIND_BYTES}", chunks=(64,), **grow)
        ev.create_dataset(
            "detail",
            (0,),
            dtype=f"S{schema.EVENT_DETAIL_BYTES}",
            chunks=(64,),
            compression="gzip",
            compression_opts=1,
            **grow,
        )
        if checkpoint_arrays is not None:
            checkpoint.create_slots(f, checkpoint_arrays, getattr(scenario, "base_dir", "."))
        # last: the text attributes are all written (the global heap they live in has no
        # checksum; this fixed-length attribute lives in the root's checksummed header)
        a.create(trust.TEXT_DIGEST, trust.text_digest(f).encode("ascii"), dtype="S64")

    def _publish(self, part: Path) -> None:
        """Put the new file ``part`` (held by our shared lock) in place under the run's name.

        Where nothing is there, it is renamed there only if nothing came first (a rename that
        does not replace, else a hard link). A file there is replaced only while we hold its
        exclusive lock and it is still the one there: a live writer (or a reader) holds a shared
        lock, and the run is refused."""
        while True:
            if _put_if_absent(part, self.path):
                break
            try:
                there = checkpoint.WriterLock(self.path)
            except FileNotFoundError:
                continue  # removed meanwhile: try again
            try:
                try:
                    there.exclusive()
                except checkpoint.RunLockedError:
                    raise checkpoint.RunLockedError(
                        f"{self.path}: another process is writing this run file (or has it "
                        "open, e.g. the viewer); give this run another output path, or wait "
                        "for that one to end"
                    ) from None
                try:
                    same = os.path.samestat(os.fstat(there.fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    os.replace(part, self.path)
                    break
            finally:
                there.release()
        assert self._lock is not None
        self._lock.path = self.path

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
        self.checkpoint_step = None
        self.checkpoint_slot = None
        self.last_snapshot_step = None
        self._layouts: dict[str, diskspace.Layout] = {}
        self._datasets: dict[str, h5py.Dataset] = {}
        self._claims = 0
        self._broken = False

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
            # a damaged file read here is one line, not a traceback (a KeyError, say)
            with runfile.reading(str(path), "its rows and status"):
                f = self.f
                if not checkpoint.has_slots(f):
                    raise RunFileError(
                        f"{path}: has no checkpoint slots (written before tmesim "
                        "had checkpoints); run the scenario again"
                    )
                self.resumed_checkpoint = ck = checkpoint.read(f)
                self.checkpoint_step = ck.step if ck is not None else None
                self.checkpoint_slot = ck.slot if ck is not None else None
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
                # cutting back rewrites metadata only, and the status: a margin's worth of room
                try:
                    self._room(0, "reopening the run file")
                    if self.xdmf:
                        self._xdmf_room("reopening the run file")
                except DiskFullError as exc:
                    raise exc.with_after(
                        "nothing was changed; once space is freed, "
                        f"`tmesim resume {path}` continues it"
                    ) from None
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
                self._set_status("running")
                f.flush()
                self._snap_times = [float(t) for t in snaps["time"][:]]
                if n_snap:
                    self.last_snapshot_step = int(snaps["step"][n_snap - 1])
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
        need = self._rows_bytes() + checkpoint_bytes(self.f, extra)
        with self._claim(need, f"the checkpoint at step {step}"):
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
            # held open across the write, so that a slot's data HDF5 fails to write fails the
            # flush before the commit instead of being dropped as its dataset closes
            for k in range(checkpoint.N_SLOTS):
                g = f"{checkpoint.GROUP}/slot{k}"
                for name in state_arrays:
                    self._ds(f"{g}/state/{name}")
                for name in ("time_min", "counts", "extra", "extra_index"):
                    self._ds(f"{g}/{name}")
            slot = checkpoint.write(f, state_arrays, time_min, counts, extra)
        self.checkpoint_step = int(step)
        self.checkpoint_slot = slot
        return slot

    # ------------------------------------------------------------------ writing
    @staticmethod
    def _append(ds, values):
        n = ds.shape[0]
        ds.resize(n + len(values), axis=0)
        ds[n:] = values

    def _fd(self) -> int | None:
        """The file descriptor HDF5 writes through (None for a driver without one)."""
        try:
            fd = self.f.id.get_vfd_handle()
        except Exception:
            return None
        return fd if isinstance(fd, int) and fd >= 0 else None

    def _room(self, nbytes: int, what: str, margin: int = diskspace.METADATA_MARGIN) -> None:
        """Claim room for a write adding up to ``nbytes`` of data to the file, and ``margin``
        for the metadata it changes; DiskFullError, before anything is written, when there is
        none."""
        diskspace.make_room(self.path, self._fd(), self.f.id.get_filesize(), nbytes + margin, what)

    @contextlib.contextmanager
    def _claim(self, nbytes: int, what: str, margin: int = diskspace.METADATA_MARGIN):
        """Around one write: claim its room first (:meth:`_room`), and give back what it did not
        use once it is flushed (the outermost of nested writes does)."""
        self._room(nbytes, what, margin)
        self._claims += 1
        try:
            yield
        except Exception as exc:
            if isinstance(exc, DiskFullError) or not diskspace.is_no_space(exc):
                raise
            # the room claimed was not enough (or could not be claimed, and another process took
            # it): HDF5 has left the file as it could, and is asked for nothing more
            self._broken = True
            raise diskspace.DiskFilledError(
                self.path, what, nbytes + margin, diskspace.free_bytes(self.path)
            ) from None
        finally:
            self._claims -= 1
            fd = self._fd()
            if self._claims == 0 and fd is not None:
                diskspace.give_back(fd)

    def _xdmf_bytes(self) -> int:
        """Bytes of the ParaView sidecar's next version, written beside the current one (to a
        temporary file, then renamed), at most."""
        sidecar = self.path.with_suffix(".xdmf")
        size = sidecar.stat().st_size if sidecar.exists() else 0
        return size + size // max(1, len(self._snap_times)) + (16 << 10)

    def _xdmf_room(self, what: str) -> None:
        need = self._xdmf_bytes()
        free = diskspace.free_bytes(self.path)
        if free < need:
            raise DiskFullError(self.path, f"{what} (its ParaView sidecar)", need, free)

    def _ds(self, name: str) -> h5py.Dataset:
        """The dataset ``name`` (a path in the file), kept open from its first use on: a write
        that fails when HDF5 flushes it then fails the flush that follows, where h5py would
        only print the failure of a dataset closed as the statement ends."""
        ds = self._datasets.get(name)
        if ds is None:
            ds = self._datasets[name] = self.f[name]
        return ds

    def _growth(self, group: str, names, n: int) -> int:
        """Bytes appending ``n`` rows to each of the datasets ``names`` of ``group`` (all as long
        as the first) adds to the file, at most."""
        names = list(names)
        if n <= 0 or not names:
            return 0
        old = self._ds(f"{group}/{names[0]}").shape[0]
        total = 0
        for name in names:
            key = f"{group}/{name}"
            layout = self._layouts.get(key)
            if layout is None:  # asked once: HDF5's answer costs more than the write
                layout = self._layouts[key] = diskspace.Layout.of(self._ds(key))
            total += layout.append_bytes(old, n)
        return total

    def _rows_bytes(self) -> int:
        """Bytes a flush of the buffered rows adds to the file, at most."""
        return self._growth(schema.TIMESERIES, self.columns, len(self._rows))

    def snapshot(self, state) -> None:
        """Append the lattice and fields of ``state`` (host arrays) as one snapshot."""
        S, F = schema.SNAPSHOTS, schema.FIELDS
        shape = self.grid.shape
        what = f"the snapshot at step {state.step}"
        need = self._growth(schema.SNAPSHOTS, SNAPSHOT_ARRAYS, 1)
        need += self._growth(schema.FIELDS, [fc.name for fc in self.sc.fields], 1)
        with self._claim(need + self._rows_bytes(), what):
            if self.xdmf:
                self._xdmf_room(what)
            self._append(self._ds(f"{S}/time"), [state.time_min])
            self._append(self._ds(f"{S}/step"), [state.step])
            self._append(self._ds(f"{S}/kind"), state.kind.reshape((1,) + shape))
            self._append(self._ds(f"{S}/tumor_state"), state.tumor_state.reshape((1,) + shape))
            self._append(self._ds(f"{S}/memory"), state.memory.reshape((1,) + shape))
            for i, fc in enumerate(self.sc.fields):
                self._append(self._ds(f"{F}/{fc.name}"), state.fields[i].reshape((1,) + shape))
            self._snap_times.append(float(state.time_min))
            self.last_snapshot_step = int(state.step)
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
        try:
            write_xdmf(self.path, self.grid.shape, self.grid.dx_um, self._snap_times, arrays)
        except OSError as exc:
            if not diskspace.is_no_space(exc):
                raise
            # another process took the room meanwhile: the run file itself is flushed and whole
            self.path.with_suffix(".xdmf.tmp").unlink(missing_ok=True)
            need, free = self._xdmf_bytes(), diskspace.free_bytes(self.path)
            raise DiskFullError(self.path, "the ParaView sidecar", need, free) from None

    def last_row(self) -> dict:
        """The last time-series row on disk (see :func:`last_row`)."""
        return last_row(self.f, self.columns)

    def row(self, values: dict) -> None:
        """Buffer one time-series row (every column must be present)."""
        self._rows.append(values)
        if len(self._rows) >= self.flush_every:
            self.flush_rows()

    def flush_rows(self) -> None:
        """Write the buffered time-series rows, and flush the file."""
        if not self._rows:
            self.f.flush()
            return
        with self._claim(self._rows_bytes(), f"{len(self._rows)} time-series rows"):
            for col in self.columns:
                self._append(self._ds(f"{schema.TIMESERIES}/{col}"), [r[col] for r in self._rows])
            self._rows = []
            self.f.flush()

    def event(self, time_min: float, kind: str, detail: dict | None = None) -> None:
        """Record an event (treatment decision, stop, checkpoint, ...); detail is stored as JSON
        (see :func:`encode_event`)."""
        kind_b, detail_b = encode_event(kind, detail)
        self.write_event(time_min, kind, kind_b, detail_b)

    def write_event(self, time_min: float, kind: str, kind_b: bytes, detail_b: bytes) -> None:
        """Append one event, encoded by :func:`encode_event`, and flush the file."""
        E = schema.EVENTS
        with self._claim(self._growth(E, EVENT_ARRAYS, 1), f"the {kind} event"):
            self._append(self._ds(f"{E}/time_min"), [time_min])
            kind_a = np.array([kind_b], dtype=f"S{schema.EVENT_KIND_BYTES}")
            self._append(self._ds(f"{E}/kind"), kind_a)
            detail_a = np.array([detail_b], dtype=f"S{schema.EVENT_DETAIL_BYTES}")
            self._append(self._ds(f"{E}/detail"), detail_a)
            self.f.flush()

    def drain(self) -> None:
        """Nothing to wait for: every write is made when it is called (see
        tmesim.io.background for a writer that makes them on a thread of its own)."""

    def _set_status(self, status: str) -> None:
        """Rewrite the status attribute in place, as the 64-byte ASCII string it was created as.

        Assigning with ``attrs[...] =`` would store a variable-length string instead, whose text
        lives in a global heap collection apart from the attribute: a writer killed between the
        two writes leaves an attribute that points at a freed or unwritten collection, and the
        file cannot be opened again. Written in place, the status is one header message.
        Files an earlier tmesim left with a variable-length status keep that type."""
        value = status.ljust(STATUS_BYTES)[:STATUS_BYTES]
        attr = self.f.attrs.get_id("status")
        if attr.dtype.kind == "S":
            attr.write(np.array(value.encode("ascii"), dtype=attr.dtype))
        else:
            self.f.attrs["status"] = value

    def close(self, status: str = "finished") -> None:
        """Flush the buffered rows, set the status attribute, close the file and release it.

        When the disk has no room for the rows or the status, the file is closed as its last
        flush left it (status "running", resumable from its last checkpoint) and the
        DiskFullError is raised after."""
        full = None
        try:
            if self._broken:
                with contextlib.suppress(Exception):
                    self.f.close()
            elif self.f.id.valid:
                try:
                    self.flush_rows()
                    # the status is rewritten in place: a little room for the metadata flushed
                    with self._claim(0, "closing the run file", STATUS_MARGIN):
                        self._set_status(status)
                        self.f.flush()
                except DiskFullError as exc:
                    full = exc
                finally:
                    self.f.close()
                    diskspace.release_claim(self.path)
        finally:
            if self._lock is not None:
                self._lock.release()
        if full is not None:
            raise full

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close("finished" if exc[0] is None else "failed")


def encode_event(kind: str, detail: dict | None) -> tuple[bytes, bytes]:
    """The stored bytes of an event's kind (ASCII, at most ``schema.EVENT_KIND_BYTES``: a longer
    one is a ValueError) and of its detail as JSON. A detail longer than
    ``schema.EVENT_DETAIL_BYTES`` in UTF-8 is kept as ``{"truncated": true, "text": <its JSON cut
    to fit>}`` rather than failing the run."""
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
    return kind_b, detail_b


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()
#: a temporary file left by a killed creation is removed only once it is this old (seconds): a
#: run file folder shared between machines may hold another host's creation in progress, whose
#: process id means nothing here, in the moment between HDF5's lock and ours
STALE_PART_AGE_S = 60.0


def remove_stale_parts(path: Path) -> list[Path]:
    """Remove the temporary files (``<name>.<pid>.<hex>.part``) that writers of ``path`` killed
    while creating it left behind: no process holds a lock on one, its process is gone, and it
    is older than :data:`STALE_PART_AGE_S`. Returns the files removed."""
    removed = []
    for part in path.parent.glob(f"{glob_escape(path.name)}.*.part"):
        bits = part.name[len(path.name) + 1 :].split(".")
        if len(bits) != 3 or not bits[0].isdigit():
            continue
        try:
            if time.time() - part.stat().st_mtime < STALE_PART_AGE_S or _alive(int(bits[0])):
                continue
            fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # HDF5's lock, or ours: in use
            part.unlink()
            removed.append(part)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _put_if_absent(src: Path, dst: Path) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (then False), atomically where the system
    can: ``renameat2(RENAME_NOREPLACE)`` (Linux), else a hard link then the old name removed
    (the file keeps its new name only, but a process holding it open sees it as deleted), else a
    check then a rename (another process may come between the two)."""
    if _RENAMEAT2 is not None:
        if (
            _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
            == 0
        ):
            return True
        e = ctypes.get_errno()
        if e == errno.EEXIST:
            return False
        if e not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(e, os.strerror(e), str(dst))
    try:
        os.link(src, dst)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        if dst.exists():
            return False
        os.replace(src, dst)
        return True
    src.unlink()
    return True


def creation_bytes(scenario, columns, checkpoint_arrays) -> int:
    """Bytes a new run file takes before its first snapshot, at most: the metadata of its
    attributes and datasets (about 1 KiB a dataset, the scenario's text twice) and the
    checkpoint slots' fixed-size datasets."""
    n = 2 + 3 + len(scenario.fields) + len(columns) + 3
    extra = 0
    if checkpoint_arrays is not None:
        n += 1 + checkpoint.N_SLOTS * (len(checkpoint_arrays) + 4)
        extra = checkpoint.N_SLOTS * checkpoint.EXTRA_INDEX_BYTES
    return (16 << 10) + n * 1024 + 2 * len(scenario.text.encode()) + extra


def checkpoint_bytes(f: h5py.File, extra: dict) -> int:
    """Bytes writing a checkpoint adds to the open run file ``f``, at most: the state's arrays
    where the slot written next has not held them yet (each slot is written in place once it
    has), and the growth of its extra state."""
    g = f[checkpoint.GROUP]
    buf, _ = checkpoint.pack_extra(extra)
    most = 0
    for k in range(checkpoint.N_SLOTS):
        s = g[f"slot{k}"]
        n = sum(diskspace.unallocated_bytes(d) for d in s["state"].values())
        grow = buf.size - s["extra"].shape[0]
        if grow > 0:
            n += diskspace.append_bytes(s["extra"], grow)
        most = max(most, n)
    return most


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
