"""tmesim compare: progression rule, file checks, and a small real comparison with replicates."""

import numpy as np
import pytest

from tmesim import compare
from tmesim.cli import main
from tmesim.errors import ScenarioError, UserError

SCEN = """
[run]
seed = 7
duration_days = 2
[grid]
shape = [30, 30]
[init.tumor]
shape = "rectangle"
size_um = [600, 600]
fill_fraction = 0.1
[fields.oxygen]
uptake_per_min = { tumor = 0 }
decay_per_min = 0
[drugs.erlotinib]
preset = "egfr_tki"
transport = "uniform"
schedule = { kind = "continuous", dose_uM = 2.0, start_day = 0.5 }
"""

CMP = """
scenario = "s.toml"
replicates = 2
reference_day = 0.5
progression_fraction = 1.2
times_days = [1, 2]
[arms.treated]
set = []
[arms.untreated]
set = ["drugs.erlotinib.schedule.kind=none"]
"""


def test_time_to_progression_against_a_known_curve():
    """Burden 100 e^(0.1 t): from day 2 (ref 100 e^0.2) it exceeds 1.2 x ref after ln(1.2)/0.1
    = 1.82 days, i.e. at the first sample after that; a falling curve never progresses and is
    censored at the end."""
    day = np.arange(0, 10.01, 0.1)
    ttp, prog = compare.time_to_progression(day, 100 * np.exp(0.1 * day), 2.0, 1.2)
    assert prog and np.log(1.2) / 0.1 < ttp <= np.log(1.2) / 0.1 + 0.1 + 1e-9
    ttp, prog = compare.time_to_progression(day, 100 * np.exp(-0.1 * day), 2.0, 1.2)
    assert not prog and ttp == pytest.approx(8.0)


