"""A writer killed at every write of the moments that rewrite the run file's status.

A preloaded shim counts the process's writes (``pwrite``/``write`` to files) from the moment
the status is rewritten and kills the process with SIGKILL before the n-th one, for n = 0, 1, ...
until the run ends without being killed. After each kill `tmesim resume` must finish the run,
and the file must equal the uninterrupted run's and open with plain h5py. Random kills
(tests/io/test_checkpoint.py) land in these windows too rarely to test them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest

import tmesim

from ..helpers import TINY_SETS, assert_same_run, scenario_text, status_in

pytestmark = pytest.mark.slow

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>
static long left = -1;
void tm_arm(long n) { left = n; }
static void tick(void) {
  if (left == 0) kill(getpid(), SIGKILL);
  if (left > 0) left--;
}
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
  static ssize_t (*real)(int, const void *, size_t, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pwrite");
  tick();
  return real(fd, b, n, o);
}
ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) {
  static ssize_t (*real)(int, const void *, size_t, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pwrite64");
  tick();
  return real(fd, b, n, o);
}
ssize_t write(int fd, const void *b, size_t n) {
  static ssize_t (*real)(int, const void *, size_t);
  if (!real) real = dlsym(RTLD_NEXT, "write");
  if (fd > 2) tick();
  return real(fd, b, n);
}
"""

# Arms the shim when the writer sets the status named first on the command line, then runs
# the tmesim command line that follows.
CHILD = textwrap.dedent(
    """
    import ctypes, sys
    shim = ctypes.CDLL(None)
    target, n = sys.argv[1], int(sys.argv[2])
    from tmesim.io import hdf5
    set_status = hdf5.RunWriter._set_status
    def armed(self, status):
        if status == target:
            shim.tm_arm(ctypes.c_long(n))
        set_status(self, status)
    hdf5.RunWriter._set_status = armed
    from tmesim.cli import main
    sys.exit(main(sys.argv[3:]))
    """
)

#: 120 steps, a checkpoint every 20
SHORT = (*TINY_SETS, "run.duration_days=0.5")
MAX_POINTS = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("killpoints")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the write-counting shim")
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-x", "c", "-", "-o", str(d / "shim.so"), "-ldl"],
        input=SHIM.encode(),
        check=True,
    )
    (d / "child.py").write_text(CHILD)
    scen = d / "short.toml"
    scen.write_text(scenario_text(*SHORT))
    ref = tmesim.Simulation(tmesim.load_scenario(scen), backend="cpu").run(d / "ref.h5")
    return d, scen, ref


def _env(d: Path | None = None) -> dict:
    root = str(Path(tmesim.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if d is not None:
        env["LD_PRELOAD"] = str(d / "shim.so")
    return env


def _killed_at(d: Path, target: str, n: int, args: list[str]) -> bool:
    p = subprocess.run(
        [sys.executable, str(d / "child.py"), target, str(n), *args, "-q"],
        cwd=d,
        env=_env(d),
        capture_output=True,
        timeout=300,
    )
    if p.returncode == -signal.SIGKILL:
        return True
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return False


def _resume_and_check(d: Path, out: Path, ref: Path, what: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tmesim", "resume", str(out), "-q"],
        cwd=d,
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    assert r.returncode == 0, f"{what}: {r.stderr.decode()[-2000:]}"
    with h5py.File(out, "r") as f:  # plain HDF5, no tmesim repair in between
        assert status_in(f) == "finished", what
    assert_same_run(ref, out)


def _walk(
    d: Path, ref: Path, target: str, args: list[str], start: Path | None, points: int = 0
) -> int:
    """Kill at write 0, 1, ... after ``target`` is set, until the run ends unkilled (or at the
    first ``points`` writes, for a status the run goes on writing after); returns the number
    of kill points."""
    out = d / "k.h5"
    for n in range(points or MAX_POINTS):
        for p in d.glob("k.*"):
            p.unlink()
        if start is not None:
            shutil.copyfile(start, out)
        if not _killed_at(d, target, n, args):
            return n
        _resume_and_check(d, out, ref, f"killed at write {n} after status {target!r}")
    if points:
        return points
    pytest.fail(f"still killed after {MAX_POINTS} writes: the shim counts writes it should not")


def test_kill_at_every_write_of_a_run_closing(setup):
    d, scen, ref = setup
    points = _walk(d, ref, "finished", ["run", str(scen), "-o", str(d / "k.h5")], None)
    assert points >= 1, "the shim never fired: LD_PRELOAD did not reach HDF5's writes"


def test_kill_at_every_write_of_a_resume_reopening_and_closing(setup):
    d, scen, ref = setup
    # a run killed at its last status rewrite: status running, resumable from its checkpoint
    base = d / "base.h5"
    out = d / "k.h5"
    for p in d.glob("k.*"):
        p.unlink()
    assert _killed_at(d, "finished", 0, ["run", str(scen), "-o", str(out)])
    shutil.copyfile(out, base)
    with h5py.File(base, "r", swmr=True, locking=False) as f:  # flagged as open by the kill
        assert status_in(f) == "running"
    # the reopening's status write and the flushes right after it (the run goes on writing)
    _walk(d, ref, "running", ["resume", str(out)], base, points=12)
    points = _walk(d, ref, "finished", ["resume", str(out)], base)
    assert points >= 1, "the shim never fired at the resumed run's close"
