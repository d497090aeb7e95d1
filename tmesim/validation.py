"""Model validation: the published behaviours of MODEL.md section 7, run and judged.

Each experiment runs one or more arms (a scenario under scenarios/validation/ with overrides) and
prints, for each quantity, what the literature reports beside what tmesim produced, then whether
the behaviour holds by a stated criterion. ``tmesim validate-model`` runs them all (about
40 minutes on 2 CPU cores); ``--quick`` runs smaller dishes (about a quarter of the cells, for CI)
and fewer seeds, whose criteria are the same but whose figures are noisier. The growth
experiments (spheroid, colony) run each scenario with the default push reach and with none, and
show both; only the default is judged. The persister experiments of Sharma et al. run over
several seeds (Experiment.seeds) and report the spread; each seed must hold.

Calibration: the persister rates of tmesim.scenario.TransitionConfig (basal and induced entry)
and the EGFR TKI's kill rate were chosen so that ``biphasic`` reproduces Sharma et al.'s 0.3 %
survivors of 9 days of erlotinib, and the P -> E rate so that ``dtep`` gives Sharma's 20 % of
persisters founding DTEP colonies by about 30 days; the other experiments use the same defaults
unchanged (apart from what each scenario file states, e.g. the accelerated P -> R rate of
resistance_exposure).
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
    #: run every arm once per seed (labels "<arm> | seed <n>", see by_seed); () runs each arm
    #: once with its scenario's seed. ``quick_seeds``: the seeds of a --quick run.
    seeds: tuple[int, ...] = ()
    quick_seeds: tuple[int, ...] = ()
    #: how an arm is run: a module-level ``runner(path, overrides) -> series`` (None: run_arm;
    #: the spheroid's adds per-step oxygen figures that the time series does not hold)
    runner: Callable | None = None

    def arm_runs(self, quick: bool) -> list[tuple[str, str, list[str]]]:
        """(label, scenario file, overrides) of every run of this experiment."""
        extra = self.quick if quick else []
        seeds = (self.quick_seeds or self.seeds) if quick else self.seeds
        if not seeds:
            return [(a.label, a.file, a.overrides + extra) for a in self.arms]
        return [
            (f"{a.label} | seed {sd}", a.file, a.overrides + extra + [f"run.seed={sd}"])
            for sd in seeds
            for a in self.arms
        ]


def by_seed(r: dict) -> dict[int, dict]:
    """{seed: {arm label: series}} from the results of an experiment with seeds."""
    out: dict[int, dict] = {}
    for label, series in r.items():
        arm, seed = label.rsplit(" | seed ", 1)
        out.setdefault(int(seed), {})[arm] = series
    return out


def spread(values, fmt=None) -> str:
    """Mean and range of per-seed values: "mean m (a to b, n seeds)", as percentages unless
    ``fmt`` formats them."""
    fmt = fmt or pct
    v = list(values)
    return f"mean {fmt(float(np.mean(v)))} ({fmt(min(v))} to {fmt(max(v))}, {len(v)} seeds)"


def at_day(s: dict, col: str, day: float) -> float:
    """The column's value at the step closest to ``day``."""
    i = int(np.argmin(np.abs(s["day"] - day)))
    return float(s[col][i])


def pct(x: float) -> str:
    return f"{100 * x:.2g} %"


# ----------------------------------------------------------------------------------- judges
def biphasic_figures(s) -> dict:
    """One dish's figures of the biphasic kill (drug from day 1): survival over 9 days, the
    decline rate (1/day) over days 1-3 and 7-10, and the tolerant (P + E) and resistant
    fractions of the day-10 survivors."""
    n0 = at_day(s, "burden", 1.0)
    return dict(
        surv=at_day(s, "burden", 10.0) / n0,
        early=-math.log(max(at_day(s, "burden", 3.0), 1) / n0) / 2.0,
        late=-math.log(max(at_day(s, "burden", 10.0), 1) / max(at_day(s, "burden", 7.0), 1)) / 3.0,
        tolerant=at_day(s, "persister_fraction", 10.0),
        resistant=at_day(s, "resistant_fraction", 10.0),
    )


