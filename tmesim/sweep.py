"""Parameter sweeps: many runs of one base scenario, on Dask (local processes or Slurm jobs).

A sweep file (TOML; paths are relative to it)::

    [sweep]
    name = "growth_scan"
    scenario = "../quickstart_2d.toml"    # the base scenario
    out_dir = "growth_scan"               # runs/<id>.h5, runs/<id>.json and the summary go here
    summary = "summary.csv"               # in out_dir; .csv, or .parquet (needs pyarrow)
    backend = "auto"

    [set]                                 # fixed overrides, every run
    "run.duration_days" = 2

    [grid]                                # the full product of these values
    "tumor.doubling_time_h" = [18, 24, 30]                                     # a list
    "fields.oxygen.decay_per_min" = {start = 0.05, stop = 0.2, num = 3}       # evenly spaced
    "fields.oxygen.diffusion_um2_per_min" = {start = 3e4, stop = 3e5, num = 3, scale = "log"}

    [latin_hypercube]                     # crossed with the grid: samples x grid points
    samples = 8
    seed = 7
    "tumor.necrosis_rate_per_h" = {min = 0.05, max = 0.3}                    # uniform
    "fields.oxygen.uptake.tumor" = {min = 2, max = 20, scale = "log"}         # log-uniform

    [replicates]                          # seeds, crossed with all the above
    seeds = [1, 2, 3]                     # or: n = 3, first_seed = 1

    [observables]                         # columns of /timeseries for the summary table
    final = ["burden", "hypoxic_fraction"]            # -> final_burden, ...
    at_hours = [24, 48]                               # -> burden_at_24h, ...
    at = ["burden"]

    [local]
    workers = 2                           # default: one per GPU, else one per CPU core

    [slurm]                               # --cluster slurm and --slurm-array
    queue = "gpu"
    account = "myproject"
    memory = "16GB"
    walltime = "04:00:00"
    cores = 4
    gpus = 1                              # per job (0: CPU jobs)
    jobs = 8                              # at most this many jobs at once
    checkpoint_margin_minutes = 10        # checkpoint and stop this long before the wall time
    job_extra = ["--constraint=a100"]
    prologue = ["module load cuda"]

Every combination of grid point, Latin-hypercube sample and seed is one run, numbered in that
order (seeds fastest). Replicate seeds are the same at every parameter point (common random
numbers, which makes differences between points less noisy). Each run writes its own HDF5 file
and a small JSON record (status, parameters, observables, error); the summary table is built
from the records. A sweep is resumable: finished runs are skipped, interrupted ones continue from
their checkpoints, and a run that fails is recorded with its error without stopping the others
(re-run with ``--retry-failed`` to try failed runs again). A record also holds a hash of its
scenario text, so a run whose parameters changed since is never taken as done.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import RunFileError, UserError

DONE = ("finished", "stopped")       # a run with one of these statuses has nothing left to do
EXIT_INTERRUPTED = 3                  # --task: interrupted with a checkpoint, run it again


class SweepError(UserError):
    """A mistake in a sweep file: names the key, the value and what was expected."""

    def __init__(self, where: str, key: str, value, expected: str):
        super().__init__(f"sweep file {where}: key '{key}': got {value!r}, expected {expected}")


# ---------------------------------------------------------------------------------- the spec

@dataclass
class SlurmConfig:
    """Where and how Slurm jobs run (sweep file section [slurm])."""
    queue: str = ""
    account: str = ""
    memory: str = "16GB"
    walltime: str = "04:00:00"
    cores: int = 4
    gpus: int = 1
    jobs: int = 4
    checkpoint_margin_minutes: float = 10.0
    job_extra: list = field(default_factory=list)
    prologue: list = field(default_factory=list)

    @property
    def walltime_s(self) -> int:
        return parse_walltime(self.walltime)


@dataclass
class RunSpec:
    """One run of a sweep: its id, overrides of the base scenario and where its files go."""
    index: int
    id: str
    params: dict            # the varied values (and "seed")
    overrides: dict         # everything set on the base scenario
    h5: Path
    record: Path


@dataclass
class SweepSpec:
    path: Path
    name: str
    scenario: Path
    out_dir: Path
    summary: Path
    backend: str
    fixed: dict
    grid: dict
    lhs: dict
    lhs_samples: int
    lhs_seed: int
    seeds: list
    final: list
    at: list
    at_hours: list
    local_workers: int | None
    slurm: SlurmConfig

    # ------------------------------------------------------------------ runs
    def points(self) -> list[dict]:
        """The parameter points (grid x Latin hypercube), in run order, before seeds."""
        grid_keys = list(self.grid)
        grid_pts = [dict(zip(grid_keys, vals))
                    for vals in itertools.product(*(self.grid[k] for k in grid_keys))]
        lhs_pts = latin_hypercube(self.lhs, self.lhs_samples, self.lhs_seed) if self.lhs else [{}]
        return [{**g, **s} for g in grid_pts for s in lhs_pts]

    def runs(self) -> list[RunSpec]:
        pts = self.points()
        n = len(pts) * len(self.seeds)
        width = max(4, len(str(n - 1)))
        out = []
        for i, (p, seed) in enumerate(itertools.product(pts, self.seeds)):
            rid = f"r{i:0{width}d}"
            over = {**self.fixed, **p, "run.seed": int(seed),
                    "run.name": f"{self.name}_{rid}"}
            out.append(RunSpec(i, rid, {**p, "seed": int(seed)}, over,
                               self.out_dir / "runs" / f"{rid}.h5",
                               self.out_dir / "runs" / f"{rid}.json"))
        return out

    def observable_columns(self) -> list[str]:
        cols = [f"final_{c}" for c in self.final]
        cols += [f"{c}_at_{_fmt_hours(h)}h" for h in self.at_hours for c in self.at]
        return cols


def _fmt_hours(h: float) -> str:
    return f"{h:g}".replace(".", "p")


def parse_walltime(text) -> int:
    """Slurm's [D-]HH:MM:SS (or MM:SS, or minutes) in seconds."""
    s = str(text).strip()
    days = 0
    if "-" in s:
        d, s = s.split("-", 1)
        days = int(d)
    parts = [int(x) for x in s.split(":")]
    if len(parts) == 1:
        secs = parts[0] * 60
    elif len(parts) == 2:
        secs = parts[0] * 60 + parts[1]
    elif len(parts) == 3:
        secs = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        raise ValueError(text)
    return days * 86400 + secs


