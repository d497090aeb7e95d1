"""Where a sweep's runs go: Dask clusters (local worker processes, one per GPU or core, or Slurm
jobs through dask-jobqueue) and the driver that submits every run left to do and writes the
summary table as they end."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .execute import execute_run
from .planning import check_observables, plan
from .records import DONE, write_json, write_summary
from .spec import SweepSpec


def gpu_count() -> int:
    """GPUs this machine offers to workers: 0 without a usable CUDA device."""
    from ..backend import gpu_available

    if not gpu_available():
        return 0
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return len([d for d in vis.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        return max(n, 1)
    except (OSError, subprocess.SubprocessError):
        return 1


def local_cluster(workers: int | None = None):
    """A Dask cluster on this machine: one worker process per GPU (each seeing only its own
    device through CUDA_VISIBLE_DEVICES), else ``workers`` CPU worker processes (default: one per
    core). One thread per worker: one run at a time each, since a run uses a whole device."""
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    n_gpu = gpu_count()
    if n_gpu and workers is None:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = [d.strip() for d in vis.split(",")] if vis else [str(i) for i in range(n_gpu)]
        specs = {
            f"gpu{d}": {
                "cls": Nanny,
                "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": d}},
            }
            for d in devices
        }
        return SpecCluster(
            workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}
        )
    n = workers or max(1, os.cpu_count() or 1)
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)


def import_slurm_cluster():
    """dask_jobqueue's SLURMCluster, imported without the side effect of its import: it sets a
    SIGINT handler calling sys.exit (dask_jobqueue/runner.py), which would turn Ctrl-C into a
    silent exit everywhere; the handler in place before is put back. Import it from the main
    thread first: signal handlers can only be set there."""
    import signal as _signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = _signal.getsignal(_signal.SIGINT) if main else None
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise UserError(
            "--cluster slurm needs dask-jobqueue: pip install 'tmesim[cluster]'"
        ) from None
    finally:
        if main and before is not None:
            _signal.signal(_signal.SIGINT, before)
    return SLURMCluster


def slurm_cluster(spec: SweepSpec):
    """dask-jobqueue's SLURMCluster: one worker per job, ``gpus`` GPUs per job, at most
    ``jobs`` jobs at once (adaptive). Each job exports TMESIM_DEADLINE (its start plus its wall
    time minus the checkpoint margin), so a run checkpoints and hands itself back before the job
    ends; the worker retires a minute after that, and the sweep resubmits the run to a fresh
    job, where it continues from its checkpoint."""
    SLURMCluster = import_slurm_cluster()
    sl = spec.slurm
    wall = sl.walltime_s
    margin = int(sl.checkpoint_margin_minutes * 60)
    if margin >= wall:
        raise UserError(
            f"slurm.checkpoint_margin_minutes ({sl.checkpoint_margin_minutes}) must "
            f"be shorter than slurm.walltime ({sl.walltime})"
        )
    extra = ([f"--gres=gpu:{sl.gpus}"] if sl.gpus else []) + list(sl.job_extra)
    prologue = list(sl.prologue) + [f"export TMESIM_DEADLINE=$(( $(date +%s) + {wall - margin} ))"]
    logs = spec.out_dir / "slurm_logs"
    logs.mkdir(parents=True, exist_ok=True)
    cluster = SLURMCluster(
        queue=sl.queue or None,
        account=sl.account or None,
        cores=sl.cores,
        processes=1,
        memory=sl.memory,
        walltime=sl.walltime,
        job_extra_directives=extra,
        job_script_prologue=prologue,
        log_directory=str(logs),
        python=sys.executable,
        job_name=f"tmesim-{spec.name}",
        worker_extra_args=["--resources", "run=1", "--lifetime", f"{max(60, wall - margin + 60)}s"],
        scheduler_options={"dashboard_address": None},
    )
    cluster.adapt(minimum_jobs=0, maximum_jobs=sl.jobs)
    return cluster


@dataclass
class SweepResult:
    total: int
    done: int
    failed: int
    ran: int  # runs started in this invocation
    summary: Path


def run_sweep(
    spec: SweepSpec,
    cluster="local",
    client=None,
    workers: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    log=None,
) -> SweepResult:
    """Run every run of ``spec`` that is not done yet; returns the counts and the summary path.

    Args:
        cluster: "local" (a LocalCluster), "slurm" (dask-jobqueue), or a Dask cluster object.
        client: an existing ``distributed.Client`` to use instead (its cluster is left alone).
        workers: local worker processes (default: [local] workers, else per GPU or core).
        retry_failed: run failed runs again.
        progress: show a progress bar (runs done, running, failed) on stderr.
        log: where one-line messages go (default: stderr).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    p = plan(spec, retry_failed)
    total = len(p.runs)
    n_failed = len(p.failed) + len(p.invalid)
    n_done = len(p.done)
    for r, err in p.invalid:
        log(f"run {r.id}: invalid scenario: {err}")
    if p.todo:
        check_observables(spec, p.todo[0][1])
    write_summary(spec)
    if not p.todo:
        log(f"sweep {spec.name}: nothing to do ({n_done} done, {n_failed} failed of {total})")
        return SweepResult(total, n_done, n_failed, 0, spec.summary)
    log(f"sweep {spec.name}: {len(p.todo)} of {total} runs to do -> {spec.out_dir}")

    import dask
    from distributed import Client, wait

    own = []
    if client is None:
        # a worker takes a run only when it starts it (nothing queued on a worker that may be
        # lost), so "running" counts exactly the runs in progress; set before the scheduler
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            if cluster == "local":
                cl = local_cluster(workers or spec.local_workers)
                own.append(cl)
            elif cluster == "slurm":
                cl = slurm_cluster(spec)
                own.append(cl)
            else:
                cl = cluster
            client = Client(cl)
        own.insert(0, client)
    resources = {"run": 1} if cluster == "slurm" else None
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=n_done + n_failed,
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    pending = {}
    interrupted_n: dict[str, int] = {}

    def submit(task, attempt):
        fut = client.submit(
            execute_run,
            task,
            key=f"tmesim-{spec.name}-{task['id']}-{attempt}",
            pure=False,
            resources=resources,
        )
        pending[fut] = (task, attempt)

    try:
        for _, task in p.todo:
            submit(task, 0)
        while pending:
            try:
                finished, _ = wait(list(pending), timeout=2.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            for fut in finished:
                task, attempt = pending.pop(fut)
                try:
                    rec = fut.result()
                except Exception as exc:  # e.g. KilledWorker: record, go on
                    rec = {
                        "run": task["id"],
                        "key": task["key"],
                        "params": task["params"],
                        "file": task["h5"],
                        "status": "failed",
                        "host": "",
                        "error": f"{type(exc).__name__}: {exc}",
                        "wall_s": 0.0,
                    }
                    write_json(Path(task["record"]), rec)
                if rec["status"] == "interrupted":
                    # handed back before its job's end: continue it in a fresh job
                    k = interrupted_n[task["id"]] = interrupted_n.get(task["id"], 0) + 1
                    if k <= 1000:
                        submit(task, attempt + 1)
                        continue
                    rec["status"] = "failed"
                    rec["error"] = "interrupted 1000 times without finishing"
                    write_json(Path(task["record"]), rec)
                if rec["status"] in DONE:
                    n_done += 1
                else:
                    n_failed += 1
                    log(f"run {task['id']} failed: {rec.get('error', '')}")
                bar.update(1)
                write_summary(spec)
            if progress:
                try:
                    keys = {f.key for f in pending}
                    running = sum(len(set(v) & keys) for v in client.processing().values())
                except Exception:  # progress is cosmetic
                    running = 0
                bar.set_postfix_str(
                    f"done {n_done}, running {running}, failed {n_failed}", refresh=True
                )
    finally:
        bar.close()
        for obj in own:
            with contextlib.suppress(Exception):  # closing what we started, best effort
                obj.close()
    path = write_summary(spec)
    log(f"sweep {spec.name}: {n_done} done, {n_failed} failed of {total}; summary {path}")
    return SweepResult(total, n_done, n_failed, len(p.todo), path)
