"""One run of a sweep, on a worker or as a Slurm array task: run or continue it into its file,
take its observables, write its record."""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path

from ..errors import RunFileError, UserError
from .planning import make_task
from .records import DONE, observe_run, read_record, run_end, scenario_key, write_json
from .spec import SweepSpec

EXIT_INTERRUPTED = 3  # --task: interrupted with a checkpoint, run it again


def _deadline_from_env() -> float | None:
    v = os.environ.get("TMESIM_DEADLINE")
    try:
        return float(v) if v else None
    except ValueError:
        return None


def execute_run(task: dict) -> dict:
    """Run (or continue) one run of a sweep and write its record; never raises for a failed run.

    ``task`` holds plain data (what Dask ships to a worker): id, scenario, overrides, h5,
    record, key, backend, params, final, at, at_hours. The run continues from its checkpoint
    when its file has one, and starts again when its file cannot be continued (killed before
    its first checkpoint, or while being created). With ``TMESIM_DEADLINE`` (Unix time, set by
    the Slurm job prologue) the run checkpoints and returns "interrupted" at that time."""
    from ..io.checkpoint import RunLockedError
    from ..scenario import load_scenario
    from ..simulation import run_scenario

    t0 = time.monotonic()
    h5 = Path(task["h5"])
    rec = {
        "run": task["id"],
        "key": task["key"],
        "params": task["params"],
        "file": str(h5),
        "host": socket.gethostname(),
        "error": "",
    }
    deadline = _deadline_from_env()
    if deadline is not None and time.time() >= deadline:
        time.sleep(2.0)  # this job is about to end: hand the run back (not in a hot loop)
        rec.update(status="interrupted", error="job deadline reached before the run started")
        return rec
    try:
        sc = load_scenario(task["scenario"], overrides=task["overrides"])

        def run(resume: bool):
            return run_scenario(
                sc, out=h5, backend=task["backend"], resume=resume, wall_deadline=deadline
            ).simulation

        try:
            sim = run(resume=True)
        except RunLockedError:
            raise
        except RunFileError as exc:
            rec["restarted"] = str(exc)
            sim = run(resume=False)
        rec.update(status=sim.status, resumed_from=sim.resumed_from)
        if sim.status in DONE:
            # from the file: the run may have ended in an earlier attempt whose record was lost
            rec.update(run_end(h5))
            rec.update(observe_run(h5, task["final"], task["at"], task["at_hours"]))
    except Exception as exc:  # any failure of one run is recorded, not raised
        rec.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=20),
        )
    rec["wall_s"] = round(time.monotonic() - t0, 3)
    write_json(Path(task["record"]), rec)
    return rec


def run_task(spec: SweepSpec, index: int) -> dict:
    """Run one run of the sweep in this process (a Slurm array task): resumes it, records it.
    SIGTERM/SIGUSR1 make it checkpoint and end "interrupted" (main thread)."""
    runs = spec.runs()
    if not 0 <= index < len(runs):
        raise UserError(f"--task {index}: the sweep has runs 0..{len(runs) - 1}")
    r = runs[index]
    from ..errors import ScenarioError
    from ..scenario import load_scenario

    try:
        sc = load_scenario(spec.scenario, overrides=r.overrides)
    except ScenarioError as exc:
        rec = {
            "run": r.id,
            "key": "",
            "params": r.params,
            "file": str(r.h5),
            "status": "failed",
            "error": f"ScenarioError: {exc}",
            "host": socket.gethostname(),
            "wall_s": 0.0,
        }
        write_json(r.record, rec)
        return rec
    key = scenario_key(sc.text)
    done = read_record(r.record)
    if done is not None and done.get("key") == key and done.get("status") in DONE:
        return done
    return execute_run(make_task(spec, r, key))
