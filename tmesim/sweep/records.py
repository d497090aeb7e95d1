"""A sweep's records: one small JSON file per run (status, parameters, observables, error),
the observables taken from a finished run's file, and the summary table built from the records.

A record also holds a hash of its scenario text, so a run whose parameters changed since is
never taken as done. Records and the table are replaced atomically: a reader (or a kill) never
sees half of one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .spec import SweepSpec, fmt_hours

DONE = ("finished", "stopped")  # a run with one of these statuses has nothing left to do


def scenario_key(text: str) -> str:
    """A short hash of a run's scenario text: a record with another key is not this run."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # missing, or torn by a kill (records are replaced atomically, but
        # a copy made by hand may not be)


def write_json(path: Path, obj) -> None:
    """Write atomically: a reader (or a kill) never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def observe_run(h5, final, at, at_hours) -> dict:
    """Observables of a run from its /timeseries: final values, and values at chosen times.

    The value at ``t`` hours is that of the last agent step at or before ``t`` (with the
    schedules' tolerance of a millionth of a step); NaN when the run ended before ``t``. Only
    the rows every column has count (a run file written by another tmesim, or damaged, may
    hold columns of other lengths). A damaged or crafted file is a RunFileError."""
    from ..io.runfile import open_run_file, reading

    out = {}
    with open_run_file(h5) as f, reading(str(h5), "its time series"):
        ts = f["timeseries"]
        for c in ["time_min", *final, *at]:
            if c not in ts:
                raise UserError(
                    f"observable {c!r}: no such time-series column; columns are "
                    f"{', '.join(sorted(ts))}"
                )
        n = min(ts[c].shape[0] for c in ts)
        t = ts["time_min"][:n]
        dt = float(f.attrs["dt_min"])
        for c in final:
            out[f"final_{c}"] = float(ts[c][n - 1]) if n else math.nan
        for h in at_hours:
            i = int(np.searchsorted(t, h * 60.0 + 1e-6 * dt, side="right")) - 1
            ended = n == 0 or t[-1] + 1e-6 * dt < h * 60.0
            for c in at:
                out[f"{c}_at_{fmt_hours(h)}h"] = math.nan if ended or i < 0 else float(ts[c][i])
    return out


def run_end(h5) -> dict:
    """Steps, final simulated time (h) and stop reason of an ended run, from its file. A stop
    event whose detail is not a JSON object with a text ``reason`` is a RunFileError (the
    reason goes into the sweep's records), as is any damaged or crafted file."""
    from ..errors import RunFileError
    from ..io.runfile import event_rows, open_run_file, reading

    with open_run_file(h5) as f, reading(str(h5), "its time series and events"):
        ts = f["timeseries"]
        n = min((ts[c].shape[0] for c in ts), default=0)
        t = ts["time_min"]
        reason = ""
        stops = [detail for _, kind, detail in event_rows(f) if kind == "stop"]
        if stops:
            given = stops[-1].get("reason")
            if not isinstance(given, str):
                raise RunFileError(
                    f"{h5}: damaged run file, its stop event's detail {stops[-1]!r:.80} is not "
                    "a JSON object with a text reason"
                )
            reason = given
        return {
            "steps": n - 1,
            "final_time_h": float(t[n - 1]) / 60.0 if n else 0.0,
            "stop_reason": reason,
        }


def summary_rows(spec: SweepSpec) -> list[dict]:
    """One row per run that has a record, in run order."""
    rows = []
    for r in spec.runs():
        rec = read_record(r.record)
        if rec is None:
            continue
        row = {"run": r.id, "status": rec.get("status", "")}
        row.update({k: v for k, v in r.params.items()})
        for c in spec.observable_columns():
            row[c] = rec.get(c, math.nan)
        for c in ("steps", "final_time_h", "stop_reason", "wall_s", "error"):
            row[c] = rec.get(c, "")
        row["file"] = os.path.relpath(r.h5, spec.out_dir)
        rows.append(row)
    return rows


def write_summary(spec: SweepSpec) -> Path:
    """(Re)write the summary table from the run records, atomically."""
    rows = summary_rows(spec)
    runs = spec.runs()
    cols = ["run", "status"] + (list(runs[0].params) if runs else [])
    cols += spec.observable_columns() + [
        "steps",
        "final_time_h",
        "stop_reason",
        "wall_s",
        "error",
        "file",
    ]
    out = spec.summary
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if out.suffix == ".parquet":
        try:
            import pandas as pd

            pd.DataFrame(rows, columns=cols).to_parquet(tmp, index=False)
        except ImportError as exc:
            raise UserError(
                f"{out.name}: writing Parquet needs pandas and pyarrow ({exc}); "
                "pip install pyarrow, or name the summary .csv"
            ) from None
    else:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: _csv_value(row.get(k, "")) for k in cols})
    os.replace(tmp, out)
    return out


def _csv_value(v):
    if isinstance(v, float):
        return repr(v)  # every digit, so the table is as exact as the run file
    if isinstance(v, list):
        return json.dumps(v)
    return v