def latin_hypercube(ranges: dict, n: int, seed: int) -> list[dict]:
    """``n`` Latin-hypercube samples of the parameters in ``ranges`` ({key: (lo, hi, log)}).

    Each parameter's range is cut into ``n`` equal strata (in log space for log-scaled ones);
    every stratum gets exactly one sample, at a uniform position inside it, and the strata are
    paired across parameters by independent random permutations (McKay, Beckman & Conover 1979).
    numpy's PCG64 seeded with ``seed``: the same seed gives the same samples everywhere."""
    rng = np.random.default_rng(seed)
    cols = {}
    for key, (lo, hi, log) in ranges.items():
        u = (rng.permutation(n) + rng.random(n)) / n
        if log:
            v = np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
        else:
            v = lo + u * (hi - lo)
        cols[key] = [float(x) for x in v]
    return [{k: cols[k][i] for k in ranges} for i in range(n)]


def _plain(v):
    """TOML values as plain Python (numpy scalars would not survive the scenario's TOML)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _values(where, key, spec) -> list:
    """A [grid] entry: a list of values, or {start, stop, num[, scale]}."""
    if isinstance(spec, list):
        if not spec:
            raise SweepError(where, f"grid.{key}", spec, "a non-empty list of values")
        return [_plain(v) for v in spec]
    if isinstance(spec, dict):
        extra = set(spec) - {"start", "stop", "num", "scale"}
        if extra or not {"start", "stop", "num"} <= set(spec):
            raise SweepError(where, f"grid.{key}", spec, "{start, stop, num[, scale]}")
        num = spec["num"]
        scale = spec.get("scale", "linear")
        if not isinstance(num, int) or num < 1:
            raise SweepError(where, f"grid.{key}.num", num, "an integer >= 1")
        if scale not in ("linear", "log"):
            raise SweepError(where, f"grid.{key}.scale", scale, '"linear" or "log"')
        a, b = spec["start"], spec["stop"]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
            raise SweepError(where, f"grid.{key}", spec, "numbers for start and stop")
        if scale == "log":
            if a <= 0 or b <= 0:
                raise SweepError(where, f"grid.{key}", spec, "start, stop > 0 for a log scale")
            vals = np.geomspace(a, b, num)
        else:
            vals = np.linspace(a, b, num)
        return [float(x) for x in vals]
    raise SweepError(where, f"grid.{key}", spec, "a list of values or {start, stop, num}")


def load_sweep(path, out_dir=None) -> SweepSpec:
    """Read and check a sweep file (see the module docstring)."""
    p = Path(path)
    where = f"'{path}'"
    if not p.is_file():
        raise UserError(f"{path}: no such sweep file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    known = {"sweep", "set", "grid", "latin_hypercube", "replicates", "observables", "local",
             "slurm"}
    for k in data:
        if k not in known:
            raise SweepError(where, k, data[k], f"one of the sections {', '.join(sorted(known))}")
    base = p.resolve().parent
    sw = data.get("sweep", {})
    for k in sw:
        if k not in ("name", "scenario", "out_dir", "summary", "backend"):
            raise SweepError(where, f"sweep.{k}", sw[k],
                             "one of name, scenario, out_dir, summary, backend")
    if "scenario" not in sw:
        raise SweepError(where, "sweep.scenario", None, "the base scenario file")
    scen = base / sw["scenario"]
    if not scen.is_file():
        raise SweepError(where, "sweep.scenario", sw["scenario"], "an existing scenario file "
                         f"(looked for {scen})")
    name = str(sw.get("name", p.stem))
    out = Path(out_dir) if out_dir else base / sw.get("out_dir", name)
    summary = out / sw.get("summary", "summary.csv")
    if summary.suffix not in (".csv", ".parquet"):
        raise SweepError(where, "sweep.summary", sw.get("summary"), "a .csv or .parquet file name")
    backend = sw.get("backend", "auto")
    if backend not in ("auto", "cpu", "gpu"):
        raise SweepError(where, "sweep.backend", backend, "auto, cpu or gpu")

    fixed = {k: _plain(v) for k, v in data.get("set", {}).items()}
    grid = {k: _values(where, k, v) for k, v in data.get("grid", {}).items()}
    lh = dict(data.get("latin_hypercube", {}))
    lhs_samples = lh.pop("samples", 0)
    lhs_seed = lh.pop("seed", 0)
    if lh and (not isinstance(lhs_samples, int) or lhs_samples < 1):
        raise SweepError(where, "latin_hypercube.samples", lhs_samples, "an integer >= 1")
    if not isinstance(lhs_seed, int) or lhs_seed < 0:
        raise SweepError(where, "latin_hypercube.seed", lhs_seed, "an integer >= 0")
    lhs = {}
    for k, v in lh.items():
        if not isinstance(v, dict) or not {"min", "max"} <= set(v) or set(v) - {"min", "max",
                                                                               "scale"}:
            raise SweepError(where, f"latin_hypercube.{k}", v, "{min, max[, scale]}")
        lo, hi, scale = v["min"], v["max"], v.get("scale", "linear")
        if scale not in ("linear", "log"):
            raise SweepError(where, f"latin_hypercube.{k}.scale", scale, '"linear" or "log"')
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
            raise SweepError(where, f"latin_hypercube.{k}", v, "numbers with min < max")
        if scale == "log" and lo <= 0:
            raise SweepError(where, f"latin_hypercube.{k}.min", lo, "> 0 for a log scale")
        lhs[k] = (float(lo), float(hi), scale == "log")
    for k in set(grid) & set(lhs):
        raise SweepError(where, f"latin_hypercube.{k}", lhs[k], "a key not also in [grid]")
    for k in list(grid) + list(lhs):
        if k in ("run.seed", "run.name"):
            raise SweepError(where, k, None, "seeds in [replicates] (run.name is set per run)")

    rep = data.get("replicates", {})
    if "seeds" in rep:
        seeds = rep["seeds"]
        if (not isinstance(seeds, list) or not seeds
                or not all(isinstance(s, int) and s >= 0 for s in seeds)):
            raise SweepError(where, "replicates.seeds", seeds, "a list of integers >= 0")
    else:
        n = rep.get("n", 1)
        first = rep.get("first_seed", fixed.get("run.seed", 0))
        if not isinstance(n, int) or n < 1:
            raise SweepError(where, "replicates.n", n, "an integer >= 1")
        if not isinstance(first, int) or first < 0:
            raise SweepError(where, "replicates.first_seed", first, "an integer >= 0")
        seeds = list(range(first, first + n))
    if len(set(seeds)) != len(seeds):
        raise SweepError(where, "replicates.seeds", seeds, "distinct seeds")

    obs = data.get("observables", {})
    final = obs.get("final", ["burden"])
    at = obs.get("at", [])
    at_hours = [float(h) for h in obs.get("at_hours", [])]
    if at and not at_hours or at_hours and not at:
        raise SweepError(where, "observables.at", at, "both 'at' (columns) and 'at_hours'")

    loc = data.get("local", {})
    workers = loc.get("workers")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise SweepError(where, "local.workers", workers, "an integer >= 1")

    sl = data.get("slurm", {})
    valid = {f for f in SlurmConfig.__dataclass_fields__}
    for k in sl:
        if k not in valid:
            raise SweepError(where, f"slurm.{k}", sl[k], f"one of {', '.join(sorted(valid))}")
    slurm = SlurmConfig(**sl)
    try:
        slurm.walltime_s
    except ValueError:
        raise SweepError(where, "slurm.walltime", slurm.walltime, "[D-]HH:MM:SS") from None
    return SweepSpec(path=p.resolve(), name=name, scenario=scen, out_dir=out, summary=summary,
                     backend=backend, fixed=fixed, grid=grid, lhs=lhs, lhs_samples=lhs_samples,
                     lhs_seed=lhs_seed, seeds=seeds, final=list(final), at=list(at),
                     at_hours=at_hours, local_workers=workers, slurm=slurm)


# ---------------------------------------------------------------------------- one run

def scenario_key(text: str) -> str:
    """A short hash of a run's scenario text: a record with another key is not this run."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None        # missing, or torn by a kill (records are replaced atomically, but
        # a copy made by hand may not be)


