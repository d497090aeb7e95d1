"""Opening a run file and reading what every reader decodes the same way.

Every reader of run files goes through here: the writer's resume, checkpoints, ``open_run``,
sweeps and the napari viewer. :func:`open_run_file` opens a file read-only and refuses, with a
one-line :class:`~tmesim.errors.RunFileError` naming the path and what is wrong, anything that
is not a readable run of a format this tmesim reads; :func:`check_format` is that format check
alone; :func:`attr_str`, :func:`code_names` and :func:`event_rows` decode attributes and the
event table, whose strings may be stored as bytes or str.

Opening: a plain open first. A file that a SWMR writer holds (or held when it was killed) carries
"open for write" flags in its superblock and refuses a plain open; it is then opened in SWMR mode,
which is what lets a reader follow a live run. SWMR mode is tried for nothing else: a file
without the HDF5 signature, one shorter than its superblock (a copy cut short), one HDF5 calls
truncated or damaged is refused at once. A SWMR reader retries a metadata read that fails its
checksum (the writer may be rewriting it), with a wait that doubles each time: HDF5's default
of 100 tries makes one damaged object take longer than anyone waits, so tmesim allows
:data:`SWMR_READ_ATTEMPTS` (about 0.15 s in all).

Then, before anything is read, the format (:func:`check_format`) and the file's structure
(tmesim.io.trust: data only, the schema's datasets, dtypes and shapes, nothing read from any
other file) are checked.

This module imports only h5py, numpy, the file schema and tmesim.io.trust (never the simulator),
so the viewer uses it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import time

import h5py
import h5py.h5p
import numpy as np

from ..errors import RunFileError
from . import schema, trust

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 looks for its signature at 0, 512, 1024, 2048, ... (a user block comes before it)
_FIRST_USER_BLOCK = 512
# a superblock read torn by its writer rewriting it fails its checksum once: tries of a plain open
_CHECKSUM_TRIES = 3
_CHECKSUM_WAIT_S = 0.02
#: metadata reads a SWMR reader tries before it gives up on a failing checksum; HDF5 waits
#: between tries, doubling the wait: 27 tries take about 0.15 s (HDF5's 100 would take ages)
SWMR_READ_ATTEMPTS = 27
_VERSION = re.compile(r"[0-9]{1,6}\.[0-9]{1,6}")
#: what an h5py read of a damaged file raises
H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


# ----------------------------------------------------------------------------------- decoding
def to_str(v) -> str:
    """A string attribute or dataset value as str: bytes are decoded as UTF-8 (an invalid byte
    becomes U+FFFD), a 0-d array gives its element."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return to_str(v[()])
    return str(v)


def attr_str(obj, key: str, default: str = "") -> str:
    """Attribute ``key`` of an h5py file, group or dataset as str (``default`` when missing)."""
    return to_str(obj.attrs.get(key, default))


def code_names(ds, root_attr: str | None = None) -> list[str] | None:
    """The names of the codes of a uint8 snapshot dataset (``kind``, ``tumor_state``): its
    ``names`` attribute, else the root attribute ``root_attr`` (e.g. ``kind_names``), else None."""
    names = ds.attrs.get("names")
    if names is None and root_attr is not None:
        names = ds.file.attrs.get(root_attr)
    if names is None:
        return None
    a = np.asarray(names)
    if a.ndim != 1 or not all(isinstance(n, (str, bytes)) for n in a.tolist()):
        raise RunFileError(
            f"{ds.file.filename}: damaged run file, the code names of {ds.name} are "
            f"{trust.short(names)}, expected a list of names"
        )
    return [to_str(n) for n in a.tolist()]


def event_rows(f: h5py.File) -> list[tuple[float, str, dict]]:
    """The run's events as ``(time_min, kind, detail)``, cut to the rows all three columns have
    (a reader may come in between the writer's appends); [] when the file has no event table.

    ``detail`` is parsed from JSON, never evaluated: a detail that is not valid JSON is kept as
    ``{"text": ...}`` and one that is not a JSON object as ``{"value": ...}``."""
    if schema.EVENTS not in f:
        return []
    ev = f[schema.EVENTS]
    if not all(k in ev for k in ("time_min", "kind", "detail")):
        return []
    n = min(ev[k].shape[0] for k in ("time_min", "kind", "detail"))
    out = []
    for t, k, d in zip(ev["time_min"][:n], ev["kind"][:n], ev["detail"][:n]):
        text = to_str(d)
        try:
            detail = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
            detail = {"text": text}
        out.append((float(t), to_str(k), detail if isinstance(detail, dict) else {"value": detail}))
    return out