def test_small_comparison_runs_replicates_and_separates_arms(tmp_path, capsys):
    """Two arms x 2 seeds: the untreated arm progresses, the treated one does not and has the
    square wave's cumulative dose: 2 uM over the 361 steps whose end time is in [0.5 d, 2 d]
    (the level of a step is the one at its end), 0.1 h each = 72.2 uM h; the table and figure
    are written."""
    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    f.write_text(CMP)
    c = compare.load_comparison(f)
    res = compare.run_comparison(c, jobs=1, echo=lambda s: None)
    assert set(res) == {"treated", "untreated"} and all(len(v) == 2 for v in res.values())
    seeds_differ = not np.array_equal(res["untreated"][0]["burden"], res["untreated"][1]["burden"])
    assert seeds_differ
    for s in res["untreated"]:
        assert compare.time_to_progression(s["day"], s["burden"], 0.5, 1.2)[1]
    for s in res["treated"]:
        assert not compare.time_to_progression(s["day"], s["burden"], 0.5, 1.2)[1]
        assert s["cumulative_dose_erlotinib"][-1] == pytest.approx(2.0 * 0.1 * 361, rel=1e-9)
    assert main(["compare", str(f), "--jobs", "1", "--figure", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "treated" in out and "not progressed" in out and (tmp_path / "c.png").stat().st_size


@pytest.mark.parametrize(
    "text,match",
    [
        (CMP.replace("replicates = 2", "replicates = 0"), "replicates"),
        (
            CMP.replace(
                '[arms.untreated]\nset = ["drugs.erlotinib.schedule.kind=none"]',
                '[arms.untreated]\nset = ["drugs.erlotinib.schedule.kind=sometimes"]',
            ),
            "arm 'untreated'.*drugs.erlotinib.schedule.kind",
        ),
        ("colour = 1\n" + CMP, "no such key"),
    ],
)
def test_bad_comparison_is_named(tmp_path, text, match):
    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises((ScenarioError, UserError), match=match):
        compare.load_comparison(f)


def test_paired_gains_and_their_statistics_on_known_curves():
    """Arm A's burden is arm B's delayed by k/10 + 1 days in replicate k (exponential growth
    e^(0.2 t) from day 0): the paired gains in time to progression are those delays, to the
    0.05-day sampling; the Wilcoxon signed-rank p-value of 5 positive differences is the exact
    2/2^5 = 0.0625, and the t interval is mean ± t(0.975, 4) sd / sqrt(5)."""
    from scipy import stats

    day = np.arange(0, 30.001, 0.05)
    c = compare.Comparison(
        scenario=None,
        arms={"A": [], "B": []},
        replicates=5,
        reference_day=0.0,
        progression_fraction=1.2,
        pairs=[("A", "B")],
    )
    delays = np.array([1.0, 1.1, 1.2, 1.3, 1.4])
    res = {
        "B": [{"day": day, "burden": 100 * np.exp(0.2 * day)} for _ in delays],
        "A": [
            {"day": day, "burden": np.where(day < d, 100.0, 100 * np.exp(0.2 * (day - d)))}
            for d in delays
        ],
    }
    g, cens = compare.paired_gains(c, res, "A", "B")
    assert not cens.any()
    np.testing.assert_allclose(g, delays, atol=0.051)
    st = compare.paired_stats(g)
    assert st["p"] == pytest.approx(0.0625)
    half = stats.t.ppf(0.975, 4) * g.std(ddof=1) / np.sqrt(5)
    assert st["lo"] == pytest.approx(g.mean() - half) and st["hi"] == pytest.approx(g.mean() + half)
    # relative to B's time to progression, ln(1.2) / 0.2 days rounded up to the sampling
    t_b = np.ceil(np.log(1.2) / 0.2 / 0.05) * 0.05
    rel = compare.relative_gains(c, res, "A", "B")
    np.testing.assert_allclose(rel, 100 * delays / t_b, atol=100 * 0.051 / t_b)
    text = compare.paired_table(c, res)
    assert "A vs B" in text and "5/5" in text and "0.0625" in text
    assert f"{rel.mean():+.3g} %" in text
    # no difference at all: p = 1, no replicate gains
    st0 = compare.paired_stats(np.zeros(4))
    assert st0["p"] == 1.0 and st0["mean"] == 0.0


def test_bad_pairs_are_named(tmp_path):
    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    f.write_text('pairs = [["treated", "nobody"]]\n' + CMP)
    with pytest.raises(ScenarioError, match=r"pairs.*nobody"):
        compare.load_comparison(f)


LIBRARY = sorted(
    p
    for p in (compare.Path(__file__).resolve().parent.parent / "scenarios" / "therapy").glob(
        "*.toml"
    )
    if "scenario = " in p.read_text()
)


@pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])
def test_therapy_library_comparisons_are_valid_and_every_arm_runs(path):
    """Every comparison of scenarios/therapy loads (each arm is checked as a scenario) and each
    arm runs (on a 40 x 40 cut of its lattice, 30-min steps) into its first 2.4 hours of
    treatment, with the drugs it names switched on at their levels; the arms differ from one
    another in what they give."""
    from tmesim.validation import run_arm

    c = compare.load_comparison(path)
    assert len(c.arms) >= 2 and c.replicates >= 3
    start = c.reference_day
    given = {}
    for arm, sets in c.arms.items():
        cut = [f"run.duration_days={start + 0.1}", "grid.shape=[40, 40]", "run.dt_min=30"]
        if any(x.endswith("resistant_placement=edge") for x in sets):
            # a tumor larger than the cut fills it and has no edge to place resistant cells on
            cut.append("init.tumor.radius_um=200")
        s = run_arm(str(c.scenario), sets + cut)
        assert s["burden"][-1] > 0
        given[arm] = tuple(
            round(float(s[k][-1]), 6) for k in sorted(s) if k.startswith("cumulative_dose_")
        )
    assert len(set(given.values())) >= 2 or "adaptive" in path.stem or "vs" in path.stem