def _write_json(path: Path, obj) -> None:
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
    schedules' tolerance of a millionth of a step); NaN when the run ended before ``t``."""
    from .io.hdf5 import open_h5
    out = {}
    with open_h5(h5, swmr=True) as f:
        ts = f["timeseries"]
        t = ts["time_min"][:]
        dt = float(f.attrs["dt_min"])
        for c in list(final) + list(at):
            if c not in ts:
                raise UserError(f"observable {c!r}: no such time-series column; columns are "
                                f"{', '.join(sorted(ts))}")
        for c in final:
            out[f"final_{c}"] = float(ts[c][t.size - 1]) if t.size else math.nan
        for h in at_hours:
            i = int(np.searchsorted(t, h * 60.0 + 1e-6 * dt, side="right")) - 1
            ended = t.size == 0 or t[-1] + 1e-6 * dt < h * 60.0
            for c in at:
                out[f"{c}_at_{_fmt_hours(h)}h"] = (math.nan if ended or i < 0
                                                   else float(ts[c][i]))
    return out


def run_end(h5) -> dict:
    """Steps, final simulated time (h) and stop reason of an ended run, from its file."""
    from .io.hdf5 import open_h5
    with open_h5(h5, swmr=True) as f:
        t = f["timeseries/time_min"]
        n = t.shape[0]
        reason = ""
        kinds = [k.decode() if isinstance(k, bytes) else k for k in f["events/kind"][:]]
        if "stop" in kinds:
            d = f["events/detail"][len(kinds) - 1 - kinds[::-1].index("stop")]
            reason = json.loads(d.decode() if isinstance(d, bytes) else d).get("reason", "")
        return {"steps": n - 1, "final_time_h": float(t[n - 1]) / 60.0 if n else 0.0,
                "stop_reason": reason}


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
    from .io.checkpoint import RunLockedError
    from .scenario import load_scenario
    from .simulation import Simulation

    t0 = time.monotonic()
    h5 = Path(task["h5"])
    rec = {"run": task["id"], "key": task["key"], "params": task["params"],
           "file": str(h5), "host": socket.gethostname(), "error": ""}
    deadline = _deadline_from_env()
    if deadline is not None and time.time() >= deadline:
        time.sleep(2.0)     # this job is about to end: hand the run back (not in a hot loop)
        rec.update(status="interrupted", error="job deadline reached before the run started")
        return rec
    try:
        sc = load_scenario(task["scenario"], overrides=task["overrides"])

        def make():
            s = Simulation(sc, backend=task["backend"])
            s.wall_deadline = deadline
            return s

        sim = make()
        try:
            sim.run(h5, resume=True)
        except RunLockedError:
            raise
        except RunFileError as exc:
            rec["restarted"] = str(exc)
            sim = make()
            sim.run(h5)
        rec.update(status=sim.status, resumed_from=sim.resumed_from)
        if sim.status in DONE:
            # from the file: the run may have ended in an earlier attempt whose record was lost
            rec.update(run_end(h5))
            rec.update(observe_run(h5, task["final"], task["at"], task["at_hours"]))
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded, not raised
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc(limit=20))
    rec["wall_s"] = round(time.monotonic() - t0, 3)
    _write_json(Path(task["record"]), rec)
    return rec


