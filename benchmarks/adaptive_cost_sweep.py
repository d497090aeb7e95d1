#!/usr/bin/env python
"""Adaptive vs continuous erlotinib in the dish of scenarios/therapy/nsclc_tki_dish.toml, with and
without a fitness cost of resistance, over how full the dish is when treatment starts (and one
higher turnover): MODEL.md section 7 item 6, across regimes.

    python benchmarks/adaptive_cost_sweep.py                   # every regime, 10 replicates
    python benchmarks/adaptive_cost_sweep.py --reps 4 --only start1
    python benchmarks/adaptive_cost_sweep.py --json out.json   # also keep the per-run results

Each regime runs continuous maximum dose (2 uM from the start day) and adaptive therapy (Zhang et
al. 2017: treat until the burden falls below half its value on the start day, pause until it is
back to it, decided every hour) with replicate k of both arms on the same seed (2017 + k), so the
gains are paired. A run stops once its burden exceeds 1.2 x its start-day value (progression, the
rule of ``tmesim compare``: a :class:`tmesim.compare.ProgressionStop`) or at the end (censored).
The runs go through :func:`tmesim.simulation.run_series` (in memory, ``--jobs`` processes).
Printed per regime: the start-day burden, time to progression (TTP) of each arm, the paired gain
in days with a 95 % t interval, the gain as a percentage of continuous TTP with its interval, and
how many replicates gained.

It is the script behind benchmarks/results/therapy-cost-sweep-*.txt (10 replicates: about 50
minutes on 2 CPU cores; the runs with the cost take most of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DISH = ROOT / "scenarios" / "therapy" / "nsclc_tki_dish.toml"
ADAPTIVE = [
    "drugs.erlotinib.controller.kind=adaptive",
    "drugs.erlotinib.controller.dose_uM=2.0",
    "drugs.erlotinib.controller.decide_every_h=1",
]
PROGRESSION = 1.2

#: name: (treatment start day, extra overrides); the dish is seeded at 5 % and grows about 2x a
#: day, so the start day sets the confluence at treatment (about 7, 9, 13, 18 and 33 %)
REGIMES = {
    "start0.5": (0.5, []),
    "start1": (1.0, []),
    "start1.5": (1.5, []),
    "start2": (2.0, []),
    "start3": (3.0, []),
    "start1_turnover0.018": (1.0, ["tumor.death_per_h=0.018"]),
}


def run_task(overrides: list[str], start: float, days: float):
    """The :func:`tmesim.simulation.run_series` task of one run: the dish to progression (it
    stops at the progression row) or to ``days``."""
    from tmesim.compare import ProgressionStop

    return (
        str(DISH),
        overrides + [f"run.duration_days={days}"],
        ProgressionStop(start, PROGRESSION, 0.0),
    )


def outcome(series: dict, start: float) -> dict:
    """TTP in days from ``start`` (to the end of a censored run) and the start-day burden."""
    from tmesim.compare import progression_index

    day, burden = series["day"], series["burden"]
    i0, i, progressed = progression_index(day, burden, start, PROGRESSION)
    return dict(ttp=float(day[i] - day[i0]), censored=not progressed, ref=float(burden[i0]))


def tasks(regimes: dict, reps: int):
    for name, (start, extra) in regimes.items():
        for cost in (0.0, 0.5):
            for arm in ("continuous", "adaptive"):
                for k in range(reps):
                    ov = extra + [
                        f"tumor.resistance_cost={cost}",
                        f"run.seed={2017 + k}",
                        f"drugs.erlotinib.schedule.start_day={start}",
                    ]
                    if arm == "adaptive":
                        ov += ADAPTIVE + [f"drugs.erlotinib.controller.start_day={start}"]
                    yield (name, cost, arm, k), ov, start


def table(results: dict, regimes, reps: int) -> str:
    from tmesim.compare import paired_stats  # the mean and 95 % t interval of tmesim compare

    head = [
        "regime",
        "cost",
        "burden at start",
        "continuous TTP (d)",
        "adaptive TTP (d)",
        "paired gain (d), 95 % CI",
        "gain, % of continuous TTP (95 % CI)",
        "gained",
        "censored",
    ]
    rows = []
    for name in regimes:
        for cost in (0.0, 0.5):
            r = {
                a: [results[(name, cost, a, k)] for k in range(reps)]
                for a in ("continuous", "adaptive")
            }
            ct = np.array([x["ttp"] for x in r["continuous"]])
            at = np.array([x["ttp"] for x in r["adaptive"]])
            g, rel = at - ct, 100 * (at - ct) / ct
            st, sr = paired_stats(g), paired_stats(rel)
            cens = sum(x["censored"] for a in r.values() for x in a)
            rows.append(
                [
                    name,
                    f"{cost:g}",
                    f"{np.mean([x['ref'] for x in r['continuous']]):.0f}",
                    f"{ct.mean():.1f} ± {ct.std(ddof=1):.1f}",
                    f"{at.mean():.1f} ± {at.std(ddof=1):.1f}",
                    f"{st['mean']:+.2f} [{st['lo']:+.2f}, {st['hi']:+.2f}]",
                    f"{sr['mean']:+.1f} [{sr['lo']:+.1f}, {sr['hi']:+.1f}]",
                    f"{int((g > 0).sum())}/{g.size}",
                    str(cens),
                ]
            )
    w = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    out = ["  ".join(h.ljust(n) for h, n in zip(head, w)), "  ".join("-" * n for n in w)]
    out += ["  ".join(x.ljust(n) for x, n in zip(r, w)) for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--days", type=float, default=250.0, help="censoring horizon")
    ap.add_argument("--only", nargs="*", choices=sorted(REGIMES), help="regimes to run")
    ap.add_argument("--json", type=Path, help="also write the per-run results here")
    a = ap.parse_args(argv)
    regimes = {k: v for k, v in REGIMES.items() if not a.only or k in a.only}
    todo = list(tasks(regimes, a.reps))
    from tmesim.simulation import run_series

    t0 = time.monotonic()
    series = run_series([run_task(ov, start, a.days) for _, ov, start in todo], a.jobs)
    results = {key: outcome(s, start) for (key, _, start), s in zip(todo, series)}
    print(
        f"# python benchmarks/adaptive_cost_sweep.py --reps {a.reps} "
        f"({len(todo)} runs, {time.monotonic() - t0:.0f} s on {a.jobs} processes)"
    )
    print(table(results, regimes, a.reps))
    if a.json:
        a.json.write_text(
            json.dumps(
                [dict(zip(("regime", "cost", "arm", "rep"), k), **v) for k, v in results.items()],
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
