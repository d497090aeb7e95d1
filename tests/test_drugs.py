"""Drugs: pharmacokinetics against closed forms, pharmacodynamics (Hill curves, Bliss combination,
additive kill), and the presets (issue 3).

Expected plasma levels are computed here from the schedule's definition (tmesim.scenario.
ScheduleConfig; MODEL.md section 5) in integer minutes where the schedule allows it, independently
of tmesim.drugs: a one-compartment level is the sum over past boluses of D exp(-k (t - tau)), a
square wave is the dose while the schedule is on.
"""

import math

import numpy as np
import pytest

import tmesim
from tmesim.drug_presets import DRUG_PRESETS
from tmesim.drugs import Effects, Pharmacokinetics, hill
from tmesim.scenario import DrugConfig, EffectConfig, ScheduleConfig

DT = 6.0


def drug(name="d", half_life_h=0.0, effects=None, **schedule):
    effects = effects or {"kill_S": EffectConfig()}
    return DrugConfig(
        name=name, half_life_h=half_life_h, schedule=ScheduleConfig(**schedule), effects=effects
    )


def simulate(drugs, steps):
    """Plasma after each step (steps, n_drugs), doses given per step, and the level at 0."""
    pk = Pharmacokinetics(drugs, DT)
    plasma = pk.initial()
    start = plasma.copy()
    levels, given = [], []
    for j in range(steps):
        given.append(pk.advance(plasma, j * DT).copy())
        levels.append(plasma.copy())
    return np.array(levels), np.array(given), start


def bolus_level(times_h, doses, half_life_h, t_min):
    """One-compartment closed form: sum over boluses at tau <= t of D exp(-k (t - tau))."""
    k = math.log(2) / (half_life_h * 60)
    return sum(
        d * math.exp(-k * (t_min - 60 * tau))
        for tau, d in zip(times_h, doses)
        if 60 * tau <= t_min + 1e-6
    )


# ---------------------------------------------------------------------------------- one compartment
@pytest.mark.parametrize(
    "sched,times",
    [
        # boluses every 8 h (= 80 steps: on step boundaries) from day 0, none at or after day 2
        (
            dict(kind="continuous", dose_uM=2.0, interval_h=8.0, stop_day=2.0),
            [0, 8, 16, 24, 32, 40],
        ),
        # off the step grid: every 7.3 h from 0.1 d (2.4 h = step 24) to day 1.5 (36 h, excluded)
        (
            dict(kind="continuous", dose_uM=1.5, interval_h=7.3, start_day=0.1, stop_day=1.5),
            [2.4 + 7.3 * i for i in range(5)],
        ),
        # intermittent: 1 day on, 1 day off, a bolus every 12 h while on, none from day 5
        (
            dict(
                kind="intermittent",
                dose_uM=1.0,
                interval_h=12.0,
                on_days=1.0,
                off_days=1.0,
                stop_day=5.0,
            ),
            [0, 12, 48, 60, 96, 108],
        ),
    ],
)
def test_one_compartment_boluses_match_the_closed_form(sched, times):
    """Half-life 10 h: after every step the level equals the sum of decaying exponentials of the
    boluses given so far (relative 1e-10), and each bolus is counted exactly once: the doses
    reported per step plus the initial level add up to the schedule's total, one nonzero step per
    bolus after t = 0."""
    d = drug(half_life_h=10.0, **sched)
    steps = 1200  # 120 h
    levels, given, start = simulate((d,), steps)
    doses = [sched["dose_uM"]] * len(times)
    assert start[0] == pytest.approx(bolus_level(times, doses, 10.0, 0.0), abs=1e-12)
    for j in range(steps):
        want = bolus_level(times, doses, 10.0, (j + 1) * DT)
        assert levels[j, 0] == pytest.approx(want, rel=1e-10, abs=1e-12), j
    total = given[:, 0].sum() + start[0]
    assert total == pytest.approx(sched["dose_uM"] * len(times), rel=1e-12)
    assert (given[:, 0] > 0).sum() == sum(1 for t in times if t > 0)


