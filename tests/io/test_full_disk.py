"""A full disk (issue 18): the run stops before the write that has no room, with one line, and the
file stays resumable; once space is freed, ``tmesim resume`` finishes it bit for bit as a run that
never stopped (tests.helpers.assert_same_run).

The disk is a small tmpfs mounted for the test (as root; elsewhere, where ``unshare -rm`` gives a
user namespace, the test runs again in one), filled with a filler file to leave the free space a
case asks for; freeing space is removing the filler. Where neither is possible the tests skip.
The runs are real ``tmesim`` processes of the tiny scenario (480 steps, a checkpoint every 20).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import h5py
import pytest

import tmesim
from tmesim.io import checkpoint, diskspace
from tmesim.io.runfile import attr_str

from ..helpers import TINY, assert_same_run

ROOT = Path(__file__).resolve().parents[2]
#: the tmpfs of every case: room for the tiny run several times over
DISK_BYTES = 8 << 20
#: set in the child pytest that reruns a test inside a user namespace
IN_NAMESPACE = "TMESIM_TEST_IN_USERNS"


def _env() -> dict:
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def _try_mount(where: Path) -> str | None:
    """Mount a tmpfs of DISK_BYTES on ``where``; None when done, else why not."""
    try:
        p = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run mount: {exc}"
    return None if p.returncode == 0 else f"mount failed: {p.stderr.strip()[:120]}"


def _namespace_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        p = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0


class Disk:
    """A mounted tmpfs: :meth:`leave` fills it to leave so many bytes free, :meth:`free` empties
    the filler again."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler"

    def free_bytes(self) -> int:
        return diskspace.free_bytes(self.root)

    def leave(self, nbytes: int) -> None:
        """Fill the disk so that ``nbytes`` (rounded down to a 4 KiB page) stay free."""
        fill = self.free_bytes() - nbytes
        assert fill >= 0, f"the disk has only {self.free_bytes()} bytes free"
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            block = b"\0" * (1 << 16)
            while fill > 0:
                fill -= os.write(fd, block[: min(len(block), fill)])
        finally:
            os.close(fd)

    def fill_up(self) -> None:
        """Take every free byte (what another process filling the disk does)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk(request, tmp_path):
    """A tmpfs of DISK_BYTES mounted on a fresh folder, unmounted after the test.

    As root it is mounted here. Otherwise, where ``unshare -rm`` works, the test is run again in
    a child pytest inside a user and mount namespace (where it is root) and this one passes or
    fails with it. Elsewhere the test skips."""
    where = Path("/tmp") / f"tmesim-disk-{uuid.uuid4().hex[:12]}"
    if os.geteuid() != 0:
        if os.environ.get(IN_NAMESPACE) or not _namespace_works():
            pytest.skip("mounting a tmpfs needs root or unshare -rm (user namespaces)")
        p = subprocess.run(
            ["unshare", "-rm", sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
            + ["-p", "no:xvfb", request.node.nodeid],
            cwd=ROOT,
            env=dict(_env(), **{IN_NAMESPACE: "1"}),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
        if " skipped" in p.stdout and " passed" not in p.stdout:
            pytest.skip("skipped in the user namespace too")
        yield None  # the child ran it: the test body returns at once
        return
    where.mkdir()
    try:
        why = _try_mount(where)
        if why is not None:
            pytest.skip(f"cannot mount a tmpfs: {why}")
        try:
            yield Disk(where)
        finally:
            if subprocess.run(["umount", str(where)], capture_output=True, timeout=60).returncode:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=60)
    finally:
        where.rmdir()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny scenario's file and the file of a run of it never interrupted, and their size
    on disk (run file and ParaView sidecar)."""
    d = tmp_path_factory.mktemp("full-disk-ref")
    scen = d / "tiny.toml"
    scen.write_text(TINY)
    sim = tmesim.Simulation(tmesim.load_scenario(scen), backend="cpu")
    ref = sim.run(d / "ref.h5")
    assert sim.status == "finished"
    size = ref.stat().st_size + ref.with_suffix(".xdmf").stat().st_size
    return scen, ref, size


