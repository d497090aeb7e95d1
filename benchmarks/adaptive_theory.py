#!/usr/bin/env python
"""MODEL.md section 7, item 6 (a-e), measured: runs the adaptive-therapy comparisons of
scenarios/therapy/at_*.toml with ``tmesim compare`` and summarises them as a figure and a table.

    python benchmarks/adaptive_theory.py run        # every comparison not yet in OUT (resumable)
    python benchmarks/adaptive_theory.py summary    # figure + table from what OUT holds

``run`` calls ``tmesim compare FILE --replicates N --jobs 2 --set ...`` once per job of
:data:`JOBS` and keeps its printed tables (``OUT/<tag>.txt``, with the wall time and the command
at the end), CSV, JSON and figure; a job whose JSON exists is skipped, so an interrupted ``run``
goes on where it stopped. The cost x turnover grid is ``at_burden.toml`` under ``--set
tumor.resistance_cost=C --set tumor.death_per_h=D``. ``summary`` reads the JSON files and writes
``adaptive-theory.png`` and ``adaptive-theory.md`` into OUT: the gain of adaptive therapy as a
percentage of continuous time to progression (per replicate, paired by seed; mean and 95 % t
interval) against the burden at treatment start over the measured capacity, one panel per
turnover and one line per cost, beside the bands of item 6; and a line per statement a-e with
its verdict on the 95 % interval: "holds" (inside the band), "does not hold" (outside it) or
"not decided" (across its edge). ``run`` also grows the untreated lattice from 5 % filled
(``OUT/growth_*.csv``): its per-capita division rate against burden / capacity is the density
dependence that ``summary`` puts into the well-mixed model in place of the logistic 1 - N/K,
to show what of the lattice's result is that shape and what is space.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
THERAPY = ROOT / "scenarios" / "therapy"
OUT = ROOT / "benchmarks" / "results" / "adaptive"
B = math.log(2.0) / 16.0  # division rate of at_dish.toml, 1/h
COSTS = (0.0, 0.25, 0.5)
TURNOVERS = (0.0, 0.25, 0.5)  # death rate over the division rate
PUSH0 = "--set tumor.mechanics.push_reach_um=0"


def _grid_jobs() -> list[tuple[str, str, int, str]]:
    out = []
    for c in COSTS:
        for t in TURNOVERS:
            if c == 0 and t == 0:
                continue
            sets = f"--set tumor.resistance_cost={c:g} --set tumor.death_per_h={round(t * B, 5):g}"
            out.append((f"burden_c{round(100 * c)}_t{round(100 * t)}", "at_burden.toml", 4, sets))
    return out


#: oxygen not taken up: cells compete for space alone (the lattice of a dish in medium)
SPACE_ONLY = (
    "--set fields.oxygen.uptake_per_min.tumor=0 --set fields.oxygen.uptake_per_min.persister=0"
)

#: (tag, comparison file, replicates, extra arguments), in the order they run
JOBS: list[tuple[str, str, int, str]] = [
    ("burden_c0_t0", "at_burden.toml", 8, ""),
    ("space", "at_space.toml", 8, ""),
    ("cost_near", "at_cost_near.toml", 8, ""),
    ("turnover_far", "at_turnover_far.toml", 8, ""),
    ("resistant", "at_resistant.toml", 6, ""),
    (
        "turnover_far_t50",
        "at_turnover_far.toml",
        8,
        "--arms continuous_cost25,adaptive_cost25,continuous_cost25_turnover50,"
        "adaptive_cost25_turnover50",
    ),
    ("burden_c0_t0_push0", "at_burden.toml", 8, PUSH0),
    ("burden_c0_t0_spaceonly", "at_burden.toml", 8, SPACE_ONLY),
    ("space_spaceonly", "at_space.toml", 4, SPACE_ONLY),
    # the 0.1 % arms again, for longer: run when the file's runs lasted 40 days (2 of 6
    # adaptive runs had not progressed by then; the same seeds give the same runs up to day 40)
    (
        "resistant_r01_long",
        "at_resistant.toml",
        6,
        "--arms continuous_r01,adaptive_r01 --set run.duration_days=80",
    ),
    ("space_push0", "at_space.toml", 4, PUSH0),
    ("cost_near_push0", "at_cost_near.toml", 4, PUSH0),
    ("turnover_far_push0", "at_turnover_far.toml", 4, PUSH0),
    ("resistant_push0", "at_resistant.toml", 4, PUSH0),
    # at push 0 no adaptive run at 0.1 % progressed within 60 days: the file's 120
    (
        "resistant_r01_long_push0",
        "at_resistant.toml",
        4,
        "--arms continuous_r01,adaptive_r01 " + PUSH0,
    ),
    *_grid_jobs(),
]


#: the untreated lattice grown from 5 % filled, for its density dependence (what the logistic
#: 1 - N/K of the well-mixed model stands for): (tag, extra arguments)
GROWTH = [("default", ""), ("spaceonly", SPACE_ONLY)]
GROWTH_SETS = (
    "--set drugs.erlotinib.schedule.kind=none --set init.tumor.fill_fraction=0.05 "
    "--set init.tumor.resistant_fraction=0 --set run.duration_days=25"
)


def growth_runs(out: Path) -> None:
    """``OUT/growth_<tag>.csv`` (time_day, burden) of each :data:`GROWTH` run, if missing."""
    import tmesim

    for tag, sets in GROWTH:
        csv = out / f"growth_{tag}.csv"
        if csv.exists():
            continue
        h5 = out / f"growth_{tag}.h5"
        cmd = (
            f"{sys.executable} -m tmesim run {THERAPY / 'at_lattice.toml'} -o {h5} --overwrite "
            f"-q {GROWTH_SETS} {sets}"
        )
        t0 = time.time()
        subprocess.run(cmd.split(), check=True)
        with tmesim.open_run(h5) as ds:
            t = ds["time_min"].values / 1440.0
            n = ds["burden"].values
        rows = "\n".join(f"{a:.5f},{int(b)}" for a, b in zip(t, n))
        csv.write_text(
            f"# wall {time.time() - t0:.0f} s: tmesim run scenarios/therapy/at_lattice.toml "
            f"{GROWTH_SETS} {sets}\ntime_day,burden\n{rows}\n",
            encoding="utf-8",
        )
        for f in (h5, h5.with_suffix(".xdmf")):
            f.unlink(missing_ok=True)
        print(f"growth_{tag}: ok ({time.time() - t0:.0f} s)")


def growth_curve(out: Path, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(burden / capacity, per-capita division rate / b) of the untreated run ``tag``, over
    24 h windows every 12 h up to 0.97 of capacity (the capacity: its mean burden, days
    15-25)."""
    p = out / f"growth_{tag}.csv"
    if not p.exists():
        return None
    t, n = np.loadtxt(p, delimiter=",", comments="#", skiprows=2, unpack=True)
    cap = n[t >= 15].mean()
    w = int(round(1.0 / (t[1] - t[0])))
    f, r = [], []
    for i in range(0, len(t) - w, w // 2):
        x = 0.5 * (n[i] + n[i + w]) / cap
        if x > 0.97:
            break
        f.append(x)
        r.append(math.log(n[i + w] / n[i]) / (t[i + w] - t[i]) / (B * 24))
    return np.array(f), np.array(r)


def measured_room(out: Path, tag: str):
    """:func:`lv_ttp`'s ``room`` from :func:`growth_curve`: linear between its points, its
    first value below them, falling linearly to 0 at capacity above them."""
    fr = growth_curve(out, tag)
    if fr is None:
        return None
    f = np.concatenate([[0.0], fr[0], [1.0]])
    r = np.concatenate([[fr[1][0]], fr[1], [0.0]])
    return lambda N: float(np.interp(N, f, r))


def run(out: Path, jobs: int, only: list[str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not only:
        growth_runs(out)
    for tag, file, reps, sets in JOBS:
        if (out / f"{tag}.json").exists() or (only and tag not in only):
            continue
        cmd = (
            f"{sys.executable} -m tmesim compare {THERAPY / file} --replicates {reps} "
            f"--jobs {jobs} --no-keep-runs --figure {out / tag}.png -q {sets}"
        )
        t0 = time.time()
        done = subprocess.run(cmd.split(), capture_output=True, text=True)
        text = done.stdout + done.stderr
        text += (
            f"# wall {time.time() - t0:.0f} s, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
            f", {jobs} jobs: tmesim compare scenarios/therapy/{file} --replicates {reps} "
            f"--jobs {jobs} {sets}\n"
        )
        (out / f"{tag}.txt").write_text(text, encoding="utf-8")
        print(f"{tag}: {'ok' if done.returncode == 0 else 'FAILED'} ({time.time() - t0:.0f} s)")


# ------------------------------------------------------------- the well-mixed reference
def lv_ttp(
    f0: float,
    cost: float,
    turnover: float,
    adaptive: bool,
    r0: float = 0.01,
    dose_uM: float = 2.0,
    days: float = 400.0,
    r_at_day: float | None = None,
    room=None,
) -> float:
    """Time to progression (days) of Strobl et al. 2021's Lotka-Volterra competition with
    at_dish.toml's own rates: sensitive cells divide at b (1 - N/K) (1 - E) and die at
    kill E + d, resistant ones divide at (1 - cost) b (1 - N/K) and die at d, with
    E = hill(2 uM; emax 1, EC50 0.06 uM, h 1.5) of the egfr_tki preset (its kill_S rate and
    block_division), b = ln 2 / 16 h, d = turnover b, K = 1; the start is f0 of the untreated
    steady burden 1 - d / b, with r0 of it resistant. AT50 decided every hour as the
    controller does; progression: N > 1.2 N(0). Persisters and space are left out: this is
    what the same rates give when every cell competes with every other. With ``r_at_day``,
    returns instead the resistant cells at that day over those at the start. ``room``, a
    function of the burden N (K = 1) giving the division rate over b, replaces the
    logistic 1 - N/K (e.g. :func:`measured_room`, tmesim's own density dependence)."""
    from tmesim.drugs import hill

    b, dt = B, 0.5  # 1/h; h
    d = turnover * b
    e = float(hill(dose_uM, 1.0, 0.06, 1.5))
    kill = 0.06 * e
    if room is None:
        n0 = f0 * (1.0 - d / b)
    else:  # the steady burden: where division at room(N) b balances death
        lo, hi = 0.0, 1.0
        for _ in range(60):
            lo, hi = ((lo + hi) / 2, hi) if room((lo + hi) / 2) > d / b else (lo, (lo + hi) / 2)
        n0 = f0 * lo
    S, R = n0 * (1.0 - r0), n0 * r0
    on = True

    def rhs(S, R, level):
        g = 1.0 - S - R if room is None else room(S + R)
        dS = b * g * (1.0 - level * e) * S - (level * kill + d) * S
        dR = (1.0 - cost) * b * g * R - d * R
        return dS, dR

    steps = int(days * 24 / dt)
    for i in range(steps):
        t = i * dt
        N = S + R
        if r_at_day is not None:
            if t >= r_at_day * 24.0 - 1e-9:
                return R / (n0 * r0)
        elif 1.2 * n0 < N:
            return t / 24.0
        if adaptive and i % int(1 / dt) == 0:
            if on and 0.5 * n0 >= N:
                on = False
            elif not on and n0 <= N:
                on = True
        level = 1.0 if on else 0.0
        # classical Runge-Kutta over the half hour
        k1 = rhs(S, R, level)
        k2 = rhs(S + dt / 2 * k1[0], R + dt / 2 * k1[1], level)
        k3 = rhs(S + dt / 2 * k2[0], R + dt / 2 * k2[1], level)
        k4 = rhs(S + dt * k3[0], R + dt * k3[1], level)
        S += dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        R += dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return math.inf


def lv_gain(f0: float, cost: float, turnover: float, r0: float = 0.01, room=None) -> float:
    """AT50's gain over continuous dosing, % of continuous TTP, in :func:`lv_ttp`."""
    tc = lv_ttp(f0, cost, turnover, False, r0, room=room)
    ta = lv_ttp(f0, cost, turnover, True, r0, room=room)
    return 100.0 * (ta - tc) / tc if math.isfinite(tc) else math.nan


# ---------------------------------------------------------------------------------- summary
def load(out: Path, tag: str) -> dict | None:
    p = out / f"{tag}.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def _ttps(doc: dict, arm: str) -> tuple[np.ndarray, np.ndarray]:
    row = next(a for a in doc["arms"] if a["arm"] == arm)
    reps = row["replicate_values"]
    return (
        np.array([r["ttp_days"] for r in reps]),
        np.array([r["progressed"] for r in reps]),
    )


def percent_gains(doc: dict, arm: str, ref: str) -> tuple[np.ndarray, bool]:
    """Per replicate: 100 (TTP_arm - TTP_ref) / TTP_ref, and whether any run was censored
    (then the values are bounds)."""
    ta, pa = _ttps(doc, arm)
    tb, pb = _ttps(doc, ref)
    return 100.0 * (ta - tb) / tb, bool((~pa | ~pb).any())


def interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and two-sided 95 % Student t interval."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - h, m + h


def _fmt(m, lo, hi, unit="%") -> str:
    return f"{m:+.1f}{unit} [{lo:+.1f}, {hi:+.1f}]"


def band_verdict(lo: float, hi: float, low=-math.inf, high=math.inf) -> str:
    """The 95 % interval [lo, hi] against the band [low, high]."""
    if lo >= low and hi <= high:
        return "holds"
    if hi < low or lo > high:
        return "does not hold"
    return "not decided"


NOT_MEASURED = "not measured (runs did not progress)"
CENSORED = " (censored runs: bounds)"


def combined(verdicts: list[str]) -> str:
    """One verdict from a statement's parts: holds if all hold, does not if any does not."""
    if all(x == "holds" for x in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "not decided"


def start_fraction(doc: dict, arm: str) -> float:
    return float(doc["start_over_capacity"][arm]["mean"])


def lv_text(statement: str) -> str:
    """What :func:`lv_gain` (the same rates, well mixed) gives for a statement."""
    if statement == "a":
        g = [lv_gain(f, 0, 0) for f in (0.25, 0.5, 0.75)]
        return f"0.25: {g[0]:+.1f} %; 0.5: {g[1]:+.1f} %; 0.75: {g[2]:+.1f} %"
    if statement == "b":
        g = [lv_gain(0.75, c, 0) for c in COSTS]
        return f"no cost {g[0]:+.1f} %; cost 0.25 {g[1] - g[0]:+.1f} pt; 0.5 {g[2] - g[0]:+.1f} pt"
    if statement == "c":
        g0, gc = lv_gain(0.25, 0, 0), lv_gain(0.25, 0.25, 0)
        g25, g50 = lv_gain(0.25, 0.25, 0.25), lv_gain(0.25, 0.25, 0.5)
        return (
            f"cost alone {gc - g0:+.1f} pt; cost 0.25: {gc:+.1f} %, turnover 0.25 b "
            f"{g25:+.1f} % ({g25 / gc:.2g}x), 0.5 b {g50:+.1f} % ({g50 / gc:.2g}x)"
        )
    if statement == "d":
        return (
            f"0.1 %: {lv_gain(0.75, 0, 0, 0.001):+.1f} %; 1 %: {lv_gain(0.75, 0, 0, 0.01):+.1f} %"
        )
    return "(no space in it)"


def _no_cost_turnover(out: Path, suffix: str) -> str:
    """c without a cost, from the grid (at_burden.toml, 0.25 of the lattice): the gain with
    turnover over the gain without on the same seeds (the grid's first replicates)."""
    base = load(out, "burden_c0_t0" + suffix)
    if base is None:
        return ""
    g0, _ = percent_gains(base, "adaptive_25", "continuous_25")
    parts = []
    for t in (25, 50):
        doc = load(out, f"burden_c0_t{t}" + suffix)
        if doc is None or not _ttps(doc, "continuous_25")[1].all():
            continue
        g, cens = percent_gains(doc, "adaptive_25", "continuous_25")
        x = interval(g - 2 * g0[: g.size])
        parts.append(
            f"{t / 100:g} b (from {start_fraction(doc, 'continuous_25'):.2f} of its capacity) "
            f"{'>= ' if cens else ''}{_fmt(*interval(g))} "
            f"({'>= ' if cens else ''}{g.mean() / g0[: g.size].mean():.2g}x; minus twice the "
            f"gain without: {_fmt(*x, unit=' pt')}, n = {g.size})"
        )
    return f"; without a cost (at_burden.toml): turnover {', '.join(parts)}" if parts else ""


def statements(out: Path, suffix: str = "") -> list[tuple[str, str, str]]:
    """(statement, measured, verdict) for a-e from the comparisons (``suffix`` "_push0": the
    runs with a push reach of 0; "_spaceonly": without oxygen uptake)."""
    rows: list[tuple[str, str, str]] = []

    def gain(doc, a, r):
        g, cens = percent_gains(doc, a, r)
        return g, interval(g), cens

    doc = load(out, "burden_c0_t0" + suffix)
    if doc:
        g25, i25, ca = gain(doc, "adaptive_25", "continuous_25")
        g75, i75, cb = gain(doc, "adaptive_75", "continuous_75")
        _, i50, cc = gain(doc, "adaptive_50", "continuous_50")
        d = interval(g75 - g25)
        v = [band_verdict(i25[1], i25[2], high=10), band_verdict(i75[1], i75[2], low=25)]
        verdict = combined(v)
        rows.append(
            (
                "a. gain <= 10 % at <= 0.3 of capacity, >= 25 % at >= 0.7 (no cost, no turnover)",
                f"{start_fraction(doc, 'continuous_25'):.2f}: {_fmt(*i25)}; "
                f"{start_fraction(doc, 'continuous_50'):.2f}: {_fmt(*i50)}; "
                f"{start_fraction(doc, 'continuous_75'):.2f}: {_fmt(*i75)}; "
                f"0.75 - 0.25: {_fmt(*d, unit=' pt')}" + (CENSORED if ca or cb or cc else ""),
                f"{verdict} (at 0.25: {v[0]}; at 0.75: {v[1]})",
            )
        )
    doc = load(out, "cost_near" + suffix)
    if doc:
        g0, i0, c0 = gain(doc, "adaptive", "continuous")
        g25, _, c25 = gain(doc, "adaptive_cost25", "continuous_cost25")
        g50, _, c50 = gain(doc, "adaptive_cost50", "continuous_cost50")
        d25, d50 = interval(g25 - g0), interval(g50 - g0)
        v = [
            band_verdict(i0[1], i0[2], low=25),
            band_verdict(d25[1], d25[2], -15, 15),
            band_verdict(d50[1], d50[2], -15, 15),
        ]
        # a run that did not progress: its gain is a bound, not a value to test a band with
        v = [NOT_MEASURED if cens else x for x, cens in zip(v, (c0, c0 or c25, c0 or c50))]
        verdict = combined(v)
        rows.append(
            (
                "b. near capacity: gain >= 25 % without a cost; cost <= 0.5 changes it by "
                "<= ~15 points",
                f"{start_fraction(doc, 'continuous'):.2f} of capacity: no cost {_fmt(*i0)}; "
                f"cost 0.25 - none {_fmt(*d25, unit=' pt')}; cost 0.5 - none "
                f"{_fmt(*d50, unit=' pt')}" + (CENSORED if c0 or c25 or c50 else ""),
                f"{verdict} (gain: {v[0]}; cost 0.25: {v[1]}; cost 0.5: {v[2]})",
            )
        )
    doc = load(out, "turnover_far" + suffix)
    if doc:
        g0, _, _ = gain(doc, "adaptive", "continuous")
        gc, ic, _ = gain(doc, "adaptive_cost25", "continuous_cost25")
        g25, i25, c25 = gain(doc, "adaptive_cost25_turnover25", "continuous_cost25_turnover25")
        # the 100-day runs of the turnover-0.5 arms where they ran (40 days before)
        d50 = load(out, "turnover_far_t50" + suffix) or doc
        g50, i50, c50 = gain(d50, "adaptive_cost25_turnover50", "continuous_cost25_turnover50")
        dc = interval(gc - g0)
        # "at least doubles": the gain with turnover minus twice the gain without, > 0
        x25, x50 = interval(g25 - 2 * gc), interval(g50 - 2 * gc)
        v = [
            band_verdict(dc[1], dc[2], high=10),
            NOT_MEASURED if c25 else band_verdict(x25[1], x25[2], low=0),
            NOT_MEASURED if c50 else band_verdict(x50[1], x50[2], low=0),
        ]
        verdict = combined(v)
        none50 = not _ttps(d50, "continuous_cost25_turnover50")[1].any()
        cens = CENSORED if (c25 or (c50 and not none50)) else ""
        rows.append(
            (
                "c. far from capacity: a cost alone adds < 10 points without turnover; "
                "turnover >= 0.25 b at least doubles the gain at equal cost",
                f"{start_fraction(doc, 'continuous'):.2f} of capacity: cost 0.25 - none "
                f"{_fmt(*dc, unit=' pt')}; cost 0.25: {_fmt(*ic)}, with turnover 0.25 b "
                f"{_fmt(*i25)} ({i25[0] / ic[0]:.2g}x), 0.5 b "
                + (
                    f"{_fmt(*i50)} ({i50[0] / ic[0]:.2g}x)"
                    if not none50
                    else f"no run progressed in "
                    f"{_ttps(d50, 'continuous_cost25_turnover50')[0].max():.0f} days"
                )
                + cens
                + _no_cost_turnover(out, suffix),
                f"{verdict} (cost alone: {v[0]}; doubling at 0.25 b: {v[1]}; at 0.5 b: {v[2]})",
            )
        )
    doc = load(out, "resistant" + suffix)
    if doc:
        # the same seeds run for 80 days where they ran (some did not progress in 40)
        d01 = load(out, "resistant_r01_long" + suffix) or doc
        g01, i01, c01 = gain(d01, "adaptive_r01", "continuous_r01")
        g1, i1, _ = gain(doc, "adaptive_r1", "continuous_r1")
        d = interval(g01 - g1)
        rows.append(
            (
                "d. the gain falls when the resistant fraction rises from 0.1 % to 1 %",
                f"{start_fraction(doc, 'continuous_r01'):.2f} of capacity: 0.1 % {_fmt(*i01)}, "
                f"1 % {_fmt(*i1)}; difference {_fmt(*d, unit=' pt')}"
                + (" (0.1 %: runs that did not progress, bounds)" if c01 else ""),
                band_verdict(d[1], d[2], low=0),
            )
        )
    doc = load(out, "space" + suffix)
    if doc:
        gc, ic, ca = gain(doc, "adaptive_compact", "continuous_compact")
        gs, is_, cb = gain(doc, "adaptive_spread", "continuous_spread")
        gi, ii, cc = gain(doc, "adaptive_interior", "continuous_interior")
        ge, ie, cd = gain(doc, "adaptive_edge", "continuous_edge")
        d1, d2 = interval(gc - gs), interval(gi - ge)
        v = [band_verdict(d1[1], d1[2], low=0), band_verdict(d2[1], d2[2], low=0)]
        verdict = combined(v)
        rows.append(
            (
                "e. compact gains more than spread; the gain falls when resistant cells have "
                "more free space",
                f"compact {_fmt(*ic)}, spread {_fmt(*is_)}, difference {_fmt(*d1, unit=' pt')}; "
                f"resistant inside {_fmt(*ii)}, at the edge {_fmt(*ie)}, difference "
                f"{_fmt(*d2, unit=' pt')}" + (CENSORED if ca or cb or cc or cd else ""),
                f"{verdict} (compact vs spread: {v[0]}; inside vs edge: {v[1]})",
            )
        )
    return rows


#: the statement files' arms on the cost x turnover x burden grid: (file tag, adaptive arm,
#: continuous arm, cost, turnover, fill fraction)
STATEMENT_POINTS = [
    ("cost_near", "adaptive", "continuous", 0.0, 0.0, "75"),
    ("cost_near", "adaptive_cost25", "continuous_cost25", 0.25, 0.0, "75"),
    ("cost_near", "adaptive_cost50", "continuous_cost50", 0.5, 0.0, "75"),
    ("turnover_far", "adaptive", "continuous", 0.0, 0.0, "25"),
    ("turnover_far", "adaptive_cost25", "continuous_cost25", 0.25, 0.0, "25"),
    (
        "turnover_far",
        "adaptive_cost25_turnover25",
        "continuous_cost25_turnover25",
        0.25,
        0.25,
        "25",
    ),
    ("turnover_far", "adaptive_cost25_turnover50", "continuous_cost25_turnover50", 0.25, 0.5, "25"),
    (
        "turnover_far_t50",
        "adaptive_cost25_turnover50",
        "continuous_cost25_turnover50",
        0.25,
        0.5,
        "25",
    ),
]


def grid_points(out: Path) -> dict[tuple[float, float], list[tuple[float, tuple, int]]]:
    """{(cost, turnover): [(burden / capacity, (mean, lo, hi) % gain, replicates, censored),
    ...]} by burden: at_burden.toml's runs under each cost and turnover, and the statement
    files' arms that lie on the grid (where both ran: the one without censored runs, then the
    one with more replicates). Censored: some run did not progress, the gain is a lower
    bound."""
    got: dict[tuple[float, float, str], tuple[float, tuple, int, bool]] = {}

    def put(key, doc, arm, ref):
        g, censored = percent_gains(doc, arm, ref)
        if not _ttps(doc, ref)[1].all():  # the reference did not progress: no gain, no bound
            return
        old = got.get(key)
        # a source whose runs all progressed beats one with bounds; then more replicates; ties:
        # the later source
        if old is None or (old[3], -old[2]) >= (censored, -g.size):
            got[key] = (start_fraction(doc, ref), interval(g), g.size, censored)

    for c in COSTS:
        for t in TURNOVERS:
            doc = load(out, f"burden_c{round(100 * c)}_t{round(100 * t)}")
            if doc is not None:
                for f in ("25", "50", "75"):
                    put((c, t, f), doc, f"adaptive_{f}", f"continuous_{f}")
    for tag, arm, ref, c, t, f in STATEMENT_POINTS:
        doc = load(out, tag)
        if doc is not None:
            put((c, t, f), doc, arm, ref)
    pts: dict[tuple[float, float], list] = {}
    for (c, t, _f), v in sorted(got.items()):
        pts.setdefault((c, t), []).append(v)
    return pts


def figure(out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = grid_points(out)
    room = measured_room(out, "default")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8), sharey=True)
    for ax, t in zip(axes, TURNOVERS):
        ax.fill_between([0.0, 0.3], -100, 10, color="tab:green", alpha=0.12, lw=0)
        ax.fill_between([0.7, 1.0], 25, 1000, color="tab:orange", alpha=0.12, lw=0)
        for c, color in zip(COSTS, ("tab:blue", "tab:purple", "tab:red")):
            if (c, t) not in pts:
                continue
            x = np.array([p[0] for p in pts[c, t]])
            m = np.array([p[1][0] for p in pts[c, t]])
            lo = np.array([p[1][1] for p in pts[c, t]])
            hi = np.array([p[1][2] for p in pts[c, t]])
            cens = np.array([p[3] for p in pts[c, t]])
            ax.errorbar(
                x + (c - 0.25) * 0.04,
                m,
                yerr=[m - lo, hi - m],
                color=color,
                marker="o",
                capsize=3,
                label=f"cost {c:g}",
            )
            # lower bounds (runs that did not progress): hollow
            ax.plot(x[cens] + (c - 0.25) * 0.04, m[cens], "o", color="w", ms=3.5, zorder=5)
        for c, color in zip(COSTS, ("tab:blue", "tab:purple", "tab:red")):
            fs = np.linspace(0.1, 0.9, 17)
            ax.plot(
                fs,
                [lv_gain(f, c, t) for f in fs],
                color=color,
                ls="--",
                lw=1,
                label=f"well mixed, cost {c:g}" if t == 0 else None,
            )
        if t == 0 and room is not None:
            fs = np.linspace(0.1, 0.9, 17)
            ax.plot(
                fs,
                [lv_gain(f, 0, 0, room=room) for f in fs],
                color="k",
                ls=":",
                lw=1.2,
                label="well mixed, cost 0, tmesim's density dependence",
            )
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlim(0, 1)
        ax.set_title(f"turnover {t:g} x division rate")
        ax.set_xlabel("burden at treatment start / capacity")
    axes[0].set_ylabel("adaptive gain, % of continuous TTP (95 % CI)")
    ymax = max([30.0] + [p[1][2] for row in pts.values() for p in row if math.isfinite(p[1][2])])
    axes[0].set_ylim(
        min(-5.0, *[p[1][1] for r in pts.values() for p in r if math.isfinite(p[1][1])]), ymax * 1.1
    )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(
        "AT50 vs continuous erlotinib in at_lattice.toml (green: item 6a's <= 10 % band at "
        "<= 0.3 of capacity; orange: >= 25 % at >= 0.7; hollow: lower bounds)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(out: Path) -> str:
    rooms = {tag: measured_room(out, tag) for tag, _ in GROWTH}
    lines = ["# MODEL.md section 7, item 6 (a-e) in tmesim", ""]
    for suffix, title in (
        ("", "the default model: tissue with oxygen, push reach 60 um"),
        ("_push0", "push reach 0 (the strict on-lattice comparison)"),
        ("_spaceonly", "space alone (oxygen not taken up, as in a dish)"),
    ):
        rows = statements(out, suffix)
        if not rows:
            continue
        lines += [
            f"## {title}",
            "",
            "| statement | measured (gain, % of continuous TTP, 95 % CI) | verdict "
            "| the same rates well mixed (Lotka-Volterra) |",
            "|---|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} | {lv_text(a[0])} |" for a, b, c in rows]
        lines.append("")
    pts = grid_points(out)
    if pts:
        lines += [
            "## cost x turnover x burden (at_burden.toml)",
            "",
            "| cost | turnover | "
            + " | ".join(["burden/capacity: gain"] * 3)
            + " | Lotka-Volterra, same rates, at 0.25 / 0.5 / 0.75 |",
            "|---|---|---|---|---|---|",
        ]
        for (c, t), row in sorted(pts.items()):
            cells = [
                f"{x:.2f}: {'>= ' if cens else ''}{_fmt(*i)} (n = {n})" for x, i, n, cens in row
            ]
            cells += [""] * (3 - len(cells))
            lv = " / ".join(
                f"{g:+.1f} %" if math.isfinite(g) else "no progression"
                for g in (lv_gain(f, c, t) for f in (0.25, 0.5, 0.75))
            )
            lines.append(f"| {c:g} | {t:g} | " + " | ".join(cells) + f" | {lv} |")
        lines.append("")
    mech = []
    for tag, title in (
        ("burden_c0_t0", "the default model (oxygen and space)"),
        ("burden_c0_t0_push0", "push reach 0"),
        ("burden_c0_t0_spaceonly", "space alone"),
    ):
        doc = load(out, tag)
        if doc is None:
            continue
        counts = {a["arm"]: a["counts"]["5"]["R"]["mean"] for a in doc["arms"]}
        mech.append(
            f"| {title} | "
            + " | ".join(
                f"{counts[f'adaptive_{f}'] / counts[f'continuous_{f}']:.2f}"
                for f in ("25", "50", "75")
            )
            + " |"
        )
    if mech:
        lv = " | ".join(
            f"{lv_ttp(f, 0, 0, True, r_at_day=5) / lv_ttp(f, 0, 0, False, r_at_day=5):.2f}"
            for f in (0.25, 0.5, 0.75)
        )
        room = rooms["default"]
        if room is not None:
            mech.append(
                "| well mixed, tmesim's density dependence | "
                + " | ".join(
                    f"{lv_ttp(f, 0, 0, True, r_at_day=5, room=room) / lv_c:.2f}"
                    for f in (0.25, 0.5, 0.75)
                    for lv_c in [lv_ttp(f, 0, 0, False, r_at_day=5, room=room)]
                )
                + " |"
            )
        lines += [
            "## why: resistant cells at day 5, adaptive over continuous (no cost, no turnover)",
            "",
            "How much adaptive therapy's sensitive cells hold the resistant ones back: 1 is not "
            "at all (mean of the replicates' counts; the well-mixed model, the same rates).",
            "",
            "| | 0.25 of capacity | 0.5 | 0.75 |",
            "|---|---|---|---|",
            *mech,
            f"| well mixed (Lotka-Volterra) | {lv} |",
            "",
        ]
    if all(r is not None for r in rooms.values()):
        fs = (0.1, 0.25, 0.5, 0.75, 0.9)
        lines += [
            "## why: tmesim's density dependence against the logistic one",
            "",
            "The untreated lattice grown from 5 % filled (`growth_*.csv`): its per-capita "
            "division rate over b against burden / capacity (24 h windows), and Strobl et al.'s "
            "model run with that density dependence in place of 1 - N/K (every cell still "
            "competing with every other), no cost, no turnover.",
            "",
            "| density dependence | "
            + " | ".join(f"{x:g}" for x in fs)
            + " | well-mixed gain at 0.25 / 0.5 / 0.75 |",
            "|---|" + "---|" * len(fs) + "---|",
            "| logistic 1 - N/K (Lotka-Volterra) | "
            + " | ".join(f"{1 - x:.2f}" for x in fs)
            + " | "
            + " / ".join(f"{lv_gain(x, 0, 0):+.1f} %" for x in (0.25, 0.5, 0.75))
            + " |",
        ]
        for tag, room in rooms.items():
            name = "tmesim, default" if tag == "default" else "tmesim, space alone"
            lines.append(
                f"| {name} | "
                + " | ".join(f"{room(x):.2f}" for x in fs)
                + " | "
                + " / ".join(f"{lv_gain(x, 0, 0, room=room):+.1f} %" for x in (0.25, 0.5, 0.75))
                + " |"
            )
        room = rooms["default"]
        g0, gc = lv_gain(0.25, 0, 0, room=room), lv_gain(0.25, 0.25, 0, room=room)
        # the turnover arms start nearer their (lower) capacity, as the lattice's do
        g25 = lv_gain(0.30, 0.25, 0.25, room=room)
        g50 = lv_gain(0.47, 0.25, 0.5, room=room)
        lines += [
            "",
            f"Statement c in the well-mixed model with tmesim's density dependence: a cost of "
            f"0.25 alone {gc - g0:+.1f} points at 0.25 of capacity ({gc:+.1f} %); with death "
            f"at 0.25 b (from 0.30 of its capacity) {g25:+.1f} % ({g25 / gc:.2g}x); at 0.5 b "
            f"(from 0.47) "
            + (
                "no arm progresses (the costly resistant cells' division, 0.75 b x room, "
                "outpaces death at 0.5 b only below "
                f"{next(x for x in np.linspace(0, 1, 101) if room(x) < 0.5 / 0.75):.2f} of "
                "capacity)"
                if not math.isfinite(g50)
                else f"{g50:+.1f} % ({g50 / gc:.2g}x)"
            )
            + ".",
            "",
        ]
    walls = []
    for tag, *_ in [(f"growth_{g}",) for g, _ in GROWTH] + JOBS:
        p = out / f"{tag}.{'csv' if tag.startswith('growth_') else 'txt'}"
        if p.exists():
            last = [ln for ln in p.read_text().splitlines() if ln.startswith("# wall")]
            if last:
                walls.append(f"- {tag}: {last[-1][2:]}")
    lines += ["## runs", ""] + walls + [""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("run", "summary"))
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the comparisons' outputs")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel per comparison")
    ap.add_argument("--only", nargs="+", metavar="TAG", help="run only these jobs")
    a = ap.parse_args(argv)
    if a.what == "run":
        run(a.out, a.jobs, a.only)
        return
    text = summary(a.out)
    (a.out / "adaptive-theory.md").write_text(text, encoding="utf-8")
    figure(a.out, a.out / "adaptive-theory.png")
    print(text)


if __name__ == "__main__":
    main()
