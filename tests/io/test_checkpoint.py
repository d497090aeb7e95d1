"""Checkpoint and resume: killed runs (SIGKILL at random moments, mid-checkpoint, SIGTERM, wall
time) resumed to a file identical to a run never interrupted.

What may differ between the two files, and nothing else: the root attribute ``created``, the
``resume`` rows of /events, and the /checkpoint group (which slot holds which step depends on
when the run was stopped). Every other dataset and attribute is compared bit for bit, and the
ParaView sidecar too.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import h5py
import numpy as np
import pytest

import tmesim
from tmesim.cli import main
from tmesim.errors import RunFileError
from tmesim.io import checkpoint, schema

from ..helpers import (
    TINY,
    TINY_SETS,
    At,
    assert_same_run,
    event_kinds,
    rows_in,
    run_contents,
    scenario_text,
    signal_after_rows,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The scenario file and the file of a run never interrupted."""
    d = tmp_path_factory.mktemp("ref")
    scen = d / "tiny.toml"
    scen.write_text(TINY)
    sim = tmesim.Simulation(tmesim.load_scenario(scen), backend="cpu")
    ref = sim.run(d / "ref.h5")
    assert sim.status == "finished" and sim.checkpoints_written == 23  # steps 20, 40, .., 460
    return scen, ref


