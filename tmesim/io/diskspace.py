"""Room on disk for the next write of a run file, claimed before HDF5 writes a byte of it.

HDF5 does not stop at a write that fails for want of space: it goes on flushing other metadata,
some of it rewritten in place (which needs no new blocks and succeeds) and pointing at blocks that
were never written, and the file no longer opens. So the writer (tmesim.io.hdf5) claims the room
for each write first, and stops the run cleanly when it cannot (:class:`DiskFullError`), leaving
the file as its last flush left it: closed, and resumable from its last checkpoint.

The claim is an ``fallocate(FALLOC_FL_KEEP_SIZE)`` of the bytes the write can add past the file's
end (Linux; the file's size is unchanged, the blocks are the file's): once it succeeds, no other
process can take that room, and HDF5's writes into it cannot fail for want of space. Where the file
system has no fallocate, the free space ``statvfs`` reports is compared instead (another process
may still fill the disk between the check and the write then). Copy-on-write file systems (btrfs,
ZFS) need new blocks even to rewrite a block in place, which no claim covers; the margin of
:data:`METADATA_MARGIN` is all they get.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError

#: bytes claimed beyond each write's data, for the HDF5 metadata it rewrites or adds (object
#: headers, chunk indexes, the superblock): ten times the most one write of the test scenarios
#: (2D and 3D, with drugs and controllers) added beyond its chunks, 6 KiB
METADATA_MARGIN = 64 << 10
#: below the file's end, the claim also covers this many bytes: space HDF5 allocated there and has
#: not written yet (its aggregators hand out blocks in advance) is a hole, which takes room when
#: written
HOLE_SLACK = 1 << 20
#: how much bigger than its input a deflate stream can get, per byte, plus a constant (zlib's
#: deflateBound: about 0.03 % and 13 bytes; taken generously)
_DEFLATE_GROWTH = 1e-3
_DEFLATE_CONSTANT = 64
#: errno values of a write refused for want of space (quota included)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(UserError):
    """The disk holding a run file has no room for its next write; the run stopped before it.

    Args:
        path: the run file.
        what: the write, in words ("the snapshot at step 120").
        need: bytes the write needs (margin included).
        free: bytes free on the file system.
        after: what the user should know next (where the run stands, how to continue).
    """

    def __init__(self, path, what: str, need: int, free: int, after: str = ""):
        self.path = Path(path)
        self.what = what
        self.need = int(need)
        self.free = int(free)
        self.after = after
        super().__init__(self._text())

    @property
    def reason(self) -> str:
        """The short reason, for the run file's ``interrupted`` event."""
        return (
            f"disk full: {self.what} needs up to {mib(self.need)}, {mib(self.free)} free "
            f"on {self.path.parent}"
        )

    def _text(self) -> str:
        return f"{self.path}: {self.reason}" + (f"; {self.after}" if self.after else "")

    def with_after(self, after: str) -> DiskFullError:
        """The same error, saying ``after`` at its end."""
        return type(self)(self.path, self.what, self.need, self.free, after)


class DiskFilledError(DiskFullError):
    """A write of a run file failed for want of space although its room was checked: the file
    system could not claim it and another process took it, or HDF5 needed more than claimed.
    HDF5 may have left the file damaged past its last checkpoint."""

    @property
    def reason(self) -> str:
        return (
            f"disk full: {self.what} failed for want of space ({mib(self.free)} free on "
            f"{self.path.parent})"
        )


def mib(n: int) -> str:
    """Bytes as MiB, with two decimals below 10 MiB ("0.06 MiB", "1.25 MiB", "312 MiB")."""
    v = n / 2**20
    return f"{v:.2f} MiB" if v < 10 else f"{v:.0f} MiB"


