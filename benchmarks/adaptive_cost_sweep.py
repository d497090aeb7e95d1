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
rule of ``tmesim compare``) or at the end (censored). Printed per regime: the start-day burden,
time to progression (TTP) of each arm, the paired gain in days with a 95 % t interval, the gain
as a percentage of continuous TTP with its interval, and how many replicates gained.

It is the script behind benchmarks/results/therapy-cost-sweep-*.txt (10 replicates: about 50
minutes on 2 CPU cores; the runs with the cost take most of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DISH = ROOT / "scenarios" / "therapy" / "nsclc_tki_dish.toml"
ADAPTIVE = ["drugs.erlotinib.controller.kind=adaptive", "drugs.erlotinib.controller.dose_uM=2.0",
            "drugs.erlotinib.controller.decide_every_h=1"]
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


def one_run(overrides: list[str], start: float, days: float) -> dict:
    """Run the dish to progression or to ``days``; TTP in days from ``start``."""
    from tmesim.scenario import load_scenario
    from tmesim.simulation import Model
    t0 = time.monotonic()
    sc = load_scenario(str(DISH), overrides=overrides + [f"run.duration_days={days}"])
    model = Model(sc)
    ref, ttp, day = None, None, 0.0
    for i in range(sc.n_steps + 1):
        if i:
            model.step()
        row = model.observe()
        day = row["time_min"] / 1440.0
        if ref is None and day >= start - 1e-9:
            ref = float(row["burden"])
        if ref is not None and row["burden"] > PROGRESSION * ref:
            ttp = day - start
            break
    return dict(ttp=ttp if ttp is not None else day - start, censored=ttp is None, ref=ref,
                wall_s=time.monotonic() - t0)


def tasks(regimes: dict, reps: int):
    for name, (start, extra) in regimes.items():
        for cost in (0.0, 0.5):
            for arm in ("continuous", "adaptive"):
                for k in range(reps):
                    ov = extra + [f"tumor.resistance_cost={cost}", f"run.seed={2017 + k}",
                                  f"drugs.erlotinib.schedule.start_day={start}"]
                    if arm == "adaptive":
                        ov += ADAPTIVE + [f"drugs.erlotinib.controller.start_day={start}"]
                    yield (name, cost, arm, k), ov, start


def table(results: dict, regimes, reps: int) -> str:
    from tmesim.compare import paired_stats  # the mean and 95 % t interval of tmesim compare
    head = ["regime", "cost", "burden at start", "continuous TTP (d)", "adaptive TTP (d)",
            "paired gain (d), 95 % CI", "gain, % of continuous TTP (95 % CI)", "gained",
            "censored"]
    rows = []
    for name in regimes:
        for cost in (0.0, 0.5):
            r = {a: [results[(name, cost, a, k)] for k in range(reps)]
                 for a in ("continuous", "adaptive")}
            ct = np.array([x["ttp"] for x in r["continuous"]])
            at = np.array([x["ttp"] for x in r["adaptive"]])
            g, rel = at - ct, 100 * (at - ct) / ct
            st, sr = paired_stats(g), paired_stats(rel)
            cens = sum(x["censored"] for a in r.values() for x in a)
            rows.append([name, f"{cost:g}", f"{np.mean([x['ref'] for x in r['continuous']]):.0f}",
                         f"{ct.mean():.1f} ± {ct.std(ddof=1):.1f}",
                         f"{at.mean():.1f} ± {at.std(ddof=1):.1f}",
                         f"{st['mean']:+.2f} [{st['lo']:+.2f}, {st['hi']:+.2f}]",
                         f"{sr['mean']:+.1f} [{sr['lo']:+.1f}, {sr['hi']:+.1f}]",
                         f"{int((g > 0).sum())}/{g.size}", str(cens)])
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
    results = {}
    t0 = time.monotonic()
    with ProcessPoolExecutor(a.jobs) as pool:
        futs = {pool.submit(one_run, ov, start, a.days): key for key, ov, start in todo}
        for f in as_completed(futs):
            results[futs[f]] = f.result()
    print(f"# python benchmarks/adaptive_cost_sweep.py --reps {a.reps} "
          f"({len(todo)} runs, {time.monotonic() - t0:.0f} s on {a.jobs} processes)")
    print(table(results, regimes, a.reps))
    if a.json:
        a.json.write_text(json.dumps([dict(zip(("regime", "cost", "arm", "rep"), k), **v)
                                      for k, v in results.items()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
