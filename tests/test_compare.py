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


@pytest.mark.parametrize("text,match", [
    (CMP.replace("replicates = 2", "replicates = 0"), "replicates"),
    (CMP.replace('[arms.untreated]\nset = ["drugs.erlotinib.schedule.kind=none"]',
                 '[arms.untreated]\nset = ["drugs.erlotinib.schedule.kind=sometimes"]'),
     "arm 'untreated'.*drugs.erlotinib.schedule.kind"),
    ("colour = 1\n" + CMP, "no such key"),
])
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
    c = compare.Comparison(scenario=None, arms={"A": [], "B": []}, replicates=5,
                           reference_day=0.0, progression_fraction=1.2, pairs=[("A", "B")])
    delays = np.array([1.0, 1.1, 1.2, 1.3, 1.4])
    res = {"B": [{"day": day, "burden": 100 * np.exp(0.2 * day)} for _ in delays],
           "A": [{"day": day, "burden": np.where(day < d, 100.0, 100 * np.exp(0.2 * (day - d)))}
                 for d in delays]}
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
    f.write_text("pairs = [[\"treated\", \"nobody\"]]\n" + CMP)
    with pytest.raises(ScenarioError, match="pairs.*nobody"):
        compare.load_comparison(f)


LIBRARY = sorted(p for p in (compare.Path(__file__).resolve().parent.parent / "scenarios" /
                             "therapy").glob("*.toml") if "scenario = " in p.read_text())


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
        s = run_arm(str(c.scenario), sets + [f"run.duration_days={start + 0.1}",
                                             "grid.shape=[40, 40]", "run.dt_min=30"])
        assert s["burden"][-1] > 0
        given[arm] = tuple(round(float(s[k][-1]), 6) for k in sorted(s)
                           if k.startswith("cumulative_dose_"))
    assert len(set(given.values())) >= 2 or "adaptive" in path.stem or "vs" in path.stem
