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

``stop_days_after_progression`` ends each run that long after its own progression (the same
rule as above), which saves most of the time of arms that progress early; counts at
``times_days`` after a run ended are then shown as "ended" and the figure's mean curve covers
the replicates still running.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ScenarioError, UserError
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


def load_comparison(path) -> Comparison:
    """Read and check a comparison file (errors name the key, the value and what was expected)."""
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
    for name, spec in arms.items():
        if (
            not isinstance(spec, dict)
            or set(spec) - {"set"}
            or not isinstance(spec.get("set", []), list)
        ):
            raise ScenarioError(f"arms.{name}", spec, 'a table with set = ["key.path=value", ...]')
        out[name] = [str(x) for x in spec.get("set", [])]
    c = Comparison(scen, out)
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
    # every arm must make a valid scenario: check them all before running anything
    for name, sets in c.arms.items():
        try:
            load_scenario(c.scenario, overrides=sets)
        except ScenarioError as exc:
            raise UserError(f"arm '{name}': {exc}") from None
    return c


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


def run_comparison(c: Comparison, jobs: int = 1, echo=print):
    """Run every arm x replicate; print the table; return {arm: [series per replicate]}."""
    base_seed = load_scenario(c.scenario).run.seed
    from .simulation import run_series

    def stop():  # one per run: a ProgressionStop keeps its place in the rows
        return (
            None
            if c.stop_days_after_progression is None
            else ProgressionStop(
                c.reference_day, c.progression_fraction, c.stop_days_after_progression
            )
        )

    tasks = [
        (arm, k, (str(c.scenario), sets + [f"run.seed={base_seed + k}"], stop()))
        for arm, sets in c.arms.items()
        for k in range(c.replicates)
    ]
    series = run_series([t[2] for t in tasks], jobs)
    results: dict[str, list] = {}
    for (arm, _, _), s in zip(tasks, series):
        results.setdefault(arm, []).append(s)
    echo(table(c, results))
    if c.pairs and c.replicates > 1:
        echo("")
        echo(paired_table(c, results))
    if c.contrasts and c.replicates > 1:
        echo("")
        echo(contrast_table(c, results))
    return results


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


def table(c: Comparison, results: dict) -> str:
    drugs = sorted(
        {
            k[len("cumulative_dose_") :]
            for s in next(iter(results.values()))
            for k in s
            if k.startswith("cumulative_dose_")
        }
    )
    head = ["arm", "time to progression (d)"] + [f"dose {d} to progression" for d in drugs]
    for t in c.times_days:
        head += [f"P at {t:g} d", f"R at {t:g} d"]
    rows = []
    for arm, reps in results.items():
        found = [
            progression_index(s["day"], s["burden"], c.reference_day, c.progression_fraction)
            for s in reps
        ]
        days = [float(s["day"][i] - s["day"][i0]) for s, (i0, i, _) in zip(reps, found)]
        censored = sum(1 for _, _, p in found if not p)
        cell = _ms(days) + (f" ({censored} not progressed: >{min(days):.3g})" if censored else "")
        row = [arm, cell]
        # cumulative dose up to progression (to the end where censored): what each schedule
        # spent while it held the tumor, whatever the runs did after
        at = [i for _, i, _ in found]
        for d in drugs:
            row.append(_ms([s[f"cumulative_dose_{d}"][i] for s, i in zip(reps, at)]))
        for t in c.times_days:
            # a run stopped after its progression has no count at later times
            ended = sum(1 for s in reps if t > s["day"][-1] + 1e-9)
            if ended:
                row += [f"ended ({ended}/{len(reps)})"] * 2
                continue
            idx = [int(np.argmin(np.abs(s["day"] - t))) for s in reps]
            row.append(_ms([s["n_P"][i] for s, i in zip(reps, idx)]))
            row.append(_ms([s["n_R"][i] for s, i in zip(reps, idx)]))
        rows.append(row)
    title = (
        f"{len(results)} arms x {c.replicates} replicates of {c.scenario.name}; progression: "
        f"burden > {c.progression_fraction:g} x its value at day {c.reference_day:g}; "
        "mean ± sd over replicates"
    )
    if c.stop_days_after_progression is not None:
        title += f"; each run ends {c.stop_days_after_progression:g} d after it progressed"
    return _layout(title, head, rows)


def figure(c: Comparison, results: dict, out: Path) -> Path:
    """Burden curves per arm (replicates thin, mean thick) with each arm's dosing shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n + 1, 1, figsize=(10, 2.2 * (n + 1)), sharex=True)
    ax0 = axes[0]
    for k, (arm, reps) in enumerate(results.items()):
        col = f"C{k}"
        # runs may end at different times (stopped after progression): the mean is over the
        # replicates still running
        longest = max(reps, key=lambda s: len(s["day"]))
        day = longest["day"]
        padded = np.full((len(reps), len(day)), np.nan)
        for j, s in enumerate(reps):
            padded[j, : len(s["burden"])] = s["burden"]
        mean = np.nanmean(padded, axis=0)
        for s in reps:
            ax0.plot(s["day"], s["burden"], color=col, alpha=0.25, lw=0.7)
        ax0.plot(day, mean, color=col, lw=2, label=arm)
        ax = axes[k + 1]
        s = longest
        plasma = [key for key in s if key.startswith("plasma_")]
        for j, key in enumerate(plasma):
            on = s[key] > 0
            ax.fill_between(
                s["day"],
                j,
                j + 0.8,
                where=on,
                color=f"C{j + 3}",
                alpha=0.6,
                step="post",
                label=key[len("plasma_") :],
            )
        ax.set_yticks([])
        ax.set_ylabel(arm, rotation=0, ha="right", va="center")
        ax.legend(fontsize=7, loc="upper right")
    ax0.axvline(c.reference_day, color="k", ls=":", lw=0.8)
    ax0.set_ylabel("tumor cells")
    ax0.legend(fontsize=8)
    ax0.set_title(f"{c.scenario.stem}: burden (mean and replicates) and dosing per arm")
    axes[-1].set_xlabel("time (days)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
