"""tmesim.io.runfile: opening run files (plainly, and in SWMR mode while a writer holds them),
refusing what is not a readable run at once, the format check, and decoding attributes."""

import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import tmesim
from tmesim.errors import RunFileError
from tmesim.io import schema
from tmesim.io.runfile import (
    attr_str,
    check_format,
    code_names,
    event_rows,
    open_run_file,
    to_str,
)
from tmesim.schedules import IterationInterval

from ..helpers import scenario_text

# 48 x 48 voxels, 60 steps: well under a second
TINY = scenario_text("run.duration_days=0.25")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("runfile") / "tiny.h5"
    return tmesim.Simulation(tmesim.loads_scenario(TINY), backend="cpu").run(path)


def copy(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copy(src, dst)
    return dst


# an open in a fresh process, so that neither a hang nor HDF5's per-process sharing of open files
# can hide what a separate reader meets; prints what it got and how long the open took
OPEN_IN_CHILD = textwrap.dedent("""
    import sys, time
    from tmesim.errors import RunFileError
    from tmesim.io.runfile import attr_str, open_run_file
    t0 = time.monotonic()
    try:
        with open_run_file(sys.argv[1]) as f:
            print("opened", f.swmr_mode, attr_str(f, "status").strip(), time.monotonic() - t0)
    except RunFileError as exc:
        print("RunFileError", time.monotonic() - t0, exc)
""")


def open_in_child(path, timeout=60) -> tuple[str, float, str]:
    """(what, seconds the open took, rest of the line) from a separate process."""
    proc = subprocess.run(
        [sys.executable, "-c", OPEN_IN_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    what, rest = lines[0].split(" ", 1)
    if what == "opened":
        swmr, status, secs = rest.split(" ")
        return what, float(secs), f"{swmr} {status}"
    secs, msg = rest.split(" ", 1)
    return what, float(secs), msg


# ------------------------------------------------------------------------------------- opening
def test_a_finished_run_opens_plainly(run_file):
    with open_run_file(run_file) as f:
        assert not f.swmr_mode
        assert attr_str(f, "format") == schema.FORMAT
        assert attr_str(f, "status").strip() == "finished"
        check_format(f, str(run_file))
        check_format(f, str(run_file), resume=True)
    assert open_in_child(run_file)[::2] == ("opened", "False finished")


class _OpenAt:
    """A callback that opens ``path`` from another process once, after step ``step``."""

    def __init__(self, step, path):
        self.schedule = IterationInterval(1)
        self.step, self.path = step, path
        self.got = None

    def __call__(self, sim):
        if sim.state.step == self.step:
            self.got = open_in_child(self.path)


def test_a_run_being_written_opens_in_swmr_mode(tmp_path):
    sim = tmesim.Simulation(tmesim.loads_scenario(TINY), backend="cpu")
    probe = _OpenAt(20, tmp_path / "live.h5")
    sim.callbacks.append(probe)
    sim.run(tmp_path / "live.h5")
    assert probe.got is not None, "the callback never ran"
    what, _, rest = probe.got
    # a plain open is refused ("open for write"), the SWMR open then follows the live run
    assert (what, rest) == ("opened", "True running"), probe.got


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(RunFileError, match="no such file"):
        open_run_file(tmp_path / "missing.h5")
    with pytest.raises(RunFileError, match="not a file"):
        open_run_file(tmp_path)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(RunFileError, match=r"not a tmesim run file \(format attribute None\)"):
        open_run_file(foreign)
    with open_run_file(foreign, check=False) as f:  # the viewer's sniffing opens it unchecked
        assert "x" in f


@pytest.mark.parametrize("kind", ["text", "empty", "cut16", "cut47", "cut_half", "superblock"])
def test_unreadable_files_are_refused_at_once(run_file, tmp_path, kind):
    """Not HDF5, or cut short (inside its superblock or after it), or a superblock that fails its
    checksum: a one-line RunFileError in well under a second, not a wait in HDF5's SWMR retry
    loop (where a 16-byte file used to hang)."""
    data = run_file.read_bytes()
    bad = tmp_path / f"{kind}.h5"
    if kind == "text":
        bad.write_text("not hdf5 at all")
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "cut16":
        bad.write_bytes(data[:16])
    elif kind == "cut47":
        bad.write_bytes(data[:47])  # one byte short of its 48-byte superblock
    elif kind == "cut_half":
        bad.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[44] ^= 0xFF  # the superblock's checksum (bytes 44-47 of 48)
        bad.write_bytes(bytes(flipped))
    what, secs, msg = open_in_child(bad, timeout=60)
    assert what == "RunFileError", msg
    assert secs < 2.0, f"{kind}: took {secs:.1f} s"
    assert msg.startswith(f"{bad}: ") and "\n" not in msg
    expected = {
        "text": "not an HDF5 file",
        "empty": "not an HDF5 file",
        "cut16": "truncated",
        "cut47": "truncated",
        "cut_half": "truncated",
        "superblock": "damaged",
    }[kind]
    assert expected in msg, msg
    with pytest.raises(RunFileError, match=expected):
        open_run_file(bad)


# -------------------------------------------------------------------------------- format check
def test_another_major_version_is_refused(run_file, tmp_path):
    newer = copy(run_file, tmp_path, "newer.h5")
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = "2.0"
    with pytest.raises(RunFileError, match="newer tmesim") as exc:
        open_run_file(newer)
    msg = str(exc.value)
    assert str(newer) in msg and "file format 2.0" in msg and f"format {schema.MAJOR}.x" in msg
    # the refused file was closed: it opens for writing again
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = "0.9"
    # an older major version still reads, but cannot be resumed
    with (
        open_run_file(newer) as f,
        pytest.raises(RunFileError, match=r"resumes format 1.x only") as exc,
    ):
        check_format(f, "older.h5", resume=True)
    assert "file format 0.9" in str(exc.value) and tmesim.__version__ in str(exc.value)


@pytest.mark.parametrize("version", ["one.two", "1.x", "", b"\xff"])
def test_an_unreadable_format_version_is_a_run_file_error(run_file, tmp_path, version):
    bad = copy(run_file, tmp_path, "bad_version.h5")
    with h5py.File(bad, "r+") as f:
        f.attrs["format_version"] = np.bytes_(version) if isinstance(version, bytes) else version
    with pytest.raises(RunFileError, match="unreadable format version") as exc:
        open_run_file(bad)
    assert str(bad) in str(exc.value) and "major.minor" in str(exc.value)


# ------------------------------------------------------------------------------------ decoding
def test_attributes_decode_from_bytes_and_str(tmp_path):
    p = tmp_path / "attrs.h5"
    with h5py.File(p, "w") as f:
        f.attrs["b"] = np.bytes_("café".encode())
        f.attrs["s"] = "café"
        f.attrs["n"] = np.int64(3)
        f.attrs["kind_names"] = ["empty", "tumor"]
        d = f.create_dataset("kind", data=np.zeros(2, np.uint8))
        d.attrs["names"] = np.array([b"empty", b"tumor"])
        f.create_dataset("bare", data=np.zeros(2, np.uint8))
    with h5py.File(p, "r") as f:
        assert attr_str(f, "b") == "café" and attr_str(f, "s") == "café"
        assert attr_str(f, "n") == "3"
        assert attr_str(f, "missing") == "" and attr_str(f, "missing", "?") == "?"
        assert code_names(f["kind"]) == ["empty", "tumor"]
        assert code_names(f["bare"]) is None
        assert code_names(f["bare"], "kind_names") == ["empty", "tumor"]  # the root's
    assert to_str(np.array(b"abc")) == "abc"  # a 0-d array gives its element
    assert to_str(b"\xff") == "\ufffd"  # an invalid byte does not raise


def test_event_rows_of_both_layouts(run_file, tmp_path):
    with h5py.File(run_file, "r") as f:
        rows = event_rows(f)
    assert rows[0][1] == "start" and isinstance(rows[0][2], dict)
    assert all(isinstance(t, float) and isinstance(k, str) for t, k, _ in rows)
    # format 1.0 wrote variable-length strings; a detail that is not JSON is kept as text, a
    # column one row longer (a reader between the writer's appends) is cut to the others
    p = tmp_path / "v10.h5"
    s = h5py.string_dtype("utf-8")
    with h5py.File(p, "w") as f:
        ev = f.create_group(schema.EVENTS)
        ev["time_min"] = np.array([0.0, 6.0, 12.0])
        ev.create_dataset("kind", data=["start", "dose"], dtype=s)
        ev.create_dataset("detail", data=['{"a": 1}', "not json"], dtype=s)
    with h5py.File(p, "r") as f:
        assert event_rows(f) == [(0.0, "start", {"a": 1}), (6.0, "dose", {"text": "not json"})]
    with h5py.File(tmp_path / "none.h5", "w") as f:
        assert event_rows(f) == []
