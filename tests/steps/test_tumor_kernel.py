"""The tumor kernels (kernels/tumor.cu, driven by tmesim.steps.tumor_kernel) against
TumorRules.apply.

The kernels run compiled as C++ behind kernels/portable.h (PortableLauncher), and on a GPU when
one is present (the ``gpu`` parameter of the launcher fixture and the device-resident test at the
end; both skip without one). The growth rules alone (transitions off) give an identical integer
state, identical counts and identical division lists on random lattices, over several steps. With
the persister biology, every step must leave kind, tumor_state, memory and time_in_P
identical bit for bit to numpy's (float32 compared as bits), with the same RuleCounts in every
field and the same division list, on random 2D and 3D lattices of S, P, R and E cells with random
memory, time in P, oxygen, HGF and IGF-1 and one to four drugs whose concentrations span their
EC50s; and the same in forward, reverse and scrambled work-item order. The parameter sets make
every branch fire often (the tests assert that it did), the expanded persister's (E) included:
P -> E, E -> S, E -> R, E killed and E dividing through a division-blocking drug, each counted
from the lattice and checked against the counts.

Per-cell pow and exp are not correctly rounded and numpy's loops (SVML on AVX-512) differ from
glibc's in the last bit of a few % of their results; kernels/decisions.cuh explains why that
changes a decision or a float32 memory only about once in 1e9 cell-steps or less, so these
~1e4 cell-step tests are exact in practice.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tmesim import codes, launch
from tmesim.drug_presets import DRUG_PRESETS
from tmesim.grid import Grid
from tmesim.scenario import (
    DrugConfig,
    EffectConfig,
    MechanicsConfig,
    SignallingConfig,
    TransitionConfig,
    TumorConfig,
)
from tmesim.steps import tumor_kernel
from tmesim.steps.tumor import RuleCounts, TumorRules
from tmesim.steps.tumor_kernel import KernelTumorRules

DT_MIN = 6.0


# ------------------------------------------------------------------------------------- growth
def tumor_config(**kw) -> TumorConfig:
    """A TumorConfig with the persister transitions off and contact inhibition: the growth rules
    alone (the persister biology and the push rule have their own parity tests)."""
    kw.setdefault("mechanics", MechanicsConfig(push_reach_um=0.0))
    cfg = TumorConfig(**kw)
    if hasattr(cfg, "transitions"):
        from tmesim.scenario import TransitionConfig

        cfg = dataclasses.replace(
            cfg,
            transitions=TransitionConfig(
                pre_existing=False, drug_induced=False, exit_per_h=0.0, resistance_per_h=0.0
            ),
        )
    return cfg


def random_lattice(g, shape, p_tumor=0.45, p_necrotic=0.08, p_vessel=0.02):
    n = int(np.prod(shape))
    u = g.random(n)
    kind = np.zeros(n, dtype=np.uint8)
    kind[u < p_tumor] = codes.TUMOR
    kind[(u >= p_tumor) & (u < p_tumor + p_necrotic)] = codes.NECROTIC
    kind[(u >= p_tumor + p_necrotic) & (u < p_tumor + p_necrotic + p_vessel)] = codes.VESSEL
    kind[(u > 0.97)] = codes.CAF
    state = np.zeros(n, dtype=np.uint8)
    t = kind == codes.TUMOR
    state[t] = g.choice(
        [codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT], t.sum(), p=[0.7, 0.2, 0.1]
    )
    # oxygen across every regime, with values exactly on the thresholds
    o2 = g.uniform(0, 45, n).astype(np.float32)
    edges = np.array([0.0, 2.5, 5.0, 15.0, 38.0], dtype=np.float32)
    pick = g.random(n) < 0.1
    o2[pick] = edges[g.integers(0, len(edges), pick.sum())]
    return kind, state, o2


GROWTH_CONFIGS = {
    "default": dict(),
    "fast": dict(
        doubling_time_h=0.3, necrosis_max_rate_per_h=6.0, necrotic_clearance_per_h=3.0
    ),  # p_div capped at 1: many conflicts
    "step_necrosis": dict(
        doubling_time_h=2.0,
        necrosis_threshold_mmHg=4.0,
        necrosis_max_mmHg=6.0,
        necrosis_max_rate_per_h=2.0,
    ),
    "no_loss": dict(doubling_time_h=1.0, necrosis_max_rate_per_h=0.0, necrotic_clearance_per_h=0.0),
    "odd_thresholds": dict(
        doubling_time_h=1.7,
        proliferation_threshold_mmHg=3.3,
        proliferation_saturation_mmHg=21.7,
        necrosis_threshold_mmHg=7.1,
        necrosis_max_mmHg=1.9,
        necrosis_max_rate_per_h=3.0,
    ),
}


def run_growth(launcher, cfg, shape, neighbourhood, seed, steps, order=0):
    g = np.random.default_rng(seed)
    grid = Grid(shape, 20.0, neighbourhood)
    kind, state, o2 = random_lattice(g, shape)
    ref = TumorRules(cfg, grid, seed, 6.0)
    ker = KernelTumorRules(cfg, grid, seed, 6.0, launcher=launcher)
    k1, s1, k2, s2 = kind.copy(), state.copy(), kind.copy(), state.copy()
    launcher.set_order(order)
    history = []
    try:
        for step in range(steps):
            c1 = ref.apply(k1, s1, o2, step)
            c2 = ker.apply(k2, s2, o2, step)
            np.testing.assert_array_equal(k2, k1, err_msg=f"kind, step {step}")
            np.testing.assert_array_equal(s2, s1, err_msg=f"tumor_state, step {step}")
            for f in ("divisions", "necroses", "cleared", "blocked", "lost_conflicts"):
                assert getattr(c2, f) == getattr(c1, f), (f, step)
            for a, b in zip(ker.last_division, ref.last_division):
                np.testing.assert_array_equal(a, b)
            assert not ker.claims.any()  # claims reset for the next step
            history.append((c1.divisions, c1.necroses, c1.cleared, c1.lost_conflicts))
    finally:
        launcher.set_order(0)
    return history, k2, s2


@pytest.mark.parametrize("name", list(GROWTH_CONFIGS))
@pytest.mark.parametrize(
    "shape,neighbourhood",
    [
        ((40, 33), "moore"),
        ((37, 41), "von_neumann"),
        ((9, 11, 10), "moore"),
        ((8, 9, 7), "von_neumann"),
    ],
)
def test_tumor_rules_identical_state(launcher, name, shape, neighbourhood):
    cfg = tumor_config(**GROWTH_CONFIGS[name])
    seed = 100 * list(GROWTH_CONFIGS).index(name) + len(shape) + (neighbourhood == "moore")
    history, _, _ = run_growth(launcher, cfg, shape, neighbourhood, seed=seed, steps=6)
    totals = np.sum(history, axis=0)
    assert totals[:3].sum() > 0  # the rules did something
    if name != "default":
        assert totals[0] > 0  # something divided
    if name == "fast":
        assert totals[3] > 0  # and conflicts were resolved


@pytest.mark.parametrize("order", [1, 2])
def test_tumor_rules_do_not_depend_on_thread_order(launcher, order):
    """The work items of every launch in reverse and in a scrambled order give the same lattice
    (claims are settled by integer max, not by who comes first)."""
    cfg = tumor_config(**GROWTH_CONFIGS["fast"])
    _, k0, s0 = run_growth(launcher, cfg, (30, 30), "moore", 5, 4, order=0)
    _, k1, s1 = run_growth(launcher, cfg, (30, 30), "moore", 5, 4, order=order)
    np.testing.assert_array_equal(k1, k0)
    np.testing.assert_array_equal(s1, s0)


def test_tumor_kernels_take_every_rule(launcher):
    """The default persister biology runs on the kernels with the numpy step's result (the
    persister parity tests below are the full ones: drugs, signalling, memory, every branch)."""
    cfg = TumorConfig()
    g = np.random.default_rng(4)
    grid = Grid((20, 20), 20.0)
    kind, state, o2 = random_lattice(g, grid.shape)
    ref = TumorRules(cfg, grid, 4, 6.0)
    ker = KernelTumorRules(cfg, grid, 4, 6.0, launcher=launcher)
    mem = g.random(grid.n_sites).astype(np.float32)
    t_p = g.uniform(0, 5000, grid.n_sites).astype(np.float32)
    a = [kind.copy(), state.copy(), mem.copy(), t_p.copy()]
    b = [kind.copy(), state.copy(), mem.copy(), t_p.copy()]
    for step in range(3):
        assert ker.apply(b[0], b[1], o2, step, b[2], b[3]) == ref.apply(
            a[0], a[1], o2, step, a[2], a[3]
        )
        for x, y in zip(a, b):
            np.testing.assert_array_equal(y.view(np.uint8), x.view(np.uint8))


# ------------------------------------------------------------------------ persister biology: inputs
def preset(name, **overrides):
    """A DrugConfig from tmesim.drug_presets.DRUG_PRESETS, effect fields overridden per target."""
    effects = {
        t: EffectConfig(**{**e, **overrides.get(t, {})})
        for t, e in DRUG_PRESETS[name]["effects"].items()
    }
    return DrugConfig(name=name, effects=effects)


# kill rates raised so that kills happen within a few 6-min steps
DRUGS = {
    "none": (),
    "egfr": (preset("egfr_tki", kill_S=dict(rate_per_h=4.0)),),
    # kill_S + block_division (hill 1.5: pow), block_entry + exit_speedup, cancel_met
    "egfr_kdm5_met": (
        preset("egfr_tki", kill_S=dict(rate_per_h=4.0)),
        preset("kdm5_inhibitor"),
        preset("met_inhibitor"),
    ),
    # kill_P (hill 1 and 2: np.square), cancel_igf1r, a second kill_S with hill 0.5 (np.sqrt) and
    # a generic hill: every Hill branch of tm_hill, sums and Bliss products over several drugs
    "four": (
        preset("hdac_inhibitor", kill_P=dict(rate_per_h=3.0)),
        preset("gpx4_inhibitor", kill_P=dict(rate_per_h=2.0)),
        preset("igf1r_inhibitor"),
        DrugConfig(
            name="mixed",
            effects={
                "kill_S": EffectConfig(emax=0.9, ec50_uM=0.3, hill=0.5, rate_per_h=3.0),
                "exit_speedup": EffectConfig(emax=0.8, ec50_uM=0.3, hill=2.7, fold=3.0),
                "block_division": EffectConfig(emax=0.6, ec50_uM=0.3, hill=0.5),
                "cancel_met": EffectConfig(emax=0.7, ec50_uM=0.3, hill=1.3),
            },
        ),
    ),
}

HIGH_RATES = dict(
    # contact inhibition: blocked cells and lost claims happen often (the push rule has its own
    # parity tests, tests/steps/test_mechanics_kernel.py, the "default" config below runs both)
    mechanics=MechanicsConfig(push_reach_um=0.0),
    doubling_time_h=0.5,
    necrosis_max_rate_per_h=3.0,
    necrotic_clearance_per_h=3.0,
    persister_tolerance=0.3,
    death_per_h=0.4,
    transitions=TransitionConfig(
        entry_basal_per_h=0.6,
        entry_induced_per_h=3.0,
        exit_per_h=1.5,
        expansion_per_h=3.0,
        expansion_ramp_h=0.7,
        expansion_delay_h=0.4,
        expanded_exit_per_h=1.2,
        resistance_per_h=0.6,
        adaptive_mutability=4.0,
        mutability_ramp_h=1.0,
        memory_gain_per_h=2.0,
        memory_decay_per_h=1.0,
        memory_exit_slowing=2.0,
        hypoxia_weight=3.0,
        hypoxia_exit_slowing=2.0,
    ),
    signalling=SignallingConfig(hgf_growth_gain=0.7, igf1_growth_gain=0.4, entry_weight=2.0),
)

CONFIGS = {
    "high": TumorConfig(**HIGH_RATES),
    # hypoxia as a step (hypoxic <= necrosis threshold), necrosis as a step, selection only
    "steps_selection": TumorConfig(
        **{
            **HIGH_RATES,
            "hypoxic_threshold_mmHg": 4.0,
            "necrosis_threshold_mmHg": 5.0,
            "necrosis_max_mmHg": 6.0,
            "transitions": dataclasses.replace(HIGH_RATES["transitions"], drug_induced=False),
        }
    ),
    # adaptation only, no necrosis, no memory decay (k = 0 without drug)
    "induced_only": TumorConfig(
        **{
            **HIGH_RATES,
            "necrosis_max_rate_per_h": 0.0,
            "transitions": dataclasses.replace(
                HIGH_RATES["transitions"], pre_existing=False, memory_decay_per_h=0.0
            ),
        }
    ),
    "default": TumorConfig(),
}


def random_inputs(g, shape, drugs, cfg, decades=(-2, 2)):
    """A lattice of S/P/R/E cells, necrotic and empty voxels, and every per-site input; drug
    concentrations span 10**decades times each drug's first EC50."""
    n = int(np.prod(shape))
    u = g.random(n)
    kind = np.zeros(n, dtype=np.uint8)
    kind[u < 0.5] = codes.TUMOR
    kind[(u >= 0.5) & (u < 0.58)] = codes.NECROTIC
    kind[(u >= 0.58) & (u < 0.6)] = codes.VESSEL
    kind[u > 0.97] = codes.CAF
    state = np.zeros(n, dtype=np.uint8)
    t = kind == codes.TUMOR
    state[t] = g.choice(
        [codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT, codes.EXPANDED],
        t.sum(),
        p=[0.45, 0.3, 0.12, 0.13],
    )
    memory = g.random(n).astype(np.float32)
    memory[g.random(n) < 0.2] = 0.0
    memory[g.random(n) < 0.03] = -0.25  # not physical: pins numpy's "memory > 0" gate
    ramp = np.float32(cfg.transitions.mutability_ramp_h * 60.0)
    delay_e = np.float32(cfg.transitions.expansion_delay_h * 60.0)
    ramp_e = delay_e + np.float32(cfg.transitions.expansion_ramp_h * 60.0)
    time_in_P = g.uniform(0, 2.5 * ramp, n).astype(np.float32)
    time_in_P[g.random(n) < 0.1] = ramp
    time_in_P[g.random(n) < 0.05] = ramp_e  # exactly at the end of either ramp
    time_in_P[5::37] = delay_e  # exactly at the end of the expansion delay (no draw: the
    # lattice's other draws stay as they were)
    time_in_P[g.random(n) < 0.1] = 0.0
    o2 = g.uniform(0, 45, n).astype(np.float32)
    edges = np.array(
        [
            0.0,
            cfg.necrosis_max_mmHg,
            cfg.necrosis_threshold_mmHg,
            cfg.proliferation_threshold_mmHg,
            cfg.hypoxic_threshold_mmHg,
            cfg.proliferation_saturation_mmHg,
        ],
        dtype=np.float32,
    )
    pick = g.random(n) < 0.15
    o2[pick] = edges[g.integers(0, len(edges), pick.sum())]
    hgf = g.uniform(0, 40, n).astype(np.float32)
    igf1 = g.uniform(0, 40, n).astype(np.float32)
    hgf[g.random(n) < 0.1] = 0.0
    conc = None
    if drugs:
        # each drug's concentrations span 1e-2 to 1e2 (decades) times its first effect's EC50
        ec50 = np.array([next(iter(d.effects.values())).ec50_uM for d in drugs])
        conc = (ec50[:, None] * 10.0 ** g.uniform(*decades, (len(drugs), n))).astype(np.float32)
        conc[g.random(conc.shape) < 0.08] = 0.0
        conc[g.random(conc.shape) < 0.02] = -1e-3  # solver undershoot: clamped to 0
    return kind, state, memory, time_in_P, o2, hgf, igf1, conc


