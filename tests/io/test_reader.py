"""Reading run files (tmesim.open_run, tmesim.io.reader): a lazy xarray Dataset with units and
coordinates, foreign, future and truncated files refused with one line, files of format 1.0 still
read."""

import time

import h5py
import numpy as np
import pytest

import tmesim
from tmesim import codes
from tmesim.cli import main
from tmesim.errors import RunFileError
from tmesim.io.reader import open_run

from ..helpers import make_scenario, run_small


def test_open_run_is_lazy_xarray(tmp_path):
    _sc, _sim, path = run_small(tmp_path)
    with tmesim.open_run(path) as ds:
        assert ds["oxygen"].dims == ("time", "y", "x")
        assert ds["oxygen"].attrs["units"] == "mmHg"
        np.testing.assert_allclose(ds["time"].values, [0, 6, 12, 18, 24])
        np.testing.assert_allclose(ds["x"].values[:2], [10.0, 30.0])  # voxel centres, um
        assert ds["kind"].attrs["names"][codes.NECROTIC] == "necrotic"
        assert ds["burden"].dims == ("step",) and ds["step_time_h"].values[-1] == 24.0
        assert ds["oxygen"].variable._in_memory is False
        sl = ds["oxygen"].isel(time=-1, y=24).values
        assert sl.shape == (48,) and np.isfinite(sl).all()
        assert ds.attrs["status"] == "finished" and ds.attrs["events"][0][1] == "start"


def test_foreign_and_future_files_are_refused(tmp_path):
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(RunFileError, match="not a tmesim run file"):
        tmesim.open_run(foreign)
    _, _, path = run_small(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = "2.0"
    with pytest.raises(RunFileError, match="newer tmesim"):
        tmesim.open_run(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    assert main(["report", str(tmp_path / "junk.h5")]) == 2


def test_truncated_file_is_refused_at_once(tmp_path):
    """A run file cut short (e.g. copied before the copy ended) gives a one-line RunFileError in
    well under a second, not a wait in HDF5's SWMR retry loop."""
    sc = make_scenario()
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "r.h5")
    cut = tmp_path / "cut.h5"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    t0 = time.monotonic()
    with pytest.raises(RunFileError, match="truncated"):
        tmesim.open_run(cut)
    assert time.monotonic() - t0 < 2.0


def test_a_format_1_0_file_with_variable_length_events_still_reads(tmp_path):
    """Files written before events became fixed-length (format 1.0) read the same."""
    _, _, path = run_small(tmp_path)
    before = open_run(path).attrs["events"]
    with h5py.File(path, "r+") as f:
        ev = f["events"]
        kinds = [k.decode() for k in ev["kind"][:]]
        details = [d.decode() for d in ev["detail"][:]]
        for name, vals in (("kind", kinds), ("detail", details)):
            del ev[name]
            ev.create_dataset(
                name, data=vals, maxshape=(None,), chunks=(64,), dtype=h5py.string_dtype("utf-8")
            )
        f.attrs["format_version"] = "1.0"
    assert open_run(path).attrs["events"] == before


def test_damaged_snapshot_data_is_a_run_file_error_naming_the_variable(tmp_path):
    """A flipped byte in one stored snapshot of oxygen (each chunk carries a checksum): the file
    opens (its metadata is whole), every other snapshot reads, and reading that one is a
    one-line RunFileError naming the file and the variable, not h5py's OSError."""
    _, _, path = run_small(tmp_path)
    with h5py.File(path, "r") as f:
        chunk = f["snapshots/fields/oxygen"].id.get_chunk_info(2)
        good = f["snapshots/fields/oxygen"][3]
    with open(path, "r+b") as fh:
        fh.seek(chunk.byte_offset + chunk.size // 2)
        b = fh.read(1)
        fh.seek(chunk.byte_offset + chunk.size // 2)
        fh.write(bytes([b[0] ^ 0x10]))
    with tmesim.open_run(path) as ds:
        np.testing.assert_array_equal(ds["oxygen"][3].values, good)
        with pytest.raises(RunFileError) as exc:
            ds["oxygen"][2].load()
    msg = str(exc.value)
    assert msg.startswith(f"{path}: damaged run file, oxygen cannot be read") and "\n" not in msg


def test_rows_declared_beyond_what_the_file_holds_are_refused_before_any_read(tmp_path):
    """A small file declaring 10^9 rows in every time-series column (its chunks unwritten): the
    open refuses it at once; nothing is allocated for the rows (open_run read them all)."""
    _, _, path = run_small(tmp_path)
    with h5py.File(path, "r+") as f:
        for ds in f["timeseries"].values():
            ds.resize(10**9, axis=0)
    t0 = time.monotonic()
    with pytest.raises(RunFileError, match=r"declares shape \(1000000000,\)"):
        tmesim.open_run(path)
    assert time.monotonic() - t0 < 1.0


def test_snapshot_arrays_one_row_apart_read_as_the_complete_snapshots(tmp_path):
    """A reader that comes between the writer's appends sees some snapshot arrays one row longer
    than others: open_run gives the snapshots every array holds (it took kind's rows and failed
    to load the shorter ones)."""
    _, _, path = run_small(tmp_path)
    with h5py.File(path, "r+") as f:
        T = f["snapshots/kind"].shape[0]
        f["snapshots/memory"].resize(T - 1, axis=0)
        f["snapshots/fields/oxygen"].resize(T - 1, axis=0)
    with tmesim.open_run(path) as ds:
        assert ds.sizes["time"] == T - 1
        ds.load()
        assert ds["oxygen"].shape[0] == ds["kind"].shape[0] == T - 1
