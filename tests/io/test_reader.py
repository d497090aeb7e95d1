"""Reading run files (tmesim.open_run, tmesim.io.reader): a lazy xarray Dataset with units and
coordinates, foreign, future and truncated files refused with one line, files of format 1.0 still
read; the Dataset written to netCDF and zarr and read back the same, dask chunks that read only
what is computed, CF flags of the codes, the time series at the snapshot times."""

import importlib.util
import json
import shutil
import time
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr

import tmesim
from tmesim import codes
from tmesim.cli import main
from tmesim.errors import RunFileError
from tmesim.io.reader import events, flag_meanings, open_run

from ..helpers import CAF_AND_DRUG, make_scenario, run_small


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
        assert ds.attrs["status"] == "finished" and events(ds)[0][1] == "start"


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
    before = events(open_run(path))
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
    assert events(open_run(path)) == before


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


# ------------------------------------------------------- xarray users: netCDF, zarr, dask, CF
#: a CAF shell, persisters and a drug: every kind of variable a run file holds
NOTE = {"why": "burden ≥ baseline", "dose_uM": 2.0}


def _append_event(path, t_min: float, kind: str, detail: str) -> None:
    """One more row of /events, as the writer stores it (fixed-length bytes)."""
    with h5py.File(path, "r+") as f:
        ev = f["events"]
        n = ev["kind"].shape[0]
        for k in ("time_min", "kind", "detail"):
            ev[k].resize(n + 1, axis=0)
        ev["time_min"][n] = t_min
        ev["kind"][n] = kind.encode()
        ev["detail"][n] = detail.encode()


@pytest.fixture(scope="module")
def rich_run(tmp_path_factory):
    sc = make_scenario(
        "init.tumor.persister_fraction=0.05", drop=("init.vessels",), extra=CAF_AND_DRUG
    )
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path_factory.mktemp("rich") / "r.h5")
    _append_event(path, 60.0, "note", json.dumps(NOTE, ensure_ascii=False))
    _append_event(path, 61.0, "note", "not JSON")
    return path


def _netcdf_engine() -> str:
    for module, engine in (("h5netcdf", "h5netcdf"), ("netCDF4", "netcdf4")):
        if importlib.util.find_spec(module):
            return engine
    pytest.skip("writing netCDF-4 needs h5netcdf or netCDF4")


def _indexed(ds: xr.Dataset) -> xr.Dataset:
    """A Dataset read back from netCDF or zarr with open_run's indexes on its time coordinates
    (neither format stores an index of a non-dimension coordinate)."""
    return ds.set_xindex("time_min").set_xindex("snapshot_time_min")


def test_events_are_variables_on_an_event_dimension(rich_run):
    """The events are three variables on ``event`` (an attribute of tuples cannot be written to
    netCDF), the same as the file's /events rows; tmesim.io.reader.events gives the tuples."""
    with h5py.File(rich_run, "r") as f:
        t = f["events/time_min"][()]
        kinds = [k.decode() for k in f["events/kind"][()]]
        details = [d.decode() for d in f["events/detail"][()]]
    with open_run(rich_run) as ds:
        assert "events" not in ds.attrs
        assert ds["event_time_min"].attrs["units"] == "min"
        np.testing.assert_array_equal(ds["event_time_min"].values, t)
        assert list(ds["event_kind"].values) == kinds and kinds[-2:] == ["note", "note"]
        assert json.loads(ds["event_detail"].values[-2]) == NOTE == json.loads(details[-2])
        ev = events(ds)
    assert [e[1] for e in ev] == kinds and ev[0][:2] == (0.0, "start")
    assert ev[-2] == (60.0, "note", NOTE)
    assert ev[-1] == (61.0, "note", {"text": "not JSON"})  # kept, never evaluated


def test_to_netcdf_round_trips_values_and_attributes(rich_run, tmp_path):
    """``open_run(p).to_netcdf()`` writes (it raised on the events attribute) and xarray reads
    back every variable, coordinate and attribute exactly."""
    engine = _netcdf_engine()
    out = tmp_path / "r.nc"
    with open_run(rich_run) as ds:
        ds.to_netcdf(out, engine=engine)
        want = ds.load()
    with xr.open_dataset(out, engine=engine) as back:
        got = _indexed(back.load())
    xr.testing.assert_identical(got, want)
    for name in ("kind", "tumor_state", "memory", "oxygen", "erlotinib", "burden"):
        assert got[name].dtype == want[name].dtype, name
    assert events(got) == events(want) and events(got)[-2] == (60.0, "note", NOTE)
    with h5py.File(rich_run, "r") as f:  # and the file's own values, not open_run's
        np.testing.assert_array_equal(got["kind"].values, f["snapshots/kind"][()])
        np.testing.assert_array_equal(got["oxygen"].values, f["snapshots/fields/oxygen"][()])
        assert got.attrs["scenario"] == f.attrs["scenario"]