def same_bits(a, b):
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def lattice_moves(kind0, state0, kind1, state1):
    """What became of each cell present at the start of a step, read from the lattice alone
    (without the push rule a cell never moves, and a daughter is born only on a voxel empty at
    the start): {(state at the start, state at the end or "killed" or "necrotic"): number}."""
    out = {}
    for s0 in (codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT, codes.EXPANDED):
        was = (kind0 == codes.TUMOR) & (state0 == s0)
        out[s0, "killed"] = int((was & (kind1 == codes.EMPTY)).sum())
        out[s0, "necrotic"] = int((was & (kind1 == codes.NECROTIC)).sum())
        for s1 in (codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT, codes.EXPANDED):
            out[s0, s1] = int((was & (kind1 == codes.TUMOR) & (state1 == s1)).sum())
    return out


def run_both(
    launcher, cfg, drugs, shape, neighbourhood, seed, steps, order=0, fields="both", **inputs
):
    """Steps of TumorRules.apply and KernelTumorRules.apply from the same random state, compared
    after every step. Returns the summed counts and the kernels' final arrays; the summed
    :func:`lattice_moves` are left in ``run_both.moves`` and the number of divisions of E mothers
    under a division-blocking drug (block_division > 0 at the mother) in
    ``run_both.e_blocked_divisions``."""
    g = np.random.default_rng(seed)
    grid = Grid(shape, 20.0, neighbourhood)
    kind, state, memory, time_in_P, o2, hgf, igf1, conc = random_inputs(
        g, shape, drugs, cfg, **inputs
    )
    hgf = hgf if fields in ("both", "hgf") else None
    igf1 = igf1 if fields in ("both", "igf1") else None
    ref = TumorRules(cfg, grid, seed, DT_MIN, drugs)
    ker = KernelTumorRules(cfg, grid, seed, DT_MIN, drugs, launcher=launcher)
    a = [x.copy() for x in (kind, state, memory, time_in_P)]
    b = [x.copy() for x in (kind, state, memory, time_in_P)]
    total = RuleCounts()
    moves: dict = {}
    e_blocked = 0
    block = 0.0
    if ref.effects is not None:
        block = ref.effects.at(conc)["block_division"]
    launcher.set_order(order)
    try:
        for step in range(steps):
            kind0, state0 = a[0].copy(), a[1].copy()
            c1 = ref.apply(a[0], a[1], o2, step, a[2], a[3], hgf, igf1, conc)
            c2 = ker.apply(b[0], b[1], o2, step, b[2], b[3], hgf, igf1, conc)
            for name, x, y in zip(("kind", "tumor_state", "memory", "time_in_P"), a, b):
                assert same_bits(y, x), (name, step, np.flatnonzero(x != y)[:10])
            assert c2 == c1, (step, c1, c2)
            for x, y in zip(ker.last_division, ref.last_division):
                np.testing.assert_array_equal(x, y)
            assert not ker.claims.any()
            for f in dataclasses.fields(RuleCounts):
                setattr(total, f.name, getattr(total, f.name) + getattr(c1, f.name))
            m = lattice_moves(kind0, state0, *a[:2])
            # the counts, from the lattice (independent of both implementations' bookkeeping)
            S, P, R, E = codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT, codes.EXPANDED
            assert c1.became_E == m[P, E], (step, c1, m)
            assert c1.exited_P == m[P, S] + m[E, S], (step, c1, m)
            assert c1.became_R == m[P, R] + m[E, R], (step, c1, m)
            assert c1.entered_P == m[S, P], (step, c1, m)
            assert c1.killed_P == m[P, "killed"] + m[E, "killed"], (step, c1, m)
            assert m[E, P] == m[R, E] == m[S, E] == 0, m  # no such transitions
            for k, v in m.items():
                moves[k] = moves.get(k, 0) + v
            mothers = ker.last_division[0]
            e_mother = state0[mothers] == E
            if np.ndim(block):
                e_blocked += int((e_mother & (block[mothers] > 0)).sum())
    finally:
        launcher.set_order(0)
    run_both.moves, run_both.e_blocked_divisions = moves, e_blocked
    return total, b


