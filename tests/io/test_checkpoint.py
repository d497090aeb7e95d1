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
    restamp_text_digest,
    rows_in,
    run_contents,
    scenario_text,
    signal_after_rows,
    status_in,
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
        assert status_in(f) == "finished"
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
            # (kills at each write around the status rewrites: tests/io/test_kill_points.py)
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
        assert status_in(f) == "finished"


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
        assert status_in(f) == "interrupted"
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
        assert status_in(f) == "interrupted"
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
        restamp_text_digest(f)  # as this version's writer of that text would have
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
        restamp_text_digest(f)
    tr = tmesim.simulation.stored_scenario(out).tumor.transitions
    assert tr.expansion_per_h == 7.5e-4 and tr.resistance_per_h == 1e-7


# ------------------------------------------------------------------------ damaged checkpoints
def _interrupted(scen, path, step=30):
    """The tiny run interrupted after ``step`` (its checkpoint is at that step, slot 1)."""
    sim = tmesim.Simulation(tmesim.load_scenario(scen), "cpu")
    sim.callbacks.append(At(step, lambda s: setattr(s, "_signal", "test")))
    sim.run(path)
    assert sim.status == "interrupted"
    return path


def _flip(path, offset, mask=0x10):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ mask]))


def test_checkpoint_slots_carry_checksums_and_are_rewritten_in_place(tmp_path):
    """Every slot array but the scalars and empty ones is chunked with a Fletcher-32 checksum;
    rewriting a slot keeps its chunks where they are (the file does not grow)."""
    arrays = {
        "kind": np.zeros(5000, np.uint8),
        "fields": np.zeros((2, 5000), np.float32),
        "plasma": np.zeros(0, np.float64),
    }
    path = tmp_path / "slots.h5"
    with h5py.File(path, "w", libver="latest") as f:
        for k in ("snapshots/fields", "timeseries", "events"):
            f.create_group(k)
        f["snapshots/time"] = np.zeros(1)
        f["timeseries/time_min"] = np.arange(100) * 6.0
        f["events/time_min"] = np.zeros(1)
        checkpoint.create_slots(f, arrays)
        # creating the slots writes no state bytes (chunks are allocated as they are written):
        # no zero-fill pass; an unwritten slot still reads as zeros
        for k in range(checkpoint.N_SLOTS):
            for ds in f[f"checkpoint/slot{k}/state"].values():
                assert ds.id.get_storage_size() == 0 and not ds[()].any()
        for name in ("state/kind", "state/fields", "counts", "extra", "extra_index"):
            assert f[f"checkpoint/slot0/{name}"].fletcher32, name
        assert f["checkpoint/slot0/state/fields"].chunks == (1, 5000)
        assert f["checkpoint/slot0/state/plasma"].chunks is None  # empty: nothing to protect
        sizes = []
        for step in (10, 20, 30, 40):
            a = {k: v + step for k, v in arrays.items()}
            counts = {"step": step, "n_snapshots": 1, "n_rows": step + 1, "n_events": 1}
            checkpoint.write(f, a, step * 6.0, counts, {"doses": np.arange(step)})
            f.flush()
            sizes.append(path.stat().st_size)
        assert sizes[1] == sizes[2] == sizes[3], sizes
        ck = checkpoint.read(f)
        assert (ck.step, ck.slot, ck.generation) == (40, 1, 4)
        np.testing.assert_array_equal(ck.arrays["fields"], arrays["fields"] + 40)
        np.testing.assert_array_equal(ck.extra["doses"], np.arange(40))