def test_uninterrupted_run_has_committed_checkpoint(tiny, tmp_path):
    scen, ref = tiny
    with h5py.File(ref, "r") as f:
        ck = checkpoint.read(f)
        assert ck.step == 460 and ck.generation == 23 and ck.time_min == 460 * 6.0
        assert ck.n_rows == 461 and ck.n_snapshots == 16 and ck.n_events == 1
        assert f.attrs["status"].strip() == "finished"
        assert int(f["checkpoint/slot1/counts"][0]) == 440  # the one before, other slot
    # a checkpoint holds the state as it was in memory at that step
    sim = tmesim.Simulation(tmesim.load_scenario(scen), backend="cpu")
    sim.callbacks.append(At(40, lambda s: setattr(s, "_signal", "test")))
    sim.run(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        ck = checkpoint.read(f)
        assert ck.step == 40 and ck.generation == 2 and ck.slot == 1
        for name, a in sim.state.arrays().items():
            assert ck.arrays[name].dtype == a.dtype
            np.testing.assert_array_equal(ck.arrays[name], a, err_msg=name)
        assert (ck.arrays["kind"] == 1).sum() == f["timeseries/burden"][40]


def _spawn(args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "tmesim", *args, "-q"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_resume_after_sigkill_at_random_moments(tiny, tmp_path):
    """SIGKILL `tmesim run` / `tmesim resume` at random moments, four times in a row, then let
    it finish: the file is the uninterrupted one."""
    scen, ref = tiny
    out = tmp_path / "k.h5"
    rnd = random.Random(20260)
    with h5py.File(ref, "r") as f:
        total = f["timeseries/time_min"].shape[0]
    mid_run = 0
    steps_at_kill = []
    for attempt in range(5):
        args = ["run", str(scen), "-o", str(out)] if attempt == 0 else ["resume", str(out)]
        p = _spawn(args, tmp_path)
        if attempt < 4:
            # kill at a random row still ahead of the file (whatever the machine's speed), within
            # the next third of what is left, so each attempt makes progress and four fit
            # (not while the writer rewrites the root `status` attribute, on reopening or
            # closing: a kill there can leave the root attributes unreadable, a known limit)
            have = rows_in(out)
            if have >= total - 15:
                p.communicate(timeout=120)
                continue
            target = have + 10 + rnd.randint(0, (total - 20 - have) // 3)
            deadline = time.monotonic() + 60
            while rows_in(out) < target and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.002)
            p.send_signal(signal.SIGKILL)
            p.wait(30)
            rows = rows_in(out)
            if p.returncode == -signal.SIGKILL and rows < total:
                mid_run += 1
                steps_at_kill.append(rows)
        else:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
    assert mid_run >= 3, "the kills did not land while the run was going"
    assert_same_run(ref, out)
    kinds = event_kinds(out)
    # a resume's event stays only if a checkpoint followed it (a later resume cuts it away)
    assert kinds[0] == "start" and 1 <= kinds.count("resume") <= mid_run
    with h5py.File(out, "r") as f:
        assert f.attrs["status"].strip() == "finished"


def test_checkpoint_killed_mid_write_leaves_previous_one(tiny, tmp_path):
    """Killed half-way through writing the second checkpoint: the first one stays committed and
    the run resumes from it."""
    scen, ref = tiny
    out = tmp_path / "mid.h5"
    n_arrays = len(tmesim.Simulation(tmesim.load_scenario(scen), "cpu").state.arrays())
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        import tmesim
        from tmesim.io import checkpoint
        calls = [0]
        write = checkpoint._write_array
        def cut(ds, a):
            calls[0] += 1
            if calls[0] == {n_arrays} + 2:          # second checkpoint, second array
                ds[...] = np.full_like(a, 7)        # a torn write: garbage in the free slot
                ds.file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            write(ds, a)
        checkpoint._write_array = cut
        tmesim.Simulation(tmesim.load_scenario(sys.argv[1]), "cpu").run(sys.argv[2])
    """)
    p = subprocess.run([sys.executable, "-c", script, str(scen), str(out)], capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    with h5py.File(out, "r", swmr=True) as f:
        assert f["checkpoint/valid_slot"][()] == 0
        ck = checkpoint.read(f)
        assert ck.step == 20 and ck.generation == 1
        torn = [
            n for n, ds in f["checkpoint/slot1/state"].items() if ds.size and (ds[()] == 7).all()
        ]
        assert len(torn) == 1  # the kill really came mid-checkpoint
        assert f["timeseries/time_min"].shape[0] > 21  # rows after the checkpoint, to cut
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 20 and sim.status == "finished"
    assert_same_run(ref, out)


def test_sigterm_checkpoints_and_exits_3_then_resume(tiny, tmp_path):
    scen, ref = tiny
    out = tmp_path / "t.h5"
    p = _spawn(["run", str(scen), "-o", str(out)], tmp_path)
    signal_after_rows(p, out, 60, signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 3, err.decode()
    assert "SIGTERM received" in err.decode() and "tmesim resume" in err.decode()
    with h5py.File(out, "r") as f:
        assert f.attrs["status"].strip() == "interrupted"
        step = checkpoint.read(f).step
        assert f["timeseries/time_min"].shape[0] == step + 1  # checkpoint at the last step
        assert event_kinds(out)[-1] == "interrupted"
    assert 60 <= step < 480
    assert main(["resume", str(out), "-q"]) == 0
    assert_same_run(ref, out)
    assert event_kinds(out) == ["start", "resume"]


def test_sigusr1_and_wall_deadline_in_process(tiny, tmp_path):
    scen, ref = tiny
    sc = tmesim.load_scenario(scen)
    out = tmp_path / "u.h5"
    sim = tmesim.Simulation(sc, "cpu")
    sim.callbacks.append(At(33, lambda s: os.kill(os.getpid(), signal.SIGUSR1)))
    sim.run(out)
    assert sim.status == "interrupted" and sim.state.step == 33
    assert sim.interrupt_reason == "SIGUSR1 received"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handler given back
    # the next leg stops at a wall-clock deadline, already past after its first step
    sim = tmesim.Simulation(sc, "cpu")
    sim.wall_deadline = time.time()
    sim.run(out, resume=True)
    assert sim.status == "interrupted" and sim.resumed_from == 33 and sim.state.step == 34
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 34 and sim.status == "finished"
    assert_same_run(ref, out)


def test_extra_state_goes_through_the_checkpoint(tiny, tmp_path):
    """Model.extra_state() is stored with the checkpoint and handed to load_extra_state()."""
    scen, _ = tiny
    sc = tmesim.load_scenario(scen)
    out = tmp_path / "x.h5"
    sim = tmesim.Simulation(sc, "cpu")
    sim.model.extra_state = lambda: {
        "doses": np.arange(sim.state.step, dtype=np.float64),
        "on": np.array(True),
        "mode": np.array(b"pause"),
    }
    sim.callbacks.append(At(50, lambda s: s.stop_reason or setattr(s, "_signal", "test")))
    sim.run(out)
    assert sim.status == "interrupted"
    got = {}
    sim2 = tmesim.Simulation(sc, "cpu")
    sim2.model.load_extra_state = got.update
    sim2.run(out, resume=True)
    np.testing.assert_array_equal(got["doses"], np.arange(50.0))
    assert got["on"] == np.array(True) and got["mode"] == np.array(b"pause")
    with pytest.raises(TypeError, match="cannot be checkpointed"):
        checkpoint.pack_extra({"bad": np.array([object()])})


def test_resume_refusals_and_nothing_to_do(tiny, tmp_path, capsys):
    scen, ref = tiny
    sc = tmesim.load_scenario(scen)
    out = tmp_path / "r.h5"
    sim = tmesim.Simulation(sc, "cpu")
    sim.callbacks.append(At(30, lambda s: setattr(s, "_signal", "test")))
    sim.run(out)
    # another live writer (its shared lock) is refused
    lock = checkpoint.WriterLock(out)
    lock.shared()
    try:
        with pytest.raises(checkpoint.RunLockedError, match="another process has this run file"):
            tmesim.Simulation.resume(out, backend="cpu")
    finally:
        lock.release()
    # another scenario is refused
    other = tmesim.load_scenario(scen, overrides={"run.seed": 6})
    with pytest.raises(RunFileError, match="another scenario"):
        tmesim.Simulation(other, "cpu").run(out, resume=True)
    # another format major version, newer or older, is refused with one line, exit 2
    for ver in ("2.0", "0.9"):
        with h5py.File(out, "r+") as f:
            f.attrs["format_version"] = ver
        capsys.readouterr()
        assert main(["resume", str(out), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and f"format {ver}" in err
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = schema.FORMAT_VERSION
    assert main(["resume", str(out), "-q"]) == 0
    assert_same_run(ref, out)
    # a finished run: nothing to do, the file untouched
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["resume", str(out), "-q"]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out
    assert out.read_bytes() == before
    assert main(["resume", str(tmp_path / "missing.h5")]) == 2


def test_resume_waits_for_a_reader_to_close_the_file(tiny, tmp_path):
    """A reader holding the file open for a moment (HDF5 readers take a shared flock, like a
    live writer's) delays a resume instead of refusing it; the resumed file is the reference."""
    scen, ref = tiny
    out = tmp_path / "r.h5"
    sim = tmesim.Simulation(tmesim.load_scenario(scen), "cpu")
    sim.callbacks.append(At(30, lambda s: setattr(s, "_signal", "test")))
    sim.run(out)
    reader = h5py.File(out, "r", swmr=True)
    threading.Timer(0.3, reader.close).start()
    t0 = time.monotonic()
    resumed = tmesim.Simulation.resume(out, backend="cpu")
    # the lock cannot be had before the reader closes: the resume waited for it
    assert time.monotonic() - t0 >= 0.3
    assert resumed.status == "finished"
    assert_same_run(ref, out)


def test_no_checkpoint_yet_restarts_from_the_start(tiny, tmp_path):
    scen, ref = tiny
    out = tmp_path / "n.h5"
    sim = tmesim.Simulation(tmesim.load_scenario(scen), "cpu")
    sim.callbacks.append(At(5, lambda s: (_ for _ in ()).throw(KeyboardInterrupt)))
    with pytest.raises(KeyboardInterrupt):
        sim.run(out)
    with h5py.File(out, "r") as f:
        assert f["checkpoint/valid_slot"][()] == -1
        assert f.attrs["status"].strip() == "interrupted"
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 0 and sim.status == "finished"
    assert_same_run(ref, out)


def test_lookup3_known_answers():
    # Bob Jenkins' lookup3.c driver5 values for hashlittle()
    assert checkpoint.lookup3(b"", 0) == 0xDEADBEEF
    assert checkpoint.lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert checkpoint.lookup3(b"Four score and seven years ago", 0) == 0x17770551
    assert checkpoint.lookup3(b"Four score and seven years ago", 1) == 0xCD628161


PERSISTERS = scenario_text(
    *TINY_SETS,
    "init.tumor.radius_um=200",
    "init.tumor.persister_fraction=0.05",
    extra="""
[init.caf]
placement = "shell"
density = 0.3

[init.tam]
placement = "random"
density = 0.02

[tam]
recruitment_per_h = 0.01

[tumor.transitions]
resistance_per_h = 1e-3

[drugs.erlotinib]
preset = "egfr_tki"
half_life_h = 36
transport = "vessels"
schedule = { kind = "continuous", dose_uM = 1.0, start_day = 0.5, interval_h = 12 }

[drugs.gpx4i]
preset = "gpx4_inhibitor"
schedule = { kind = "intermittent", dose_uM = 0.2, on_days = 0.25, off_days = 0.25 }
""",
)


def test_resume_with_drugs_stroma_and_persisters_is_identical(tmp_path):
    """With the whole persister model on (plasma levels of a one-compartment drug, memory, time in
    P, CAFs, TAMs with recruitment, two drugs), two interruptions and resumes give the file of
    an uninterrupted run, and the interrupted legs really were mid-treatment."""
    sc = tmesim.loads_scenario(PERSISTERS)
    ref = tmesim.Simulation(sc, "cpu").run(tmp_path / "ref.h5")
    with h5py.File(ref, "r") as f:
        # the run exercises what the checkpoint must carry
        assert f["timeseries/plasma_erlotinib"][-1] > 0 and f["timeseries/n_tam"][-1] > 0
        assert f["timeseries/entered_P"][:].sum() > 0 and f["timeseries/mean_memory"][-1] > 0
    out = tmp_path / "p.h5"
    sim = tmesim.Simulation(sc, "cpu")
    sim.callbacks.append(At(157, lambda s: os.kill(os.getpid(), signal.SIGUSR1)))
    sim.run(out)
    assert sim.status == "interrupted" and sim.state.step == 157
    sim = tmesim.Simulation(sc, "cpu")
    sim.callbacks.append(At(301, lambda s: os.kill(os.getpid(), signal.SIGUSR1)))
    sim.run(out, resume=True)
    assert sim.resumed_from == 157 and sim.state.step == 301
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 301 and sim.status == "finished"
    assert_same_run(ref, out)


def test_a_file_from_before_pushing_resumes_without_it(tiny, tmp_path):
    """A run file of format 1.1 (before cells pushed by default) whose scenario names no push
    reach ran with none: `tmesim resume` continues it with none, and the finished file's data
    are those of an uninterrupted run with push_reach_um = 0. A 1.2 file with the same text
    resumes with the default reach."""
    scen, _ = tiny
    text = scen.read_text()
    no_push = text + "\n[tumor.mechanics]\npush_reach_um = 0\n"
    ref = tmp_path / "ref0.h5"
    tmesim.Simulation(tmesim.loads_scenario(no_push), "cpu").run(ref)
    out = tmp_path / "old.h5"
    sim = tmesim.Simulation(tmesim.loads_scenario(no_push), "cpu")
    sim.callbacks.append(At(130, lambda s: (_ for _ in ()).throw(KeyboardInterrupt)))
    with pytest.raises(KeyboardInterrupt):
        sim.run(out)
    with h5py.File(out, "r+") as f:  # what tmesim 1.1 wrote: the text without the key
        f.attrs["scenario"] = text
        f.attrs["format_version"] = "1.1"
    assert tmesim.simulation.stored_scenario(out).tumor.mechanics.push_reach_um == 0.0
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 120 and sim.status == "finished"
    a, b = run_contents(ref), run_contents(out)
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))]
    assert differ == ["@format_version", "@scenario"]
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = schema.FORMAT_VERSION
    assert tmesim.simulation.stored_scenario(out).tumor.mechanics.push_reach_um == 60.0