# ------------------------------------------------------------------------------------- parity
GEOMETRIES = [
    ((24, 24), "moore"),
    ((40, 40), "von_neumann"),
    ((12, 12, 12), "moore"),
    ((10, 9, 8), "von_neumann"),
]


@pytest.mark.parametrize("drugs", list(DRUGS))
@pytest.mark.parametrize("shape,neighbourhood", GEOMETRIES)
def test_persister_rules_identical(launcher, drugs, shape, neighbourhood):
    seed = 31 * list(DRUGS).index(drugs) + 7 * len(shape) + (neighbourhood == "moore")
    total, _ = run_both(
        launcher, CONFIGS["high"], DRUGS[drugs], shape, neighbourhood, seed, steps=5
    )
    # every branch fired (so a wrong branch cannot hide behind an event that never happens)
    assert total.divisions and total.necroses and total.cleared, total
    assert total.entered_P and total.exited_P and total.became_R, total
    moves = run_both.moves
    E = codes.EXPANDED
    assert moves[E, codes.SENSITIVE] and moves[E, codes.RESISTANT] and moves[E, "killed"], moves
    if drugs != "none":  # P -> E needs the targeted drug; every drug set blocks division
        assert total.became_E and run_both.e_blocked_divisions, (
            total,
            run_both.e_blocked_divisions,
        )
    # basal turnover (death_per_h) kills S, P and R with or without drugs; only R deaths are
    # outside killed_S + killed_P
    assert total.killed_S and total.killed_P and total.killed > total.killed_S + total.killed_P, (
        total
    )
    if len(shape) == 2 and neighbourhood == "moore":
        assert total.blocked and total.lost_conflicts, total