def test_runs_stop_after_their_progression_with_the_same_time_to_progression(tmp_path):
    """stop_days_after_progression = 0.3: each untreated run ends 0.3 d (to the 6-min step)
    after it progressed, and is the first part of the same run made to the end (same seed), so
    its time to progression is unchanged; the treated runs never progress and run to the end;
    counts asked for after a run ended are shown as ended."""
    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    f.write_text(CMP)
    full = compare.run_comparison(compare.load_comparison(f), echo=lambda s: None)
    f.write_text("stop_days_after_progression = 0.3\n" + CMP)
    c = compare.load_comparison(f)
    assert c.stop_days_after_progression == 0.3
    printed = []
    cut = compare.run_comparison(c, echo=printed.append)
    for a, b in zip(full["untreated"], cut["untreated"]):
        ttp, progressed = compare.time_to_progression(a["day"], a["burden"], 0.5, 1.2)
        assert progressed
        assert compare.time_to_progression(b["day"], b["burden"], 0.5, 1.2) == (ttp, True)
        assert b["day"][-1] == pytest.approx(0.5 + ttp + 0.3, abs=0.1 / 24 + 1e-9)
        assert b["day"][-1] < a["day"][-1]
        np.testing.assert_array_equal(b["burden"], a["burden"][: b["burden"].size])
    for a, b in zip(full["treated"], cut["treated"]):
        np.testing.assert_array_equal(a["burden"], b["burden"])
    untreated = next(line for line in printed[0].splitlines() if line.startswith("untreated"))
    assert "ended (2/2)" in untreated  # counts at day 2, after both runs ended
    assert "ends 0.3 d after it progressed" in printed[0]
    fig = compare.figure(c, cut, tmp_path / "cut.png")
    assert fig.stat().st_size


def test_verdicts_against_one_sided_t_tests():
    """The verdict against a margin m is the outcome of one-sided one-sample t tests (scipy):
    beyond +m (or -m) at 2.5 %; else, when both tests of TOST (gain > -m, gain < +m) reject at
    5 %, equivalent, or longer (shorter) by less than m when the gain is also above (below) 0
    at 2.5 %; else longer (shorter) with more than m not shown when only that test rejects;
    else inconclusive."""
    from scipy import stats

    rng = np.random.default_rng(1)
    z = rng.standard_normal(8)
    z = (z - z.mean()) / z.std(ddof=1)
    # mean 0.5, se 0.24: the 90 % interval (half-width 1.895 se) lies inside ±1, the 95 % one
    # (2.365 se) does not; and the mirror image
    cases = [0.5 + 0.24 * np.sqrt(8) * z, -0.5 + 0.24 * np.sqrt(8) * z]
    cases += [
        center + spread * rng.standard_normal(8)
        for center in (-3.0, -1.2, -0.5, 0.0, 0.3, 0.9, 1.5, 4.0)
        for spread in (0.1, 0.5, 2.0)
    ]
    cases += [-g for g in cases]  # every verdict has its mirror image

    def p(g, mu, side):
        return stats.ttest_1samp(g, mu, alternative=side).pvalue

    seen = set()
    for g in cases:
        v = compare.verdict(compare.paired_stats(g), 1.0)
        above0, below0 = p(g, 0.0, "greater") < 0.025, p(g, 0.0, "less") < 0.025
        if p(g, 1.0, "greater") < 0.025:
            want = "longer by more than 1 d"
        elif p(g, -1.0, "less") < 0.025:
            want = "shorter by more than 1 d"
        elif max(p(g, -1.0, "greater"), p(g, 1.0, "less")) < 0.05:
            want = (
                "longer by less than 1 d"
                if above0
                else "shorter by less than 1 d"
                if below0
                else "equivalent within ±1 d"
            )
        elif above0:
            want = "longer, by more than 1 d not shown"
        elif below0:
            want = "shorter, by more than 1 d not shown"
        else:
            want = "inconclusive"
        assert v == want, g
        seen.add(want)
    assert len(seen) == 8, seen  # every one of the 8 verdicts was reached