def judge_biphasic(r):
    f = [biphasic_figures(runs["erlotinib"]) for runs in by_seed(r).values()]

    def rate(x):
        return f"{x:.2f} /day"

    rows = [
        (
            "cells surviving 9 days of 2 uM erlotinib",
            "about 0.3 % (Sharma 2010)",
            spread(x["surv"] for x in f),
        ),
        ("decline rate, days 1-3", "fast", spread((x["early"] for x in f), rate)),
        ("decline rate, days 7-10", "a plateau (near 0)", spread((x["late"] for x in f), rate)),
        (
            "persisters (P + E) among survivors at day 10",
            "most",
            spread(x["tolerant"] for x in f),
        ),
        (
            "resistant (R) among survivors at day 10",
            "under 5 % on average (resistance takes months: Hata 2016, Ramirez 2016)",
            spread(x["resistant"] for x in f),
        ),
    ]
    ok = (
        all(
            0.001 <= x["surv"] <= 0.01
            and x["early"] > 5 * max(x["late"], 0.02)
            and x["tolerant"] >= 0.5
            for x in f
        )
        and float(np.mean([x["resistant"] for x in f])) < 0.05
    )
    return rows, ok


def judge_reversibility(r):
    f = []
    for runs in by_seed(r).values():
        fig = {}
        for label, s in runs.items():
            s1 = at_day(s, "burden", 5.0) / at_day(s, "burden", 1.0)
            s2 = at_day(s, "burden", 28.0) / max(at_day(s, "burden", 24.0), 1)
            fig[label] = (s1, s2, at_day(s, "persister_fraction", 24.0))
        s1, s2, pf = fig["reverting"]
        _, c2, cpf = fig["no reversion (control)"]
        base = at_day(runs["reverting"], "persister_fraction", 1.0)
        f.append(dict(s1=s1, s2=s2, ratio=s2 / s1, pf=pf, base=base, c2=c2, cpf=cpf))

    def times(x):
        return f"{x:.2g}x"

    rows = [
        ("4-day survival, first challenge", "", spread(x["s1"] for x in f)),
        ("4-day survival, re-challenge", "", spread(x["s2"] for x in f)),
        (
            "re-challenge / first challenge survival",
            "about 1 (Sharma 2010: re-sensitised)",
            spread((x["ratio"] for x in f), times),
        ),
        (
            "persister fraction before re-challenge",
            "back near baseline",
            spread(x["pf"] for x in f),
        ),
        ("  (baseline before drug)", "", spread(x["base"] for x in f)),
        (
            "control without reversion: re-challenge survival",
            "stays tolerant",
            spread(x["c2"] for x in f),
        ),
    ]
    ok = all(1 / 3 <= x["ratio"] <= 3 and x["c2"] > 10 * x["s2"] for x in f)
    return rows, ok


#: the DTEP experiment's holiday arm: erlotinib from day 1 to day 35, none to day 95, then again
#: (DTEPs need a longer drug-free time than DTPs to re-sensitise: Sharma 2010)
DTEP_HOLIDAY = [
    "run.duration_days=99",
    "drugs.erlotinib.schedule.kind=doses",
    "drugs.erlotinib.schedule.times_h=[24, 840, 2280]",
    "drugs.erlotinib.schedule.doses_uM=[2.0, 0.0, 2.0]",
]


