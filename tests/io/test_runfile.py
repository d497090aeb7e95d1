"""tmesim.io.runfile: opening run files (plainly, and in SWMR mode while a writer holds them),
refusing what is not a readable run at once, the format check, and decoding attributes."""

import shutil
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import tmesim
from tmesim.errors import RunFileError
from tmesim.io import schema
from tmesim.io.runfile import (
    SWMR_READ_ATTEMPTS,
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


@pytest.mark.parametrize(
    "version", ["one.two", "1.x", "", b"\xff", "-1.3", "1.3.1", " 1.3", "1" * 40 + ".0"]
)
def test_an_unreadable_format_version_is_a_run_file_error(run_file, tmp_path, version):
    bad = copy(run_file, tmp_path, "bad_version.h5")
    with h5py.File(bad, "r+") as f:
        f.attrs["format_version"] = np.bytes_(version) if isinstance(version, bytes) else version
    with pytest.raises(RunFileError, match="unreadable format version") as exc:
        open_run_file(bad)
    assert str(bad) in str(exc.value) and "major.minor" in str(exc.value)


def killed_writer_copy(src, dst):
    """``dst``: a copy of ``src`` whose SWMR writer was killed (its superblock keeps the "open
    for write" flags, so readers open it in SWMR mode)."""
    shutil.copy(src, dst)
    kill = "import h5py, os, sys\nf = h5py.File(sys.argv[1], 'r+', libver='latest')\n"
    kill += "f.swmr_mode = True\nf.flush()\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", kill, str(dst)], check=True)
    return dst


def flip_header(path, name, at=20):
    """Flip a byte ``at`` bytes into the object header of ``name``: its checksum then fails."""
    with h5py.File(path, "r", swmr=True) as f:
        addr = h5py.h5o.get_info(f[name].id).addr
    with open(path, "r+b") as fh:
        fh.seek(addr + at)
        b = fh.read(1)
        fh.seek(addr + at)
        fh.write(bytes([b[0] ^ 0x5A]))


def test_a_damaged_file_a_killed_writer_held_is_refused_at_once(run_file, tmp_path):
    """A file opened in SWMR mode (its writer was killed) with a damaged object header: HDF5's
    SWMR reader retries a failing checksum 100 times with a doubling wait (it used to hang
    open_run); tmesim allows SWMR_READ_ATTEMPTS and checks every object first, so the open
    ends in a one-line RunFileError within a second."""
    live = killed_writer_copy(run_file, tmp_path / "live.h5")
    assert open_in_child(live)[::2] == ("opened", "True finished")  # read in SWMR mode
    flip_header(live, "events/detail")
    what, secs, msg = open_in_child(live, timeout=120)
    assert what == "RunFileError" and secs < 1.0, (what, secs, msg)
    assert msg.startswith(f"{live}: damaged") and "checksum" in msg
    assert 20 <= SWMR_READ_ATTEMPTS <= 30  # about 0.15 s of retries for a live file's torn read


def _edit(f, case):
    """Each edit makes a file that is not data only in the schema's layout."""
    ox = "snapshots/fields/oxygen"
    shape = f[ox].shape
    if case == "external_link":
        del f[ox]
        f[ox] = h5py.ExternalLink("/etc/hostname", "/x")
    elif case == "soft_link":
        del f[ox]
        f[ox] = h5py.SoftLink("/snapshots/memory")
    elif case == "hard_link_twice":
        f["snapshots/fields/again"] = f[ox]
    elif case == "external_storage":
        del f[ox]
        f.create_dataset(ox, shape=shape, dtype="f4", external=[("/etc/hostname", 0, 1 << 20)])
    elif case == "virtual":
        layout = h5py.VirtualLayout(shape=shape, dtype="f4")
        layout[...] = h5py.VirtualSource(".", "snapshots/memory", shape=shape)
        del f[ox]
        f.create_virtual_dataset(ox, layout)
    elif case == "filter":
        data = f[ox][()]
        del f[ox]
        f.create_dataset(ox, data=data, chunks=(1, *shape[1:]), compression="lzf")
    elif case == "extra_object":
        f["notes"] = np.arange(3)
    elif case == "named_type":
        f["snapshots/fields/mytype"] = np.dtype("f4")
    elif case == "wrong_dtype":
        del f[ox]
        f[ox] = np.zeros(shape, "S4")
    elif case == "wrong_grid":
        del f[ox]
        f[ox] = np.zeros((shape[0], shape[1], shape[2] - 1), "f4")
    elif case == "huge_rows":
        for ds in f["timeseries"].values():
            ds.resize(10**9, axis=0)
    elif case == "grid_shape":
        f.attrs["grid_shape"] = np.array([-48, 48])
    elif case == "dx_um":
        f.attrs["dx_um"] = np.nan
    elif case == "seed":
        f.attrs["seed"] = "eleven"
    elif case == "status":
        f.attrs["status"] = "mine now".ljust(64)