# ------------------------------------------------------------------------------- the sweep

def _task(spec: SweepSpec, r: RunSpec, key: str) -> dict:
    return {"id": r.id, "scenario": str(spec.scenario), "overrides": r.overrides,
            "h5": str(r.h5), "record": str(r.record), "key": key, "backend": spec.backend,
            "params": r.params, "final": spec.final, "at": spec.at, "at_hours": spec.at_hours}


@dataclass
class Plan:
    """What a sweep has left to do: runs to start, runs already done, runs recorded failed."""
    spec: SweepSpec
    runs: list
    todo: list            # (RunSpec, task dict)
    done: list            # RunSpec
    failed: list          # RunSpec, recorded failed (skipped unless retried)
    invalid: list         # (RunSpec, error): scenarios that do not validate


def plan(spec: SweepSpec, retry_failed: bool = False, record: bool = True) -> Plan:
    """Check every run's scenario and sort the runs into done, failed and to do.

    A scenario that does not validate (e.g. a Latin-hypercube corner outside a parameter's
    range) is recorded as a failed run. Refuses the sweep when every run is invalid (the same
    mistake everywhere, e.g. a misspelt key) or when a record belongs to other parameters.
    ``record=False`` writes nothing (a dry run)."""
    from .errors import ScenarioError
    from .scenario import load_scenario
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
            raise UserError(f"{r.record}: run {r.id} was made with other parameters than "
                            f"the sweep file now gives ({rec.get('params')}); use a new "
                            "out_dir, or delete that run's files to run it again")
        status = rec.get("status") if rec else None
        if status in DONE:
            done.append(r)
        elif status == "failed" and not retry_failed:
            failed.append(r)
        else:
            todo.append((r, _task(spec, r, key)))
    if runs and len(invalid) == len(runs):
        raise UserError(f"sweep {spec.path.name}: no run has a valid scenario; the first: "
                        f"{invalid[0][1]}")
    for r, err in invalid if record else []:
        rec = read_record(r.record)
        if rec is None or rec.get("error") != f"ScenarioError: {err}":
            _write_json(r.record, {"run": r.id, "key": "", "params": r.params, "file": str(r.h5),
                                   "status": "failed", "error": f"ScenarioError: {err}",
                                   "host": "", "wall_s": 0.0})
    return Plan(spec, runs, todo, done, failed, invalid)