@pytest.mark.parametrize("shape,neighbourhood", [((30, 30), "moore"), ((10, 11, 9), "moore")])
def test_expanded_persisters_divide_through_a_division_block(launcher, shape, neighbourhood):
    """The EGFR TKI at 1e4-1e5 x its EC50 blocks division to within 1e-6 (Hill 1.5) and kills
    sensitive cells: there S and P mothers (practically) never divide, E mothers (like R) do, at
    expanded_cycle_factor of the sensitive rate, identically on both sides. (A few sites have no
    drug: random_inputs' zeros and solver undershoots.)"""
    cfg = dataclasses.replace(CONFIGS["high"], expanded_cycle_factor=0.9)
    drugs = DRUGS["egfr"]
    run_both(launcher, cfg, drugs, shape, neighbourhood, seed=11, steps=5, decades=(4, 5))
    assert run_both.e_blocked_divisions > 0
    # the same inputs again (same generator seed) to see which mothers divided under the block
    grid = Grid(shape, 20.0, neighbourhood)
    ref = TumorRules(cfg, grid, 11, DT_MIN, drugs)
    g = np.random.default_rng(11)
    kind, state, memory, time_in_P, o2, hgf, igf1, conc = random_inputs(
        g, shape, drugs, cfg, decades=(4, 5)
    )
    full = ref.effects.at(conc)["block_division"] > 1 - 1e-6
    assert full.mean() > 0.85
    by_state = dict.fromkeys(codes.TUMOR_STATE_NAMES[1:], 0)
    for step in range(5):
        before = state.copy()
        ref.apply(kind, state, o2, step, memory, time_in_P, hgf, igf1, conc)
        mothers = ref.last_division[0]
        for s in before[mothers[full[mothers]]]:
            by_state[codes.TUMOR_STATE_NAMES[s]] += 1
    assert by_state["E"] > 0 and by_state["S"] == by_state["P"] == 0, by_state