@contextlib.contextmanager
def reading(where: str, what: str):
    """Turn what h5py raises on reading a damaged file into a one-line RunFileError: "``where``:
    damaged run file, ``what`` cannot be read (HDF5's reason)"."""
    try:
        yield
    except RunFileError:
        raise
    except H5_ERRORS as exc:
        raise RunFileError(
            f"{where}: damaged run file, {what} cannot be read ({short_error(exc)})"
        ) from None


def short_error(exc: BaseException) -> str:
    """The first line of an h5py error, without HDF5's error stack and "Unable to ..." prefix."""
    msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = msg.splitlines()[0] if msg else type(exc).__name__
    for prefix in (
        "Unable to synchronously open file ",
        "Unable to synchronously open object ",
        "Can't synchronously read data ",
        "Unable to open file ",
    ):
        text = text.replace(prefix, "")
    return text.strip("() ") or type(exc).__name__


# ------------------------------------------------------------------------------ format check
def check_format(f: h5py.File, where: str, *, resume: bool = False) -> None:
    """Refuse a file that is not a tmesim run or whose format this tmesim cannot take.

    Reading takes any format up to this tmesim's major version (``schema.MAJOR``); resuming (a
    checkpoint holds the state as that format laid it out) takes this major version only.
    Raises RunFileError naming ``where``; the file is left open (closing it is the caller's)."""
    try:
        fmt = f.attrs.get("format")
        ver = attr_str(f, "format_version", "0.0")
    except (KeyError, OSError, RuntimeError, ValueError) as exc:
        raise RunFileError(
            f"{where}: incomplete or damaged run file, its root attributes cannot "
            f"be read ({short_error(exc)})"
        ) from None
    fmt = None if fmt is None else to_str(fmt)
    if fmt != schema.FORMAT:
        raise RunFileError(f"{where}: not a tmesim run file (format attribute {trust.short(fmt)})")
    if not _VERSION.fullmatch(ver):
        raise RunFileError(
            f"{where}: unreadable format version {trust.short(ver)} (expected "
            f"major.minor, e.g. {schema.FORMAT_VERSION})"
        )
    major, _ = schema.parse_version(ver)
    if resume and major != schema.MAJOR:
        raise RunFileError(
            f"{where}: its checkpoint was written by tmesim file format {ver}; this "
            f"tmesim resumes format {schema.MAJOR}.x only -- resume it with the "
            f"tmesim version that wrote it ({attr_str(f, 'tmesim_version', '?')})"
        )
    if major > schema.MAJOR:
        raise RunFileError(
            f"{where}: written by a newer tmesim (file format {ver}); this tmesim "
            f"reads format {schema.MAJOR}.x -- upgrade tmesim to open it"
        )


# ------------------------------------------------------------------------------------ opening
def hdf5_offset(path) -> int | None:
    """Where the HDF5 signature (the superblock) starts in ``path``: 0, or 512, 1024, ... after a
    user block; None when the file has none (not HDF5, or empty). Raises OSError if unreadable."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        off = 0
        while off + len(HDF5_SIGNATURE) <= size:
            fh.seek(off)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return off
            off = _FIRST_USER_BLOCK if off == 0 else 2 * off
    return None


def _superblock_size(head: bytes) -> int | None:
    """Bytes of the superblock that starts ``head`` (at the signature); None when ``head`` is
    too short to tell. Layouts from the HDF5 file format specification, section II.A."""
    if len(head) < 9:
        return None
    version = head[8]
    if version >= 2:  # signature, version, sizes, flags; 4 addresses; checksum
        return None if len(head) < 10 else 12 + 4 * head[9] + 4
    if len(head) < 14:
        return None
    so = head[13]  # v0/v1: ... 4 addresses, then the root group's symbol table entry
    return 24 + (4 if version == 1 else 0) + 4 * so + (2 * so + 24)


def _is_open_for_write(reason: str) -> bool:
    """Whether a plain open failed because a SWMR writer holds the file (or held it when it was
    killed): its superblock's "open for write" flags, or a lock."""
    return "open for write" in reason or "lock file" in reason


