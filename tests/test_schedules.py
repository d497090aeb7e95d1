"""Schedules fire when they say they do."""

from types import SimpleNamespace

from tmesim.schedules import IterationInterval, TimeInterval, WallTimeInterval


def fake(step, dt=6.0):
    return SimpleNamespace(state=SimpleNamespace(step=step, time_min=step * dt), dt_min=dt)


def test_iteration_interval():
    s = IterationInterval(4)
    assert [k for k in range(13) if s(fake(k))] == [0, 4, 8, 12]
    s = IterationInterval(4, first=False)
    assert [k for k in range(13) if s(fake(k))] == [4, 8, 12]


def test_time_interval_hits_each_multiple_once():
    s = TimeInterval(60.0)  # hourly with 6-min steps: every 10th step
    assert [k for k in range(41) if s(fake(k))] == [0, 10, 20, 30, 40]
    s = TimeInterval(50.0)  # not a multiple of dt: first step at or after
    fired = [k * 6 for k in range(41) if s(fake(k))]
    assert fired == [0, 54, 102, 150, 204]


def test_wall_time_interval(monkeypatch):
    t = [100.0]
    monkeypatch.setattr("tmesim.schedules.time.monotonic", lambda: t[0])
    s = WallTimeInterval(10)
    assert not s(fake(1))
    t[0] = 110.0
    assert s(fake(2)) and not s(fake(3))
