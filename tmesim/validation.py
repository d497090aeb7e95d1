"""Model validation: the published behaviours of MODEL.md section 7, run and judged.

Each experiment runs one or more arms (a scenario under scenarios/validation/ with overrides) and
prints, for each quantity, what the literature reports beside what tmesim produced, then whether
the behaviour holds by a stated criterion. ``tmesim validate-model`` runs them all (about
5 minutes on 2 CPU cores); ``--quick`` runs smaller dishes (about a quarter of the cells, for CI),
whose criteria are the same but whose figures are noisier.

Calibration: the persister rates of tmesim.scenario.TransitionConfig (basal and induced entry)
and the EGFR TKI's kill rate were chosen so that ``biphasic`` reproduces Sharma et al.'s 0.3 %
survivors of 9 days of erlotinib; the other experiments use the same defaults unchanged (apart
from what each scenario file states, e.g. the accelerated P -> R rate of resistance_exposure).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios" / "validation"

DISH_QUICK = ["grid.shape=[100, 100]", "init.tumor.size_um=[2000, 2000]"]


@dataclass
class Arm:
    label: str
    file: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Experiment:
    """One published behaviour: its arms and the judge of their time series.

    ``judge(series) -> (rows, passed)``: series maps arm label to {column: array, "day": array};
    rows are (quantity, published/expected, produced) strings.
    """

    name: str
    title: str
    source: str
    arms: list[Arm]
    judge: Callable
    quick: list[str] = field(default_factory=lambda: list(DISH_QUICK))


def at_day(s: dict, col: str, day: float) -> float:
    """The column's value at the step closest to ``day``."""
    i = int(np.argmin(np.abs(s["day"] - day)))
    return float(s[col][i])


def pct(x: float) -> str:
    return f"{100 * x:.2g} %"


# ----------------------------------------------------------------------------------- judges
def judge_biphasic(r):
    s = r["erlotinib"]
    n0 = at_day(s, "burden", 1.0)
    surv = at_day(s, "burden", 10.0) / n0
    early = -math.log(max(at_day(s, "burden", 3.0), 1) / n0) / 2.0
    late = -math.log(max(at_day(s, "burden", 10.0), 1) / max(at_day(s, "burden", 7.0), 1)) / 3.0
    pf = at_day(s, "persister_fraction", 10.0)
    rows = [
        ("cells surviving 9 days of 2 uM erlotinib", "about 0.3 % (Sharma 2010)", pct(surv)),
        (
            "decline rate, days 1-3 vs days 7-10",
            "fast, then a plateau",
            f"{early:.2f} /day vs {late:.2f} /day",
        ),
        ("persisters among survivors at day 10", "most", pct(pf)),
    ]
    ok = 0.001 <= surv <= 0.01 and early > 5 * max(late, 0.02) and pf >= 0.5
    return rows, ok


def judge_reversibility(r):
    rows, ok = [], True
    out = {}
    for label, s in r.items():
        s1 = at_day(s, "burden", 5.0) / at_day(s, "burden", 1.0)
        s2 = at_day(s, "burden", 28.0) / max(at_day(s, "burden", 24.0), 1)
        out[label] = (s1, s2, at_day(s, "persister_fraction", 24.0))
    s1, s2, pf = out["reverting"]
    _, c2, cpf = out["no reversion (control)"]
    base = at_day(r["reverting"], "persister_fraction", 1.0)
    rows.append(
        (
            "4-day survival: first challenge vs re-challenge",
            "the same (Sharma 2010: re-sensitised)",
            f"{pct(s1)} vs {pct(s2)}",
        )
    )
    rows.append(
        (
            "persister fraction before re-challenge (baseline before drug)",
            "back near baseline",
            f"{pct(pf)} ({pct(base)})",
        )
    )
    rows.append(
        (
            "control without reversion: re-challenge survival",
            "stays tolerant",
            f"{pct(c2)} (persisters {pct(cpf)})",
        )
    )
    ok = (1 / 3 <= s2 / s1 <= 3) and c2 > 10 * s2
    return rows, ok


def _ratio(r, label, ref, col, day):
    return at_day(r[label], col, day) / max(at_day(r[ref], col, day), 1)