def dtep_figures(s, day: float) -> dict:
    """Figures of a dish on continuous erlotinib from day 1: DTEP founders (P -> E events) up to
    ``day`` per persister (P + E) at day 10, the expanded cells then, and the burden at ``day``
    relative to day 10."""
    i10 = int(np.argmin(np.abs(s["day"] - 10.0)))
    i = int(np.argmin(np.abs(s["day"] - day)))
    tol10 = float(s["n_P"][i10] + s["n_E"][i10])
    return dict(
        founders=float(np.sum(s["became_E"][: i + 1])),
        tolerant10=tol10,
        n_E=float(s["n_E"][i]),
        regrowth=float(s["burden"][i]) / max(float(s["burden"][i10]), 1.0),
        resistant=float(s["resistant_fraction"][i]),
    )


def judge_dtep(r):
    seeds = by_seed(r)
    d31 = [dtep_figures(x["continuous erlotinib"], 31.0) for x in seeds.values()]
    d41 = [dtep_figures(x["continuous erlotinib"], 40.0) for x in seeds.values()]
    frac31 = [x["founders"] / max(x["tolerant10"], 1.0) for x in d31]
    frac41 = [x["founders"] / max(x["tolerant10"], 1.0) for x in d41]
    pooled31 = sum(x["founders"] for x in d31) / max(sum(x["tolerant10"] for x in d31), 1.0)
    colony = sum(x["n_E"] for x in d41) / max(sum(x["founders"] for x in d41), 1.0)
    hol = []
    for x in seeds.values():
        h = x["holiday"]
        hol.append(
            dict(
                tol35=at_day(h, "persister_fraction", 35.0),
                tol95=at_day(h, "persister_fraction", 95.0),
                s1=at_day(h, "burden", 5.0) / at_day(h, "burden", 1.0),
                s2=at_day(h, "burden", 99.0) / max(at_day(h, "burden", 95.0), 1.0),
            )
        )

    def times(v):
        return f"{v:.2g}x"

    rows = [
        (
            "persisters at day 10 founding DTEPs by day 31 (30 days of drug)",
            "about 20 % (Sharma 2010)",
            f"{pct(pooled31)} pooled; per dish {spread(frac31)}",
        ),
        ("  the same by day 40", "", spread(frac41)),
        (
            "expanded cells per DTEP founder at day 40",
            "colonies: DTEPs proliferate in drug",
            f"{colony:.3g}",
        ),
        (
            "burden at day 40 / at day 10, in drug",
            "regrowth in drug (> 1)",
            spread((x["regrowth"] for x in d41), times),
        ),
        ("resistant (R) fraction at day 40", "", spread(x["resistant"] for x in d41)),
        (
            "holiday: persister (P + E) fraction at day 35, in drug",
            "",
            spread(x["tol35"] for x in hol),
        ),
        (
            "  after 60 days off drug (day 95)",
            "falls (DTEPs revert, Sharma 2010)",
            spread(x["tol95"] for x in hol),
        ),
        (
            "4-day survival: first challenge vs re-challenge at day 95",
            "the same: re-sensitised",
            f"{spread(x['s1'] for x in hol)} vs {spread(x['s2'] for x in hol)}",
        ),
        (
            "  re-challenge / first",
            "about 1",
            spread((x["s2"] / x["s1"] for x in hol), times),
        ),
    ]
    ok = (
        0.10 <= pooled31 <= 0.35
        and colony >= 4
        and all(x["regrowth"] > 1 for x in d41)
        and all(x["tol95"] < x["tol35"] / 3 for x in hol)
        and all(1 / 3 <= x["s2"] / x["s1"] <= 3 for x in hol)
    )
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


# ----------------------------------------------------------------------------- growth
#: the contact-inhibited arm of the growth experiments (division into empty neighbours only)
NO_PUSH = ["tumor.mechanics.push_reach_um=0"]
#: the colony on a lattice twice as fine (the same 2 mm square)
COLONY_FINE = ["grid.dx_um=10", "grid.shape=[200, 200]"]


def equivalent_radius_um(n_voxels, dx_um: float, ndim: int):
    """Radius (um) of the disk (2D) or sphere (3D) of ``n_voxels`` voxels of edge ``dx_um``."""
    n = np.asarray(n_voxels, dtype=np.float64)
    if ndim == 2:
        return np.sqrt(n / math.pi) * dx_um
    return np.cbrt(3.0 * n / (4.0 * math.pi)) * dx_um