def test_explicit_dose_list_one_compartment():
    """Explicit boluses at 0, 0.1 h (= one step: on the boundary, 0.1 x 60 is not exact in
    binary), 3.05 h (off the grid) and twice at 12 h: closed form after every step, each dose
    counted once (the two at 12 h in the same step)."""
    times, doses = [0.0, 0.1, 3.05, 12.0, 12.0], [1.0, 2.0, 0.5, 0.25, 0.25]
    d = drug(half_life_h=4.0, kind="doses", times_h=tuple(times), doses_uM=tuple(doses))
    levels, given, start = simulate((d,), 200)
    assert start[0] == 1.0
    for j in range(200):
        assert levels[j, 0] == pytest.approx(
            bolus_level(times, doses, 4.0, (j + 1) * DT), rel=1e-10
        ), j
    nz = np.flatnonzero(given[:, 0])
    np.testing.assert_array_equal(nz, [0, 30, 119])  # steps ending at 6, 186 and 720 min
    np.testing.assert_allclose(given[nz, 0], [2.0, 0.5, 0.5])


# ---------------------------------------------------------------------------------- square waves
def square_on(t_min, start_d, stop_d, on_d=None, off_d=None):
    """Integer-minute definition: on from start to stop (excluded), and within each period of
    on + off days for the first on days."""
    t, start, stop = round(t_min), round(start_d * 1440), round(stop_d * 1440)
    if not start <= t < stop:
        return False
    if on_d is None:
        return True
    return (t - start) % round((on_d + off_d) * 1440) < round(on_d * 1440)


def test_square_waves_follow_their_schedules():
    """Half-life 0: the plasma level after a step (at its end time) is the dose while the
    schedule is on, 0 otherwise: continuous from 0.5 to 1.5 days; intermittent from day 0, 0.25 d
    on, 0.5 d off, until day 2.5; explicit list: each dose sets the level until the next (2 uM
    at 1 h, 0 at 5 h, 1 uM at 5.5 h); kind "none": 0 whatever the dose. All switch times are step
    boundaries, checked exactly (the boundaries here are exact in binary days: see the test
    below for the others)."""
    drugs = (
        drug("a", kind="continuous", dose_uM=3.0, start_day=0.5, stop_day=1.5),
        drug(
            "b",
            kind="intermittent",
            dose_uM=2.0,
            start_day=0.0,
            on_days=0.25,
            off_days=0.5,
            stop_day=2.5,
        ),
        drug("c", kind="doses", times_h=(1.0, 5.0, 5.5), doses_uM=(2.0, 0.0, 1.0)),
        drug("z", kind="none", dose_uM=9.0),
    )
    steps = 800
    levels, given, start = simulate(drugs, steps)
    np.testing.assert_array_equal(start, [0.0, 2.0, 0.0, 0.0])  # b is on at t = 0
    for j in range(steps):
        t = (j + 1) * DT
        want_c = 2.0 if 60 <= t < 300 else 0.0 if t < 330 else 1.0
        want = [3.0 * square_on(t, 0.5, 1.5), 2.0 * square_on(t, 0.0, 2.5, 0.25, 0.5), want_c, 0.0]
        np.testing.assert_array_equal(levels[j], want, err_msg=f"step {j}, t = {t} min")
    np.testing.assert_array_equal(given, levels)
    # on-periods of 6 h start at 0, 18, 36 and 54 h (day 2.5 = 60 h cuts none short): 60 step
    # ends each, less t = 0, which is the initial level
    assert (levels[:, 1] > 0).sum() == 4 * 360 / DT - 1