def open_run_file(
    path, *, swmr: bool = True, check: bool = True, resume: bool = False, locking: bool = True
) -> h5py.File:
    """Open a run file read-only (see the module docstring); use it as a context manager or
    close it.

    Args:
        path: the .h5 file.
        swmr: open a file that a writer holds (or held when killed) in SWMR mode; when False
            such a file is refused.
        check: refuse a file that is not a tmesim run, is from a newer major format version
            (:func:`check_format`) or is not data only in the schema's layout
            (tmesim.io.trust.check_structure). Only for a look at the root attributes of a
            file that may be anything (the viewer's sniffing) is this False.
        resume: check the format as a resume does (this major version only).
        locking: HDF5's file locking (off for a process that holds its own lock on the file).
    Raises:
        RunFileError: missing, not a file, not HDF5, truncated, damaged, not a tmesim run,
            too new, or holding what a run file does not; one line naming the path.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise RunFileError(f"{p}: no such file")
    if not os.path.isfile(p):
        raise RunFileError(f"{p}: not a file")
    try:
        off = hdf5_offset(p)
        if off is not None:
            with open(p, "rb") as fh:
                fh.seek(off)
                head = fh.read(256)
    except OSError as exc:
        raise RunFileError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if off is None:
        raise RunFileError(f"{p}: not an HDF5 file, so not a tmesim run file")
    need = _superblock_size(head)
    if need is None or len(head) < need:
        raise RunFileError(
            f"{p}: truncated file, cannot be opened ({os.path.getsize(p)} bytes, "
            "shorter than its HDF5 superblock); was it copied before the copy "
            "finished?"
        )
    f = _open(p, swmr, locking)
    if check:
        try:
            check_format(f, p, resume=resume)
            trust.check_structure(f, p)
        except BaseException:
            f.close()
            raise
    return f


@functools.cache
def _hdf5_function(name: str):
    """A function of the HDF5 library h5py uses, that h5py does not wrap (None if absent)."""
    try:
        return getattr(ctypes.CDLL(h5py.h5p.__file__), name)
    except (OSError, AttributeError):
        return None


def file_access(*, locking: bool = True, latest: bool = False) -> h5py.h5p.PropFAID:
    """A file-access property list with :data:`SWMR_READ_ATTEMPTS` metadata read attempts.

    ``latest`` sets HDF5's format bounds to its latest (a writer reopening a run file): it
    changes nothing in the objects already there, whose messages HDF5 rewrites in the versions
    they were created in, so a file keeps the format it was written in (tmesim.io.hdf5.LIBVER;
    checked after a resume by tests/io/test_hdf5.py)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    if latest:
        fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    if not locking:
        fapl.set_file_locking(False, False)  # as h5py.File(..., locking=False)
    set_attempts = _hdf5_function("H5Pset_metadata_read_attempts")
    if set_attempts is not None:
        set_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(SWMR_READ_ATTEMPTS))
    return fapl


def open_h5(p: str, flags: int, **access) -> h5py.File:
    """``h5py.File`` of ``p`` opened with HDF5 ``flags`` (h5py.h5f.ACC_*) and
    :func:`file_access`'s property list."""
    return h5py.File(h5py.h5f.open(os.fsencode(p), flags, fapl=file_access(**access)))


def _open(p: str, swmr: bool, locking: bool = True) -> h5py.File:
    """A plain open, then SWMR for a file a writer holds; RunFileError when neither can work."""
    for attempt in range(_CHECKSUM_TRIES):
        try:
            # locking None, not True: HDF5 refuses to open a file twice in one process with
            # other locking settings, and h5py opens with None unless told
            return h5py.File(p, "r", locking=None if locking else False)
        except FileNotFoundError:
            raise RunFileError(f"{p}: no such file") from None
        except (OSError, RuntimeError, ValueError) as exc:
            reason = short_error(exc)
            if _is_open_for_write(reason):
                if swmr:
                    break
                raise RunFileError(
                    f"{p}: is open for writing, by a run in progress or one that "
                    f"was killed ({reason})"
                ) from None
            if "truncated" in reason:
                raise RunFileError(
                    f"{p}: truncated file, cannot be opened ({reason}); was it "
                    "copied before the copy finished?"
                ) from None
            if "checksum" in reason and attempt + 1 < _CHECKSUM_TRIES:
                time.sleep(_CHECKSUM_WAIT_S)
                continue
            raise RunFileError(f"{p}: damaged HDF5 file, cannot be opened ({reason})") from None
    try:
        return open_h5(p, h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, locking=locking)
    except (OSError, RuntimeError) as exc:
        raise RunFileError(
            f"{p}: damaged HDF5 file, cannot be opened ({short_error(exc)})"
        ) from None