def doubling_time_h(day, n) -> float:
    """Doubling time (h) of a least-squares exponential fit of ``n`` over ``day``."""
    slope = np.polyfit(np.asarray(day) * 24.0, np.log(np.asarray(n, dtype=np.float64)), 1)[0]
    return math.log(2.0) / slope if slope > 0 else math.inf


def linear_speed(day, radius):
    """(speed in um/day, R^2) of a least-squares line through ``radius`` over ``day``."""
    day, radius = np.asarray(day), np.asarray(radius)
    if day.size < 3:
        return math.nan, math.nan
    coef = np.polyfit(day, radius, 1)
    resid = radius - np.polyval(coef, day)
    ss = float(np.sum((radius - radius.mean()) ** 2))
    return float(coef[0]), 1.0 - float(np.sum(resid**2)) / ss if ss > 0 else math.nan


def spheroid_oxygen(state, sc) -> dict:
    """Oxygen figures (mmHg) of a spheroid (tumor and necrotic voxels) in one state:
    ``o2_outer`` the mean over its outer voxels (those with an empty face neighbour: their
    centres lie half a voxel inside the surface), ``o2_surface`` the mean over its surface faces
    of the two voxels' mean (the value at the surface between the outer voxel and the medium),
    ``o2_centre`` the value at the voxel nearest its centre of mass, and the scenario's bath
    value (oxygen's Dirichlet face value) and hypoxic and necrosis thresholds beside them."""
    from . import codes

    shape = tuple(sc.grid.shape)
    o2 = np.asarray(state.fields[sc.field_names.index("oxygen")]).reshape(shape)
    kind = np.asarray(state.kind).reshape(shape)
    cells = (kind == codes.TUMOR) | (kind == codes.NECROTIC)
    empty = kind == codes.EMPTY
    outer = np.zeros(shape, dtype=bool)
    faces = []
    for ax in range(len(shape)):
        for side in (1, -1):  # the neighbour below (1) or above (-1) along the axis
            nb_empty = np.roll(empty, side, axis=ax)
            edge: list = [slice(None)] * len(shape)
            edge[ax] = 0 if side == 1 else -1
            nb_empty[tuple(edge)] = False  # no neighbour across the domain's face
            pair = cells & nb_empty
            outer |= pair
            faces.append(0.5 * (o2[pair].astype(np.float64) + np.roll(o2, side, axis=ax)[pair]))
    face = np.concatenate(faces)
    bath = [v for k, v in face_values(sc, "oxygen") if k == "dirichlet"]
    out = dict(
        o2_bath=float(bath[0]) if bath else math.nan,
        o2_hypoxic_threshold=sc.tumor.hypoxic_threshold_mmHg,
        o2_necrosis_threshold=sc.tumor.necrosis_threshold_mmHg,
        o2_outer=float(o2[outer].mean(dtype=np.float64)) if outer.any() else math.nan,
        o2_surface=float(face.mean()) if face.size else math.nan,
        o2_centre=math.nan,
    )
    if cells.any():
        centre = np.rint(np.argwhere(cells).mean(axis=0)).astype(int)
        out["o2_centre"] = float(o2[tuple(centre)])
    return out


def face_values(sc, field: str):
    """(kind, value) of the field's condition on each domain face."""
    from .scenario import face_conditions

    return list(face_conditions(sc.field(field), sc.ndim).values())