def test_intermittent_switches_on_step_boundaries_are_exact():
    """An intermittent schedule whose switch times are whole numbers of minutes (hence step
    boundaries) must be on exactly for the minutes [start + k period, start + k period + on):
    checked at every step end for 10 days against integer-minute arithmetic, for three schedules
    (start 0.1 d, 0.25 on, 0.5 off; start 0, 0.3 on, 0.7 off; start 1.1 d, 0.1 on, 0.2 off).
    And a one-compartment schedule (0.3 d on, 0.7 d off, a bolus every 7.2 h while on, to day
    5) gives boluses at 0, 28.8, 50.4, 72 and 100.8 h; 7.2 h and 79.2 h are the ends of
    on-periods (off)."""
    from tmesim.drugs import _on, dose_times_h

    bad = []
    for start, on, off in ((0.1, 0.25, 0.5), (0.0, 0.3, 0.7), (1.1, 0.1, 0.2)):
        sc = ScheduleConfig(
            kind="intermittent",
            dose_uM=1.0,
            start_day=start,
            on_days=on,
            off_days=off,
            stop_day=10.0,
        )
        for t in range(0, 10 * 1440, 6):
            if _on(sc, float(t)) != square_on(t, start, 10.0, on, off):
                bad.append((start, on, off, t))
    sc = ScheduleConfig(
        kind="intermittent", dose_uM=1.0, on_days=0.3, off_days=0.7, interval_h=7.2, stop_day=5.0
    )
    times, _ = dose_times_h(sc, 120.0)
    boluses_ok = np.allclose(times, [0.0, 28.8, 50.4, 72.0, 100.8]) if times.size == 5 else False
    assert not bad and boluses_ok, (
        f"{len(bad)} wrong step ends, first {bad[:4]}; bolus times {times.tolist()}"
    )


# ---------------------------------------------------------------------------------- effects
def test_hill_curve():
    """hill(c) = emax c^h / (c^h + EC50^h): half of emax at EC50, 0 at 0 and below (negative
    concentrations are clipped), emax in the limit, float64."""
    c = np.array([-1.0, 0.0, 0.5, 2.0, 8.0, 1e9])
    got = hill(c, 0.8, 2.0, 1.7)
    cc = np.maximum(c, 0)
    np.testing.assert_allclose(got, 0.8 * cc**1.7 / (cc**1.7 + 2.0**1.7), rtol=1e-14)
    assert got.dtype == np.float64 and got[3] == pytest.approx(0.4) and got[0] == got[1] == 0
    assert got[-1] == pytest.approx(0.8, rel=1e-12)


