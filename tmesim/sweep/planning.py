"""What a sweep has left to do: each run's scenario checked, and its record read, so that runs
sort into done, failed (kept unless retried) and to do, each to do as a task (plain data for a
worker)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .records import DONE, read_record, scenario_key, write_json
from .spec import RunSpec, SweepSpec


def make_task(spec: SweepSpec, r: RunSpec, key: str) -> dict:
    return {
        "id": r.id,
        "scenario": str(spec.scenario),
        "overrides": r.overrides,
        "h5": str(r.h5),
        "record": str(r.record),
        "key": key,
        "backend": spec.backend,
        "params": r.params,
        "final": spec.final,
        "at": spec.at,
        "at_hours": spec.at_hours,
    }


@dataclass
class Plan:
    """What a sweep has left to do: runs to start, runs already done, runs recorded failed."""

    spec: SweepSpec
    runs: list
    todo: list  # (RunSpec, task dict)
    done: list  # RunSpec
    failed: list  # RunSpec, recorded failed (skipped unless retried)
    invalid: list  # (RunSpec, error): scenarios that do not validate


def plan(spec: SweepSpec, retry_failed: bool = False, record: bool = True) -> Plan:
    """Check every run's scenario and sort the runs into done, failed and to do.

    A scenario that does not validate (e.g. a Latin-hypercube corner outside a parameter's
    range) is recorded as a failed run. Refuses the sweep when every run is invalid (the same
    mistake everywhere, e.g. a misspelt key) or when a record belongs to other parameters.
    ``record=False`` writes nothing (a dry run)."""
    from ..errors import ScenarioError
    from ..scenario import load_scenario

    runs = spec.runs()
    todo, done, failed, invalid = [], [], [], []
    for r in runs:
        try:
            sc = load_scenario(spec.scenario, overrides=r.overrides)
        except ScenarioError as exc:
            invalid.append((r, str(exc)))
            continue
        key = scenario_key(sc.text)
        rec = read_record(r.record)
        if rec is not None and rec.get("key") != key:
            raise UserError(
                f"{r.record}: run {r.id} was made with other parameters than "
                f"the sweep file now gives ({rec.get('params')}); use a new "
                "out_dir, or delete that run's files to run it again"
            )
        status = rec.get("status") if rec else None
        if status in DONE:
            done.append(r)
        elif status == "failed" and not retry_failed:
            failed.append(r)
        else:
            todo.append((r, make_task(spec, r, key)))
    if runs and len(invalid) == len(runs):
        raise UserError(
            f"sweep {spec.path.name}: no run has a valid scenario; the first: {invalid[0][1]}"
        )
    for r, err in invalid if record else []:
        rec = read_record(r.record)
        if rec is None or rec.get("error") != f"ScenarioError: {err}":
            write_json(
                r.record,
                {
                    "run": r.id,
                    "key": "",
                    "params": r.params,
                    "file": str(r.h5),
                    "status": "failed",
                    "error": f"ScenarioError: {err}",
                    "host": "",
                    "wall_s": 0.0,
                },
            )
    return Plan(spec, runs, todo, done, failed, invalid)


def check_observables(spec: SweepSpec, example_task: dict) -> None:
    """Refuse unknown time-series columns before any run starts."""
    from .. import observables
    from ..scenario import load_scenario

    sc = load_scenario(spec.scenario, overrides=example_task["overrides"])
    cols = observables.columns(sc)
    for c in spec.final + spec.at:
        if c not in cols:
            raise UserError(
                f"sweep {spec.path.name}: observable {c!r} is not a time-series "
                f"column; columns are: {', '.join(cols)}"
            )