@pytest.mark.parametrize("config", ["steps_selection", "induced_only", "default"])
@pytest.mark.parametrize("drugs", ["none", "egfr_kdm5_met"])
def test_other_parameter_sets_identical(launcher, config, drugs):
    total, _ = run_both(
        launcher,
        CONFIGS[config],
        DRUGS[drugs],
        (30, 30),
        "moore",
        seed=len(config) + len(drugs),
        steps=5,
    )
    assert total.divisions > 0, total
    if config != "default":
        assert total.exited_P and total.became_R, total
        # adaptation only: no drug, no entry
        assert bool(total.entered_P) == (config != "induced_only" or drugs != "none"), total


@pytest.mark.parametrize("fields", ["none", "hgf", "igf1"])
def test_without_signalling_fields_identical(launcher, fields):
    """hgf / igf1 None: numpy's activation is the scalar 0 (no field read)."""
    run_both(
        launcher, CONFIGS["high"], DRUGS["four"], (24, 24), "moore", seed=5, steps=4, fields=fields
    )


POTENT = (
    preset("egfr_tki", kill_S=dict(rate_per_h=4.0)),
    DrugConfig(
        name="potent",
        effects={
            # (c / EC50)^h overflows to inf for any c > 0 (pow and square branches): the effect
            # is emax exactly on both sides, where the plain formula gives inf / inf = NaN
            "exit_speedup": EffectConfig(emax=0.8, ec50_uM=1e-300, hill=2.7, fold=3.0),
            "cancel_met": EffectConfig(emax=0.7, ec50_uM=1e-300, hill=2.0),
        },
    ),
)


