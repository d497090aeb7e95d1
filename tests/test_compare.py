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
