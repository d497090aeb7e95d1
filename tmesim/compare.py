"""``tmesim compare``: one scenario under several named treatment arms, with replicate seeds.

A comparison file (TOML):

    scenario = "nsclc_tki.toml"          # relative to this file
    replicates = 5                       # seeds: the scenario's seed, +1, ..., + replicates - 1
    reference_day = 3                    # burden at this day is the progression reference
    progression_fraction = 1.2           # progression: burden above this x the reference
    times_days = [14, 28]                # when to report persister and resistant counts
    [arms.continuous]
    set = ["drugs.erlotinib.schedule.kind=continuous"]
    [arms.adaptive]
    set = ["drugs.erlotinib.controller.kind=adaptive"]

    pairs = [["adaptive", "continuous"]]   # optional: [arm, reference arm] pairs to test
    margin_days = 1                      # optional: what counts as a real gain (verdicts)
    contrasts = [[["adaptive", "continuous"], ["adaptive_no_cost", "continuous_no_cost"]]]
    stop_days_after_progression = 3      # optional: end each run this long after it progressed

Time to progression is the first time after ``reference_day`` at which the burden exceeds
``progression_fraction`` x the burden at ``reference_day``; a replicate that never progresses is
censored at the end of the run (reported as ">T" and counted). The table gives, per arm, the
mean and standard deviation over replicates of: time to progression, cumulative dose of each
drug up to progression (to the end of a censored run), and persister and resistant counts at
the chosen times. The figure overlays the burden
curves (mean and each replicate) and shades each arm's dosing.

Replicate k of every arm uses the same seed, so arms start from the same initial lattice and
share their random numbers wherever their histories agree (common random numbers). Each pair
[arm, reference] (default: every arm against the first) is therefore compared replicate by
replicate: the gain in time to progression, its mean and sd over replicates, a 95 % confidence
interval (Student t on the paired differences) and the two-sided p-value of the Wilcoxon
signed-rank test (exact for small samples; scipy.stats.wilcoxon), and the gain as a
percentage of the reference's time to progression (mean and t interval of the per-replicate
ratios: a fitness cost that slows regrowth lengthens every time, so a comparison across
regimes should look at this as well as at days). A censored time enters as
the end of the run, so a gain involving censored replicates is a bound, marked as such.

With ``margin_days`` m, each pair gets a verdict, the usual reading of a trial with a margin
of clinical relevance (see :func:`verdict`): longer or shorter by more than m (the 95 %
interval beyond ±m), by less than m (the 95 % interval on one side of 0 and the 90 % interval
inside ±m: two one-sided t tests at 5 %, TOST), equivalent within ±m (the 90 % interval inside
±m, the 95 % one across 0), longer or shorter with more than m not shown, or inconclusive.
A contrast [[a, b], [c, d]] asks whether two paired gains differ, replicate by replicate: the
gain of a over b minus the gain of c over d (same seed k in all four arms), with its t interval
and Wilcoxon p-value; e.g. whether a fitness cost of resistance changes what adaptive therapy
gains over continuous dosing (MODEL.md section 7, item 6).

Capacity (the steady burden of the untreated lattice, Strobl et al. 2021's K): an arm with
``capacity = "NAME"`` names the arm that measures its capacity, and ``capacity_from_day = D``
says from when that arm's burden is steady. A capacity arm runs its whole duration (never
stopped at progression); its capacity, per seed, is its mean burden from day D to its end, with
its drift (the window's second half over its first) to show it is steady. The tables and the
JSON then give each capacity and every arm's burden at ``reference_day`` over the capacity
measured with the same seed (``start_over_capacity``).

``stop_days_after_progression`` ends each run that long after its own progression (the same
rule as above), which saves most of the time of arms that progress early; counts at
``times_days`` after a run ended are then shown as "ended" and the figure's mean curve covers
the replicates still running.

A censored replicate's time is a lower bound: its own run's time from the reference day to its
end (runs of one comparison may end at different times), and the table says it per replicate
(">T"). The figure shows the burden relative to its value at the reference day with the
progression threshold (``progression_fraction``) as a line, a Kaplan-Meier curve of time to
progression per arm (:func:`kaplan_meier`; censored replicates as censored, marked "|"), and
each arm's dosing; drugs off in every arm get no column and no row.

``tmesim compare`` also writes the table as CSV (one row per arm, numbers in their own columns)
and JSON (the comparison, each arm's summary and every replicate's values, the paired and
contrast statistics) beside the figure, and keeps every replicate's run file
(``<arm>_seed<seed>.h5``) in a folder beside the figure (``<figure>_runs``, or ``--keep-runs
DIR``; ``--no-keep-runs`` runs in memory). A kept run is the run made in memory written out:
the scenario's ``[run.stop]`` conditions are not applied in either (only
``stop_days_after_progression`` ends a run early), so keeping runs changes no number.
Command-line ``--set key.path=value`` overrides apply to every arm after the arm's own ``set``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import _MISSING, ScenarioError, UserError
from .scenario import load_scenario


@dataclass
class Comparison:
    scenario: Path
    arms: dict[str, list[str]]
    replicates: int = 3
    reference_day: float = 0.0
    progression_fraction: float = 1.2
    times_days: list[float] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    margin_days: float | None = None
    contrasts: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)
    stop_days_after_progression: float | None = None
    #: overrides applied to every arm after its own ``set`` (``tmesim compare --set``)
    overrides: list[str] = field(default_factory=list)
    #: {arm: the arm that measures its capacity} (an arm's ``capacity = "NAME"``)
    capacity_of: dict[str, str] = field(default_factory=dict)
    #: a capacity arm's steady burden is its mean burden from this day to its end
    capacity_from_day: float | None = None

    @property
    def capacity_arms(self) -> list[str]:
        """Arms that measure a capacity, in arm order: never stopped at progression."""
        return [a for a in self.arms if a in self.capacity_of.values()]

    def arm_overrides(self, arm: str) -> list[str]:
        """The overrides of ``arm``'s runs (before the replicate's seed)."""
        return self.arms[arm] + self.overrides

    def base_seed(self) -> int:
        """Replicate k runs with this seed + k: the scenario's seed (after ``overrides``)."""
        return load_scenario(self.scenario, overrides=self.overrides).run.seed