def test_a_flipped_bit_in_the_committed_checkpoint_is_refused(tiny, tmp_path, capsys):
    """A flipped bit in the state the resume would start from: `tmesim resume` refuses in one
    line (the slots were contiguous and unchecked: the run went on from the wrong state)."""
    scen, _ = tiny
    out = _interrupted(scen, tmp_path / "r.h5")
    with h5py.File(out, "r") as f:
        assert int(f["checkpoint/valid_slot"][()]) == 1
        info = f["checkpoint/slot1/state/memory"].id.get_chunk_info(0)
    _flip(out, info.byte_offset + 100)
    capsys.readouterr()
    assert main(["resume", str(out), "-q", "--backend", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tmesim resume: error: {out}: damaged run file, checkpoint array memory")


#: (what is changed in the committed slot, what the refusal says)
BAD_COUNTS = {
    "step=-5": "do not fit together",
    "n_rows=20": "do not fit together",
    "n_rows=100000": "n_rows is 100000 but the file holds",
    "n_snapshots=-1": "n_snapshots is -1",
    "n_snapshots=999": "n_snapshots is 999",
    "n_events=1000000000000": "n_events is 1000000000000",
    "extra_nbytes=1000000000000000": "extra_nbytes is 1000000000000000",
    "generation=0": "do not fit together",
    "time_min=123.0": "its time 123.0 min is not that of step 30",
    "time_min=nan": "its time nan min",
    "valid_slot=5": "valid_slot is array(5)",
    "layout_version=one": "checkpoint layout 'one'",
}


@pytest.mark.parametrize("edit", list(BAD_COUNTS))
def test_checkpoint_values_that_do_not_fit_the_file_are_refused(tiny, tmp_path, edit):
    """Counters out of range or inconsistent, a time that is not the step's, a slot that does
    not exist: RunFileError naming the file, never a resume from them (a negative row count
    cut the file wrongly, a wrong time went on from it silently)."""
    scen, _ = tiny
    out = _interrupted(scen, tmp_path / "r.h5")
    key, value = edit.split("=")
    with h5py.File(out, "r+") as f:
        g = f["checkpoint"]
        if key in checkpoint.COUNTS:
            g["slot1/counts"][checkpoint.COUNTS.index(key)] = int(value)
        elif key == "time_min":
            g["slot1/time_min"][()] = float(value)
        elif key == "valid_slot":
            g["valid_slot"][()] = int(value)
        else:
            g.attrs[key] = value
    with h5py.File(out, "r") as f, pytest.raises(RunFileError) as exc:
        checkpoint.read(f)
    msg = str(exc.value)
    assert msg.startswith(f"{out}: ") and BAD_COUNTS[edit] in msg, msg
    assert main(["resume", str(out), "-q", "--backend", "cpu"]) == 2


@pytest.mark.parametrize(
    "index, expected",
    [
        ("{not json", "is not JSON"),
        pytest.param("[" * 5000, "is not JSON", id="nested-5000-deep"),
        ('{"name": "x"}', "expected a list"),
        ('[{"name": "x", "dtype": "|O", "shape": [1], "offset": 0}]', "not plain data"),
        ('[{"name": "x", "dtype": "V8", "shape": [1], "offset": 0}]', "not plain data"),
        ('[{"name": "x", "dtype": "<f8", "shape": [1], "offset": -8}]', "is not {name"),
        ('[{"name": "x", "dtype": "<f8", "shape": [1.5], "offset": 0}]', "is not {name"),
        ('[{"name": "x", "dtype": "<f8", "shape": [10000000000], "offset": 0}]', "past the end"),
        ('[{"name": "x", "dtype": "nonsense", "shape": [1], "offset": 0}]', "names dtype"),
    ],
)
def test_the_extra_state_index_must_be_plain_data_within_its_buffer(index, expected):
    """The index is checked before use: no object dtype (an array of pointers made from file
    bytes), no offset or shape outside the buffer, nothing that is not the writer's JSON."""
    with pytest.raises(RunFileError, match="damaged checkpoint, its extra-state index") as exc:
        checkpoint.unpack_extra(np.zeros(64, np.uint8), index, "run.h5")
    assert expected in str(exc.value) and str(exc.value).startswith("run.h5: ")
    buf, text = checkpoint.pack_extra({"a": np.arange(3.0), "b": np.array(b"x")})
    got = checkpoint.unpack_extra(buf, text)
    np.testing.assert_array_equal(got["a"], np.arange(3.0))


def _killed(src, dst):
    """``dst``: ``src`` as a killed writer leaves it ("open for write" flags set)."""
    dst.write_bytes(src.read_bytes())
    kill = "import h5py, os, sys\nf = h5py.File(sys.argv[1], 'r+', libver='latest')\n"
    kill += "f.swmr_mode = True\nf.flush()\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", kill, str(dst)], check=True)
    return dst