def free_bytes(path) -> int:
    """Bytes an unprivileged process may still write on the file system holding ``path`` (a
    file or folder; for a file not made yet, its folder)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused for want of space: an OSError with errno ENOSPC or
    EDQUOT, or HDF5's report of one (h5py raises it as an OSError or RuntimeError whose text
    carries the errno)."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    text = str(exc)
    return any(f"errno = {e}," in text for e in NO_SPACE) or "No space left on device" in text


# ------------------------------------------------------------------------------ claiming room


def _load_fallocate():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.fallocate64 if hasattr(libc, "fallocate64") else libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()
#: fallocate's mode: allocate blocks without changing the file's size
FALLOC_FL_KEEP_SIZE = 1
#: errno values of a file system (or platform) that has no fallocate
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV, errno.EBADF}


def claim(fd: int, start: int, length: int) -> bool:
    """Allocate the blocks of bytes ``start`` .. ``start + length`` of the open file ``fd``
    that are not allocated yet, leaving its size as it is.

    Returns True when done, False where the platform or file system cannot (the caller falls
    back on :func:`free_bytes`). Raises OSError (errno ENOSPC or EDQUOT) when there is no room.
    """
    if _fallocate is None or length <= 0:
        return False
    while True:
        if _fallocate(fd, FALLOC_FL_KEEP_SIZE, max(0, start), length) == 0:
            return True
        e = ctypes.get_errno()
        if e == errno.EINTR:
            continue
        if e in _UNSUPPORTED:
            return False
        raise OSError(e, os.strerror(e))


def give_back(fd: int) -> None:
    """Give back the blocks claimed past the end of the open file ``fd`` and not used
    (truncating a file to its own size frees them on tmpfs and ext4; elsewhere they may stay
    until the file is truncated or removed)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, os.fstat(fd).st_size)


def release_claim(path) -> None:
    """Give back the blocks claimed past the end of the closed file ``path`` and not used
    (see :func:`give_back`)."""
    with contextlib.suppress(OSError):  # gone, or read-only: nothing claimed there to give back
        os.truncate(path, os.path.getsize(path))


def make_room(path, fd: int | None, end: int, need: int, what: str) -> None:
    """Make sure ``need`` bytes can be written past byte ``end`` of the run file ``path``
    (open as ``fd``, or None: compare with the free space only).

    Raises DiskFullError when they cannot; nothing has been written then."""
    free = free_bytes(path)
    claimed = False
    if fd is not None:
        start = max(0, end - HOLE_SLACK)
        try:
            claimed = claim(fd, start, end + need - start)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            raise DiskFullError(path, what, need, free) from None
    if not claimed and free < need:
        raise DiskFullError(path, what, need, free)


# ------------------------------------------------------------------------------ sizes


class Layout(NamedTuple):
    """How a chunked dataset growing along its first axis is stored: its chunk shape, the
    bytes of one element, its extent beyond the first axis, and its filters."""

    chunks: tuple[int, ...]
    itemsize: int
    plane: tuple[int, ...]
    compressed: bool
    fletcher32: bool

    @classmethod
    def of(cls, ds) -> Layout:
        return cls(
            tuple(ds.chunks),
            ds.dtype.itemsize,
            tuple(ds.shape[1:]),
            ds.compression is not None,
            bool(ds.fletcher32),
        )

    def append_bytes(self, old: int, n: int) -> int:
        """At most the bytes of new chunks that appending ``n`` rows to ``old`` allocates.

        An unfiltered (or checksum-only) chunk is rewritten where it is; a compressed chunk
        that grows moves, so the last, partly filled chunk is counted again for those."""
        if n <= 0:
            return 0
        c0 = self.chunks[0]
        first = old // c0 if self.compressed else -(-old // c0)
        along = -(-(old + n) // c0) - first
        per_plane = math.prod(-(-s // c) for s, c in zip(self.plane, self.chunks[1:]))
        chunk = math.prod(self.chunks) * self.itemsize
        if self.compressed:
            chunk += int(chunk * _DEFLATE_GROWTH) + _DEFLATE_CONSTANT
        if self.fletcher32:
            chunk += 4
        return along * per_plane * chunk


def append_bytes(ds, n: int) -> int:
    """At most the bytes of new chunks that appending ``n`` rows (along the first axis) to the
    chunked dataset ``ds`` allocates in the file (see :meth:`Layout.append_bytes`)."""
    return Layout.of(ds).append_bytes(ds.shape[0], n)


def unallocated_bytes(ds) -> int:
    """Bytes a contiguous dataset takes once written, 0 when its storage is allocated already
    (HDF5 allocates it at the first write, and rewrites it in place after)."""
    if ds.id.get_storage_size() > 0:
        return 0
    return int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
