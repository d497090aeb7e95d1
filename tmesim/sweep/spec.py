"""The sweep file: its format, its checks, and the runs it makes.

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
numbers, which makes differences between points less noisy).
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..scenario import MAX_RUN_NAME_BYTES, run_name_ok

#: bytes a run's id adds to the sweep's name in its run.name ("_r" and up to 14 digits)
RUN_ID_ROOM = 16


class SweepError(UserError):
    """A mistake in a sweep file: names the key, the value and what was expected."""

    def __init__(self, where: str, key: str, value, expected: str):
        super().__init__(f"sweep file {where}: key '{key}': got {value!r}, expected {expected}")


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
    params: dict  # the varied values (and "seed")
    overrides: dict  # everything set on the base scenario
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
        grid_pts = [
            dict(zip(grid_keys, vals))
            for vals in itertools.product(*(self.grid[k] for k in grid_keys))
        ]
        lhs_pts = latin_hypercube(self.lhs, self.lhs_samples, self.lhs_seed) if self.lhs else [{}]
        return [{**g, **s} for g in grid_pts for s in lhs_pts]

    def runs(self) -> list[RunSpec]:
        pts = self.points()
        n = len(pts) * len(self.seeds)
        width = max(4, len(str(n - 1)))
        out = []
        for i, (p, seed) in enumerate(itertools.product(pts, self.seeds)):
            rid = f"r{i:0{width}d}"
            over = {**self.fixed, **p, "run.seed": int(seed), "run.name": f"{self.name}_{rid}"}
            out.append(
                RunSpec(
                    i,
                    rid,
                    {**p, "seed": int(seed)},
                    over,
                    self.out_dir / "runs" / f"{rid}.h5",
                    self.out_dir / "runs" / f"{rid}.json",
                )
            )
        return out

    def observable_columns(self) -> list[str]:
        cols = [f"final_{c}" for c in self.final]
        cols += [f"{c}_at_{fmt_hours(h)}h" for h in self.at_hours for c in self.at]
        return cols


def fmt_hours(h: float) -> str:
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
    known = {
        "sweep",
        "set",
        "grid",
        "latin_hypercube",
        "replicates",
        "observables",
        "local",
        "slurm",
    }
    for k in data:
        if k not in known:
            raise SweepError(where, k, data[k], f"one of the sections {', '.join(sorted(known))}")
    base = p.resolve().parent
    sw = data.get("sweep", {})
    for k in sw:
        if k not in ("name", "scenario", "out_dir", "summary", "backend"):
            raise SweepError(
                where, f"sweep.{k}", sw[k], "one of name, scenario, out_dir, summary, backend"
            )
    if "scenario" not in sw:
        raise SweepError(where, "sweep.scenario", None, "the base scenario file")
    scen = base / sw["scenario"]
    if not scen.is_file():
        raise SweepError(
            where,
            "sweep.scenario",
            sw["scenario"],
            f"an existing scenario file (looked for {scen})",
        )
    name = str(sw.get("name", p.stem))
    # each run is named <name>_r0001 (its run.name) and the runs go in a folder of that name
    if not run_name_ok(name, room=RUN_ID_ROOM):
        raise SweepError(
            where,
            "sweep.name",
            name,
            "a name of letters, digits, spaces and _ - . + = , @ ( ), not starting with '.', "
            f"'-' or a space, without '..', of at most {MAX_RUN_NAME_BYTES - RUN_ID_ROOM} bytes "
            "(each run is named <name>_r0001, ...; without sweep.name the file's name is used)",
        )
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
        if (
            not isinstance(v, dict)
            or not {"min", "max"} <= set(v)
            or set(v) - {"min", "max", "scale"}
        ):
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
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and s >= 0 for s in seeds)
        ):
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
    if (at and not at_hours) or (at_hours and not at):
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
        _ = slurm.walltime_s  # parsing it checks the format
    except ValueError:
        raise SweepError(where, "slurm.walltime", slurm.walltime, "[D-]HH:MM:SS") from None
    return SweepSpec(
        path=p.resolve(),
        name=name,
        scenario=scen,
        out_dir=out,
        summary=summary,
        backend=backend,
        fixed=fixed,
        grid=grid,
        lhs=lhs,
        lhs_samples=lhs_samples,
        lhs_seed=lhs_seed,
        seeds=seeds,
        final=list(final),
        at=list(at),
        at_hours=at_hours,
        local_workers=workers,
        slurm=slurm,
    )