def run_spheroid_arm(path: str, overrides: list[str]) -> dict:
    """:func:`run_arm` with the oxygen columns of :func:`spheroid_oxygen` added to every row
    (the first that of the initial state)."""
    from .scenario import load_scenario
    from .simulation import Simulation
    from .writers import InMemoryWriter

    class OxygenRows(InMemoryWriter):
        def start(self, sim, fresh):
            super().start(sim, fresh)
            self.rows = [dict(sim.last_row, **spheroid_oxygen(sim.state, sim.sc))]

        def write(self, sim):
            self.rows.append(dict(sim.last_row, **spheroid_oxygen(sim.state, sim.sc)))

    sim = Simulation(load_scenario(path, overrides=overrides), backend="cpu")
    mem = OxygenRows()
    sim.output_writers = {"in_memory": mem}
    sim.callbacks = []
    sim.run()
    return mem.series()


def spheroid_figures(s, dx_um=20.0, doubling_h=18.0) -> dict:
    """The spheroid's figures, each (value, holds): the doubling time while the diameter is under
    200 um (within 15 % of the set one), the radial speed once it is over 400 um (15-40 um/day,
    on a straight line: R^2 >= 0.98 over at least 3 days), the viable rim over the necrotic core
    at the end (100-250 um, diameter >= 450 um); the oxygen at the spheroid's surface relative to
    the bath, its lowest over the run after the first day (at least 0.8: a stirred bath), and the
    outer voxels' mean beside it (shown); the diameters at hypoxic onset (the centre below the
    hypoxic threshold; judged: before necrotic onset), at the centre below the necrosis
    threshold and at the first necrotic voxel (shown, 400-600 um expected, not judged: it is what
    the uptake was chosen for)."""
    day = np.asarray(s["day"])
    total = np.asarray(s["burden"]) + np.asarray(s["n_necrotic"])
    r = equivalent_radius_um(total, dx_um, 3)
    r_nec = equivalent_radius_um(s["n_necrotic"], dx_um, 3)
    small = 2 * r < 200.0
    td = doubling_time_h(day[small], total[small]) if small.sum() >= 3 else math.nan
    big = 2 * r >= 400.0
    v, r2 = linear_speed(day[big], r[big])
    span = float(day[big][-1] - day[big][0]) if big.any() else 0.0
    nec = np.flatnonzero(np.asarray(s["n_necrotic"]) > 0)
    onset = float(2 * r[nec[0]]) if nec.size else math.nan
    rim = float(r[-1] - r_nec[-1])

    def first_diameter(mask):
        i = np.flatnonzero(mask)
        return float(2 * r[i[0]]) if i.size else math.nan

    centre = np.asarray(s["o2_centre"])
    hypoxic = first_diameter(centre < np.asarray(s["o2_hypoxic_threshold"]))
    anoxic = first_diameter(centre < np.asarray(s["o2_necrosis_threshold"]))
    late = day >= 1.0
    bath = np.asarray(s["o2_bath"])
    surface = float(np.min(np.asarray(s["o2_surface"])[late] / bath[late]))
    outer = float(np.min(np.asarray(s["o2_outer"])[late] / bath[late]))
    return {
        "doubling": (td, abs(td / doubling_h - 1.0) <= 0.15),
        "speed": (v, 15.0 <= v <= 40.0 and r2 >= 0.98 and span >= 3.0),
        "r2": (r2, r2 >= 0.98),
        "onset": (onset, True),
        "rim": (rim, nec.size > 0 and 2 * r[-1] >= 450.0 and 100.0 <= rim <= 250.0),
        "diameter": (float(2 * r[-1]), True),
        "surface": (surface, surface >= 0.8),
        "outer": (outer, True),
        "bath": (float(bath[0]), True),
        "hypoxic": (hypoxic, hypoxic < onset),
        "anoxic": (anoxic, True),
    }