def test_a_potent_drug_saturates_identically(launcher):
    """A drug so potent that (c / EC50)^h overflows: the kernels' tm_hill returns emax as
    drugs.hill does (not NaN), so the rules stay identical to numpy and P still exits."""
    total, _ = run_both(launcher, CONFIGS["high"], POTENT, (20, 21), "moore", 13, 5)
    assert total.exited_P and total.entered_P, total


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("drugs", ["none", "four"])
def test_persister_rules_do_not_depend_on_thread_order(launcher, order, drugs):
    """Every launch's work items in reverse and in a scrambled order: identical to numpy and to
    the forward order."""
    args = (launcher, CONFIGS["high"], DRUGS[drugs], (20, 21), "moore", 9, 4)
    t0, b0 = run_both(*args, order=0)
    t1, b1 = run_both(*args, order=order)
    assert t1 == t0
    for x, y in zip(b0, b1):
        assert same_bits(x, y)


def test_memory_and_time_default_to_zeros_not_kept(launcher):
    """memory / time_in_P None: zeros for the step, as numpy."""
    cfg, drugs = CONFIGS["high"], DRUGS["egfr"]
    g = np.random.default_rng(3)
    grid = Grid((16, 16), 20.0, "moore")
    kind, state, _, _, o2, hgf, igf1, conc = random_inputs(g, grid.shape, drugs, cfg)
    ref = TumorRules(cfg, grid, 3, DT_MIN, drugs)
    ker = KernelTumorRules(cfg, grid, 3, DT_MIN, drugs, launcher=launcher)
    k1, s1, k2, s2 = kind.copy(), state.copy(), kind.copy(), state.copy()
    for step in range(3):
        c1 = ref.apply(k1, s1, o2, step, hgf=hgf, igf1=igf1, drug_conc=conc)
        c2 = ker.apply(k2, s2, o2, step, hgf=hgf, igf1=igf1, drug_conc=conc)
        assert c1 == c2
        np.testing.assert_array_equal(k2, k1)
        np.testing.assert_array_equal(s2, s1)


