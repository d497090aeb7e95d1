"""Output writers on schedules: the in-memory series is the run file's, schedules fire when they
say, stop conditions of in-memory runs are the caller's."""

import h5py
import numpy as np

import tmesim
from tmesim.schedules import TimeInterval
from tmesim.simulation import run_scenario
from tmesim.validation import run_arm
from tmesim.writers import InMemoryWriter, OutputWriter, SnapshotWriter

from .helpers import SMALL_2D, make_scenario

SHORT = "run.duration_days=0.25"  # 60 steps of 6 min


def test_in_memory_series_is_the_run_files_timeseries(tmp_path, monkeypatch):
    sc = make_scenario(SHORT)
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "a.h5")
    monkeypatch.chdir(tmp_path)
    mem = run_scenario(sc)
    assert mem.path is None and mem.status == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "a.xdmf"]  # no file
    s = mem.series
    with h5py.File(path, "r") as f:
        ts = f["timeseries"]
        assert set(s) == set(ts) | {"day"}
        for col in ts:
            a, b = np.asarray(s[col], dtype=np.float64), ts[col][:]
            assert a.shape == b.shape == (sc.n_steps + 1,), col
            assert np.array_equal(a.view(np.uint64), b.view(np.uint64)), col
    np.testing.assert_array_equal(s["day"], s["time_min"] / 1440.0)


class Times(OutputWriter):
    """Records the simulated times at which its schedule fired."""

    def __init__(self, schedule):
        super().__init__(schedule)
        self.times = []

    def write(self, sim):
        self.times.append(sim.state.time_min)


def test_writer_on_a_time_interval_fires_at_its_times(tmp_path):
    sc = make_scenario(SHORT)
    sim = tmesim.Simulation(sc, backend="cpu")
    hourly = sim.output_writers["hourly"] = Times(TimeInterval(60.0, first=False))
    odd = sim.output_writers["odd"] = Times(TimeInterval(50.0, first=False))
    sim.output_writers["snapshots"] = SnapshotWriter(TimeInterval(120.0))
    path = sim.run(tmp_path / "b.h5")
    assert hourly.times == [60.0, 120.0, 180.0, 240.0, 300.0, 360.0]
    assert odd.times == [54.0, 102.0, 150.0, 204.0, 252.0, 300.0, 354.0]  # first step at or after
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["snapshots/time"][:], [0.0, 120.0, 240.0, 360.0])


def test_in_memory_only_writers_write_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sim = tmesim.Simulation(make_scenario(SHORT), backend="cpu")
    mem = sim.output_writers = {"rows": InMemoryWriter()}
    assert sim.run() is None and sim.status == "finished"
    assert list(tmp_path.iterdir()) == []
    assert len(mem["rows"].rows) == sim.sc.n_steps + 1


def test_run_arm_stops_after_the_row_that_fired(tmp_path):
    scen = tmp_path / "s.toml"
    scen.write_text(SMALL_2D)
    seen = []

    def stop(rows):
        seen.append(len(rows))
        return rows[-1]["time_min"] >= 30.0

    s = run_arm(str(scen), ["run.duration_days=0.25"], stop)
    assert seen == [2, 3, 4, 5, 6]  # after each step, with the rows so far
    np.testing.assert_array_equal(s["time_min"], [0.0, 6.0, 12.0, 18.0, 24.0, 30.0])
    full = run_arm(str(scen), ["run.duration_days=0.25"])
    assert len(full["time_min"]) == 61
    for col in s:
        np.testing.assert_array_equal(s[col], full[col][:6])