def plain_hill(c, emax, ec50, h):
    """The Emax/Hill formula as written, in float64 (NaN where (c / EC50)^h overflows)."""
    c = np.maximum(np.asarray(c, dtype=np.float64), 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        x = (c / ec50) ** h
        return emax * x / (1.0 + x)


@pytest.mark.parametrize(
    "c,emax,ec50,h",
    [
        (1e30, 0.9, 1e-300, 1.0),  # c / EC50 overflows
        (3.4e38, 1.0, 1e-6, 10.0),  # float32's largest level, steep curve: x overflows
        (1e31, 0.7, 1.0, 10.0),  # x = 1e310
        (np.inf, 0.5, 2.0, 1.0),  # an infinite level (the float32 field overflowed)
        (1e-290, 0.8, 1e-300, 10.0),  # tiny both, ratio 1e10, x = 1e100: finite, emax
    ],
)
def test_hill_of_a_very_potent_drug_is_emax_not_nan(c, emax, ec50, h):
    """Where (c / EC50)^h overflows, the plain formula gives inf / inf = NaN and a cell's kill
    probability NaN; the effect is its limit, emax, exactly."""
    got = hill(np.array([c, c]), emax, ec50, h)
    assert np.all(got == emax), got
    assert hill(c, emax, ec50, h) == emax and np.ndim(hill(c, emax, ec50, h)) == 0
    with np.errstate(all="ignore"):
        assert np.isnan(plain_hill(c, emax, ec50, h)) or c == 1e-290  # what the fix is for


def test_hill_is_the_plain_formula_wherever_that_is_finite():
    """Bit for bit equal to the plain formula over concentrations from 1e-30 to float32's
    largest, EC50 from 1e-300 to 1e6 and Hill exponents up to 10 (the kernels mirror the plain
    formula operation for operation: a changed value here would break CPU/GPU parity)."""
    rng = np.random.default_rng(18)
    c = np.concatenate([[0.0, -1.0], 10.0 ** rng.uniform(-30, 38.5, 4000)])
    for ec50 in (1e-300, 1e-9, 0.37, 1.0, 1e6):
        for h in (0.5, 1.0, 1.7, 2.0, 10.0):
            want = plain_hill(c, 0.85, ec50, h)
            got = hill(c, 0.85, ec50, h)
            finite = np.isfinite(want)
            assert np.array_equal(got[finite], want[finite])
            assert np.all(got[~finite] == 0.85)
            # in [0, emax] up to the rounding of emax x / (1 + x) (one ulp above emax)
            assert np.all((got >= 0) & (got <= np.nextafter(0.85, 1.0)))


def test_effects_combine_by_bliss_and_kill_rates_add():
    """Two drugs on the same fraction target (block_entry, cancel_met) combine by Bliss
    independence, 1 - (1 - E1)(1 - E2); kill rates add (rate_i E_i); E_target is the Bliss
    combination of the kill_S drugs' effects; exit_speedup adds fold_i E_i; a target no drug hits
    is 0. Checked on concentrations spanning both EC50s."""
    e1 = dict(
        kill_S=EffectConfig(emax=0.9, ec50_uM=1.0, hill=2.0, rate_per_h=0.3),
        block_entry=EffectConfig(emax=0.6, ec50_uM=0.5, hill=1.0),
        exit_speedup=EffectConfig(emax=1.0, ec50_uM=1.0, hill=1.0, fold=2.0),
    )
    e2 = dict(
        kill_S=EffectConfig(emax=1.0, ec50_uM=3.0, hill=1.0, rate_per_h=0.1),
        kill_P=EffectConfig(emax=1.0, ec50_uM=0.2, hill=1.0, rate_per_h=0.05),
        block_entry=EffectConfig(emax=0.5, ec50_uM=2.0, hill=3.0),
        exit_speedup=EffectConfig(emax=0.5, ec50_uM=4.0, hill=1.0, fold=1.0),
        cancel_met=EffectConfig(emax=1.0, ec50_uM=0.1, hill=1.0),
    )
    drugs = (DrugConfig(name="a", effects=e1), DrugConfig(name="b", effects=e2))
    c1 = np.array([0.0, 0.3, 1.0, 4.0, 0.0])
    c2 = np.array([0.0, 2.0, 0.1, 10.0, 5.0])
    out = Effects(drugs).at(np.stack([c1, c2]))

    def H(c, e):
        return e.emax * c**e.hill / (c**e.hill + e.ec50_uM**e.hill)

    k1, k2 = H(c1, e1["kill_S"]), H(c2, e2["kill_S"])
    b1, b2 = H(c1, e1["block_entry"]), H(c2, e2["block_entry"])
    np.testing.assert_allclose(out["kill_S"], 0.3 * k1 + 0.1 * k2, rtol=1e-12)
    np.testing.assert_allclose(out["kill_P"], 0.05 * H(c2, e2["kill_P"]), rtol=1e-12)
    np.testing.assert_allclose(out["target"], 1 - (1 - k1) * (1 - k2), rtol=1e-12)
    np.testing.assert_allclose(out["block_entry"], 1 - (1 - b1) * (1 - b2), rtol=1e-12)
    np.testing.assert_allclose(
        out["exit_speedup"],
        2.0 * H(c1, e1["exit_speedup"]) + 1.0 * H(c2, e2["exit_speedup"]),
        rtol=1e-12,
    )
    np.testing.assert_allclose(out["cancel_met"], H(c2, e2["cancel_met"]), rtol=1e-12)
    assert np.all(out["cancel_igf1r"] == 0) and np.all(out["block_division"] == 0)
    assert np.all(out["target"][0] == 0) and out["kill_S"][0] == 0


@pytest.mark.parametrize("preset", sorted(DRUG_PRESETS))
def test_presets_load_and_user_values_override(preset):
    """Every preset builds a valid drug from a scenario; a user's value for one key of a preset
    effect replaces that key only, the others keep the preset's values."""
    eff = DRUG_PRESETS[preset]["effects"]
    target = sorted(eff)[0]
    sc = tmesim.loads_scenario(
        f"[drugs.d]\npreset = '{preset}'\n[drugs.d.effects.{target}]\nec50_uM = 123.0\n"
    )
    d = sc.drug("d")
    assert set(d.effects) == set(eff)
    assert d.effects[target].ec50_uM == 123.0
    for k, v in eff[target].items():
        if k != "ec50_uM":
            assert getattr(d.effects[target], k) == v
    assert "d" in sc.field_names and sc.field("d").role == "drug"