def test_inputs_numpy_would_read_differently_are_refused(launcher):
    cfg, drugs = CONFIGS["high"], DRUGS["egfr"]
    grid = Grid((6, 6), 20.0)
    ker = KernelTumorRules(cfg, grid, 1, DT_MIN, drugs, launcher=launcher)
    kind = np.zeros(36, np.uint8)
    state = np.zeros(36, np.uint8)
    o2 = np.zeros(36, np.float32)
    with pytest.raises(ValueError, match="drug_conc"):
        ker.apply(kind, state, o2, 0)
    with pytest.raises(ValueError, match="hgf: expected float32"):
        ker.apply(kind, state, o2, 0, hgf=np.zeros(36), drug_conc=np.zeros((1, 36), np.float32))
    with pytest.raises(ValueError, match="drug_conc: expected float32"):
        ker.apply(kind, state, o2, 0, drug_conc=np.zeros((2, 36), np.float32))


# ------------------------------------------------------------------------------------- tables
class HostTables:
    """A launcher that is never called: the constructor only builds its tables on the host."""

    xp = np


def _perturbed(value):
    if isinstance(value, bool):
        return not value
    return value * 0.5 + 0.125


@pytest.mark.parametrize("section", ["tumor", "transitions", "signalling"])
def test_every_config_field_reaches_the_kernels(section):
    """Changing any one field of TumorConfig, TransitionConfig or SignallingConfig changes the
    kernels' parameter vector or state table: no setting of the numpy rules is ignored."""
    base = TumorConfig()
    grid = Grid((4, 4), 20.0)
    drugs = DRUGS["egfr"]

    def tables(cfg):
        k = KernelTumorRules(cfg, grid, 1, DT_MIN, drugs, launcher=HostTables())
        return np.concatenate([k.params_host, k.state_table_host.reshape(-1)])

    ref = tables(base)
    sub = {"tumor": base, "transitions": base.transitions, "signalling": base.signalling}[section]
    for f in dataclasses.fields(sub):
        v = getattr(sub, f.name)
        if dataclasses.is_dataclass(v):
            continue  # checked as its own section
        changed = dataclasses.replace(sub, **{f.name: _perturbed(v)})
        cfg = changed if section == "tumor" else dataclasses.replace(base, **{section: changed})
        assert not np.array_equal(tables(cfg), ref), f"{section}.{f.name} is not passed on"