def test_contrast_of_two_paired_gains_on_known_curves():
    """Arm A leads B by d_k days and arm C leads D by e_k days in replicate k: the contrast
    [[A, B], [C, D]] is d_k - e_k per replicate (to the 0.05-day sampling), with its t interval
    and Wilcoxon p-value."""
    day = np.arange(0, 30.001, 0.05)
    d = np.array([2.0, 2.5, 3.0, 2.2, 2.8])
    e = np.array([0.3, 0.2, 0.4, 0.3, 0.25])

    def grow(delay):
        return {
            "day": day,
            "burden": np.where(day < delay, 100.0, 100 * np.exp(0.2 * (day - delay))),
        }

    res = {
        "B": [grow(0.0) for _ in d],
        "A": [grow(x) for x in d],
        "D": [grow(0.0) for _ in e],
        "C": [grow(x) for x in e],
    }
    c = compare.Comparison(
        scenario=None, arms={k: [] for k in res}, replicates=5, contrasts=[(("A", "B"), ("C", "D"))]
    )
    text = compare.contrast_table(c, res)
    g1, _ = compare.paired_gains(c, res, "A", "B")
    g2, _ = compare.paired_gains(c, res, "C", "D")
    np.testing.assert_allclose(g1 - g2, d - e, atol=0.051)
    st = compare.paired_stats(g1 - g2)
    assert "(A - B) - (C - D)" in text and f"{st['mean']:+.3g}" in text and "5/5" in text
    assert f"{st['p']:.3g}" in text


@pytest.mark.parametrize(
    "line,match",
    [
        ("margin_days = 0\n", "margin_days"),
        ("stop_days_after_progression = -1\n", "stop_days_after_progression"),
        ('contrasts = [[["treated", "untreated"], ["treated", "nobody"]]]\n', "contrasts.*nobody"),
        ('contrasts = [["treated", "untreated"]]\n', "contrasts"),
    ],
)
def test_bad_margin_stop_and_contrasts_are_named(tmp_path, line, match):
    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    f.write_text(line + CMP)
    with pytest.raises(ScenarioError, match=match):
        compare.load_comparison(f)


def test_dose_is_counted_up_to_progression_on_known_curves():
    """A drug given at 2 uM h per day from day 0; arm A progresses 1 + ln(1.2)/0.2 days after
    the reference day 0 (burden flat for a day, then e^(0.2 (t - 1))), arm B never does (flat):
    the table's dose column is 2 x A's progression day (to the 0.05-day sampling) for A and the
    dose at the end of the runs (2 x 30 uM h) for B, whatever came after A's progression."""
    day = np.arange(0, 30.001, 0.05)
    dose = 2.0 * day
    t_a = 1.0 + np.ceil(np.log(1.2) / 0.2 / 0.05) * 0.05
    res = {
        "A": [
            {
                "day": day,
                "burden": np.where(day < 1, 100.0, 100 * np.exp(0.2 * (day - 1))),
                "cumulative_dose_x": dose,
                "n_P": 0 * day,
                "n_R": 0 * day,
            }
        ]
        * 2,
        "B": [
            {
                "day": day,
                "burden": 100.0 + 0 * day,
                "cumulative_dose_x": dose,
                "n_P": 0 * day,
                "n_R": 0 * day,
            }
        ]
        * 2,
    }
    c = compare.Comparison(
        scenario=compare.Path("s.toml"),
        arms={"A": [], "B": []},
        replicates=2,
        reference_day=0.0,
        progression_fraction=1.2,
    )
    text = compare.table(c, res)
    rows = {line.split()[0]: line for line in text.splitlines()[3:]}
    assert "dose x to progression" in text
    assert f"{2 * t_a:.3g} ± 0" in rows["A"] and "60 ± 0" in rows["B"]


