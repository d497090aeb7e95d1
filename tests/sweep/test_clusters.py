"""Sweeps on Dask clusters (tmesim.sweep.clusters): a real LocalCluster with process workers (a
worker killed mid-run, a failing run, a re-run that does no work), and a real single-node Slurm
through dask-jobqueue where one can be started."""

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import h5py
import pytest

import tmesim
from tmesim import sweep as sw

from ..helpers import assert_same_run, write_sweep


def _open_run(pid: int, runs: Path):
    """The run file (runs/rNNNN.h5) that process ``pid`` holds open, or None."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.parent == runs and target.suffix == ".h5":
            return target
    return None


def _signal_all(pids, sig):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def test_local_cluster_sweep_survives_killed_worker_records_failure_and_reruns_nothing(tmp_path):
    """A real LocalCluster with two worker processes runs 6 runs (one of which fails at run
    time: a diffusion coefficient that makes the field non-finite). One worker is SIGKILLed
    while a run is under way, after that run wrote a checkpoint; the sweep still ends with every
    result, the killed run resumed from its checkpoint to a file identical to a run made in one
    go, and running the sweep again does nothing."""
    from distributed import Client, LocalCluster

    path = write_sweep(tmp_path, days=3, diff="[1e5, 1e300]")
    # 2 doubling times x 2 diffusions x 2 seeds = 8 runs, the 4 with 1e300 fail
    spec = sw.load_sweep(path)
    assert len(spec.runs()) == 8
    result = {}
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    try:
        pids = client.run(os.getpid)
        t = threading.Thread(
            target=lambda: result.update(
                res=sw.run_sweep(spec, client=client, progress=False, log=lambda m: None)
            )
        )
        t.start()
        killed = None
        runs = (spec.out_dir / "runs").resolve()
        deadline = time.monotonic() + 120
        # Each look freezes both workers (SIGSTOP) before reading their files and thaws them
        # after, so a run advances only between looks: however fast the machine, or however slow
        # this thread under load, every run is seen many times between its first checkpoint and
        # its end.
        while killed is None and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.02)
            _signal_all(pids.values(), signal.SIGSTOP)
            try:
                for pid in pids.values():
                    h5 = _open_run(pid, runs)
                    if h5 is None:
                        continue
                    try:
                        with h5py.File(h5, "r", swmr=True) as f:
                            step = int(f["checkpoint/valid_slot"][()])
                            n = f["timeseries/time_min"].shape[0]
                    except (OSError, KeyError, ValueError):  # caught mid-write: look again
                        continue
                    if step >= 0 and n < 600:  # a checkpoint, and far from the end
                        os.kill(pid, signal.SIGKILL)
                        killed = h5.stem
                        break
            finally:
                _signal_all(pids.values(), signal.SIGCONT)
        t.join(300)
        assert not t.is_alive()
    finally:
        client.close()
        cluster.close()
    assert killed is not None, "no run was caught mid-way to kill its worker"
    res = result["res"]
    assert (res.total, res.done, res.failed, res.ran) == (8, 4, 4, 8)

    with open(spec.summary) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run"] for r in rows] == [r.id for r in spec.runs()]  # one row per run
    for r in rows:
        bad = float(r["fields.oxygen.diffusion_um2_per_min"]) > 1e200
        assert r["status"] == ("failed" if bad else "finished")
        if bad:
            assert "became non-finite" in r["error"] and r["final_burden"] == "nan"
        else:
            assert int(float(r["steps"])) == 720 and r["error"] == ""
    rec = json.loads((spec.out_dir / "runs" / f"{killed}.json").read_text())
    assert rec["status"] == "finished" and rec["resumed_from"] > 0

    # independent check: the killed-and-resumed run is the run made in one go, and the table
    # holds its values
    run = {r.id: r for r in spec.runs()}[killed]
    sc = tmesim.load_scenario(spec.scenario, overrides=run.overrides)
    ref = tmesim.Simulation(sc, "cpu").run(tmp_path / "ref.h5")
    assert_same_run(ref, run.h5)
    with h5py.File(ref, "r") as f:
        burden = f["timeseries/burden"][:]
    row = {r["run"]: r for r in rows}[killed]
    assert float(row["final_burden"]) == burden[-1]
    assert float(row["burden_at_12h"]) == burden[120]

    # running the sweep again does no work: no cluster, no file touched
    stamps = {q: q.stat().st_mtime_ns for q in (spec.out_dir / "runs").iterdir()}
    again = sw.run_sweep(spec, cluster="no cluster may be made", progress=False, log=lambda m: None)
    assert (again.ran, again.done, again.failed) == (0, 4, 4)
    assert stamps == {q: q.stat().st_mtime_ns for q in (spec.out_dir / "runs").iterdir()}


# ---------------------------------------------------------------------------- real Slurm

SLURM_CONF = """ClusterName=tmesimtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort={port}
SlurmdPort={port2}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _sinfo_ok(env) -> bool:
    try:
        r = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and ("idle" in r.stdout or "mix" in r.stdout)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node Slurm on localhost: slurmctld + slurmd from Debian's slurm-wlm package,
    started here as root with munge. Starting daemons is intrusive, so it runs in CI (CI set)
    or when TMESIM_TEST_SLURM=1; it skips when the programs are missing or cannot start."""
    if not (os.environ.get("CI") or os.environ.get("TMESIM_TEST_SLURM")):
        pytest.skip("starts Slurm daemons: set TMESIM_TEST_SLURM=1 (CI runs it)")
    need = ["slurmctld", "slurmd", "munged", "sbatch", "sinfo"]
    if any(shutil.which(x) is None for x in need):
        pytest.skip("Slurm not installed (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    port = 17000 + os.getpid() % 2000
    (d / "slurm.conf").write_text(
        SLURM_CONF.format(host=host, d=d, port=port, port2=port + 1, cpus=os.cpu_count())
    )
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    if not Path("/run/munge/munge.socket.2").exists():
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["munged", "--force"], capture_output=True, timeout=30)
    try:
        subprocess.run(["slurmctld", "-c"], env=env, check=True, capture_output=True, timeout=30)
        subprocess.run(["slurmd"], env=env, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while not _sinfo_ok(env):
            if time.monotonic() > deadline:
                _stop_daemons(env["SLURM_CONF"])
                pytest.skip(
                    "single-node Slurm did not come up: " + (d / "slurmctld.log").read_text()[-300:]
                )
            time.sleep(0.5)
    except (OSError, subprocess.SubprocessError) as exc:
        _stop_daemons(env["SLURM_CONF"])
        pytest.skip(f"single-node Slurm did not start: {exc}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    yield d
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    _stop_daemons(env["SLURM_CONF"])


def _pids_with_conf(conf: str) -> list[int]:
    """Processes started with this test's SLURM_CONF (the daemons and their job step helpers)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"SLURM_CONF={conf}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                pass
    return [p for p in out if p != os.getpid()]