def load_comparison(path, overrides=()) -> Comparison:
    """Read and check a comparison file (errors name the key, the value and what was expected).

    ``overrides``: ``["key.path=value", ...]`` applied to every arm after its own ``set``
    (``tmesim compare --set``); each is checked against the scenario first."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError("(file)", str(path), "an existing comparison file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError("(file)", str(path), f"valid TOML ({exc})") from None
    known = {
        "scenario",
        "arms",
        "replicates",
        "reference_day",
        "progression_fraction",
        "times_days",
        "pairs",
        "margin_days",
        "contrasts",
        "stop_days_after_progression",
        "capacity_from_day",
    }
    for k in data:
        if k not in known:
            raise ScenarioError(k, data[k], "no such key; keys are: " + ", ".join(sorted(known)))
    if "scenario" not in data or not isinstance(data["scenario"], str):
        raise ScenarioError("scenario", data.get("scenario"), "the path of a scenario file")
    scen = (p.parent / data["scenario"]).resolve()
    arms = data.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise ScenarioError("arms", arms, "at least one [arms.NAME] table with set = [...]")
    out = {}
    capacity_of = {}
    for name, spec in arms.items():
        if (
            not isinstance(spec, dict)
            or set(spec) - {"set", "capacity"}
            or not isinstance(spec.get("set", []), list)
        ):
            raise ScenarioError(
                f"arms.{name}",
                spec,
                'a table with set = ["key.path=value", ...] and optionally capacity = "ARM"',
            )
        out[name] = [str(x) for x in spec.get("set", [])]
        if "capacity" in spec:
            capacity_of[name] = spec["capacity"]
    for name, cap in capacity_of.items():
        if cap not in out or cap == name or cap in capacity_of:
            raise ScenarioError(
                f"arms.{name}.capacity",
                cap,
                "the name of another arm that measures the capacity (its untreated lattice; "
                "itself without a capacity key) among: " + ", ".join(out),
            )
    if capacity_of and "capacity_from_day" not in data:
        raise ScenarioError(
            "capacity_from_day",
            _MISSING,
            "the day from which a capacity arm's burden is steady (its mean from then to the "
            "end is the capacity), given when an arm names a capacity arm",
        )
    c = Comparison(scen, out, capacity_of=capacity_of)
    if "capacity_from_day" in data:
        v = data["capacity_from_day"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ScenarioError("capacity_from_day", v, "a number of days >= 0")
        c.capacity_from_day = float(v)
    for key, tp, lo in (
        ("replicates", int, 1),
        ("reference_day", (int, float), 0),
        ("progression_fraction", (int, float), 0),
    ):
        if key in data:
            v = data[key]
            if (
                isinstance(v, bool)
                or not isinstance(v, tp)
                or v < lo
                or (key == "progression_fraction" and v <= 0)
            ):
                raise ScenarioError(
                    key, v, f"a number >= {lo}" if key != "replicates" else "an integer >= 1"
                )
            setattr(c, key, v)
    if "times_days" in data:
        t = data["times_days"]
        if not isinstance(t, list) or not all(isinstance(x, (int, float)) and x >= 0 for x in t):
            raise ScenarioError("times_days", t, "a list of days >= 0")
        c.times_days = [float(x) for x in t]
    if "pairs" in data:
        pr = data["pairs"]
        if not isinstance(pr, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(a in c.arms for a in x) and x[0] != x[1]
            for x in pr
        ):
            raise ScenarioError(
                "pairs",
                pr,
                "a list of [arm, reference arm] pairs of two "
                "different arms among: " + ", ".join(c.arms),
            )
        c.pairs = [(str(a), str(b)) for a, b in pr]
    else:
        names = list(c.arms)
        c.pairs = [(a, names[0]) for a in names[1:]]
    for key in ("margin_days", "stop_days_after_progression"):
        if key in data:
            v = data[key]
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or v < 0
                or (key == "margin_days" and v <= 0)
            ):
                raise ScenarioError(
                    key,
                    v,
                    "a number of days > 0" if key == "margin_days" else "a number of days >= 0",
                )
            setattr(c, key, float(v))
    if "contrasts" in data:
        ct = data["contrasts"]

        def is_pair(x):
            return (
                isinstance(x, list) and len(x) == 2 and all(a in c.arms for a in x) and x[0] != x[1]
            )

        if not isinstance(ct, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(is_pair(q) for q in x) for x in ct
        ):
            raise ScenarioError(
                "contrasts",
                ct,
                "a list of [[arm, reference], [arm, reference]] "
                "(two pairs of different arms) among: " + ", ".join(c.arms),
            )
        c.contrasts = [((str(a), str(b)), (str(d), str(e))) for (a, b), (d, e) in ct]
    c.overrides = [str(x) for x in overrides]
    if c.overrides:
        try:
            load_scenario(c.scenario, overrides=c.overrides)
        except ScenarioError as exc:
            raise UserError(f"--set: {exc}") from None
    # every arm must make a valid scenario: check them all before running anything
    for name in c.arms:
        try:
            load_scenario(c.scenario, overrides=c.arm_overrides(name))
        except ScenarioError as exc:
            raise UserError(f"arm '{name}': {exc}") from None
    return c


def restrict(c: Comparison, arms: list[str]) -> Comparison:
    """``c`` with only ``arms`` (in the file's order) and the capacity arms they name; the
    pairs and contrasts among those arms are kept (``tmesim compare --arms``)."""
    unknown = [a for a in arms if a not in c.arms]
    if unknown or not arms:
        raise UserError(
            f"--arms {','.join(arms)}: no arm named {', '.join(unknown) or '(none given)'}; "
            "arms: " + ", ".join(c.arms)
        )
    keep = set(arms) | {c.capacity_of[a] for a in arms if a in c.capacity_of}
    out = Comparison(**{k: getattr(c, k) for k in c.__dataclass_fields__})
    out.arms = {a: v for a, v in c.arms.items() if a in keep}
    out.capacity_of = {a: v for a, v in c.capacity_of.items() if a in keep}
    out.pairs = [p for p in c.pairs if set(p) <= keep]
    out.contrasts = [q for q in c.contrasts if set(q[0]) | set(q[1]) <= keep]
    return out


class ProgressionStop:
    """A ``stop`` for :func:`tmesim.simulation.run_scenario` in memory: True once the run is
    ``after_days`` past its progression, by the rule of :func:`time_to_progression` applied to
    the rows so far (the reference is the row nearest ``reference_day``, so it is known once a row
    lies at or past that day). Keeps its place between calls, so a run costs one comparison a
    step."""

    def __init__(self, reference_day: float, fraction: float, after_days: float):
        self.reference_day, self.fraction, self.after = reference_day, fraction, after_days
        self.ref: float | None = None  # reference burden, once known
        self.next = 0  # first row not yet checked for progression
        self.progressed: float | None = None  # day of progression, once found

    def __call__(self, rows) -> bool:
        day = rows[-1]["time_min"] / 1440.0
        if self.ref is None:
            if day < self.reference_day:
                return False
            i0 = len(rows) - 1
            if i0 and abs(rows[i0 - 1]["time_min"] / 1440.0 - self.reference_day) <= abs(
                day - self.reference_day
            ):
                i0 -= 1  # np.argmin keeps the first of equal distances
            self.ref, self.next = float(rows[i0]["burden"]), i0
        while self.progressed is None and self.next < len(rows):
            r = rows[self.next]
            if r["burden"] > self.fraction * self.ref:
                self.progressed = r["time_min"] / 1440.0
            self.next += 1
        return self.progressed is not None and day >= self.progressed + self.after - 1e-9


def progression_index(
    day: np.ndarray, burden: np.ndarray, ref_day: float, fraction: float
) -> tuple[int, int, bool]:
    """(row of the reference, row of progression or the last row, progressed?): progression is
    the first row from the reference on whose burden exceeds ``fraction`` x the burden of the
    row nearest ``ref_day``."""
    i0 = int(np.argmin(np.abs(day - ref_day)))
    above = np.flatnonzero(burden[i0:] > fraction * burden[i0])
    if above.size:
        return i0, i0 + int(above[0]), True
    return i0, len(day) - 1, False


def time_to_progression(
    day: np.ndarray, burden: np.ndarray, ref_day: float, fraction: float
) -> tuple[float, bool]:
    """(days from ref_day to progression, progressed?); censored at the last day if never."""
    i0, i, progressed = progression_index(day, burden, ref_day, fraction)
    return float(day[i] - day[i0]), progressed


def run_file_names(c: Comparison) -> dict[tuple[str, int], str]:
    """{(arm, replicate): file name} of the kept runs: ``<arm>_seed<seed>.h5``, the arm's name
    cut to letters, digits, ``-``, ``_`` and ``.``; prefixed with the arm's number where two
    arms would otherwise share names."""
    seed = c.base_seed()
    safe = {a: re.sub(r"[^A-Za-z0-9_.-]+", "_", a).strip(".") or "arm" for a in c.arms}
    clash = len(set(safe.values())) < len(safe)
    return {
        (a, k): (f"{i}-" if clash else "") + f"{safe[a]}_seed{seed + k}.h5"
        for i, a in enumerate(c.arms)
        for k in range(c.replicates)
    }


def run_one(path: str, overrides: list[str], stop=None, out: str | None = None) -> dict:
    """The time series {column: array, "day": array} of one replicate, run on the CPU; with
    ``out``, also written as a run file (the scenario's writers: time series, snapshots,
    checkpoints). Only ``stop`` ends a run early, with or without a file, so the series is
    the same either way (the scenario's ``[run.stop]`` is not applied)."""
    from .simulation import Simulation, run_in_memory

    if out is None:
        return run_in_memory(path, overrides, stop)
    from .callbacks import StopOnRows
    from .writers import InMemoryWriter

    sim = Simulation(load_scenario(path, overrides=overrides), backend="cpu")
    mem = InMemoryWriter()
    sim.output_writers["in_memory"] = mem
    sim.callbacks = [] if stop is None else [StopOnRows(stop, mem, "stop(rows) was true")]
    sim.run(out)
    return mem.series()


def run_comparison(
    c: Comparison, jobs: int = 1, echo=print, runs_dir=None, progress: bool = False
) -> dict:
    """Run every arm x replicate; print the table; return {arm: [series per replicate]}.

    Args:
        jobs: runs at a time (worker processes when > 1).
        echo: where the tables go (a callable of a string).
        runs_dir: keep each replicate's run file there (:func:`run_file_names`); None: in memory.
        progress: one progress bar (tqdm, on stderr) over all runs, advanced as each ends.
    """
    base_seed = c.base_seed()
    names = run_file_names(c) if runs_dir is not None else {}
    if runs_dir is not None:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)

    def stop():  # one per run: a ProgressionStop keeps its place in the rows
        return (
            None
            if c.stop_days_after_progression is None
            else ProgressionStop(
                c.reference_day, c.progression_fraction, c.stop_days_after_progression
            )
        )

    tasks = [
        (
            arm,
            (
                str(c.scenario),
                c.arm_overrides(arm) + [f"run.seed={base_seed + k}"],
                None if arm in c.capacity_arms else stop(),
                str(Path(runs_dir) / names[arm, k]) if runs_dir is not None else None,
            ),
        )
        for arm in c.arms
        for k in range(c.replicates)
    ]
    series = _run_all([t[1] for t in tasks], jobs, progress)
    results: dict[str, list] = {}
    for (arm, _), s in zip(tasks, series):
        results.setdefault(arm, []).append(s)
    echo(table(c, results))
    if c.capacity_of:
        echo("")
        echo(capacity_table(c, results))
    if c.pairs and c.replicates > 1:
        echo("")
        echo(paired_table(c, results))
    if c.contrasts and c.replicates > 1:
        echo("")
        echo(contrast_table(c, results))
    return results


def _run_all(tasks: list, jobs: int, progress: bool) -> list[dict]:
    """:func:`run_one` of each task, in task order, with one bar over all of them that moves
    as each run ends (in whatever order worker processes finish them)."""
    from tqdm import tqdm

    out: list = [None] * len(tasks)
    with tqdm(
        total=len(tasks), unit="run", desc="compare", file=sys.stderr, disable=not progress
    ) as bar:
        if jobs <= 1 or len(tasks) <= 1:
            for i, t in enumerate(tasks):
                out[i] = run_one(*t)
                bar.update(1)
            return out
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
            futures = {pool.submit(run_one, *t): i for i, t in enumerate(tasks)}
            try:
                for f in as_completed(futures):
                    out[futures[f]] = f.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return out


def capacities(c: Comparison, results: dict) -> dict[str, dict]:
    """Per capacity arm: every replicate's capacity (cells), its mean burden from
    ``capacity_from_day`` to the run's end, and its drift (the mean of that window's second
    half over its first, minus 1: near 0 when the burden is steady)."""
    out = {}
    assert c.capacity_from_day is not None, "validated: given with any capacity arm"
    for arm in c.capacity_arms:
        cells, drift = [], []
        for s in results[arm]:
            day, burden = np.asarray(s["day"]), np.asarray(s["burden"], dtype=float)
            win = burden[day >= c.capacity_from_day - 1e-9]
            if win.size < 2:
                raise UserError(
                    f"capacity arm '{arm}': the run ended on day {day[-1]:g}, before "
                    f"capacity_from_day ({c.capacity_from_day:g}) left two rows to average; "
                    "a longer run.duration_days or an earlier capacity_from_day"
                )
            half = win.size // 2
            cells.append(float(win.mean()))
            drift.append(float(win[half:].mean() / win[:half].mean() - 1.0))
        m, sd = _mean_sd(cells)
        out[arm] = {
            "from_day": c.capacity_from_day,
            "cells": cells,
            "mean": m,
            "sd": sd,
            "drift": drift,
        }
    return out


def start_over_capacity(c: Comparison, results: dict) -> dict[str, dict]:
    """Per arm with a capacity arm: every replicate's burden at the reference day over the
    capacity its capacity arm measured with the same seed, with mean and sd."""
    cap = capacities(c, results)
    out = {}
    for arm, of in c.capacity_of.items():
        vals = []
        for s, k in zip(results[arm], cap[of]["cells"]):
            i0 = int(np.argmin(np.abs(np.asarray(s["day"]) - c.reference_day)))
            vals.append(float(s["burden"][i0]) / k if k > 0 else math.nan)
        m, sd = _mean_sd(vals)
        out[arm] = {"capacity_arm": of, "values": vals, "mean": m, "sd": sd}
    return out


def capacity_table(c: Comparison, results: dict) -> str:
    """The capacities (steady burden of each capacity arm) and each arm's burden at the
    reference day relative to its capacity."""
    cap = capacities(c, results)
    rel = start_over_capacity(c, results)
    n = c.replicates
    rows = []
    for arm, v in cap.items():
        d = max(v["drift"], key=abs)
        rows.append([arm, _fmt_ms(v, n) + " cells", f"{100 * d:+.2g} %", "(capacity arm)"])
    for arm, v in rel.items():
        rows.append([arm, "", "", f"{_fmt_ms(v, n)} of {v['capacity_arm']}"])
    title = (
        "capacity: steady burden of the capacity arm (mean burden from day "
        f"{c.capacity_from_day:g} to its end; drift: second half of that window over the "
        "first, largest of the replicates); each arm's burden at day "
        f"{c.reference_day:g} over the capacity of the same seed"
    )
    return _layout(title, ["arm", "capacity", "drift", "burden at reference / capacity"], rows)


def paired_ttps(c: Comparison, results: dict, arm: str, ref: str):
    """Per replicate: time to progression of ``arm`` and of ``ref`` (days), and whether either
    was censored."""

    def ttp(s):
        return time_to_progression(s["day"], s["burden"], c.reference_day, c.progression_fraction)

    ta, tb, censored = [], [], []
    for a, b in zip(results[arm], results[ref]):
        (da, pa), (db, pb) = ttp(a), ttp(b)
        ta.append(da)
        tb.append(db)
        censored.append(not (pa and pb))
    return np.array(ta), np.array(tb), np.array(censored)


def paired_gains(c: Comparison, results: dict, arm: str, ref: str):
    """Per replicate: time to progression of ``arm`` minus that of ``ref`` (days), and whether
    either was censored."""
    ta, tb, censored = paired_ttps(c, results, arm, ref)
    return ta - tb, censored


def relative_gains(c: Comparison, results: dict, arm: str, ref: str) -> np.ndarray:
    """Per replicate: the gain in time to progression as a percentage of ``ref``'s (a schedule
    that delays progression by a fixed share of the time it takes shows the same percentage
    whatever sets the pace of regrowth, e.g. a fitness cost)."""
    ta, tb, _ = paired_ttps(c, results, arm, ref)
    return _percent_of(ta - tb, tb)


def _percent_of(gains: np.ndarray, reference: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * gains / reference


def paired_stats(gains: np.ndarray) -> dict:
    """Mean, sd, 95 % and 90 % t intervals and Wilcoxon signed-rank p-value of paired
    differences (lo, hi: the 95 % interval; lo90, hi90: the 90 % one)."""
    from scipy import stats

    n = gains.size
    mean = float(gains.mean())
    sd = float(gains.std(ddof=1)) if n > 1 else float("nan")
    se = sd / np.sqrt(n) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * se) if n > 1 else float("nan")
    half90 = float(stats.t.ppf(0.95, n - 1) * se) if n > 1 else float("nan")
    if n > 1 and np.any(gains != 0):
        p = float(stats.wilcoxon(gains, alternative="two-sided").pvalue)
    else:
        p = 1.0
    return dict(
        n=n,
        mean=mean,
        sd=sd,
        lo=mean - half,
        hi=mean + half,
        lo90=mean - half90,
        hi90=mean + half90,
        p=p,
    )


def verdict(st: dict, margin: float) -> str:
    """What paired statistics (:func:`paired_stats`) say against a margin of relevance
    ``margin`` (days), as a trial with a margin is read:

    - "longer by more than m d" / "shorter by more than m d": the 95 % interval lies beyond
      +m / -m;
    - "longer by less than m d" / "shorter by less than m d": the 95 % interval lies above /
      below 0 and the 90 % interval inside ±m (both one-sided t tests of TOST reject a
      difference of ±m at 5 %): a real difference, smaller than the margin;
    - "equivalent within ±m d": the 90 % interval inside ±m, the 95 % one across 0;
    - "longer, by more than m d not shown" / "shorter, ...": the 95 % interval above / below
      0, reaching across +m / -m;
    - "inconclusive": none of these.
    """
    lo, hi = st["lo"], st["hi"]
    if lo > margin:
        return f"longer by more than {margin:g} d"
    if hi < -margin:
        return f"shorter by more than {margin:g} d"
    if -margin < st["lo90"] and st["hi90"] < margin:
        if lo > 0:
            return f"longer by less than {margin:g} d"
        if hi < 0:
            return f"shorter by less than {margin:g} d"
        return f"equivalent within ±{margin:g} d"
    if lo > 0:
        return f"longer, by more than {margin:g} d not shown"
    if hi < 0:
        return f"shorter, by more than {margin:g} d not shown"
    return "inconclusive"


def paired_table(c: Comparison, results: dict) -> str:
    """One line per [arm, reference] pair: the paired gain in time to progression."""
    head = [
        "arm vs reference",
        "gain in TTP (d), paired",
        "95 % CI",
        "Wilcoxon p",
        "replicates with gain > 0",
        "gain, % of reference TTP (95 % CI)",
    ]
    if c.margin_days is not None:
        head.append(f"verdict (margin {c.margin_days:g} d)")
    rows = []
    for arm, ref in c.pairs:
        ta, tb, cens = paired_ttps(c, results, arm, ref)
        g = ta - tb
        st = paired_stats(g)
        rel = _percent_of(g, tb)
        if np.all(np.isfinite(rel)):
            sr = paired_stats(rel)
            rel_text = f"{sr['mean']:+.3g} % [{sr['lo']:+.3g}, {sr['hi']:+.3g}]"
        else:
            rel_text = "n/a (reference progressed at once)"
        rows.append([f"{arm} vs {ref}"] + _stat_cells(g, st, cens.any()) + [rel_text])
        if c.margin_days is not None:
            rows[-1].append(verdict(st, c.margin_days) + (" (bound)" if cens.any() else ""))
    return _layout(
        "paired by seed (replicate k of every arm has the same seed): mean ± sd of "
        "the per-replicate difference",
        head,
        rows,
    )


def contrast_table(c: Comparison, results: dict) -> str:
    """One line per contrast [[a, b], [d, e]]: the per-replicate difference between the gain
    of a over b and the gain of d over e (days), e.g. what a fitness cost changes in the gain
    of adaptive over continuous dosing."""
    head = [
        "contrast",
        "difference of gains (d)",
        "95 % CI",
        "Wilcoxon p",
        "replicates with difference > 0",
    ]
    rows = []
    for (a, b), (d, e) in c.contrasts:
        g1, cens1 = paired_gains(c, results, a, b)
        g2, cens2 = paired_gains(c, results, d, e)
        diff = g1 - g2
        rows.append(
            [f"({a} - {b}) - ({d} - {e})"]
            + _stat_cells(diff, paired_stats(diff), (cens1 | cens2).any())
        )
    return _layout(
        "contrasts: difference between two paired gains, replicate by replicate "
        "(seed k in all four arms)",
        head,
        rows,
    )


def _stat_cells(g: np.ndarray, st: dict, censored: bool) -> list[str]:
    """Table cells of paired differences ``g`` with their statistics: mean ± sd (marked as a
    bound when a censored time entered), 95 % interval, Wilcoxon p, how many are above 0."""
    bound = " (censored: bound)" if censored else ""
    return [
        f"{st['mean']:+.3g} ± {st['sd']:.2g}{bound}",
        f"[{st['lo']:+.3g}, {st['hi']:+.3g}]",
        f"{st['p']:.3g}",
        f"{int((g > 0).sum())}/{g.size}",
    ]


def _layout(title: str, head: list, rows: list) -> str:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = [
        title,
        "  ".join(h.ljust(w) for h, w in zip(head, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _ms(values) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return f"{v[0]:.3g}"
    return f"{v.mean():.3g} ± {v.std(ddof=1):.2g}"


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else math.nan)


def kaplan_meier(times, progressed) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The product-limit (Kaplan-Meier) estimate of the probability of no progression yet.

    Args:
        times: per replicate, its time to progression or, when censored, the time it was last
            seen without progression (days).
        progressed: per replicate, True for a progression, False for a censored time.

    Returns:
        (t, s, at_risk, events): the distinct progression times in increasing order, S just
        after each (S(t_i) = prod over t_j <= t_i of 1 - d_j / n_j), the number n_j still
        followed at t_j (times >= t_j: a replicate censored at t_j counts as at risk then) and
        the number d_j that progressed at t_j. S is 1 before the first time.
    """
    t = np.asarray(times, dtype=float)
    ev = np.asarray(progressed, dtype=bool)
    if t.shape != ev.shape:
        raise ValueError(f"kaplan_meier: {t.size} times but {ev.size} progressed flags")
    tk = np.unique(t[ev])
    at_risk = np.array([int(np.count_nonzero(t >= x)) for x in tk], dtype=int)
    events = np.array([int(np.count_nonzero(ev & (t == x))) for x in tk], dtype=int)
    s = np.cumprod(1.0 - events / at_risk) if tk.size else np.zeros(0)
    return tk, s, at_risk, events


def km_median(times, progressed) -> float | None:
    """The Kaplan-Meier median time to progression: the first time S falls to 0.5 or below
    (None: not reached)."""
    tk, s, _, _ = kaplan_meier(times, progressed)
    below = np.flatnonzero(s <= 0.5 + 1e-12)
    return float(tk[below[0]]) if below.size else None


def drugs_given(results: dict) -> list[str]:
    """The drugs some run of some arm gives (a positive cumulative dose); a drug off in every
    arm gets no column in the table and no row in the figure."""
    names = sorted(
        {
            k[len("cumulative_dose_") :]
            for reps in results.values()
            for s in reps
            for k in s
            if k.startswith("cumulative_dose_")
        }
    )
    return [
        d
        for d in names
        if any(
            f"cumulative_dose_{d}" in s and np.nanmax(s[f"cumulative_dose_{d}"]) > 0
            for reps in results.values()
            for s in reps
        )
    ]


def summary(c: Comparison, results: dict, runs_dir=None) -> list[dict]:
    """Per arm, the table's numbers and every replicate's: time to progression (days from the
    reference day; for a censored replicate its own run's time to its end, a lower bound),
    cumulative dose of each drug given up to progression (to the end when censored), and P and
    R counts at ``times_days`` (None after the run ended). JSON-ready (NaN as None)."""
    drugs = drugs_given(results)
    known = c.scenario is not None and Path(c.scenario).is_file()
    seed = c.base_seed() if known else None
    names = run_file_names(c) if known and runs_dir is not None else {}
    out = []
    for arm, reps in results.items():
        reps_out: list[dict] = []
        for k, s in enumerate(reps):
            i0, i, progressed = progression_index(
                s["day"], s["burden"], c.reference_day, c.progression_fraction
            )
            ttp = float(s["day"][i] - s["day"][i0])
            counts: dict[str, dict | None] = {}
            for t in c.times_days:
                if t > s["day"][-1] + 1e-9:  # a run stopped after its progression
                    counts[f"{t:g}"] = None
                    continue
                j = int(np.argmin(np.abs(s["day"] - t)))
                counts[f"{t:g}"] = {"P": float(s["n_P"][j]), "R": float(s["n_R"][j])}
            reps_out.append(
                {
                    "replicate": k,
                    "seed": None if seed is None else seed + k,
                    "ttp_days": ttp,
                    "progressed": bool(progressed),
                    "censored_at_days": None if progressed else ttp,
                    "run_end_day": float(s["day"][-1]),
                    "dose_to_progression": {d: float(s[f"cumulative_dose_{d}"][i]) for d in drugs},
                    "counts": counts,
                    "run_file": (
                        str(Path(runs_dir) / names[arm, k]) if (arm, k) in names else None
                    ),
                }
            )
        ttps = [r["ttp_days"] for r in reps_out]
        prog = [r["progressed"] for r in reps_out]
        mean, sd = _mean_sd(ttps)
        row: dict = {
            "arm": arm,
            "replicates": len(reps_out),
            "progressed": int(sum(prog)),
            "censored": int(len(prog) - sum(prog)),
            "ttp_mean_days": mean,
            "ttp_sd_days": sd,
            "ttp_km_median_days": km_median(ttps, prog),
            "censored_bounds_days": [
                r["censored_at_days"] for r in reps_out if not r["progressed"]
            ],
            "dose_to_progression": {
                d: dict(
                    zip(("mean", "sd"), _mean_sd([r["dose_to_progression"][d] for r in reps_out]))
                )
                for d in drugs
            },
            "counts": {},
            "replicate_values": reps_out,
        }
        for t in c.times_days:
            key = f"{t:g}"
            got = [r["counts"][key] for r in reps_out]
            ended = sum(1 for g in got if g is None)
            row["counts"][key] = {"ended": ended}
            for x in ("P", "R"):
                m, sdv = _mean_sd([g[x] for g in got]) if not ended else (math.nan, math.nan)
                row["counts"][key][x] = {"mean": m, "sd": sdv}
        out.append(_json_ready(row))
    return out


def _json_ready(x):
    """NaN and infinities as None (JSON has no NaN), numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _censored_cell(row: dict) -> str:
    """What a censored replicate's time means: the bound of each censored replicate, its own
    run's time from the reference day to its end."""
    bounds = row["censored_bounds_days"]
    if not bounds:
        return ""
    if len(set(f"{b:.3g}" for b in bounds)) == 1:
        each = "each " if len(bounds) > 1 else ""
        return f" ({len(bounds)} not progressed: {each}>{bounds[0]:.3g})"
    return f" ({len(bounds)} not progressed: " + ", ".join(f">{b:.3g}" for b in bounds) + ")"


def _fmt_ms(d: dict, n: int) -> str:
    if n == 1 or d["sd"] is None:
        return f"{d['mean']:.3g}"
    return f"{d['mean']:.3g} ± {d['sd']:.2g}"


def table(c: Comparison, results: dict) -> str:
    rows_in = summary(c, results)
    drugs = drugs_given(results)
    head = ["arm", "time to progression (d)", "KM median (d)"]
    head += [f"dose {d} to progression" for d in drugs]
    for t in c.times_days:
        head += [f"P at {t:g} d", f"R at {t:g} d"]
    rows = []
    for r in rows_in:
        n = r["replicates"]
        cell = _fmt_ms({"mean": r["ttp_mean_days"], "sd": r["ttp_sd_days"]}, n)
        med = r["ttp_km_median_days"]
        row = [r["arm"], cell + _censored_cell(r), "not reached" if med is None else f"{med:.3g}"]
        # cumulative dose up to progression (to the end where censored): what each schedule
        # spent while it held the tumor, whatever the runs did after
        for d in drugs:
            row.append(_fmt_ms(r["dose_to_progression"][d], n))
        for t in c.times_days:
            got = r["counts"][f"{t:g}"]
            if got["ended"]:
                row += [f"ended ({got['ended']}/{n})"] * 2
            else:
                row += [_fmt_ms(got["P"], n), _fmt_ms(got["R"], n)]
        rows.append(row)
    name = c.scenario.name if c.scenario is not None else "(scenario)"
    title = (
        f"{len(results)} arms x {c.replicates} replicates of {name}; progression: "
        f"burden > {c.progression_fraction:g} x its value at day {c.reference_day:g}; "
        "mean ± sd over replicates (a censored time is its run's end: a bound)"
    )
    if c.stop_days_after_progression is not None:
        title += f"; each run ends {c.stop_days_after_progression:g} d after it progressed"
    if c.overrides:
        title += "; every arm with " + ", ".join(c.overrides)
    return _layout(title, head, rows)


def csv_rows(c: Comparison, results: dict) -> list[dict]:
    """The table as flat rows (one per arm), numbers in their own columns: what the CSV holds.
    A count after some run ended is empty; censored bounds are joined with ';'."""
    out = []
    for r in summary(c, results):
        row = {
            "arm": r["arm"],
            "replicates": r["replicates"],
            "progressed": r["progressed"],
            "censored": r["censored"],
            "ttp_mean_days": r["ttp_mean_days"],
            "ttp_sd_days": r["ttp_sd_days"],
            "ttp_km_median_days": r["ttp_km_median_days"],
            "censored_bounds_days": ";".join(f"{b:g}" for b in r["censored_bounds_days"]),
        }
        for d, v in r["dose_to_progression"].items():
            row[f"dose_{d}_to_progression_mean"] = v["mean"]
            row[f"dose_{d}_to_progression_sd"] = v["sd"]
        for t, v in r["counts"].items():
            for x in ("P", "R"):
                row[f"{x}_at_{t}d_mean"] = v[x]["mean"]
                row[f"{x}_at_{t}d_sd"] = v[x]["sd"]
            row[f"ended_by_{t}d"] = v["ended"]
        out.append(row)
    return out


def _pair_record(st: dict, g: np.ndarray, censored: bool) -> dict:
    return dict(st, gains=[float(x) for x in g], censored=bool(censored))


def write_tables(c: Comparison, results: dict, out: Path, runs_dir=None) -> tuple[Path, Path]:
    """Write ``out`` with suffixes .csv (:func:`csv_rows`) and .json: the comparison, each arm's
    :func:`summary` with every replicate's values (its run file's name where runs are kept),
    the paired gains and the contrasts with their statistics. Run files are named relative
    to the JSON file's folder. Returns both paths."""
    out = Path(out)
    if runs_dir is not None:
        runs_dir = os.path.relpath(runs_dir, out.parent)
    rows = csv_rows(c, results)
    p_csv, p_json = out.with_suffix(".csv"), out.with_suffix(".json")
    with open(p_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None or v != v else v for k, v in r.items()})
    pairs, contrasts = [], []
    if c.replicates > 1:
        for arm, ref in c.pairs:
            g, cens = paired_gains(c, results, arm, ref)
            rec = _pair_record(paired_stats(g), g, cens.any())
            rec.update(arm=arm, reference=ref)
            if c.margin_days is not None:
                rec["verdict"] = verdict(paired_stats(g), c.margin_days)
            pairs.append(rec)
        for (a, b), (d, e) in c.contrasts:
            g1, c1 = paired_gains(c, results, a, b)
            g2, c2 = paired_gains(c, results, d, e)
            rec = _pair_record(paired_stats(g1 - g2), g1 - g2, (c1 | c2).any())
            rec.update(first=[a, b], second=[d, e])
            contrasts.append(rec)
    doc: dict = {
        "comparison": {
            "scenario": str(c.scenario),
            "arms": c.arms,
            "overrides": c.overrides,
            "replicates": c.replicates,
            "reference_day": c.reference_day,
            "progression_fraction": c.progression_fraction,
            "times_days": c.times_days,
            "stop_days_after_progression": c.stop_days_after_progression,
            "margin_days": c.margin_days,
        },
        "drugs_given": drugs_given(results),
        "runs_dir": None if runs_dir is None else str(runs_dir),
        "arms": summary(c, results, runs_dir),
        "pairs": pairs,
        "contrasts": contrasts,
    }
    if c.capacity_of:
        doc["comparison"]["capacity_of"] = c.capacity_of
        doc["comparison"]["capacity_from_day"] = c.capacity_from_day
        doc["capacity"] = capacities(c, results)
        doc["start_over_capacity"] = start_over_capacity(c, results)
    p_json.write_text(json.dumps(_json_ready(doc), indent=1) + "\n", encoding="utf-8")
    return p_csv, p_json


def relative_burden(c: Comparison, s: dict) -> np.ndarray:
    """The burden over its value at the row nearest the reference day (NaN where that is 0):
    progression is this crossing ``progression_fraction``."""
    i0 = int(np.argmin(np.abs(s["day"] - c.reference_day)))
    ref = float(s["burden"][i0])
    if ref <= 0:
        return np.full(len(s["burden"]), np.nan)
    return np.asarray(s["burden"], dtype=float) / ref


def figure_of(c: Comparison, results: dict):
    """The figure (a matplotlib Figure): burden relative to the reference day per arm
    (replicates thin, mean thick) with the progression threshold (line gid "threshold"); the
    Kaplan-Meier curve of time to progression per arm (step line gid "km:<arm>", censored
    replicates as "|" marks, gid "km-censored:<arm>"); each arm's dosing of the drugs given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drugs = drugs_given(results)
    n = len(results)
    rows = 2 + (n if drugs else 0)
    fig = plt.figure(figsize=(11, 3.2 * 2 + 1.1 * (rows - 2)), layout="constrained")
    gs = fig.add_gridspec(rows, 1, height_ratios=[3, 3] + [1] * (rows - 2))
    ax0 = fig.add_subplot(gs[0])
    axk = fig.add_subplot(gs[1])
    outside = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)
    for k, (arm, reps) in enumerate(results.items()):
        col = f"C{k}"
        # runs may end at different times (stopped after progression): the mean is over the
        # replicates still running
        longest = max(reps, key=lambda s: len(s["day"]))
        day = longest["day"]
        padded = np.full((len(reps), len(day)), np.nan)
        for j, s in enumerate(reps):
            rel = relative_burden(c, s)
            padded[j, : len(rel)] = rel
            ax0.plot(s["day"], rel, color=col, alpha=0.25, lw=0.7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a day no replicate reached
            mean = np.nanmean(padded, axis=0)
        ax0.plot(day, mean, color=col, lw=2, label=arm)
        # Kaplan-Meier curve of time to progression
        ttp = [
            time_to_progression(s["day"], s["burden"], c.reference_day, c.progression_fraction)
            for s in reps
        ]
        times = np.array([t for t, _ in ttp])
        prog = np.array([p for _, p in ttp])
        tk, sk, _, _ = kaplan_meier(times, prog)
        xs = np.r_[0.0, tk, times.max()]
        ys = np.r_[1.0, sk, sk[-1] if sk.size else 1.0]
        axk.step(xs, ys, where="post", color=col, lw=2, label=arm, gid=f"km:{arm}")
        cens = times[~prog]
        if cens.size:
            # S at a censored time: the estimate after the last progression at or before it
            s_at = np.r_[1.0, sk][np.searchsorted(tk, cens, side="right")]
            axk.plot(cens, s_at, "|", color=col, ms=12, mew=1.5, gid=f"km-censored:{arm}")
    ax0.axhline(
        c.progression_fraction,
        color="k",
        ls="--",
        lw=1,
        gid="threshold",
        label=f"progression: {c.progression_fraction:g} x burden at day {c.reference_day:g}",
    )
    ax0.axvline(c.reference_day, color="k", ls=":", lw=0.8, label="reference day")
    ax0.set_yscale("log")
    ax0.set_ylabel(f"burden / burden at day {c.reference_day:g}")
    ax0.set_xlabel("time (days)")
    ax0.legend(**outside)
    ax0.set_title(f"{c.scenario.stem}: burden (mean and replicates) and the progression threshold")
    axk.set_ylim(-0.03, 1.05)
    axk.set_xlabel(f"days from day {c.reference_day:g} (reference)")
    axk.set_ylabel("not progressed")
    axk.set_title("Kaplan-Meier estimate of time to progression (| censored: run ended first)")
    axk.legend(**outside)
    for k, (arm, reps) in enumerate(results.items()):
        if not drugs:
            break
        ax = fig.add_subplot(gs[2 + k], sharex=ax0)
        s = max(reps, key=lambda s: len(s["day"]))
        for j, d in enumerate(drugs):
            key = f"plasma_{d}"
            if key not in s or not np.any(s[key] > 0):
                continue
            ax.fill_between(
                s["day"],
                j,
                j + 0.8,
                where=s[key] > 0,
                color=f"C{(j + 3) % 10}",
                alpha=0.6,
                step="post",
                label=d,
            )
        ax.set_yticks([])
        ax.set_ylim(0, len(drugs))
        ax.set_ylabel(arm, rotation=0, ha="right", va="center")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**outside)
        else:
            ax.text(0.5, 0.5, "no drug", transform=ax.transAxes, ha="center", va="center")
        if k == n - 1:
            ax.set_xlabel("time (days)")
    return fig


def figure(c: Comparison, results: dict, out: Path) -> Path:
    """Write :func:`figure_of` to ``out`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = figure_of(c, results)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