def _tmesim(*args, script: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "tmesim"]
    if not script:
        cmd += [*args, "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())


def _one_line_error(p: subprocess.CompletedProcess, command: str) -> str:
    """The one line a refused command printed (exit code 2, no traceback)."""
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.startswith(f"tmesim {command}: error: ")
    return p.stderr.strip()


def _status(path: Path) -> str:
    with h5py.File(path, "r", swmr=True) as f:
        return attr_str(f, "status").strip()


def test_a_disk_too_full_to_create_the_file_refuses_before_writing(disk, reference):
    """64 KiB free: refused with one line, nothing left behind (it used to segfault, leaving a
    file no reader opens)."""
    if disk is None:
        return
    scen, _, _ = reference
    disk.leave(64 << 10)
    out = disk.root / "run.h5"
    line = _one_line_error(_tmesim("run", str(scen), "-o", str(out)), "run")
    assert f"{out}: disk full: creating the run file needs up to" in line
    assert "MiB free on" in line and line.endswith("no run file was made")
    assert sorted(p.name for p in disk.root.iterdir()) == ["filler"]


#: free space left for the run, as a fraction of what the finished run takes on disk: stops at
#: its first writes (before any checkpoint), half-way, and near its end
LEAVE = {"start": 0.75, "middle": 1.02, "end": 1.15}


@pytest.mark.parametrize("when", list(LEAVE))
def test_a_full_disk_stops_the_run_and_resume_finishes_it_identically(disk, reference, when):
    if disk is None:
        return
    scen, ref, size = reference
    disk.leave(int(LEAVE[when] * size))
    out = disk.root / "run.h5"
    line = _one_line_error(_tmesim("run", str(scen), "-o", str(out)), "run")
    assert f"{out}: disk full: " in line and f"tmesim resume {out}" in line
    assert _status(out) in ("interrupted", "running")
    with h5py.File(out, "r", swmr=True) as f:
        ck = checkpoint.read(f)
    if when == "start":
        assert ck is None and "before its first checkpoint" in line
    else:
        assert ck is not None and f"from its checkpoint of step {ck.step}" in line
        assert (ck.step >= 100) if when == "end" else (ck.step >= 20)
    # still full: resume stops as cleanly (wherever it finds no room), the file still resumable
    line = _one_line_error(_tmesim("resume", str(out)), "resume")
    assert f"{out}: disk full: " in line and f"tmesim resume {out}" in line
    disk.free()
    p = _tmesim("resume", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert _status(out) == "finished"
    assert_same_run(ref, out)
    assert not list(disk.root.glob("*.part")) and not list(disk.root.glob("*.tmp"))


#: run the tiny scenario into argv[2] with the disk filled up, by what looks like another
#: process, right after the writer claimed the room of the write named argv[3]
FILL_AFTER_CLAIM = textwrap.dedent("""
    import os, sys
    import tmesim
    from tmesim.io import diskspace
    make_room, done = diskspace.make_room, []
    def fill_after(path, fd, end, need, what):
        make_room(path, fd, end, need, what)
        if not done and what == sys.argv[3]:
            done.append(1)
            fd2 = os.open(os.path.join(os.path.dirname(path), "filler"), os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd2, bytes(4096))
            except OSError:
                pass
            os.close(fd2)
    diskspace.make_room = fill_after
    if len(sys.argv) > 4:
        diskspace._fallocate = None
    sim = tmesim.Simulation(tmesim.load_scenario(sys.argv[1]), "cpu")
    try:
        sim.run(sys.argv[2])
    except diskspace.DiskFullError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
""")


@pytest.mark.skipif(diskspace._fallocate is None, reason="no fallocate on this platform")
def test_room_claimed_before_a_write_cannot_be_taken_by_another_process(disk, reference):
    """The disk filled by someone else right after the claim of the first checkpoint (which
    allocates a slot) and of the snapshot after it: the claimed writes succeed, the next write
    finds no room and stops the run cleanly, and the resume is the uninterrupted run."""
    if disk is None:
        return
    scen, ref, _ = reference
    for k, what in enumerate(("the checkpoint at step 20", "the snapshot at step 30")):
        out = disk.root / f"run{k}.h5"
        p = _tmesim(str(scen), str(out), what, script=FILL_AFTER_CLAIM)
        assert p.returncode == 2 and "disk full" in p.stderr, p.stderr[-3000:]
        assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
        with h5py.File(out, "r", swmr=True) as f:
            assert checkpoint.read(f).step == 20
        disk.free()
        assert _tmesim("resume", str(out)).returncode == 0
        assert_same_run(ref, out)


def test_without_fallocate_the_free_space_is_checked(disk, reference):
    """Where the file system cannot claim room, the free space statvfs reports is checked
    before each write: the run stops as cleanly (the disk filled after the first snapshot's
    check, so the next write finds it full), and resumes identically."""
    if disk is None:
        return
    scen, ref, _ = reference
    out = disk.root / "run.h5"
    p = _tmesim(
        str(scen), str(out), "the checkpoint at step 40", "nofallocate", script=FILL_AFTER_CLAIM
    )
    assert p.returncode == 2 and "disk full" in p.stderr, p.stderr[-3000:]
    disk.free()
    assert _tmesim("resume", str(out)).returncode == 0
    assert_same_run(ref, out)


def test_a_claim_takes_the_blocks_and_gives_them_back(disk):
    """diskspace.claim allocates blocks past the end of a file without changing its size (the
    free space drops), refuses what the disk cannot hold (ENOSPC), and give_back returns them."""
    if disk is None:
        return
    f = disk.root / "f"
    f.write_bytes(b"x" * 10_000)
    fd = os.open(f, os.O_RDWR)
    try:
        free0 = disk.free_bytes()
        if not diskspace.claim(fd, 0, 10_000 + (1 << 20)):
            pytest.skip("no fallocate here")
        assert f.stat().st_size == 10_000
        assert free0 - disk.free_bytes() >= 1 << 20
        with pytest.raises(OSError) as e:
            diskspace.claim(fd, 0, 2 * DISK_BYTES)
        assert e.value.errno == errno.ENOSPC
        diskspace.give_back(fd)
        assert disk.free_bytes() == free0 and f.read_bytes() == b"x" * 10_000
    finally:
        os.close(fd)