def _stop_daemons(conf: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_with_conf(conf):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while _pids_with_conf(conf) and time.monotonic() < deadline:
            time.sleep(0.2)


def test_sweep_through_dask_jobqueue_on_real_slurm(slurm, tmp_path):
    """`tmesim sweep --cluster slurm`: dask-jobqueue submits worker jobs to the local Slurm,
    the runs go through them and the table has every run."""
    p = write_sweep(
        tmp_path,
        days=0.5,
        extra='\n[slurm]\nqueue = "debug"\ngpus = 0\ncores = 1\n'
        'memory = "1GB"\nwalltime = "00:10:00"\njobs = 2\n'
        "checkpoint_margin_minutes = 1\n",
    )
    spec = sw.load_sweep(p)
    sw.import_slurm_cluster()  # in the main thread: its import sets a signal handler
    out = {}
    t = threading.Thread(
        target=lambda: out.update(
            res=sw.run_sweep(spec, cluster="slurm", progress=False, log=lambda m: None)
        ),
        daemon=True,
    )
    t.start()
    t.join(240)
    if t.is_alive():
        jobs = subprocess.run(["squeue"], capture_output=True, text=True).stdout
        pytest.fail(f"the Slurm sweep did not end in 240 s; queue:\n{jobs}")
    res = out["res"]
    assert (res.total, res.done, res.failed) == (4, 4, 0)
    with open(spec.summary) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["finished"] * 4
    logs = list((spec.out_dir / "slurm_logs").glob("*"))
    assert logs, "no Slurm job wrote a log"
    for r in spec.runs():
        assert json.loads(r.record.read_text())["status"] == "finished"