def judge_spheroid(r):
    f = spheroid_figures(r["pushing (default)"])
    g = spheroid_figures(r["contact inhibition (reach 0)"])

    def both(key, fmt):
        return f"{fmt.format(f[key][0])} (reach 0: {fmt.format(g[key][0])})"

    rows = [
        (
            "doubling time while the diameter is under 200 um",
            "the set 18 h: exponential (Freyer & Sutherland 1986)",
            both("doubling", "{:.1f} h"),
        ),
        (
            "radial speed once the diameter is over 400 um",
            "linear, 15-40 um/day (Freyer & Sutherland 1986)",
            both("speed", "{:.1f} um/day") + f", R^2 {f['r2'][0]:.3f}",
        ),
        (
            f"surface oxygen / bath ({f['bath'][0]:g} mmHg), lowest after day 1",
            "near the bath (stirred culture): >= 0.8",
            both("surface", "{:.2f}") + f"; outer voxels' mean {both('outer', '{:.2f}')}",
        ),
        (
            "diameter at hypoxic onset (centre below the hypoxic threshold)",
            "before necrosis (Freyer & Sutherland 1986)",
            both("hypoxic", "{:.0f} um"),
        ),
        (
            "diameter at necrotic onset: centre below the necrosis threshold; first necrotic voxel",
            "about 400-600 um (the uptake is set for this)",
            f"{f['anoxic'][0]:.0f} um; " + both("onset", "{:.0f} um"),
        ),
        (
            f"viable rim over the necrotic core at {f['diameter'][0]:.0f} um",
            "100-250 um (Freyer & Sutherland 1986)",
            both("rim", "{:.0f} um"),
        ),
    ]
    return rows, all(ok for _, ok in f.values())


def colony_figures(s, dx_um: float, doubling_h=24.0) -> dict:
    """The colony's figures, each (value, holds): the doubling time over the first 2 days
    (within 15 % of the set one), the radial speed over the second half of the run on a straight
    line (R^2 >= 0.99) and the speed of its last quarter relative to its third (within 15 %:
    linear, not accelerating)."""
    day = np.asarray(s["day"])
    n = np.asarray(s["burden"], dtype=np.float64)
    r = equivalent_radius_um(n, dx_um, 2)
    early = day <= 2.0
    td = doubling_time_h(day[early], n[early])
    end = float(day[-1])
    late = day >= end / 2
    v, r2 = linear_speed(day[late], r[late])
    v3, _ = linear_speed(day[late & (day < 0.75 * end)], r[late & (day < 0.75 * end)])
    v4, _ = linear_speed(day[day >= 0.75 * end], r[day >= 0.75 * end])
    return {
        "doubling": (td, abs(td / doubling_h - 1.0) <= 0.15),
        "speed": (v, r2 >= 0.99),
        "r2": (r2, r2 >= 0.99),
        "steady": (v4 / v3, abs(v4 / v3 - 1.0) <= 0.15),
    }


def lattice_ratio(coarse: dict, fine: dict) -> tuple[float, bool]:
    """Speed on the fine lattice over the speed on the coarse one: within 20 % of 1."""
    q = fine["speed"][0] / coarse["speed"][0]
    return q, abs(q - 1.0) <= 0.2


def judge_colony(r):
    f20 = colony_figures(r["dx 20 um"], 20.0)
    f10 = colony_figures(r["dx 10 um"], 10.0)
    g20 = colony_figures(r["dx 20 um, reach 0"], 20.0)
    g10 = colony_figures(r["dx 10 um, reach 0"], 10.0)
    q, q_ok = lattice_ratio(f20, f10)
    q0, _ = lattice_ratio(g20, g10)
    rows = [
        (
            "doubling time over the first 2 days, dx = 10 um (20 um)",
            "the set 24 h: exponential start (Bru 1998)",
            f"{f10['doubling'][0]:.1f} h ({f20['doubling'][0]:.1f} h; reach 0: "
            f"{g10['doubling'][0]:.1f} h)",
        ),
        (
            "radial speed, second half of the run",
            "constant: linear growth (Bru 1998)",
            f"{f20['speed'][0]:.1f} um/day, R^2 {f20['r2'][0]:.4f}, last quarter / third "
            f"{f20['steady'][0]:.2f} (reach 0: {g20['speed'][0]:.1f} um/day)",
        ),
        (
            "speed at dx = 10 um / at dx = 20 um",
            "1 (within 20 %): a model in physical units",
            f"{q:.2f} (reach 0: {q0:.2f})",
        ),
    ]
    # the early doubling is judged on the fine lattice (80 founders; 16 on the coarse one are too
    # few for a 15 % band), the linear growth on both
    ok = f10["doubling"][1] and all(f[k][1] for f in (f20, f10) for k in ("speed", "steady"))
    return rows, ok and q_ok


