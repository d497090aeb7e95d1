"""Run files written on a writer thread of their own (tmesim.io.background): the file is the one
the stepping thread writes itself (every dataset and attribute, the checkpoint included, and the
ParaView sidecar), the loop hands over copies of its own, a stop drains what was handed over
before the final checkpoint and status, and a write that fails in the writer thread (a full
disk) fails the run as it does when the stepping thread writes.

The writer thread is held back in some tests (its first snapshot waits until the loop has
stepped on), so that what the loop hands over is written while the state has already changed.
"""

from __future__ import annotations

import os
import signal
import threading

import h5py
import numpy as np
import pytest

import tmesim
from tmesim.io import background, checkpoint, diskspace
from tmesim.io.background import BackgroundWriter, background_bytes
from tmesim.io.hdf5 import RunWriter

from ..helpers import TINY, At, h5_contents, status_in
from .test_full_disk import disk  # noqa: F401  (the tmpfs fixture)

#: the step at which the held-back writer thread is let go on (a snapshot every 30 steps, a
#: checkpoint every 20: the loop hands over rows only until then)
LET_GO = 12


def _run(path, background_writes: bool, callbacks=(), wall_deadline=None):
    sim = tmesim.Simulation(tmesim.loads_scenario(TINY), backend="cpu")
    sim.background_writes = background_writes
    sim.callbacks.extend(callbacks)
    sim.wall_deadline = wall_deadline
    sim.run(path)
    return sim


def _same_files(a, b) -> None:
    ca, cb = h5_contents(a), h5_contents(b)  # everything but the creation time
    assert ca.keys() == cb.keys()
    differ = [k for k in ca if not np.array_equal(np.asarray(ca[k]), np.asarray(cb[k]))]
    assert differ == []
    xa, xb = a.with_suffix(".xdmf").read_text(), b.with_suffix(".xdmf").read_text()
    assert xa.replace(a.name, "RUN") == xb.replace(b.name, "RUN")


@pytest.fixture
def held_writer(monkeypatch):
    """Hold the writer thread at its first snapshot until the loop has taken step LET_GO
    (``gate.set`` as a callback), and record the threads each RunWriter write ran on."""
    gate = threading.Event()
    threads: dict[str, set] = {}
    for name in ("row", "write_event", "snapshot", "checkpoint"):
        real = getattr(RunWriter, name)

        def spy(self, *args, _real=real, _name=name, **kw):
            me = threading.current_thread()
            threads.setdefault(_name, set()).add(me.name)
            if _name == "snapshot" and me is not threading.main_thread():
                assert gate.wait(60), "the loop never let the writer go on"
            return _real(self, *args, **kw)

        monkeypatch.setattr(RunWriter, name, spy)
    return gate, threads


def test_the_background_file_is_the_synchronous_one(tmp_path, held_writer):
    gate, threads = held_writer
    sync = _run(tmp_path / "sync.h5", False)
    assert isinstance(sync.writer, RunWriter) and threads["snapshot"] == {"MainThread"}
    threads.clear()
    sim = _run(tmp_path / "bg.h5", True, [At(LET_GO, lambda sim: gate.set())])
    assert isinstance(sim.writer, BackgroundWriter) and sim.status == "finished"
    # every write of the loop was made by the writer thread, none by the stepping thread
    assert threads.keys() == {"row", "write_event", "snapshot", "checkpoint"}
    assert all(names == {"tmesim writer bg.h5"} for names in threads.values()), threads
    # the first snapshot was written after the loop had changed the state LET_GO times: it
    # holds the state of step 0 only if the loop handed over copies of its own
    _same_files(tmp_path / "sync.h5", tmp_path / "bg.h5")
    assert sim.checkpoints_written == sync.checkpoints_written == 23


def test_a_stop_drains_the_writes_before_the_final_checkpoint_and_status(tmp_path, held_writer):
    """SIGUSR1 at step LET_GO, while the writer still holds the first snapshot and every row
    since: the interrupted run's checkpoint is of that step, and its file (checkpoint, status
    and events included) is the one the stepping thread writes itself."""
    gate, _ = held_writer

    def stop(sim):
        os.kill(os.getpid(), signal.SIGUSR1)

    _run(tmp_path / "sync.h5", False, [At(LET_GO, stop)])
    gate.clear()

    def stop_and_let_go(sim):
        assert sim.writer._ops, "the writer had nothing left to write: the test tests nothing"
        stop(sim)
        gate.set()

    sim = _run(tmp_path / "bg.h5", True, [At(LET_GO, stop_and_let_go)])
    assert sim.status == "interrupted" and isinstance(sim.writer, BackgroundWriter)
    _same_files(tmp_path / "sync.h5", tmp_path / "bg.h5")
    with h5py.File(tmp_path / "bg.h5", "r") as f:
        assert status_in(f) == "interrupted"
        assert checkpoint.read(f).step == LET_GO
        assert f["timeseries/time_min"].shape[0] == LET_GO + 1


@pytest.mark.skipif(diskspace._fallocate is None, reason="no fallocate on this platform")
def test_a_full_disk_in_the_writer_thread_fails_the_run_as_in_the_stepping_thread(
    disk,  # noqa: F811
    tmp_path,
):
    """The disk is full half-way through the run: the background run stops at the same write,
    with the same message, status and file (checkpoint included) as a run that writes in its
    stepping thread, although its loop may have stepped on before the writer found the disk
    full."""
    if disk is None:
        return
    ref = _run(tmp_path / "ref.h5", False)
    size = ref.writer.path.stat().st_size + ref.writer.path.with_suffix(".xdmf").stat().st_size
    seen = {}
    for name, bg in (("sync", False), ("bg", True)):
        disk.leave(int(1.02 * size))  # the claims are generous: it stops half-way
        out = disk.root / f"{name}.h5"
        with pytest.raises(diskspace.DiskFullError) as e:
            _run(out, bg)
        with h5py.File(out, "r", swmr=True) as f:
            seen[name] = (str(e.value).replace(f"{name}.h5", "RUN"), status_in(f))
        for suffix in (".h5", ".xdmf"):
            kept = out.with_suffix(suffix)
            (tmp_path / kept.name).write_bytes(kept.read_bytes())
            kept.unlink()
        disk.free()
    assert seen["bg"] == seen["sync"]
    message, status = seen["sync"]
    assert "disk full" in message and "the run stopped at step" in message
    assert "continues it from its checkpoint of step" in message, message
    assert status == "interrupted"
    _same_files(tmp_path / "sync.h5", tmp_path / "bg.h5")


def test_the_host_memory_decides_how_much_the_writer_may_hold():
    """Two state-sized hand-overs where the host has room for three copies in half its
    available memory, one where it has room for two, else none (written in the loop)."""
    state = 100 << 20
    assert background_bytes(state, 6 * state) == 2 * state
    assert background_bytes(state, 5 * state) == 1 * state
    assert background_bytes(state, 4 * state) == 1 * state
    assert background_bytes(state, 3 * state) == 0
    assert background_bytes(state, None) == 0
    assert background.available_bytes() is not None  # Linux: /proc/meminfo


def test_a_simulation_without_room_for_the_copies_writes_in_its_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(background, "MEMORY_SHARE", 0.0)
    sim = _run(tmp_path / "a.h5", True)
    assert isinstance(sim.writer, RunWriter) and sim.status == "finished"
