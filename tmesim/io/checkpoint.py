"""Checkpoints inside the run file: two slots written in turn, and a one-number commit record.

Everything that determines the rest of a run is the :class:`~tmesim.state.State` (its arrays, the
step and the time) plus what the model keeps outside it (``Model.extra_state()``, controllers):
random numbers are a pure function of (seed, step, site, stream), so there is no generator state
to save. A checkpoint stores exactly that, plus how many snapshot rows, time-series rows and
events the file held at that moment, so a resumed run can cut away what was written after it.

Layout (created with the rest of the file, before SWMR mode starts, because SWMR allows no new
objects later)::

    /checkpoint                     attrs: layout_version, slots, scenario_base_dir
    /checkpoint/valid_slot          () int64: -1 (none yet), 0 or 1; written last
    /checkpoint/slotK/state/NAME    one dataset per State array, its shape and dtype, uncompressed
    /checkpoint/slotK/time_min      () float64, simulated minutes
    /checkpoint/slotK/counts        (6,) int64: step, n_snapshots, n_rows, n_events,
                                    extra_nbytes, generation (checkpoints written so far)
    /checkpoint/slotK/extra         (N,) uint8, Model.extra_state() arrays packed back to back
    /checkpoint/slotK/extra_index   (1,) JSON: [{name, dtype, shape, offset}], plain data only

Every slot dataset but the scalars and empty arrays is chunked with a Fletcher-32 checksum (files
from before have contiguous ones), so a flipped bit in a checkpoint is an error on resuming, never a
silently different run. A checkpoint is read only after its counts are checked against the file
(the rows it names exist, its step is the last time-series row it names, its time is that row's
time), its arrays are all stored and its extra-state index is plain data that fits its buffer.

Atomicity: a checkpoint is written into the slot that ``valid_slot`` does not name, flushed and
fsync'ed, and only then is ``valid_slot`` flipped (one 8-byte write, itself flushed and fsync'ed).
A process killed at any moment leaves ``valid_slot`` naming a complete checkpoint (or -1): the
half-written slot is simply never named. The slots are uncompressed (a checksum adds 4 bytes a
chunk), so they are rewritten in place and the file does not grow with each checkpoint (it holds
two copies of the state: 10 + 4 x n_fields bytes per voxel each).

Reopening a file whose writer was killed needs two repairs that HDF5's ``h5clear`` tool would do:
the superblock still carries the "open for (SWMR) write" flags, and its end-of-file address may
lie past the bytes that reached the disk. :func:`open_for_append` clears both, under an exclusive
``flock`` on the file that proves no writer is alive (a live writer holds a shared one), and only
in a superblock that passes its checksum; it then checks the whole file read-only
(tmesim.io.runfile.open_run_file) before HDF5 opens it for writing, so a damaged file is refused
before a writer's retries on it could go on without end.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import RunFileError
from . import schema
from .runfile import (
    HDF5_SIGNATURE,
    open_h5,
    open_run_file,
    reading,
    short_error,
    to_str,
)
from .trust import short

GROUP = "checkpoint"
LAYOUT_VERSION = 1
N_SLOTS = 2
COUNTS = ("step", "n_snapshots", "n_rows", "n_events", "extra_nbytes", "generation")

_STR = h5py.string_dtype("utf-8")
#: room for the JSON index of the extra (controller) state in a checkpoint slot
EXTRA_INDEX_BYTES = 8192
#: bytes of a slot dataset's chunk (each chunk carries a Fletcher-32 checksum)
CHUNK_BYTES = 4 << 20
#: how far past its size repair_after_kill extends a killed writer's file (with its own size)
MAX_EXTEND_BYTES = 1 << 30
#: dtype kinds the extra state may hold (pack_extra's)
EXTRA_KINDS = "biufcSU"


@dataclass
class Checkpoint:
    """One checkpoint as read back from a run file (host numpy arrays)."""

    slot: int
    step: int
    time_min: float
    n_snapshots: int
    n_rows: int
    n_events: int
    generation: int
    arrays: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ creating


def create_slots(f: h5py.File, arrays: dict, scenario_base_dir: str = ".") -> None:
    """Create ``/checkpoint`` for a state whose arrays are ``arrays`` ({name: array}).

    Must be called before SWMR mode starts. Every slot dataset gets its array's shape and dtype;
    ``extra`` starts empty and grows (growing a dataset is allowed under SWMR)."""
    g = f.create_group(GROUP)
    g.attrs["layout_version"] = LAYOUT_VERSION
    g.attrs["slots"] = N_SLOTS
    g.attrs["scenario_base_dir"] = str(scenario_base_dir)
    g.attrs["counts_names"] = list(COUNTS)
    g.create_dataset("valid_slot", data=np.int64(-1))
    for k in range(N_SLOTS):
        s = g.create_group(f"slot{k}")
        st = s.create_group("state")
        for name, a in arrays.items():
            a = np.asarray(a)
            # the fill value makes an unwritten slot read as zeros, never old disk bytes, and costs
            # nothing: chunks are allocated when first written, and one written whole is not
            # filled first (a fill time of "never" would save no byte, and would make an
            # unwritten slot read as whatever the reader's buffer held)
            st.create_dataset(name, shape=a.shape, dtype=a.dtype, fillvalue=0, **_checked(a))
        s.create_dataset("time_min", data=np.float64(0.0))
        counts = np.zeros(len(COUNTS), dtype=np.int64)
        s.create_dataset("counts", data=counts, **_checked(counts))
        s.create_dataset(
            "extra", (0,), maxshape=(None,), dtype=np.uint8, chunks=(4096,), fletcher32=True
        )
        # fixed length: rewritten in place at every checkpoint without touching HDF5's global
        # heap, which also holds the root attributes' strings (a variable-length rewrite torn by
        # a SIGKILL left them unreadable)
        index = np.array([b"[]"], dtype=f"S{EXTRA_INDEX_BYTES}")
        s.create_dataset("extra_index", data=index, **_checked(index))


def _checked(a: np.ndarray) -> dict:
    """create_dataset options for a slot array: chunks of at most CHUNK_BYTES along its last
    axis, each with a Fletcher-32 checksum (an empty or 0-d array: none, it cannot be chunked)."""
    if a.ndim == 0 or a.size == 0:
        return {}
    last = max(1, min(a.shape[-1], CHUNK_BYTES // a.dtype.itemsize))
    return {"chunks": (1,) * (a.ndim - 1) + (last,), "fletcher32": True}


# ------------------------------------------------------------------------------ writing


def _write_array(ds: h5py.Dataset, a: np.ndarray) -> None:
    """Write one state array into its slot dataset (a separate function so tests can cut a
    checkpoint short at a chosen array)."""
    ds[...] = a


def _fsync(f: h5py.File) -> None:
    """Push what HDF5 flushed to the OS on to the disk (sec2 driver: the handle is an fd)."""
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # a driver without an fd: HDF5's flush is all we can do
        return
    if isinstance(fd, int) and fd >= 0:
        os.fsync(fd)


def pack_extra(extra: dict) -> tuple[np.ndarray, str]:
    """Pack {name: numpy array} into one uint8 buffer and a JSON index (names, dtypes, shapes).

    Only plain numeric/bool/fixed-size string dtypes are accepted: a checkpoint is data, never
    pickled objects."""
    index, parts, offset = [], [], 0
    for name in sorted(extra):
        a = np.ascontiguousarray(np.asarray(extra[name]))
        if a.dtype.hasobject or a.dtype.kind not in "biufcSU":
            raise TypeError(
                f"extra state {name!r}: dtype {a.dtype} cannot be checkpointed "
                "(numbers, booleans and fixed-size strings only)"
            )
        b = a.view(np.uint8).reshape(-1) if a.size else np.zeros(0, np.uint8)
        index.append(
            {"name": str(name), "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        )
        parts.append(b)
        offset += b.size
    buf = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return buf, json.dumps(index, sort_keys=True)


def unpack_extra(buf: np.ndarray, index_json: str, where: str = "checkpoint") -> dict:
    """{name: array} from pack_extra's buffer and JSON index. The index is checked before any
    use: a list of {name, dtype, shape, offset} of plain numeric, boolean or fixed-size string
    dtypes whose bytes lie within ``buf``; anything else is a RunFileError naming ``where``."""

    def bad(what: str):
        return RunFileError(f"{where}: damaged checkpoint, its extra-state index {what}")

    try:
        index = json.loads(index_json)
    except (ValueError, RecursionError):
        raise bad(f"is not JSON ({short(index_json)})") from None
    if not isinstance(index, list):
        raise bad(f"is {short(index)}, expected a list")
    out = {}
    for e in index:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and isinstance(e.get("dtype"), str)
            and isinstance(e.get("shape"), list)
            and all(type(n) is int and n >= 0 for n in e["shape"])
            and type(e.get("offset")) is int
            and e["offset"] >= 0
        ):
            raise bad(f"entry {short(e)} is not {{name, dtype, shape, offset}}")
        try:
            dt = np.dtype(e["dtype"])
        except TypeError:
            raise bad(f"names dtype {short(e['dtype'])}") from None
        if dt.kind not in EXTRA_KINDS or dt.hasobject or dt.names or dt.subdtype:
            raise bad(f"names dtype {short(e['dtype'])}, not plain data")
        shape = tuple(e["shape"])
        n = math.prod(shape) * dt.itemsize
        if e["offset"] + n > len(buf):
            raise bad(f"places {e['name']!r} past the end of its {len(buf)} bytes")
        raw = np.asarray(buf[e["offset"] : e["offset"] + n], dtype=np.uint8)
        out[e["name"]] = raw.view(dt).reshape(shape).copy() if n else np.zeros(shape, dt)
    return out


def write(f: h5py.File, arrays: dict, time_min: float, counts: dict, extra: dict) -> int:
    """Write a checkpoint into the free slot, then commit it by flipping ``valid_slot``.

    Args:
        f: the run file, open for writing (SWMR or not).
        arrays: {name: host numpy array}, the state's arrays (names and shapes as created).
        time_min: simulated time in minutes.
        counts: step, n_snapshots, n_rows, n_events as on disk at this moment.
        extra: {name: numpy array}, the model's extra state.
    Returns:
        the slot written.
    """
    g = f[GROUP]
    valid = int(g["valid_slot"][()])
    target = 0 if valid < 0 else (valid + 1) % N_SLOTS
    generation = 1 if valid < 0 else int(g[f"slot{valid}/counts"][COUNTS.index("generation")]) + 1
    s = g[f"slot{target}"]
    st = s["state"]
    missing = set(arrays) ^ set(st)
    if missing:
        raise RunFileError(
            f"checkpoint: state arrays {sorted(missing)} differ from the run "
            "file's checkpoint slots"
        )
    # the slot's datasets stay open until the flush below: a write HDF5 fails for want of space
    # then fails the flush, before valid_slot names the slot (a dataset closed at once only
    # prints the error, and the damaged slot would be committed)
    held = {name: st[name] for name in arrays}
    for name, a in arrays.items():
        _write_array(held[name], np.asarray(a))
    buf, index = pack_extra(extra)
    if s["extra"].shape[0] < buf.size:
        s["extra"].resize((buf.size,))
    if buf.size:
        s["extra"][: buf.size] = buf
    raw = index.encode()
    if len(raw) > EXTRA_INDEX_BYTES:
        raise RunFileError(
            f"checkpoint: the index of the extra state takes {len(raw)} bytes, "
            f"more than the {EXTRA_INDEX_BYTES} its slot holds (too many arrays)"
        )
    s["extra_index"][0] = raw
    s["time_min"][()] = float(time_min)
    s["counts"][:] = np.array(
        [
            counts["step"],
            counts["n_snapshots"],
            counts["n_rows"],
            counts["n_events"],
            buf.size,
            generation,
        ],
        dtype=np.int64,
    )
    # the slot must be on disk before the record that names it
    f.flush()
    _fsync(f)
    del held
    g["valid_slot"][()] = np.int64(target)
    f.flush()
    _fsync(f)
    return target


# ------------------------------------------------------------------------------ reading


def has_slots(f: h5py.File) -> bool:
    return GROUP in f and "valid_slot" in f[GROUP]


def read(f: h5py.File, where: str | None = None) -> Checkpoint | None:
    """The committed checkpoint of an open run file, or None when none was written yet.

    Everything is checked before the state is read (see the module docstring); a checkpoint
    that is damaged or does not fit the file is a RunFileError naming ``where`` (default: the
    file's name), never a resume from wrong values."""
    where = where or f.filename
    with reading(where, "its checkpoint"):
        return _read(f, where)


def _read(f: h5py.File, where: str) -> Checkpoint | None:
    if not has_slots(f):
        return None
    g = f[GROUP]
    lv = g.attrs.get("layout_version", 0)
    if not (isinstance(lv, (int, np.integer)) and int(lv) == LAYOUT_VERSION):
        raise RunFileError(
            f"{where}: checkpoint layout {short(lv)}; this tmesim reads layout "
            f"{LAYOUT_VERSION} only"
        )
    v = np.asarray(g["valid_slot"][()])
    if v.shape != () or v.dtype.kind not in "iu" or not -1 <= int(v) < N_SLOTS:
        raise RunFileError(
            f"{where}: damaged checkpoint, valid_slot is {short(v)} (expected -1 to {N_SLOTS - 1})"
        )
    valid = int(v)
    if valid < 0:
        return None
    if f"slot{valid}" not in g:
        raise RunFileError(f"{where}: damaged checkpoint, its committed slot {valid} is missing")
    s = g[f"slot{valid}"]
    raw = np.asarray(s["counts"][()])
    if raw.shape != (len(COUNTS),) or raw.dtype.kind not in "iu":
        raise RunFileError(f"{where}: damaged checkpoint, counts are {short(raw)}")
    c = dict(zip(COUNTS, (int(x) for x in raw)))
    time_min = float(s["time_min"][()])
    _check_counts(f, s, c, time_min, where)
    arrays = {}
    for name, ds in s["state"].items():
        # an array the committed slot never stored would be read as its fill value
        if ds.size and ds.id.get_storage_size() < ds.nbytes:
            raise RunFileError(f"{where}: damaged checkpoint, state array {name} is incomplete")
        with reading(where, f"checkpoint array {name}"):
            arrays[name] = ds[()]
    with reading(where, "the checkpoint's extra state"):
        if s["extra_index"].shape != (1,):
            raise RunFileError(f"{where}: damaged checkpoint, extra_index is not one string")
        index = to_str(s["extra_index"][0])
        buf = s["extra"][: c["extra_nbytes"]]
    extra = unpack_extra(buf, index, where)
    _verify_kept(f, c, where)
    return Checkpoint(
        slot=valid,
        step=c["step"],
        time_min=float(s["time_min"][()]),
        n_snapshots=c["n_snapshots"],
        n_rows=c["n_rows"],
        n_events=c["n_events"],
        generation=c["generation"],
        arrays=arrays,
        extra=extra,
    )


def _verify_kept(f: h5py.File, c: dict, where: str) -> None:
    """Read what a resume reads next, so that a checksum that fails there is a RunFileError
    now: the kept snapshots' times, the time-series row it continues from, each chunk that the
    cut back and the appends after it rewrite (the one the cut goes through) and the extra
    state of both slots (the next checkpoint rewrites part of a chunk)."""
    cuts = {
        schema.SNAPSHOTS: c["n_snapshots"],
        schema.FIELDS: c["n_snapshots"],
        schema.TIMESERIES: c["n_rows"],
        schema.EVENTS: c["n_events"],
    }
    with reading(where, "the rows its checkpoint keeps"):
        f[schema.SNAPSHOTS]["time"][: c["n_snapshots"]]
        for col in f[schema.TIMESERIES].values():
            col[c["n_rows"] - 1]
        for group, cut in cuts.items():
            for ds in f[group].values():
                if not isinstance(ds, h5py.Dataset) or ds.chunks is None:
                    continue
                first = cut - cut % ds.chunks[0]
                if first < cut:
                    ds[first : min(ds.shape[0], first + ds.chunks[0])]
        for k in range(N_SLOTS):
            if f"slot{k}/extra" in f[GROUP]:
                f[GROUP][f"slot{k}/extra"][()]


def _check_counts(f: h5py.File, s: h5py.Group, c: dict, time_min: float, where: str) -> None:
    """Refuse counts that do not fit the file: rows the checkpoint names must exist, its step
    must be the last time-series row it names (the writer checkpoints after flushing that row)
    and its time that row's time."""
    ts = f[schema.TIMESERIES]
    rows = {
        "n_snapshots": f[schema.SNAPSHOTS]["time"].shape[0],
        "n_rows": min((ts[col].shape[0] for col in ts), default=0),
        "n_events": f[schema.EVENTS]["time_min"].shape[0],
        "extra_nbytes": s["extra"].shape[0],
    }
    for key, have in rows.items():
        if not 0 <= c[key] <= have:
            raise RunFileError(
                f"{where}: damaged checkpoint, {key} is {c[key]} but the file holds {have}"
            )
    if c["step"] < 0 or c["n_rows"] != c["step"] + 1 or c["generation"] < 1:
        raise RunFileError(
            f"{where}: damaged checkpoint, step {c['step']}, rows {c['n_rows']} and generation "
            f"{c['generation']} do not fit together"
        )
    if "time_min" in ts:
        at = float(ts["time_min"][c["step"]])
        if not math.isfinite(time_min) or time_min != at:
            raise RunFileError(
                f"{where}: damaged checkpoint, its time {short(time_min)} min is not that of "
                f"step {c['step']} in the time series ({at} min)"
            )


# ------------------------------------------------------------------------------ reopening


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: HDF5's metadata checksum (H5_checksum_lookup3)."""
    M = 0xFFFFFFFF

    def rot(x, k):
        return ((x << k) | (x >> (32 - k))) & M

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & M
    i = 0
    while n > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & M
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & M
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & M
        a = (a - c) & M
        a ^= rot(c, 4)
        c = (c + b) & M  # lookup3's mix()
        b = (b - a) & M
        b ^= rot(a, 6)
        a = (a + c) & M
        c = (c - b) & M
        c ^= rot(b, 8)
        b = (b + a) & M
        a = (a - c) & M
        a ^= rot(c, 16)
        c = (c + b) & M
        b = (b - a) & M
        b ^= rot(a, 19)
        a = (a + c) & M
        c = (c - b) & M
        c ^= rot(b, 4)
        b = (b + a) & M
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & M
    b = (b + int.from_bytes(tail[4:8], "little")) & M
    c = (c + int.from_bytes(tail[8:12], "little")) & M
    c ^= b
    c = (c - rot(b, 14)) & M  # lookup3's final()
    a ^= c
    a = (a - rot(c, 11)) & M
    b ^= a
    b = (b - rot(a, 25)) & M
    c ^= b
    c = (c - rot(b, 16)) & M
    a ^= c
    a = (a - rot(c, 4)) & M
    b ^= a
    b = (b - rot(a, 14)) & M
    c ^= b
    c = (c - rot(b, 24)) & M
    return c


def repair_after_kill(path) -> bool:
    """What ``h5clear -s --increment=0`` does, for a run file whose writer was killed.

    Superblock versions 2 and 3 (``libver="latest"``) keep "open for write" and "open for SWMR
    write" flags, which make HDF5 refuse to reopen the file for writing after a crash; and the
    end-of-file address they record is that of the writer's last superblock write, which a kill
    can leave either past the last byte that reached the disk (HDF5 then reports a truncated
    file) or short of it, with chunks past it that flushed metadata already names (a kill
    between the write of a chunk index and that of the superblock): a writer reopening the file
    would allocate space there again, and two chunks would share it (the kept one then fails
    its checksum). Clears the flags and sets the recorded end to the file's size where that is
    more (rewriting the superblock checksum), and extends the file to the recorded end where
    that is more. Only call this while holding the exclusive lock.

    Changes nothing in a superblock that fails its checksum (rewriting the checksum would make
    its damage look whole): the open that follows refuses it. The file is extended by at most
    its own size and :data:`MAX_EXTEND_BYTES` (a crafted end address must not make a huge file;
    the open that follows calls a file that needed more truncated).

    Returns True when something was changed."""
    with open(path, "r+b") as fh:
        head = fh.read(64)
        if head[:8] != HDF5_SIGNATURE or len(head) < 12 or head[8] < 2:
            return False  # not a v2/v3 superblock at offset 0: no flags to clear
        so = head[9]  # size of offsets (8)
        end = 12 + 4 * so  # signature..root object header address
        sb = bytearray(head[: end + 4])
        if len(sb) < end + 4 or lookup3(bytes(sb[:end])) != int.from_bytes(sb[end:], "little"):
            return False
        eoa = slice(12 + 2 * so, 12 + 3 * so)
        eof = int.from_bytes(sb[eoa], "little")
        size = os.fstat(fh.fileno()).st_size
        changed = False
        if sb[11] != 0 or eof < size:
            sb[11] = 0
            if eof < size:
                sb[eoa] = size.to_bytes(so, "little")
            sb[end : end + 4] = lookup3(bytes(sb[:end])).to_bytes(4, "little")
            fh.seek(0)
            fh.write(bytes(sb))
            changed = True
        if size < eof <= 2 * size + MAX_EXTEND_BYTES:
            fh.truncate(eof)
            changed = True
        if changed:
            fh.flush()
            os.fsync(fh.fileno())
        return changed


class RunLockedError(RunFileError):
    """The run file is being written by another live process."""


class WriterLock:
    """A ``flock`` on the run file that says "a writer is alive".

    A writer holds it shared once HDF5 has switched to SWMR mode (HDF5 drops its own lock then),
    so SWMR readers and HDF5's shared locks still work. Reopening a file for writing takes it
    exclusively first: if that fails, another process is still writing the run. The kernel drops
    the lock when the process dies, so a killed writer never leaves a stale lock.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)

    #: how long :meth:`exclusive` keeps trying: HDF5 readers hold a shared flock on the file
    #: while they have it open (a report, a ``rows`` poll), which is not a writer
    WAIT_S = 2.0

    def exclusive(self) -> None:
        deadline = time.monotonic() + self.WAIT_S
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
        self.release()
        raise RunLockedError(
            f"{self.path}: another process has this run file open (a writer, or a reader "
            "such as the viewer); wait for it to end (or close it) before resuming"
        ) from None

    def shared(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def clear_ended(path) -> bool:
    """Clear the open-for-write flags of a run file whose writer ended the run (its status is
    final) but was killed before closing the file.

    The status rewrite and the superblock write that clears the flags are two writes; a kill
    between them leaves a finished run that plain HDF5 refuses to open ("file is already open
    for write"). Takes the exclusive writer lock (a writer still closing the file holds it), so
    a live writer's file is never touched; a file without the flags is left alone without the
    lock (a viewer may hold it). Returns True when the file was changed."""
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(12)
    if head[:8] != HDF5_SIGNATURE or len(head) < 12 or head[8] < 2 or head[11] == 0:
        return False  # no v2/v3 superblock flags set: nothing a killed writer left
    lock = WriterLock(p)
    lock.exclusive()
    try:
        return repair_after_kill(p)
    except OSError as exc:
        raise RunFileError(f"{path}: its open-for-write flags cannot be cleared ({exc})") from None
    finally:
        lock.release()


def open_for_append(path) -> tuple[h5py.File, WriterLock]:
    """Open an existing run file for writing after its writer ended (cleanly or killed).

    Takes the exclusive writer lock, repairs what a kill leaves in the superblock, checks the
    whole file read-only as every reader does (:func:`tmesim.io.runfile.open_run_file`, with
    the format check of a resume), and opens it for writing in SWMR mode (HDF5's own locking
    off: our lock stands for it), so that a kill while the file is being cut back still leaves
    a file that opens. The caller must switch the lock to shared
    (``lock.shared()``) and release it when done."""
    p = Path(path)
    if not p.is_file():
        raise RunFileError(f"{path}: no such file")
    lock = WriterLock(p)
    lock.exclusive()
    try:
        try:
            repair_after_kill(p)
        except OSError as exc:
            raise RunFileError(f"{path}: cannot be repaired to resume ({exc})") from None
        # a damaged file is refused here, before HDF5 writes to it or retries reads of it
        open_run_file(p, resume=True, locking=False).close()
        try:
            # SWMR write from the open, not started after it: only then does HDF5 take the
            # property list's metadata read attempts (after a start it retries without end)
            f = open_h5(
                str(p), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, locking=False, latest=True
            )
        except (OSError, RuntimeError) as exc:
            raise RunFileError(
                f"{path}: cannot be reopened to resume ({short_error(exc)}); it "
                "was probably killed while being created -- run the scenario "
                "again"
            ) from None
    except BaseException:
        lock.release()
        raise
    return f, lock