def test_effect_table_follows_effects_order():
    drugs = DRUGS["four"]
    cols = launch.kernel_defines("tumor.cu", "TM_EF_")
    code = launch.kernel_defines("tumor.cu", "TM_EFFECT_")
    t = tumor_kernel.tumor_effect_table(drugs)
    want = [(i, tgt, e) for i, d in enumerate(drugs) for tgt, e in d.effects.items()]
    assert t.shape[0] == len(want)
    for row, (i, tgt, e) in zip(t, want):
        assert row[cols["DRUG"]] == i and row[cols["TARGET"]] == code[tgt.upper()]
        assert (row[cols["EMAX"]], row[cols["EC50_UM"]], row[cols["HILL"]]) == (
            e.emax,
            e.ec50_uM,
            e.hill,
        )
        coef = e.rate_per_h if tgt.startswith("kill") else e.fold if tgt == "exit_speedup" else 0
        assert row[cols["COEF"]] == coef
    assert tumor_kernel.tumor_effect_table(()).shape == (
        0,
        launch.kernel_defines("tumor.cu", "TM_N_")["EFFECT_COLUMNS"],
    )


def test_action_codes_match_the_kernel():
    acts = {
        k.lower(): v
        for k, v in launch.kernel_defines("tumor.cu", "TM_ACT_").items()
        if k != "EVENT_MASK"
    }
    assert acts == {k.lower(): v for k, v in tumor_kernel.ACTIONS.items()}
    trans = launch.kernel_defines("tumor.cu", "TM_TRANSITION_")
    assert trans.pop("SHIFT") == tumor_kernel.TRANSITION_SHIFT
    assert {k.lower(): v for k, v in trans.items()} == {
        k.lower(): v for k, v in tumor_kernel.TRANSITIONS.items() if k != "none"
    }


# ------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape,neighbourhood",
    [((96, 80), "moore"), ((20, 24, 22), "moore"), ((20, 24, 22), "von_neumann")],
)
def test_tumor_rules_on_device_and_deterministic(gpu_launcher, shape, neighbourhood):
    """The growth rules with the state kept on the GPU for several steps: identical to numpy, and
    two GPU runs identical (claims settle by integer atomicMax, so thread timing cannot change a
    winner)."""
    import cupy

    cfg = tumor_config(**GROWTH_CONFIGS["fast"])
    g = np.random.default_rng(7)
    grid = Grid(shape, 20.0, neighbourhood)
    kind, state, o2 = random_lattice(g, shape)
    ref = TumorRules(cfg, grid, 3, 6.0)
    k_ref, s_ref = kind.copy(), state.copy()
    runs = []
    for _ in range(2):
        ker = KernelTumorRules(cfg, grid, 3, 6.0, launcher=gpu_launcher)
        k_d, s_d, o_d = cupy.asarray(kind), cupy.asarray(state), cupy.asarray(o2)
        for step in range(8):
            ker.apply(k_d, s_d, o_d, step)
        runs.append((cupy.asnumpy(k_d), cupy.asnumpy(s_d)))
    for step in range(8):
        ref.apply(k_ref, s_ref, o2, step)
    for k_g, s_g in runs:
        np.testing.assert_array_equal(k_g, k_ref)
        np.testing.assert_array_equal(s_g, s_ref)
    assert (k_ref == codes.TUMOR).sum() > (kind == codes.TUMOR).sum()


@pytest.mark.gpu
@pytest.mark.parametrize("shape,neighbourhood", [((64, 60), "moore"), ((16, 18, 14), "moore")])
def test_persister_rules_on_device_and_deterministic(gpu_launcher, shape, neighbourhood):
    """State kept on the GPU for several steps: identical to numpy, and two GPU runs identical."""
    import cupy

    cfg, drugs = CONFIGS["high"], DRUGS["four"]
    g = np.random.default_rng(17)
    grid = Grid(shape, 20.0, neighbourhood)
    kind, state, memory, time_in_P, o2, hgf, igf1, conc = random_inputs(g, shape, drugs, cfg)
    host = [x.copy() for x in (kind, state, memory, time_in_P)]
    ref = TumorRules(cfg, grid, 3, DT_MIN, drugs)
    want = [ref.apply(*host[:2], o2, s, *host[2:], hgf, igf1, conc) for s in range(6)]
    dev_in = [cupy.asarray(x) for x in (o2, hgf, igf1, conc)]
    for _ in range(2):
        ker = KernelTumorRules(cfg, grid, 3, DT_MIN, drugs, launcher=gpu_launcher)
        dev = [cupy.asarray(x) for x in (kind, state, memory, time_in_P)]
        got = [ker.apply(*dev[:2], dev_in[0], s, *dev[2:], *dev_in[1:]) for s in range(6)]
        assert got == want
        for x, d in zip(host, dev):
            assert same_bits(cupy.asnumpy(d), x)