STRUCTURE = {
    "external_link": "snapshots/fields/oxygen is an external link",
    "soft_link": "snapshots/fields/oxygen is a soft link",
    "hard_link_twice": "is reached by 2 links",
    "external_storage": "keeps its data in an external file",
    "virtual": "is a virtual dataset",
    "filter": "uses HDF5 filter 32000",
    "extra_object": "/notes is not part of the run-file schema",
    "named_type": "/snapshots/fields/mytype is a named datatype",
    "wrong_dtype": "has dtype dtype('S4'), not the schema's",
    "wrong_grid": "but the grid is (48, 48)",
    "huge_rows": "declares shape (1000000000,)",
    "grid_shape": "grid_shape is array([-48,  48]), expected 2 or 3 positive integers",
    "dx_um": "dx_um is np.float64(nan), expected a finite positive number",
    "seed": "seed is 'eleven', expected a number",
    "status": "status is 'mine now",
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_what_is_not_the_schemas_is_refused_before_reading(run_file, tmp_path, case):
    """Links, storage, filters, objects, dtypes, shapes and root attributes that are not the
    schema's: a one-line RunFileError naming the file and the object, before anything is read
    (an external link or external storage would have read /etc/hostname)."""
    bad = copy(run_file, tmp_path, f"{case}.h5")
    with h5py.File(bad, "r+") as f:
        _edit(f, case)
    t0 = time.monotonic()
    with pytest.raises(RunFileError) as exc:
        open_run_file(bad)
    assert time.monotonic() - t0 < 0.5
    msg = str(exc.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg
    assert STRUCTURE[case] in msg, msg
    with open_run_file(bad, check=False) as f:  # the viewer's sniffing still looks at it
        assert attr_str(f, "format") == schema.FORMAT


def test_a_newer_minor_version_may_add_objects_that_are_safe(run_file, tmp_path):
    """A minor version adds what older readers can ignore: objects outside the schema open in a
    file of a newer minor version (and are never read), but they get the same safety checks."""
    newer = copy(run_file, tmp_path, "newer_minor.h5")
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = f"{schema.MAJOR}.99"
        f.create_group("lineage")["parents"] = np.arange(10)
    with open_run_file(newer) as f:
        assert "lineage" in f
    with h5py.File(newer, "r+") as f:
        f["lineage/elsewhere"] = h5py.ExternalLink("/etc/hostname", "/x")
    with pytest.raises(RunFileError, match="lineage/elsewhere is an external link"):
        open_run_file(newer)


def test_the_structure_check_costs_milliseconds(run_file):
    from tmesim.io.trust import check_structure

    with open_run_file(run_file) as f:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            check_structure(f, str(run_file))
            times.append(time.perf_counter() - t0)
    assert sorted(times)[2] < 0.05, times  # about 8 ms on a shared 2-core machine


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
    with h5py.File(p, "r+") as f:
        f["kind"].attrs["names"] = 7
    with h5py.File(p, "r") as f, pytest.raises(RunFileError, match="expected a list of names"):
        code_names(f["kind"])
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
    # JSON nested deeper than Python recurses is kept as text too (it raised RecursionError)
    with h5py.File(p, "r+") as f:
        f["events/detail"][0] = "[" * 5000
    with h5py.File(p, "r") as f:
        assert event_rows(f)[0] == (0.0, "start", {"text": "[" * 5000})
    with h5py.File(tmp_path / "none.h5", "w") as f:
        assert event_rows(f) == []