def test_to_zarr_round_trips_values_and_attributes(rich_run, tmp_path):
    pytest.importorskip("zarr")
    out = tmp_path / "r.zarr"
    with open_run(rich_run) as ds:
        ds.to_zarr(out, consolidated=False)
        want = ds.load()
    with xr.open_zarr(out, consolidated=False) as back:
        got = _indexed(back.load())
    xr.testing.assert_identical(got, want)
    assert events(got) == events(want)
    with h5py.File(rich_run, "r") as f:
        np.testing.assert_array_equal(got["tumor_state"].values, f["snapshots/tumor_state"][()])


def test_codes_carry_cf_flags_named_as_in_codes_py(rich_run):
    with open_run(rich_run) as ds:
        for var, names in (("kind", codes.KIND_NAMES), ("tumor_state", codes.TUMOR_STATE_NAMES)):
            attrs = ds[var].attrs
            meanings = attrs["flag_meanings"].split(" ")
            assert meanings == list(names), var
            values = attrs["flag_values"]
            assert values.dtype == ds[var].dtype == np.uint8
            assert dict(zip(meanings, values.tolist())) == {n: i for i, n in enumerate(names)}
        kinds = dict(
            zip(ds["kind"].attrs["flag_meanings"].split(), ds["kind"].attrs["flag_values"])
        )
        assert kinds["necrotic"] == codes.NECROTIC and kinds["caf"] == codes.CAF
    assert flag_meanings(["a b", " c\t", ""]) == "a_b c _"  # CF: blank-separated words


def test_chunks_give_dask_arrays_that_read_only_what_is_computed(rich_run, tmp_path):
    """``open_run(p, chunks=...)``: dask arrays of the chunking asked, equal to the lazy arrays;
    nothing is read at open or while a computation is built: with one snapshot of oxygen
    damaged, every other snapshot computes and only a computation over that one fails."""
    path = Path(shutil.copy(rich_run, tmp_path / "c.h5"))
    with open_run(path) as lazy_ds, open_run(path, chunks={}) as dask_ds:
        assert lazy_ds["oxygen"].chunks is None  # default as before: no dask
        assert isinstance(dask_ds["oxygen"].data, da.Array)
        assert dask_ds["oxygen"].chunks == ((1,) * 5, (48,), (48,))  # one per HDF5 chunk
        xr.testing.assert_identical(dask_ds.load(), lazy_ds.load())
    with open_run(path, chunks="auto") as auto_ds, open_run(path) as lazy_ds:
        # "auto" sizes chunks by bytes: the event texts stay numpy arrays (dask cannot size text)
        assert isinstance(auto_ds["kind"].data, da.Array)
        assert isinstance(auto_ds["burden"].data, da.Array)
        assert isinstance(auto_ds["event_kind"].data, np.ndarray)
        xr.testing.assert_identical(auto_ds.load(), lazy_ds.load())
    with h5py.File(path, "r") as f:
        chunk = f["snapshots/fields/oxygen"].id.get_chunk_info(2)
        good = f["snapshots/fields/oxygen"][3]
        kind = f["snapshots/kind"][()]
    with open(path, "r+b") as fh:
        fh.seek(chunk.byte_offset + chunk.size // 2)
        b = fh.read(1)
        fh.seek(chunk.byte_offset + chunk.size // 2)
        fh.write(bytes([b[0] ^ 0x10]))
    with open_run(path, chunks={"time": 1, "x": 16}) as ds:
        o = ds["oxygen"]
        assert o.chunks == ((1,) * 5, (48,), (16, 16, 16))
        total = o.sum()  # a graph, nothing read
        np.testing.assert_array_equal(o[3].values, good)
        np.testing.assert_array_equal(ds["kind"].values, kind)
        with pytest.raises(RunFileError, match="oxygen cannot be read"):
            total.compute()
    with pytest.raises(ValueError, match=r"\['t'\], which are not dimensions"):
        open_run(path, chunks={"t": 1})


def test_time_series_values_at_the_snapshot_times(rich_run):
    """Snapshots and rows share a time in minutes: ``.sel(time_min=snapshot_time_min)`` gives
    the rows taken at the snapshot times, found independently in the file's columns."""
    path = rich_run
    with h5py.File(path, "r") as f:
        snap_t = f["snapshots/time"][()]
        row_t = f["timeseries/time_min"][()]
        burden = f["timeseries/burden"][()]
        oxygen = f["snapshots/fields/oxygen"][()]
    rows = [int(np.flatnonzero(row_t == t)[0]) for t in snap_t]
    with open_run(path) as ds:
        for c in ("snapshot_time_min", "time_min", "event_time_min"):
            assert ds[c].attrs["units"] == "min", c
        assert ds["time"].attrs["units"] == ds["step_time_h"].attrs["units"] == "h"
        at = ds["burden"].sel(time_min=ds["snapshot_time_min"])
        assert at.dims == ("time",)
        np.testing.assert_array_equal(at.values, burden[rows])
        near = ds["burden"].sel(time_min=ds["snapshot_time_min"] + 2.0, method="nearest")
        np.testing.assert_array_equal(near.values, burden[rows])
        np.testing.assert_array_equal(ds["oxygen"].sel(snapshot_time_min=720.0).values, oxygen[2])
        np.testing.assert_array_equal(ds["time_min"].values, row_t)