def check_observables(spec: SweepSpec, example_task: dict) -> None:
    """Refuse unknown time-series columns before any run starts."""
    from . import observables
    from .scenario import load_scenario
    sc = load_scenario(spec.scenario, overrides=example_task["overrides"])
    cols = observables.columns(sc)
    for c in spec.final + spec.at:
        if c not in cols:
            raise UserError(f"sweep {spec.path.name}: observable {c!r} is not a time-series "
                            f"column; columns are: {', '.join(cols)}")


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
    cols += spec.observable_columns() + ["steps", "final_time_h", "stop_reason", "wall_s",
                                         "error", "file"]
    out = spec.summary
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if out.suffix == ".parquet":
        try:
            import pandas as pd
            pd.DataFrame(rows, columns=cols).to_parquet(tmp, index=False)
        except ImportError as exc:
            raise UserError(f"{out.name}: writing Parquet needs pandas and pyarrow ({exc}); "
                            "pip install pyarrow, or name the summary .csv") from None
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
        return repr(v)          # every digit, so the table is as exact as the run file
    if isinstance(v, list):
        return json.dumps(v)
    return v


# ----------------------------------------------------------------------------- clusters

def gpu_count() -> int:
    """GPUs this machine offers to workers: 0 without a usable CUDA device."""
    from .backend import gpu_available
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
        specs = {f"gpu{d}": {"cls": Nanny, "options": {"nthreads": 1,
                                                       "env": {"CUDA_VISIBLE_DEVICES": d}}}
                 for d in devices}
        return SpecCluster(workers=specs, scheduler={"cls": Scheduler,
                                                     "options": {"dashboard_address": None}})
    n = workers or max(1, os.cpu_count() or 1)
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                        dashboard_address=None)


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
        raise UserError("--cluster slurm needs dask-jobqueue: pip install 'tmesim[cluster]'") \
            from None
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
        raise UserError(f"slurm.checkpoint_margin_minutes ({sl.checkpoint_margin_minutes}) must "
                        f"be shorter than slurm.walltime ({sl.walltime})")
    extra = ([f"--gres=gpu:{sl.gpus}"] if sl.gpus else []) + list(sl.job_extra)
    prologue = list(sl.prologue) + [
        f"export TMESIM_DEADLINE=$(( $(date +%s) + {wall - margin} ))"]
    logs = spec.out_dir / "slurm_logs"
    logs.mkdir(parents=True, exist_ok=True)
    cluster = SLURMCluster(
        queue=sl.queue or None, account=sl.account or None, cores=sl.cores, processes=1,
        memory=sl.memory, walltime=sl.walltime, job_extra_directives=extra,
        job_script_prologue=prologue, log_directory=str(logs), python=sys.executable,
        job_name=f"tmesim-{spec.name}",
        worker_extra_args=["--resources", "run=1",
                           "--lifetime", f"{max(60, wall - margin + 60)}s"],
        scheduler_options={"dashboard_address": None})
    cluster.adapt(minimum_jobs=0, maximum_jobs=sl.jobs)
    return cluster