def test_a_file_from_before_expanded_persisters_resumes_as_it_ran(tiny, tmp_path):
    """A run file of format 1.2 ran without expanded persisters (no P -> E) and with the old
    P -> R default (5e-6 /h) where its scenario named no rate; its time series has no n_E or
    became_E. `tmesim resume` continues it so: the finished file's data are those of an
    uninterrupted run whose scenario states those two rates, without the two columns."""
    scen, _ = tiny
    text = scen.read_text()
    old_rates = text + "\n[tumor.transitions]\nexpansion_per_h = 0\nresistance_per_h = 5e-6\n"
    ref = tmp_path / "ref12.h5"
    tmesim.Simulation(tmesim.loads_scenario(old_rates), "cpu").run(ref)
    out = tmp_path / "old12.h5"
    sim = tmesim.Simulation(tmesim.loads_scenario(old_rates), "cpu")
    sim.callbacks.append(At(130, lambda s: (_ for _ in ()).throw(KeyboardInterrupt)))
    with pytest.raises(KeyboardInterrupt):
        sim.run(out)
    with h5py.File(out, "r+") as f:  # what tmesim 1.2 wrote
        f.attrs["scenario"] = text
        f.attrs["format_version"] = "1.2"
        for col in schema.DTEP_COLUMNS:
            del f[schema.TIMESERIES][col]
    tr = tmesim.simulation.stored_scenario(out).tumor.transitions
    assert tr.expansion_per_h == 0.0 and tr.resistance_per_h == schema.OLD_RESISTANCE_PER_H
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 120 and sim.status == "finished"
    a, b = run_contents(ref), run_contents(out)
    gone = {k for k in a if k.split("@")[0] in {f"timeseries/{c}" for c in schema.DTEP_COLUMNS}}
    assert len(gone) >= 2 and not gone & b.keys()
    assert set(a) - gone == set(b)
    differ = [k for k in b if not np.array_equal(np.asarray(a[k]), np.asarray(b[k]))]
    assert differ == ["@format_version", "@scenario"]
    # a rate the old scenario named is kept; a 1.3 file takes the defaults of its version
    with h5py.File(out, "r+") as f:
        f.attrs["scenario"] = text + "\n[tumor.transitions]\nresistance_per_h = 3e-5\n"
    assert tmesim.simulation.stored_scenario(out).tumor.transitions.resistance_per_h == 3e-5
    with h5py.File(out, "r+") as f:
        f.attrs["scenario"] = text
        f.attrs["format_version"] = schema.FORMAT_VERSION
    tr = tmesim.simulation.stored_scenario(out).tumor.transitions
    assert tr.expansion_per_h == 7.5e-4 and tr.resistance_per_h == 1e-7