def judge_cotreatment(r):
    k = _ratio(r, "erlotinib + KDM5i", "erlotinib", "n_P", 10.0)
    h = _ratio(r, "erlotinib + HDACi", "erlotinib", "n_P", 10.0)
    base = at_day(r["erlotinib"], "n_P", 10.0)
    rows = [
        ("persisters at day 10, erlotinib alone", "about 0.3 % of cells", f"{base:.0f}"),
        (
            "  with a KDM5 inhibitor, relative",
            "far fewer (Sharma 2010; Vinogradova 2016)",
            f"{k:.2f}x",
        ),
        ("  with an HDAC inhibitor, relative", "far fewer (Sharma 2010: TSA)", f"{h:.2f}x"),
    ]
    return rows, k < 0.3 and h < 0.3


def judge_vulnerability(r):
    g = _ratio(r, "erlotinib + GPX4i", "erlotinib", "n_P", 10.0)
    o = _ratio(r, "erlotinib + OXPHOSi", "erlotinib", "n_P", 10.0)
    gp = _ratio(r, "GPX4i alone", "no drug", "n_P", 4.0)
    gs = _ratio(r, "GPX4i alone", "no drug", "n_S", 4.0)
    rows = [
        (
            "persisters at day 10 with a GPX4 inhibitor, relative to erlotinib alone",
            "far fewer (Hangauer 2017)",
            f"{g:.2f}x",
        ),
        ("  with an OXPHOS inhibitor", "far fewer (persisters need OXPHOS)", f"{o:.2f}x"),
        (
            "GPX4 inhibitor alone, 3 days: persisters vs sensitive cells left (vs no drug)",
            "persisters killed preferentially",
            f"{gp:.2f}x vs {gs:.2f}x",
        ),
    ]
    return rows, g < 0.2 and o < 0.3 and gp < 0.3 and gs > 0.9


def near_far_survival(s, d0=1.0, d1=3.0):
    f0, f1 = at_day(s, "tumor_near_caf_fraction", d0), at_day(s, "tumor_near_caf_fraction", d1)
    return (f1 / f0) / ((1 - f1) / (1 - f0))


def judge_straussman(r):
    a = near_far_survival(r["erlotinib"])
    b = near_far_survival(r["erlotinib + MET inhibitor"])
    rows = [
        (
            "survival near CAFs / far from CAFs, 2 days of erlotinib",
            "higher near HGF-secreting CAFs (Straussman 2012)",
            f"{a:.2f}",
        ),
        ("  with a MET inhibitor added", "advantage removed (about 1)", f"{b:.2f}"),
        (
            "mean HGF at tumor cells (ng/mL)",
            "of the order of the MET half-maximum (5)",
            f"{at_day(r['erlotinib'], 'mean_hgf_tumor', 1.0):.2f}",
        ),
    ]
    return rows, a > 2.0 and b < 1.5


def judge_resistance(r):
    long_ = float(np.sum(r["12 days of erlotinib"]["became_R"]))
    short = float(np.sum(r["3 days of erlotinib"]["became_R"]))
    rows = [
        (
            "resistant founders (P -> R) by day 13: 12 vs 3 days of drug",
            "more after longer exposure",
            f"{long_:.0f} vs {short:.0f}",
        ),
        (
            "resistant cells at day 13: 12 vs 3 days of drug",
            "more after longer exposure",
            f"{at_day(r['12 days of erlotinib'], 'n_R', 13):.0f} vs "
            f"{at_day(r['3 days of erlotinib'], 'n_R', 13):.0f}",
        ),
    ]
    return rows, long_ >= 5 and long_ > 2 * short


def _hdac_arm():
    return [
        "drugs.kdm5i.schedule.kind=none",
        "drugs.hdaci.preset=hdac_inhibitor",
        "drugs.hdaci.transport=uniform",
        'drugs.hdaci.schedule={kind = "continuous", dose_uM = 1.0, start_day = 1}',
    ]