def test_repair_after_kill_changes_nothing_in_a_damaged_superblock(tiny, tmp_path):
    """A killed writer's file whose superblock fails its checksum: the repair leaves it as it
    is (it rewrote the checksum over the damage) and the resume refuses it; an end address far
    past the file's size (checksum made valid) does not make a huge file."""
    scen, _ = tiny
    out = _killed(_interrupted(scen, tmp_path / "r.h5"), tmp_path / "k.h5")
    assert out.read_bytes()[11] != 0  # the flags are set
    _flip(out, 36)  # the root object header's address
    before = out.read_bytes()
    assert checkpoint.repair_after_kill(out) is False
    assert out.read_bytes() == before
    assert main(["resume", str(out), "-q", "--backend", "cpu"]) == 2
    # a superblock whose end address is 1 TiB past the file, its checksum valid
    far = _killed(_interrupted(scen, tmp_path / "r2.h5"), tmp_path / "far.h5")
    sb = bytearray(far.read_bytes()[:48])
    sb[28:36] = (far.stat().st_size + (1 << 40)).to_bytes(8, "little")
    sb[44:48] = checkpoint.lookup3(bytes(sb[:44])).to_bytes(4, "little")
    with open(far, "r+b") as fh:
        fh.write(bytes(sb))
    size = far.stat().st_size
    checkpoint.repair_after_kill(far)
    assert far.stat().st_size == size
    assert main(["resume", str(far), "-q", "--backend", "cpu"]) == 2


def test_a_damaged_object_is_refused_before_hdf5_opens_the_file_for_writing(tiny, tmp_path):
    """A damaged object header the resume reads after reopening the file: refused by the
    read-only check before HDF5 opens it for writing (in SWMR write mode HDF5 retried the
    checksum without end: `tmesim resume` hung)."""
    scen, _ = tiny
    out = _interrupted(scen, tmp_path / "r.h5")
    with h5py.File(out, "r") as f:
        addr = h5py.h5o.get_info(f["snapshots/step"].id).addr
    _flip(out, addr + 20, 0x5A)
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "tmesim", "resume", str(out), "-q", "--backend", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert (
        p.stderr.startswith(f"tmesim resume: error: {out}: damaged") and "Traceback" not in p.stderr
    )
    assert time.monotonic() - t0 < 30


def test_a_file_with_unchecked_contiguous_slots_still_resumes(tiny, tmp_path):
    """Files written before the slots had checksums (contiguous datasets) resume as before."""
    scen, ref = tiny
    out = _interrupted(scen, tmp_path / "r.h5")
    with h5py.File(out, "r+") as f:
        for k in range(checkpoint.N_SLOTS):
            st = f[f"checkpoint/slot{k}/state"]
            for name in list(st):
                data = st[name][()]
                del st[name]
                st.create_dataset(name, data=data, fillvalue=0)
                assert st[name].chunks is None
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 30 and sim.status == "finished"
    assert_same_run(ref, out)


def test_chunks_past_the_recorded_end_address_are_not_allocated_again(tiny, tmp_path):
    """A writer killed between the write of a chunk index and that of the superblock leaves
    chunks the file names past the end address the superblock records (killing a run at each
    write of a snapshot found it). The repair moves that address to the file's end, so the
    resumed writer does not allocate their bytes a second time: the events chunk the resume
    keeps shared its bytes with a new snapshot's and failed its checksum."""
    scen, ref = tiny
    src = tmp_path / "r.h5"
    sim = tmesim.Simulation(tmesim.load_scenario(scen), "cpu")
    sim.callbacks.append(At(95, lambda s: (_ for _ in ()).throw(KeyboardInterrupt)))
    with pytest.raises(KeyboardInterrupt):
        sim.run(src)  # checkpoint at step 80; a snapshot (step 90) and events after it
    out = _killed(src, tmp_path / "k.h5")
    with h5py.File(out, "r", swmr=True, locking=False) as f:
        assert checkpoint.read(f).n_snapshots == 3 and f["snapshots/step"][-1] == 90
        ds = f["snapshots/fields/oxygen"]
        cut = min(ds.id.get_chunk_info(i).byte_offset for i in range(3, ds.id.get_num_chunks()))
        events = f["events/detail"].id.get_chunk_info(0).byte_offset
    assert events > cut  # the events chunk the resume keeps lies past the address below
    # the superblock as a kill before its last write leaves it: its end address short of chunks
    # that flushed metadata names
    sb = bytearray(out.read_bytes()[:48])
    sb[28:36] = cut.to_bytes(8, "little")
    sb[44:48] = checkpoint.lookup3(bytes(sb[:44])).to_bytes(4, "little")
    with open(out, "r+b") as fh:
        fh.write(bytes(sb))
    size = out.stat().st_size
    assert checkpoint.repair_after_kill(out) is True
    head = out.read_bytes()[:48]
    assert int.from_bytes(head[28:36], "little") == size and head[11] == 0
    assert checkpoint.lookup3(head[:44]) == int.from_bytes(head[44:48], "little")
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 80 and sim.status == "finished"
    assert_same_run(ref, out)
