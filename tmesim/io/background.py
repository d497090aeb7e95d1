"""Run-file writes on a thread of their own, so that the stepping loop does not wait for them.

During a run, :class:`BackgroundWriter` stands in for the :class:`tmesim.io.hdf5.RunWriter` of
the run file: every call that writes (time-series rows, events, snapshots, checkpoints) is
handed over to one writer thread, which makes it on the RunWriter in the order it was handed
over, so the file is the one the RunWriter alone would write, byte for byte in every dataset and
attribute. The stepping thread never calls into the file while the writer thread lives: h5py
serializes every call with one lock, and a second caller would wait for the write in progress
(HDF5 itself releases the interpreter while it compresses and writes).

What is handed over is the caller's to keep: arrays are host copies of their own (never views of
arrays the next step changes, see tmesim.writers), rows and event details are copied or
encoded at the hand-over. The arrays waiting for the writer (and the one being written) take at
most ``max_bytes`` of host memory: a hand-over that would exceed it waits for the writer.

A write that fails in the writer thread (a full disk, tmesim.io.diskspace) is raised in the
stepping thread at its next hand-over, at :meth:`BackgroundWriter.drain` or at
:meth:`BackgroundWriter.close`, as the RunWriter raised it; the writes handed over after the
failed one are dropped (a RunWriter alone would never have been asked for them), and from then
on every call writes at once, in the caller's thread. :attr:`BackgroundWriter.failed_at` is the
step and time of the write that failed, for the run's messages.

:func:`background_bytes` decides whether a run writes in the background at all: only when the
host has room for the copies.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable

import numpy as np

from .hdf5 import RunWriter, encode_event

#: hand-overs the writer may hold at once, in state-sized batches (a snapshot or a checkpoint
#: each), where the host has room: one being written while the next one waits
DEPTH = 2
#: the share of the host's available memory the copies waiting for the writer may take
MEMORY_SHARE = 0.5


def available_bytes() -> int | None:
    """Host memory available to this process now (Linux ``MemAvailable``; else the free
    pages), or None when the system does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def background_bytes(state_bytes: int, available: int | None) -> int:
    """The host memory (bytes) a run whose state takes ``state_bytes`` on the host may give its
    background writer: room for :data:`DEPTH` hand-overs (else one) besides the one the stepping
    thread is copying, within :data:`MEMORY_SHARE` of ``available``; 0 when not even one fits
    (or ``available`` is unknown): the run then writes on the stepping thread."""
    if available is None:
        return 0
    for depth in range(DEPTH, 0, -1):
        if (depth + 1) * state_bytes <= MEMORY_SHARE * available:
            return depth * state_bytes
    return 0


