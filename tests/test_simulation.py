"""Whole runs: the HDF5 file and its schema, determinism, a killed run, the reader, CLI, report."""

import json
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import tmesim
from tmesim import codes
from tmesim.io import schema
from tmesim.io.hdf5 import RunWriter
from tmesim.io.reader import open_run
from tmesim.cli import main
from tmesim.errors import RunFileError

from .conftest import SMALL_2D


def run_small(tmp_path, name="a.h5", **over):
    sc = tmesim.loads_scenario(SMALL_2D, overrides=over or None)
    sim = tmesim.Simulation(sc, backend="cpu")
    path = sim.run(tmp_path / name)
    return sc, sim, path


def h5_contents(path):
    """Every dataset and attribute of a file, except the creation time."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = v
        f.visititems(visit)
        for k, v in f.attrs.items():
            if k != "created":
                out[f"@{k}"] = v
    return out


def test_run_file_schema(tmp_path):
    sc, sim, path = run_small(tmp_path)
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == "tmesim" and a["format_version"] == schema.FORMAT_VERSION
        assert a["seed"] == 11 and a["dx_um"] == 20.0 and a["dt_min"] == 6.0
        assert list(a["axes"]) == ["y", "x"] and list(a["grid_shape"]) == [48, 48]
        assert a["status"].strip() == "finished"
        assert tmesim.loads_scenario(a["scenario"]).grid == sc.grid
        T = f["snapshots/time"].shape[0]
        assert T == 5   # 0, 6, 12, 18, 24 h
        np.testing.assert_allclose(f["snapshots/time"][:], np.arange(5) * 360.0)
        assert f["snapshots/kind"].shape == (T, 48, 48) and f["snapshots/kind"].dtype == np.uint8
        assert f["snapshots/kind"].chunks[0] == 1 and f["snapshots/kind"].compression == "gzip"
        assert f["snapshots/fields/oxygen"].dtype == np.float32
        assert f["snapshots/fields/oxygen"].attrs["units"] == "mmHg"
        ts = f["timeseries"]
        for col in ("time_min", "n_S", "n_P", "n_R", "n_caf", "n_tam", "n_necrotic", "n_vessel",
                    "burden", "persister_fraction", "resistant_fraction", "hypoxic_fraction",
                    "mean_oxygen", "mean_oxygen_tumor"):
            assert ts[col].shape == (sc.n_steps + 1,), col
        # the time series agrees with the snapshots it can be checked against
        last = f["snapshots/kind"][-1]
        assert ts["burden"][-1] == (last == codes.TUMOR).sum()
        assert ts["n_vessel"][-1] == (last == codes.VESSEL).sum()
        np.testing.assert_allclose(ts["mean_oxygen"][-1],
                                   f["snapshots/fields/oxygen"][-1].mean(dtype=np.float64),
                                   rtol=1e-6)
        kinds = [k.decode() for k in f["events/kind"][:]]
        assert kinds[0] == "start"
        # fixed-length, not variable-length strings: no event write touches the global heap
        lengths = {"kind": schema.EVENT_KIND_BYTES, "detail": schema.EVENT_DETAIL_BYTES}
        for name, n in lengths.items():
            assert h5py.check_string_dtype(f["events"][name].dtype).length == n
    assert (tmp_path / "a.xdmf").is_file()
    xml = (tmp_path / "a.xdmf").read_text()
    assert xml.count("<Grid Name=\"t") == 5 and "a.h5:/snapshots/fields/oxygen" in xml


def test_same_seed_same_file_other_seed_differs(tmp_path):
    _, _, p1 = run_small(tmp_path, "1.h5")
    _, _, p2 = run_small(tmp_path, "2.h5")
    _, _, p3 = run_small(tmp_path, "3.h5", **{"run.seed": 12})
    a, b, c = h5_contents(p1), h5_contents(p2), h5_contents(p3)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    assert not np.array_equal(a["snapshots/kind"], c["snapshots/kind"])


def test_open_run_is_lazy_xarray(tmp_path):
    sc, sim, path = run_small(tmp_path)
    with tmesim.open_run(path) as ds:
        assert ds["oxygen"].dims == ("time", "y", "x")
        assert ds["oxygen"].attrs["units"] == "mmHg"
        np.testing.assert_allclose(ds["time"].values, [0, 6, 12, 18, 24])
        np.testing.assert_allclose(ds["x"].values[:2], [10.0, 30.0])   # voxel centres, um
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
    sc = tmesim.loads_scenario(SMALL_2D)
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "r.h5")
    cut = tmp_path / "cut.h5"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    t0 = time.monotonic()
    with pytest.raises(RunFileError, match="truncated"):
        tmesim.open_run(cut)
    assert time.monotonic() - t0 < 2.0


def test_killed_run_leaves_a_readable_file(tmp_path):
    """SIGKILL while running: the file opens (h5py and open_run) with the snapshots flushed."""
    scen = tmp_path / "long.toml"
    scen.write_text(SMALL_2D.replace("duration_days = 1", "duration_days = 30")
                    .replace("snapshot_every_hours = 6", "snapshot_every_hours = 1"))
    out = tmp_path / "killed.h5"
    p = subprocess.Popen([sys.executable, "-m", "tmesim", "run", str(scen), "-o", str(out), "-q"])
    try:
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline and n < 3:
            time.sleep(0.2)
            if out.exists():
                try:
                    with h5py.File(out, "r", swmr=True) as f:
                        n = f["snapshots/time"].shape[0]
                except OSError:
                    pass
        assert n >= 3, "the run did not get going"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    with tmesim.open_run(out) as ds:
        T = ds.sizes["time"]
        assert T >= 3
        assert ds.attrs["status"] == "running"   # it never got to close
        kind = ds["kind"].values
        assert kind.shape[0] == T and (kind[-1] == codes.TUMOR).sum() > 0
        assert ds["burden"].size >= 1


def test_stop_at_burden_is_an_event(tmp_path):
    sc, sim, path = run_small(tmp_path, **{"run.stop.max_burden": 200,
                                           "run.duration_days": 5})
    assert sim.stop_reason == "burden reached 200"
    with tmesim.open_run(path) as ds:
        assert ds.attrs["status"] == "stopped"
        assert ds["burden"].values[-1] >= 200 > ds["burden"].values[-2]
        assert [e[1] for e in ds.attrs["events"]] == ["start", "stop"]
        assert ds["time"].values[-1] == ds["step_time_h"].values[-1]   # last state snapshotted


def test_extinction_stops(tmp_path):
    sc, sim, path = run_small(tmp_path, **{"init.tumor.shape": "none"})
    assert sim.stop_reason == "extinction" and sim.state.step == 1


def test_cli_run_and_report(tmp_path, capsys):
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL_2D)
    out = tmp_path / "r" / "run.h5"
    assert main(["run", str(scen), "-o", str(out), "-q", "--report",
                 "--set", "run.duration_days=0.5"]) == 0
    text = capsys.readouterr().out
    assert "tumor cells (burden)" in text and "equivalent radius" in text
    for png in ("run_population.png", "run_maps.png"):
        p = out.parent / png
        assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG"
    assert main(["run", str(scen), "--backend", "gpu", "-q"]) == 2


@pytest.mark.slow
def test_spheroid_grows_hypoxic_then_necrotic_core(tmp_path):
    """MODEL.md 7.5 on the shipped 3D scenario (shortened): the spheroid outgrows the oxygen
    diffusion length; a hypoxic core appears first, necrosis later, and necrosis sits deeper in the
    spheroid than the living cells (mean distance from the centre)."""
    sc = tmesim.load_scenario("scenarios/spheroid_3d.toml",
                              overrides={"grid.shape": [48, 48, 48], "run.duration_days": 8,
                                         "init.tumor.radius_um": 260})
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "sph.h5")
    with tmesim.open_run(path) as ds:
        t = ds["step_time_h"].values
        hyp = ds["hypoxic_fraction"].values
        nec = ds["n_necrotic"].values
        first_hyp = t[np.argmax(hyp > 0.05)]
        first_nec = t[np.argmax(nec > 0)]
        assert hyp[0] == 0 and nec[0] == 0
        assert hyp.max() > 0.3 and nec.max() > 20
        assert first_hyp < first_nec
        kind = ds["kind"][-1].values
        zz, yy, xx = np.indices(kind.shape)
        r = np.sqrt(sum((a - (n - 1) / 2) ** 2 for a, n in zip((zz, yy, xx), kind.shape)))
        assert r[kind == codes.NECROTIC].mean() < r[kind == codes.TUMOR].mean()
        o2 = ds["oxygen"][-1].values
        assert o2[kind == codes.NECROTIC].mean() < 5.0 < o2[kind == codes.TUMOR].mean()


@pytest.mark.slow
def test_quickstart_runs_as_readme_says(tmp_path):
    code = main(["run", "scenarios/quickstart_2d.toml", "-o", str(tmp_path / "q.h5"), "-q"])
    assert code == 0
    with tmesim.open_run(tmp_path / "q.h5") as ds:
        assert ds["burden"].values[-1] > ds["burden"].values[0]     # it grows
        assert ds["hypoxic_fraction"].values[-1] > 0.2               # and turns hypoxic


def test_event_details_round_trip_and_an_oversized_one_is_kept_truncated(tmp_path):
    """Events are fixed-length; a detail too long for its slot is kept as valid JSON, marked."""
    sc, _, path = run_small(tmp_path)
    big = {"note": "é" * 3 * schema.EVENT_DETAIL_BYTES, "x": 1}
    small = {"drug": "erlotinib", "dose_uM": 2.0, "why": "burden ≥ baseline"}
    with h5py.File(path, "r+", libver="latest") as f:
        n = f["events/kind"].shape[0]
        w = RunWriter.__new__(RunWriter)
        w.f = f
        w.event(5.0, "note", small)
        w.event(6.0, "note", big)
        with pytest.raises(ValueError, match="longer than"):
            w.event(7.0, "k" * (schema.EVENT_KIND_BYTES + 1), {})
    ev = open_run(path).attrs["events"]
    assert len(ev) == n + 2
    assert ev[n] == (5.0, "note", small)
    t, kind, d = ev[n + 1]
    assert (t, kind, d["truncated"]) == (6.0, "note", True)
    assert len(d["text"]) > 100 and json.dumps(big, sort_keys=True).startswith(d["text"])
    assert 0 < len(json.dumps(d).encode()) <= schema.EVENT_DETAIL_BYTES


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
            ev.create_dataset(name, data=vals, maxshape=(None,), chunks=(64,),
                              dtype=h5py.string_dtype("utf-8"))
        f.attrs["format_version"] = "1.0"
    assert open_run(path).attrs["events"] == before