def _hdac_arm():
    return [
        "drugs.kdm5i.schedule.kind=none",
        "drugs.hdaci.preset=hdac_inhibitor",
        "drugs.hdaci.transport=uniform",
        'drugs.hdaci.schedule={kind = "continuous", dose_uM = 1.0, start_day = 1}',
    ]


EXPERIMENTS = [
    Experiment(
        "spheroid",
        "A spheroid grows exponentially, then linearly, over a necrotic core",
        "Freyer & Sutherland 1986; Drasdo & Hoehme 2005",
        [
            Arm("pushing (default)", "spheroid_growth.toml"),
            Arm("contact inhibition (reach 0)", "spheroid_growth.toml", NO_PUSH),
        ],
        judge_spheroid,
        quick=["grid.shape=[48, 48, 48]", "run.duration_days=10"],
        runner=run_spheroid_arm,
    ),
    Experiment(
        "colony",
        "A monolayer colony's radius grows linearly, the same on any lattice",
        "Bru et al. 1998",
        [
            Arm("dx 20 um", "colony_growth.toml"),
            Arm("dx 10 um", "colony_growth.toml", COLONY_FINE),
            Arm("dx 20 um, reach 0", "colony_growth.toml", NO_PUSH),
            Arm("dx 10 um, reach 0", "colony_growth.toml", COLONY_FINE + NO_PUSH),
        ],
        judge_colony,
        quick=[],
    ),
    Experiment(
        "biphasic",
        "Biphasic kill under continuous EGFR TKI",
        "Sharma et al. 2010",
        [Arm("erlotinib", "sharma_biphasic.toml")],
        judge_biphasic,
        seeds=(2010, 2012, 2013, 2014, 2015),
        quick_seeds=(2010, 2012),
    ),
    Experiment(
        "dtep",
        "Some persisters resume proliferation in drug (DTEPs), reversibly",
        "Sharma et al. 2010; Ramirez et al. 2016",
        [
            Arm("continuous erlotinib", "sharma_dtep.toml"),
            Arm("holiday", "sharma_dtep.toml", DTEP_HOLIDAY),
        ],
        judge_dtep,
        seeds=(2030, 2031, 2032),
        quick_seeds=(2030,),
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
                ["tumor.transitions.exit_per_h=0", "tumor.transitions.expanded_exit_per_h=0"],
            ),
        ],
        judge_reversibility,
        quick=["grid.shape=[100, 100]", "init.tumor.size_um=[2000, 2000]"],
        seeds=(2011, 2016, 2017, 2018, 2019),
        quick_seeds=(2011, 2016),
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


def _run_task(runner, path: str, overrides: list[str]) -> dict:
    return runner(path, overrides)


def run_arms(tasks, jobs: int = 1) -> list[dict]:
    """``runner(path, overrides)`` of each task (runner, path, overrides), in task order: in
    this process, or in ``jobs`` worker processes (runners must be module-level functions)."""
    tasks = list(tasks)
    if jobs > 1 and len(tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(_run_task, *zip(*tasks)))
    return [_run_task(*t) for t in tasks]


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
        (e.name, label, str(SCENARIOS / f), overrides)
        for e in chosen
        for label, f, overrides in e.arm_runs(quick)
    ]
    t0 = time.monotonic()
    runners = {e.name: e.runner or run_arm for e in chosen}
    series = run_arms([(runners[t[0]], t[2], t[3]) for t in tasks], jobs)
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