# ------------------------------------------------- Kaplan-Meier, censored bounds, outputs
def test_kaplan_meier_against_a_hand_computed_example():
    """Times 1, 2, 2+, 3, 4+, 5 (+ censored). By hand: at 1, 6 at risk, 1 progresses: S = 5/6;
    at 2, 5 at risk (the one censored at 2 still counts), 1 progresses: S = 5/6 x 4/5 = 2/3;
    at 3, 3 at risk: S = 2/3 x 2/3 = 4/9; 4+ leaves; at 5, 1 at risk: S = 0. Median: 3 (the
    first S <= 1/2). Tied progressions count together: 2, 2, 3+ gives S = 1 - 2/3 at 2."""
    t, s, n, d = compare.kaplan_meier([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(t, [1, 2, 3, 5])
    np.testing.assert_allclose(s, [5 / 6, 2 / 3, 4 / 9, 0.0])
    np.testing.assert_array_equal(n, [6, 5, 3, 1])
    np.testing.assert_array_equal(d, [1, 1, 1, 1])
    assert compare.km_median([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1]) == 3.0
    t, s, n, d = compare.kaplan_meier([2, 2, 3], [True, True, False])
    np.testing.assert_array_equal(t, [2]) and np.testing.assert_allclose(s, [1 / 3])
    assert n.tolist() == [3] and d.tolist() == [2]
    t, s, _, _ = compare.kaplan_meier([4.0, 6.0], [False, False])  # all censored: S stays 1
    assert t.size == 0 and compare.km_median([4.0, 6.0], [False, False]) is None


def _grow(day, delay, rate=0.2):
    return np.where(day < delay, 100.0, 100 * np.exp(rate * (day - delay)))


def _series(end_day, burden_of_day, dose_x=0.0, dose_y=0.0):
    day = np.arange(0, end_day + 1e-9, 0.05)
    return {
        "day": day,
        "burden": burden_of_day(day),
        "n_P": 0 * day + 3,
        "n_R": 0 * day,
        "cumulative_dose_x": dose_x * day,
        "cumulative_dose_y": dose_y * day,
        "plasma_x": 0 * day + dose_x,
        "plasma_y": 0 * day + dose_y,
    }


def _known_results():
    """Arm A: replicate 0 progresses (flat 1 day, then e^0.2t) in a 10-day run, replicates 1
    and 2 stay flat and are censored by runs of 5 and 8 days (a run stopped early, one run
    shorter than another); arm B: three progressions at delays 0, 2 and 2 (a tie). Drug x
    is off in every arm, y is given in B only."""
    flat = lambda d: 100.0 + 0 * d  # noqa: E731
    res = {
        "A": [_series(10, lambda d: _grow(d, 1.0)), _series(5, flat), _series(8, flat)],
        "B": [_series(10, lambda d, k=k: _grow(d, k), dose_y=1.0) for k in (0.0, 2.0, 2.0)],
    }
    c = compare.Comparison(
        scenario=compare.Path("s.toml"),
        arms={"A": [], "B": []},
        replicates=3,
        reference_day=0.0,
        progression_fraction=1.2,
        times_days=[4.0, 6.0],
    )
    return c, res


def test_each_censored_time_shows_its_own_runs_bound():
    """A censored replicate's time is a lower bound at the end of its own run: 5 and 8 days
    here, shown as ">5" and ">8"; not the shortest time of the arm (A's progression after
    1 + ln(1.2)/0.2 days, which the label used to show for every censored replicate)."""
    c, res = _known_results()
    text = compare.table(c, res)
    row = next(line for line in text.splitlines() if line.startswith("A "))
    assert "2 not progressed: >5, >8" in row
    t_a = 1.0 + np.ceil(np.log(1.2) / 0.2 / 0.05) * 0.05
    assert f">{t_a:.3g}" not in row
    (a, _) = compare.summary(c, res)
    assert a["censored_bounds_days"] == pytest.approx([5.0, 8.0])
    assert [r["censored_at_days"] for r in a["replicate_values"]] == pytest.approx([None, 5.0, 8.0])
    # P and R at day 6: replicate 1 ended at day 5
    assert "ended (1/3)" in row


def test_drugs_off_in_every_arm_have_no_column():
    c, res = _known_results()
    assert compare.drugs_given(res) == ["y"]
    text = compare.table(c, res)
    assert "dose y to progression" in text and "dose x" not in text
    assert not any("dose_x" in k for k in compare.csv_rows(c, res)[0])


def test_figure_shows_the_threshold_and_a_kaplan_meier_step_per_progression_time():
    """The threshold line lies at y = progression_fraction; each arm's Kaplan-Meier line falls
    once per distinct progression time (A: 1, B: 2 with the tie) and marks each censored
    replicate at its own time; only drug y gets a dosing row."""
    c, res = _known_results()
    fig = compare.figure_of(c, res)

    def by_gid(g):
        return fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == g)

    (thr,) = by_gid("threshold")
    assert set(thr.get_ydata()) == {c.progression_fraction}
    for arm in ("A", "B"):
        ttp = [compare.time_to_progression(s["day"], s["burden"], 0.0, 1.2) for s in res[arm]]
        distinct = {round(t, 9) for t, p in ttp if p}
        (km,) = by_gid(f"km:{arm}")
        y = np.asarray(km.get_ydata())
        assert np.count_nonzero(np.diff(y) < 0) == len(distinct)
        assert y[0] == 1.0 and np.all(np.diff(y) <= 0)
        cens = by_gid(f"km-censored:{arm}")
        if arm == "A":
            np.testing.assert_allclose(cens[0].get_xdata(), [5.0, 8.0])
            np.testing.assert_allclose(cens[0].get_ydata(), [2 / 3, 2 / 3])
        else:
            assert cens == []
    labels = [a.get_ylabel() for a in fig.axes]
    assert labels.count("A") == 1 and labels.count("B") == 1
    legends = [t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()]
    assert "y" in legends and "x" not in legends


def test_cli_keeps_runs_writes_csv_and_json_with_set_and_one_progress_bar(tmp_path, capsys):
    """tmesim compare --set run.duration_days=0.75 --jobs 2 --replicates 2: every arm's runs
    end at day 0.75; the run files are kept beside the figure (<arm>_seed<seed>.h5) and each
    holds the time series the table was made from (the JSON names it relative to itself); the
    CSV and JSON hold the table's numbers;
    one progress bar on stderr counts the 4 runs; -q shows none."""
    import csv
    import json

    import h5py

    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    f.write_text(CMP.replace("times_days = [1, 2]", "times_days = [0.5]"))
    fig = tmp_path / "out" / "cmp.png"
    args = ["compare", str(f), "--jobs", "2", "--figure", str(fig), "--replicates", "2"]
    assert main(args + ["--set", "run.duration_days=0.75"]) == 0
    err = capsys.readouterr().err
    assert "compare" in err and "4/4" in err
    runs = tmp_path / "out" / "cmp_runs"
    assert sorted(p.name for p in runs.glob("*.h5")) == [
        "treated_seed7.h5",
        "treated_seed8.h5",
        "untreated_seed7.h5",
        "untreated_seed8.h5",
    ]
    doc = json.loads(fig.with_suffix(".json").read_text())
    assert doc["comparison"]["overrides"] == ["run.duration_days=0.75"]
    rows = list(csv.DictReader(fig.with_suffix(".csv").open()))
    assert [r["arm"] for r in rows] == ["treated", "untreated"]
    for arm, r in zip(doc["arms"], rows):
        assert float(r["ttp_mean_days"]) == pytest.approx(arm["ttp_mean_days"])
        assert int(r["censored"]) == arm["censored"]
        for rep in arm["replicate_values"]:
            assert rep["run_end_day"] == pytest.approx(0.75)
            assert rep["run_file"] == f"cmp_runs/{arm['arm']}_seed{rep['seed']}.h5"
            with h5py.File(fig.parent / rep["run_file"], "r") as h:
                day = h["timeseries/time_min"][:] / 1440.0
                burden = h["timeseries/burden"][:]
            ttp, progressed = compare.time_to_progression(day, burden, 0.5, 1.2)
            assert (ttp, progressed) == (pytest.approx(rep["ttp_days"]), rep["progressed"])
            assert day[-1] == pytest.approx(0.75)
    # a kept run is the in-memory run written out
    mem = compare.run_one(str(tmp_path / "s.toml"), ["run.duration_days=0.75", "run.seed=8"])
    with h5py.File(runs / "treated_seed8.h5", "r") as h:
        np.testing.assert_array_equal(h["timeseries/burden"][:], mem["burden"])
    # quiet: no bar; a bad --set names its key path
    assert (
        main(
            args[:-2]
            + ["--replicates", "1", "-q", "--no-keep-runs", "--set", "run.duration_days=0.1"]
        )
        == 0
    )
    assert "compare" not in capsys.readouterr().err
    assert main(args + ["--set", "grid.dxx=3"]) == 2
    err = capsys.readouterr().err
    assert "--set" in err and "grid.dxx" in err


def test_capacity_and_start_burden_over_it_on_known_curves():
    """A capacity arm's capacity is its mean burden from capacity_from_day to its end, per seed:
    a plateau of 1000 with alternating ±10 (six rows of +10, five of -10: mean 1000 + 10/11)
    and a line 900 + 10 t (mean 975 over days 5-10; drift, the mean of the window's last 6 rows
    over that of its first 5, minus 1: 987.5 / 960 - 1). Each arm's burden at the
    reference day over the capacity of the same seed: 250 / capacity."""
    day = np.arange(0, 10.001, 0.5)  # days 5..10: 11 rows
    plateau = np.where(day < 5, 500.0, 1000.0 + 10.0 * (-1.0) ** np.arange(day.size))
    line = 900.0 + 10.0 * day
    c = compare.Comparison(
        scenario=None,
        arms={"cap": [], "T": []},
        replicates=2,
        reference_day=1.0,
        capacity_of={"T": "cap"},
        capacity_from_day=5.0,
    )
    treated = {"day": day, "burden": np.where(day == 1.0, 250.0, 100.0)}
    res = {
        "cap": [{"day": day, "burden": plateau}, {"day": day, "burden": line}],
        "T": [treated, treated],
    }
    cap = compare.capacities(c, res)["cap"]
    win = day[day >= 5]
    assert win.size == 11
    # rows 10..20 of (-1)^row: six +10 and five -10
    assert cap["cells"][0] == pytest.approx(1000 + 10 / 11)
    assert cap["cells"][1] == pytest.approx(975.0)
    first, second = 900 + 10 * win[:5], 900 + 10 * win[5:]
    assert cap["drift"][1] == pytest.approx(second.mean() / first.mean() - 1)
    assert cap["drift"][1] == pytest.approx(987.5 / 960.0 - 1)
    rel = compare.start_over_capacity(c, res)["T"]
    assert rel["capacity_arm"] == "cap"
    np.testing.assert_allclose(rel["values"], [250 / (1000 + 10 / 11), 250 / 975.0])
    assert "of cap" in compare.capacity_table(c, res)


@pytest.mark.parametrize(
    "arms,head,match",
    [
        (
            '[arms.treated]\nset = []\ncapacity = "nobody"\n',
            "capacity_from_day = 1\n",
            "arms.treated.capacity.*nobody",
        ),
        (
            '[arms.treated]\nset = []\ncapacity = "treated"\n',
            "capacity_from_day = 1\n",
            "arms.treated.capacity",
        ),
        ('[arms.treated]\nset = []\ncapacity = "untreated"\n', "", "capacity_from_day"),
        (
            '[arms.treated]\nset = []\ncapacity = "untreated"\n',
            "capacity_from_day = -1\n",
            "capacity_from_day.*-1",
        ),
        ("[arms.treated]\nset = []\nsize = 3\n", "", "arms.treated.*capacity"),
    ],
)
def test_bad_capacity_is_named(tmp_path, arms, head, match):
    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    f.write_text(head + CMP.replace("[arms.treated]\nset = []\n", arms))
    with pytest.raises((ScenarioError, UserError), match=match):
        compare.load_comparison(f)


def test_capacity_arm_runs_to_its_end_and_is_reported(tmp_path):
    """With stop_days_after_progression, an arm that only measures a capacity is not stopped
    when it progresses: it runs the scenario's whole duration (its steady burden is a mean to
    the end), while another untreated arm of the same lattice stops; the printed table and the
    JSON give the capacity and each arm's burden at the reference day over it."""
    import json

    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    text = (
        "stop_days_after_progression = 0.2\ncapacity_from_day = 1.5\n"
        + CMP.replace(
            "[arms.treated]\nset = []\n", '[arms.treated]\nset = []\ncapacity = "untreated"\n'
        )
        + '[arms.untreated_stopped]\nset = ["drugs.erlotinib.schedule.kind=none"]\n'
    )
    f.write_text(text)
    c = compare.load_comparison(f)
    assert c.capacity_arms == ["untreated"]
    printed = []
    res = compare.run_comparison(c, echo=printed.append)
    for full, cut in zip(res["untreated"], res["untreated_stopped"]):
        assert full["day"][-1] == pytest.approx(2.0)
        assert cut["day"][-1] < 2.0
        np.testing.assert_array_equal(cut["burden"], full["burden"][: cut["burden"].size])
    cap = compare.capacities(c, res)["untreated"]
    for k, s in enumerate(res["untreated"]):
        assert cap["cells"][k] == pytest.approx(s["burden"][s["day"] >= 1.5].mean())
    assert any("capacity" in p and "of untreated" in p for p in printed)
    compare.write_tables(c, res, tmp_path / "out.png")
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["capacity"]["untreated"]["cells"] == pytest.approx(cap["cells"])
    ref = [s["burden"][np.argmin(np.abs(s["day"] - 0.5))] for s in res["treated"]]
    np.testing.assert_allclose(
        doc["start_over_capacity"]["treated"]["values"], np.array(ref) / np.array(cap["cells"])
    )


def test_arms_subset_keeps_capacity_arms_pairs_and_contrasts(tmp_path, capsys):
    """--arms A,B runs only those arms and the capacity arms they name, in the file's order,
    with the pairs and contrasts among them; an unknown arm is a clear error (exit 2, the arm
    named, the arms listed), before anything runs."""
    (tmp_path / "s.toml").write_text(SCEN)
    f = tmp_path / "c.toml"
    f.write_text(
        "capacity_from_day = 1\n"
        'pairs = [["treated", "untreated"], ["other", "untreated"]]\n'
        'contrasts = [[["treated", "untreated"], ["other", "untreated"]]]\n'
        + CMP.replace(
            "[arms.treated]\nset = []\n", '[arms.treated]\nset = []\ncapacity = "untreated"\n'
        )
        + '[arms.other]\nset = ["tumor.death_per_h=0.01"]\n'
    )
    c = compare.load_comparison(f)
    sub = compare.restrict(c, ["treated"])
    assert list(sub.arms) == ["treated", "untreated"]
    assert sub.capacity_of == {"treated": "untreated"}
    assert sub.pairs == [("treated", "untreated")] and sub.contrasts == []
    assert list(c.arms) == ["treated", "untreated", "other"]  # the original is left whole
    both = compare.restrict(c, ["other", "treated"])
    assert list(both.arms) == ["treated", "untreated", "other"] and len(both.contrasts) == 1
    assert main(["compare", str(f), "--arms", "treated,nope", "-q", "--no-keep-runs"]) == 2
    err = capsys.readouterr().err
    assert "--arms treated,nope: no arm named nope" in err and "treated, untreated, other" in err
    assert "Traceback" not in err