# ---------------------------------------------------------------------------- the driver

@dataclass
class SweepResult:
    total: int
    done: int
    failed: int
    ran: int               # runs started in this invocation
    summary: Path


def run_sweep(spec: SweepSpec, cluster="local", client=None, workers: int | None = None,
              retry_failed: bool = False, progress: bool = True, log=None) -> SweepResult:
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
    bar = tqdm(total=total, initial=n_done + n_failed, unit="run", disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    pending = {}
    interrupted_n: dict[str, int] = {}

    def submit(task, attempt):
        fut = client.submit(execute_run, task, key=f"tmesim-{spec.name}-{task['id']}-{attempt}",
                            pure=False, resources=resources)
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
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: record, go on
                    rec = {"run": task["id"], "key": task["key"], "params": task["params"],
                           "file": task["h5"], "status": "failed", "host": "",
                           "error": f"{type(exc).__name__}: {exc}", "wall_s": 0.0}
                    _write_json(Path(task["record"]), rec)
                if rec["status"] == "interrupted":
                    # handed back before its job's end: continue it in a fresh job
                    k = interrupted_n[task["id"]] = interrupted_n.get(task["id"], 0) + 1
                    if k <= 1000:
                        submit(task, attempt + 1)
                        continue
                    rec["status"] = "failed"
                    rec["error"] = "interrupted 1000 times without finishing"
                    _write_json(Path(task["record"]), rec)
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
                except Exception:  # noqa: BLE001 - progress is cosmetic
                    running = 0
                bar.set_postfix_str(f"done {n_done}, running {running}, failed {n_failed}",
                                    refresh=True)
    finally:
        bar.close()
        for obj in own:
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - closing what we started, best effort
                pass
    path = write_summary(spec)
    log(f"sweep {spec.name}: {n_done} done, {n_failed} failed of {total}; summary {path}")
    return SweepResult(total, n_done, n_failed, len(p.todo), path)


def run_task(spec: SweepSpec, index: int) -> dict:
    """Run one run of the sweep in this process (a Slurm array task): resumes it, records it.
    SIGTERM/SIGUSR1 make it checkpoint and end "interrupted" (main thread)."""
    runs = spec.runs()
    if not 0 <= index < len(runs):
        raise UserError(f"--task {index}: the sweep has runs 0..{len(runs) - 1}")
    r = runs[index]
    from .scenario import load_scenario
    from .errors import ScenarioError
    try:
        sc = load_scenario(spec.scenario, overrides=r.overrides)
    except ScenarioError as exc:
        rec = {"run": r.id, "key": "", "params": r.params, "file": str(r.h5), "status": "failed",
               "error": f"ScenarioError: {exc}", "host": socket.gethostname(), "wall_s": 0.0}
        _write_json(r.record, rec)
        return rec
    key = scenario_key(sc.text)
    rec = read_record(r.record)
    if rec is not None and rec.get("key") == key and rec.get("status") in DONE:
        return rec
    return execute_run(_task(spec, r, key))


# ------------------------------------------------------------------------- Slurm arrays

def slurm_array_script(spec: SweepSpec, sweep_arg: str | None = None) -> str:
    """A Slurm job-array script for clusters without Dask: task i runs run i of the sweep.

    Slurm signals USR1 ``checkpoint_margin_minutes`` before the wall time (``--signal``); the
    script passes it on to tmesim, which checkpoints and exits with code 3, and the script then
    requeues its own array task, which continues from the checkpoint. Finished runs are skipped,
    so submitting the script again only does what is left. When all tasks have ended,
    ``tmesim sweep SWEEP.toml --collect`` writes the summary table."""
    sl = spec.slurm
    n = len(spec.runs())
    margin = int(sl.checkpoint_margin_minutes * 60)
    sweep_arg = sweep_arg or str(spec.path)
    logs = spec.out_dir / "slurm_logs"
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=tmesim-{spec.name}",
             f"#SBATCH --array=0-{n - 1}%{max(1, sl.jobs)}",
             f"#SBATCH --time={sl.walltime}",
             f"#SBATCH --mem={sl.memory}",
             f"#SBATCH --cpus-per-task={sl.cores}",
             f"#SBATCH --output={logs}/%A_%a.out",
             f"#SBATCH --signal=B:USR1@{margin}",
             "#SBATCH --requeue"]
    if sl.gpus:
        lines.append(f"#SBATCH --gres=gpu:{sl.gpus}")
    if sl.queue:
        lines.append(f"#SBATCH --partition={sl.queue}")
    if sl.account:
        lines.append(f"#SBATCH --account={sl.account}")
    lines += [f"#SBATCH {x}" for x in sl.job_extra]
    lines += ["",
              f"# {n} runs of sweep {spec.name}; submit with: sbatch {logs.parent}/slurm_array.sh",
              "# afterwards: tmesim sweep <sweep file> --collect   (writes the summary table)",
              "set -u"]
    lines += list(sl.prologue)
    lines += [f"export TMESIM_DEADLINE=$(( $(date +%s) + {sl.walltime_s - margin} ))",
              f"{shlex.quote(sys.executable)} -m tmesim sweep {shlex.quote(sweep_arg)} "
              "--task \"$SLURM_ARRAY_TASK_ID\" &",
              "child=$!",
              "# Slurm's warning goes to this shell (B:): pass it on, tmesim checkpoints and exits 3",
              "trap 'kill -USR1 \"$child\" 2>/dev/null' USR1 TERM",
              "while true; do",
              "  wait \"$child\"; rc=$?",
              "  kill -0 \"$child\" 2>/dev/null || break   # a trapped signal ends wait early",
              "done",
              f"if [ \"$rc\" -eq {EXIT_INTERRUPTED} ]; then",
              "  scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\" && exit 0",
              "fi",
              "exit \"$rc\"",
              ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- CLI

def add_parser(sub) -> None:
    s = sub.add_parser(
        "sweep", help="run a parameter sweep on Dask (local or Slurm)",
        description="Run every combination of a sweep file's parameters and seeds, each into "
        "its own run file, and write a summary table. Finished runs are skipped and interrupted "
        "ones resumed, so running the command again continues the sweep.")
    s.add_argument("sweep", help="sweep TOML file")
    s.add_argument("--cluster", default="local", choices=("local", "slurm"),
                   help="where runs go: local worker processes (default) or Slurm jobs through "
                   "dask-jobqueue")
    s.add_argument("--workers", type=int, help="local worker processes (default: one per GPU, "
                   "else one per CPU core)")
    s.add_argument("--out-dir", help="override [sweep] out_dir")
    s.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    s.add_argument("--dry-run", action="store_true", help="list the runs and what is left to do")
    s.add_argument("--slurm-array", nargs="?", const="", metavar="SCRIPT",
                   help="write a Slurm job-array script (default: OUT_DIR/slurm_array.sh) "
                   "instead of running")
    s.add_argument("--task", type=int, metavar="I", help="run only run I here (what an array "
                   "task does); exit 3 when interrupted with a checkpoint")
    s.add_argument("--collect", action="store_true", help="only (re)write the summary table")
    for opt in ("queue", "account", "memory", "walltime"):
        s.add_argument(f"--{opt}", help=f"override [slurm] {opt}")
    s.add_argument("--jobs", type=int, help="override [slurm] jobs")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    spec = load_sweep(args.sweep, args.out_dir)
    for opt in ("queue", "account", "memory", "walltime", "jobs"):
        v = getattr(args, opt)
        if v is not None:
            setattr(spec.slurm, opt, v)
    if args.walltime is not None:
        try:
            spec.slurm.walltime_s
        except ValueError:
            raise UserError(f"--walltime {args.walltime!r}: expected [D-]HH:MM:SS") from None
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected an integer >= 1")
    if args.collect:
        print(f"wrote {write_summary(spec)}")
        return 0
    if args.slurm_array is not None:
        out = Path(args.slurm_array) if args.slurm_array else spec.out_dir / "slurm_array.sh"
        out.parent.mkdir(parents=True, exist_ok=True)
        (spec.out_dir / "slurm_logs").mkdir(parents=True, exist_ok=True)
        out.write_text(slurm_array_script(spec))
        out.chmod(0o755)
        print(f"wrote {out} ({len(spec.runs())} array tasks); submit it with: sbatch {out}")
        return 0
    if args.task is not None:
        rec = run_task(spec, args.task)
        st = rec.get("status")
        print(f"run {rec['run']}: {st}" + (f": {rec['error']}" if rec.get("error") else ""))
        return 0 if st in DONE else EXIT_INTERRUPTED if st == "interrupted" else 1
    if args.dry_run:
        p = plan(spec, args.retry_failed, record=False)
        for r in p.runs:
            state = ("done" if r in p.done else "failed" if r in p.failed
                     else "invalid" if any(r is x for x, _ in p.invalid) else "to do")
            print(f"{r.id}  {state:7s}  {json.dumps(r.params)}")
        print(f"{len(p.runs)} runs: {len(p.todo)} to do, {len(p.done)} done, "
              f"{len(p.failed) + len(p.invalid)} failed")
        return 0
    res = run_sweep(spec, cluster=args.cluster, workers=args.workers,
                    retry_failed=args.retry_failed, progress=not args.quiet)
    print(f"{res.done} done, {res.failed} failed of {res.total} runs; summary: {res.summary}")
    return 0 if res.failed == 0 else 1