EXPERIMENTS = [
    Experiment(
        "biphasic",
        "Biphasic kill under continuous EGFR TKI",
        "Sharma et al. 2010",
        [Arm("erlotinib", "sharma_biphasic.toml")],
        judge_biphasic,
    ),
    Experiment(
        "reversibility",
        "Persisters regain sensitivity off drug",
        "Sharma et al. 2010",
        [
            Arm("reverting", "sharma_reversibility.toml"),
            Arm(
                "no reversion (control)",
                "sharma_reversibility.toml",
                ["tumor.transitions.exit_per_h=0"],
            ),
        ],
        judge_reversibility,
        quick=["grid.shape=[100, 100]", "init.tumor.size_um=[2000, 2000]"],
    ),
    Experiment(
        "cotreatment",
        "Epigenetic co-treatment leaves fewer persisters",
        "Sharma et al. 2010; Vinogradova et al. 2016",
        [
            Arm("erlotinib", "epigenetic_cotreatment.toml", ["drugs.kdm5i.schedule.kind=none"]),
            Arm("erlotinib + KDM5i", "epigenetic_cotreatment.toml"),
            Arm("erlotinib + HDACi", "epigenetic_cotreatment.toml", _hdac_arm()),
        ],
        judge_cotreatment,
    ),
    Experiment(
        "vulnerability",
        "GPX4 or OXPHOS inhibition kills persisters preferentially",
        "Hangauer et al. 2017",
        [
            Arm("erlotinib", "persister_vulnerability.toml", ["drugs.gpx4i.schedule.kind=none"]),
            Arm("erlotinib + GPX4i", "persister_vulnerability.toml"),
            Arm(
                "erlotinib + OXPHOSi",
                "persister_vulnerability.toml",
                ["drugs.gpx4i.preset=oxphos_inhibitor", "drugs.gpx4i.schedule.dose_uM=0.1"],
            ),
            Arm(
                "GPX4i alone",
                "persister_vulnerability.toml",
                ["drugs.erlotinib.schedule.kind=none", "run.duration_days=4"],
            ),
            Arm(
                "no drug",
                "persister_vulnerability.toml",
                [
                    "drugs.erlotinib.schedule.kind=none",
                    "drugs.gpx4i.schedule.kind=none",
                    "run.duration_days=4",
                ],
            ),
        ],
        judge_vulnerability,
    ),
    Experiment(
        "stroma",
        "HGF-secreting CAFs protect; a MET inhibitor removes it",
        "Straussman et al. 2012",
        [
            Arm("erlotinib", "straussman_caf.toml"),
            Arm(
                "erlotinib + MET inhibitor",
                "straussman_caf.toml",
                ["drugs.crizotinib.schedule.kind=continuous"],
            ),
        ],
        judge_straussman,
        quick=["grid.shape=[100, 100]", "init.tumor.size_um=[2000, 2000]", "init.caf.clusters=3"],
    ),
    Experiment(
        "resistance",
        "Longer exposure, more resistance from persisters",
        "Russo et al. 2022; Sharma et al. 2010",
        [
            Arm("12 days of erlotinib", "resistance_exposure.toml"),
            Arm(
                "3 days of erlotinib",
                "resistance_exposure.toml",
                ["drugs.erlotinib.schedule.stop_day=4"],
            ),
        ],
        judge_resistance,
    ),
]


def run_arm(path: str, overrides: list[str], stop=None) -> dict:
    """Run a scenario in memory on the CPU and return its time series {column: array, "day":
    array} (tmesim.simulation.run_scenario without a run file: the scenario's [run.stop] is not
    applied).

    ``stop``: None (run to the end), or a callable of the rows so far ({column: value} each)
    that returns True to end the run after the latest row."""
    from .simulation import run_in_memory

    return run_in_memory(path, overrides, stop)


def run(names=None, quick: bool = False, jobs: int = 1, echo=print) -> bool:
    """Run the experiments (all, or those named), print the comparison; True if all hold."""
    chosen = [e for e in EXPERIMENTS if not names or e.name in names]
    unknown = set(names or ()) - {e.name for e in EXPERIMENTS}
    if unknown:
        from .errors import UserError

        raise UserError(
            f"no validation experiment named {', '.join(sorted(unknown))}; "
            f"experiments: {', '.join(e.name for e in EXPERIMENTS)}"
        )
    tasks = [
        (e.name, a.label, str(SCENARIOS / a.file), a.overrides + (e.quick if quick else []))
        for e in chosen
        for a in e.arms
    ]
    t0 = time.monotonic()
    from .simulation import run_series

    series = run_series([(t[2], t[3], None) for t in tasks], jobs)
    results: dict[str, dict] = {}
    for (name, label, _, _), s in zip(tasks, series):
        results.setdefault(name, {})[label] = s
    all_ok = True
    for e in chosen:
        rows, ok = e.judge(results[e.name])
        all_ok &= ok
        echo(f"\n{e.name}: {e.title} ({e.source})")
        w = max(len(q) for q, _, _ in rows)
        for q, pub, prod in rows:
            echo(f"  {q:<{w}}  expected: {pub:<45}  tmesim: {prod}")
        echo(f"  -> {'HOLDS' if ok else 'DOES NOT HOLD'}")
    echo(
        f"\n{sum(1 for _ in chosen)} experiments, {len(tasks)} runs, "
        f"{time.monotonic() - t0:.0f} s{' (quick)' if quick else ''}: "
        f"{'all hold' if all_ok else 'some do not hold'}"
    )
    return all_ok