class BackgroundWriter:
    """Writes into ``writer`` (a RunWriter, open) on a thread of its own; see the module
    docstring.

    Args:
        writer: the run file's RunWriter; the BackgroundWriter owns it until :meth:`close`.
        max_bytes: host memory the arrays waiting for the writer may take (one hand-over larger
            than this is still taken, alone).
        clock: returns (step, time_min) of the run now: what a failed write is reported at.
    """

    #: arrays handed over must be copies of their own (see tmesim.writers)
    background = True

    def __init__(
        self, writer: RunWriter, max_bytes: int, clock: Callable[[], tuple[int, float]]
    ) -> None:
        self.writer = writer
        self.path = writer.path
        self.max_bytes = max_bytes
        self._clock = clock
        #: the step of the last snapshot handed over (None before the first)
        self.last_snapshot_step = writer.last_snapshot_step
        #: (step, time_min) at which the write that failed was handed over; None before
        self.failed_at: tuple[int, float] | None = None
        self._cv = threading.Condition()
        # (write, bytes it holds, (step, time_min) of its hand-over); the head is being written
        self._ops: collections.deque = collections.deque()
        self._held = 0
        self._error: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = threading.Thread(
            target=self._work, name=f"tmesim writer {self.path.name}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ what the RunWriter says

    @property
    def checkpoint_step(self) -> int | None:
        """The step of the last checkpoint committed (as of the writes done so far)."""
        return self.writer.checkpoint_step

    @property
    def checkpoint_slot(self) -> int | None:
        """The slot of the last checkpoint committed (as of the writes done so far)."""
        return self.writer.checkpoint_slot

    # ------------------------------------------------------------------ the writes

    def row(self, values: dict) -> None:
        row = dict(values)
        self._hand_over(lambda w: w.row(row))

    def flush_rows(self) -> None:
        self._hand_over(lambda w: w.flush_rows())

    def event(self, time_min: float, kind: str, detail: dict | None = None) -> None:
        # encoded here: a kind that does not fit is the caller's error, raised at once
        kind_b, detail_b = encode_event(kind, detail)
        self._hand_over(lambda w: w.write_event(float(time_min), kind, kind_b, detail_b))

    def snapshot(self, state) -> None:
        """Hand over a snapshot of ``state``, whose arrays are host copies of its own."""
        arrays = (state.kind, state.tumor_state, state.memory, state.fields)
        self._hand_over(lambda w: w.snapshot(state), sum(a.nbytes for a in arrays))
        self.last_snapshot_step = int(state.step)

    def checkpoint(self, state_arrays: dict, step: int, time_min: float, extra: dict) -> None:
        """Hand over a checkpoint (host arrays of its own); the slot it goes to is
        :attr:`checkpoint_slot` once :meth:`drain` returned."""
        nbytes = sum(np.asarray(a).nbytes for a in state_arrays.values())
        self._hand_over(lambda w: w.checkpoint(state_arrays, step, time_min, extra), nbytes)

    def drain(self) -> None:
        """Wait until every write handed over is done; raise the error of one that failed."""
        with self._cv:
            while self._ops and self._error is None:
                self._cv.wait()
        self._raise_failure()

    def close(self, status: str = "finished") -> None:
        """Let the writer finish what was handed over, end its thread, then close the file with
        ``status`` (:meth:`RunWriter.close`). A write that failed meanwhile (which the caller
        has not seen: :meth:`drain` raises it first) is raised once the file is closed, as
        "interrupted" where ``status`` said the run was done. A Ctrl-C while waiting for the
        writer is raised once the file is closed: the writes handed over are all made first,
        so that a run that ended "finished" is whole."""
        stopped = None
        while self._thread is not None:
            try:
                self._stop()
            except KeyboardInterrupt as exc:
                stopped = exc
        failure = self._error
        self._error = None
        if failure is not None and status in ("finished", "stopped"):
            status = "interrupted"  # a write is missing: the run is to be resumed
        try:
            self.writer.close(status)
        finally:
            if failure is not None and stopped is None:
                raise failure
        if stopped is not None:
            raise stopped

    # ------------------------------------------------------------------ the thread

    def _hand_over(self, write: Callable[[RunWriter], object], nbytes: int = 0) -> None:
        if self._thread is None:  # after a failure (or close): written at once
            self._raise_failure()
            write(self.writer)
            return
        at = self._clock()
        with self._cv:
            while self._ops and self._error is None and self._held + nbytes > self.max_bytes:
                self._cv.wait()
            if self._error is None:
                self._ops.append((write, nbytes, at))
                self._held += nbytes
                self._cv.notify_all()
        self._raise_failure()

    def _raise_failure(self) -> None:
        """In the caller's thread: raise the failure of a write, once; the writer thread has
        ended, and the writes from now on are made at once."""
        if self._error is None:
            return
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        failure, self._error = self._error, None
        raise failure

    def _stop(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        assert self._thread is not None
        self._thread.join()
        self._thread = None

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._ops and not self._closing:
                    self._cv.wait()
                if not self._ops:
                    return
                write, nbytes, at = self._ops[0]
            try:
                write(self.writer)
            except BaseException as exc:  # raised in the stepping thread (_raise_failure)
                with self._cv:
                    self.failed_at = at
                    self._error = exc
                    self._ops.clear()
                    self._held = 0
                    self._cv.notify_all()
                return
            with self._cv:
                self._ops.popleft()
                self._held -= nbytes
                self._cv.notify_all()
