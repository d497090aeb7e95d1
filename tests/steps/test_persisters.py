"""Persister biology of the tumor rules (tmesim.steps.tumor): phenotype transitions, drug kill,
cytostasis, memory and time in P, each rule tested in isolation against its rate (issue 3).
Secretion by cells is tested in tests/steps/test_fields.py, the stromal rules in
tests/steps/test_stroma.py, initial persisters and stroma in tests/test_initial.py.

Every test drives one rule with the others switched off (transition rates zero, division off by
oxygen: the proliferation threshold is raised above the oxygen given, which stays above the
necrosis threshold), so the expected statistics follow from that rule's documented rate alone
(tmesim.scenario.TransitionConfig, SignallingConfig; MODEL.md section 3). Expectations are computed
here from the documented formulas (the Hill curve is written out again, not imported), and counts
are compared with exact binomial tails at a two-sided level of 1e-6 (about 5 sigma) unless a test
says otherwise. Seeds are fixed, so the tests are deterministic; the bounds say that they would
pass for almost every seed.
"""

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from tmesim import codes
from tmesim.grid import Grid
from tmesim.scenario import (
    DrugConfig,
    EffectConfig,
    SignallingConfig,
    TransitionConfig,
    TumorConfig,
)
from tmesim.steps.tumor import TumorRules

from ..helpers import assert_binomial, sparse_cells

DT = 6.0
S, P, R = codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT
DTEP = codes.EXPANDED  # (E is the drug effect below)


# ---------------------------------------------------------------------------------- helpers
def hill(c, emax, ec50, h):
    """The Emax/Hill curve of MODEL.md section 3, written out independently of tmesim.drugs."""
    return emax * c**h / (c**h + ec50**h)


def transitions(**kw):
    """All phenotype transitions off and memory frozen, then ``kw``."""
    base = dict(
        pre_existing=False,
        drug_induced=False,
        entry_basal_per_h=0.0,
        entry_induced_per_h=0.0,
        exit_per_h=0.0,
        expansion_per_h=0.0,
        expansion_delay_h=0.0,
        expanded_exit_per_h=0.0,
        resistance_per_h=0.0,
        memory_gain_per_h=0.0,
        memory_decay_per_h=0.0,
    )
    base.update(kw)
    return TransitionConfig(**base)


# signalling constants the expectations below are written with (explicit, not the defaults)
SIGNALLING = dict(
    hgf_half_max_ng_per_mL=5.0,
    igf1_half_max_ng_per_mL=10.0,
    met_protection_max=0.8,
    igf1r_protection_max=0.5,
)
OXYGEN = dict(hypoxic_threshold_mmHg=15.0, necrosis_threshold_mmHg=5.0, necrosis_max_mmHg=2.5)


def growing_tumor(**kw):
    """Division at the full rate at 38 mmHg; no transitions unless given."""
    kw.setdefault("transitions", transitions())
    return TumorConfig(
        proliferation_threshold_mmHg=5.0,
        proliferation_saturation_mmHg=38.0,
        signalling=SignallingConfig(**SIGNALLING),
        **OXYGEN,
        **kw,
    )


def still_tumor(tr=None, signalling=None, **kw):
    """Tumor parameters with no division below 40 mmHg (the tests give 10-38 mmHg, above the
    5 mmHg necrosis threshold): h = clip((15 - O2)/10, 0, 1) is 0 at 38 and 0.5 at 10 mmHg."""
    kw.setdefault("proliferation_threshold_mmHg", 40.0)
    kw.setdefault("proliferation_saturation_mmHg", 50.0)
    return TumorConfig(
        transitions=tr or transitions(),
        signalling=signalling or SignallingConfig(**SIGNALLING),
        **OXYGEN,
        **kw,
    )


def drug(name, **effects):
    return DrugConfig(name=name, effects={t: EffectConfig(**e) for t, e in effects.items()})


def tki(emax=1.0, ec50=1.0, h=1.0, rate=0.0, **more):
    """A targeted drug: its kill_S effect defines E_target (rate 0: no kill, stress only)."""
    return drug("tki", kill_S=dict(emax=emax, ec50_uM=ec50, hill=h, rate_per_h=rate), **more)


def full_lattice(shape, states):
    """Every voxel a tumor cell; ``states`` (n_sites,) their phenotypes."""
    n = int(np.prod(shape))
    kind = np.full(n, codes.TUMOR, dtype=np.uint8)
    return kind, np.asarray(states, dtype=np.uint8).copy()


def groups(n_sites, n_groups):
    """Group index of every site: contiguous, equal blocks."""
    return np.arange(n_sites) * n_groups // n_sites


def run(rules, kind, ts, o2, steps, **arrays):
    """Apply the rules ``steps`` times (steps 0..steps-1); returns the summed counts."""
    tot = {}
    for step in range(steps):
        c = rules.apply(kind, ts, o2, step, **arrays)
        for k, v in vars(c).items():
            tot[k] = tot.get(k, 0) + v
    return tot


# ---------------------------------------------------------------------------------- S -> P
def test_basal_entry_matches_rate_and_hypoxia_raises_it():
    """Without drug, sensitive cells enter P at k_basal (1 + hypoxia_weight h). With exit and
    P -> R off, a cell is P after n steps with probability 1 - exp(-k n dt): k_basal = 0.5 /h,
    weight 2, h = 0 (38 mmHg) and h = 0.5 (10 mmHg: k doubles). drug_induced is on but without
    drug E_target = 0, so it adds nothing. Binomial bound per group; the counts agree."""
    shape = (100, 100)
    n = shape[0] * shape[1]
    kind, ts = full_lattice(shape, np.full(n, S))
    g = groups(n, 2)
    o2 = np.where(g == 0, 38.0, 10.0).astype(np.float32)
    tr = transitions(
        pre_existing=True,
        drug_induced=True,
        entry_basal_per_h=0.5,
        entry_induced_per_h=5.0,
        hypoxia_weight=2.0,
    )
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=31, dt_min=DT)
    steps = 12
    tot = run(rules, kind, ts, o2, steps)
    t_h = steps * DT / 60
    for gi, h in ((0, 0.0), (1, 0.5)):
        k = 0.5 * (1 + 2.0 * h)
        sel = g == gi
        assert_binomial((ts[sel] == P).sum(), sel.sum(), -math.expm1(-k * t_h), f"h={h}")
    assert tot["entered_P"] == (ts == P).sum()
    assert tot["divisions"] == tot["killed"] == tot["necroses"] == 0
    assert np.all(kind == codes.TUMOR) and set(np.unique(ts)) <= {S, P}


ENTRY_CASES = [  # (C_tki, memory, O2, hgf, igf1, C_kdm5)
    (1.5, 0.0, 38.0, 0.0, 0.0, 0.0),
    (1.5, 0.6, 38.0, 0.0, 0.0, 0.0),
    (0.5, 0.3, 10.0, 5.0, 10.0, 0.0),
    (1.5, 0.6, 38.0, 0.0, 0.0, 2.0),
]


@pytest.mark.parametrize(
    "pre_existing,drug_induced", [(True, True), (False, True), (True, False), (False, False)]
)
def test_drug_induced_entry_and_its_switches(pre_existing, drug_induced):
    """S -> P at (k_b (1 + w_h h) + k_i E (1 + m + w_s (a_met + a_igf) + w_h h)) (1 - E_block),
    each origin switched off by its flag. E = 0.8 C^2/(C^2 + 1) (targeted drug, no kill),
    E_block = 0.9 C/(C + 2) (KDM5-like block_entry), a_met = hgf/(hgf + 5), a_igf = igf1/(igf1 +
    10); memory frozen (gain = decay = 0). Four groups of 10,000 cells (ENTRY_CASES: memory,
    hypoxia h = 0.5, HGF and IGF-1 at half activation, the KDM5 block), 20 steps: P fraction
    1 - exp(-k t), binomial bound per group; no entry at all with both origins off."""
    shape = (200, 200)
    n = shape[0] * shape[1]
    kind, ts = full_lattice(shape, np.full(n, S))
    g = groups(n, len(ENTRY_CASES))
    cols = np.array(ENTRY_CASES)[g].T
    c_tki, mem, o2, hgf, igf1, c_kdm5 = cols
    kb, ki, wh, ws = 0.2, 0.4, 1.0, 0.5
    tr = transitions(
        pre_existing=pre_existing,
        drug_induced=drug_induced,
        entry_basal_per_h=kb,
        entry_induced_per_h=ki,
        hypoxia_weight=wh,
    )
    p = still_tumor(tr, signalling=SignallingConfig(entry_weight=ws, **SIGNALLING))
    drugs = (
        tki(emax=0.8, ec50=1.0, h=2.0),
        drug("kdm5", block_entry=dict(emax=0.9, ec50_uM=2.0, hill=1.0)),
    )
    rules = TumorRules(p, Grid(shape, 20.0), seed=32, dt_min=DT, drugs=drugs)
    memory = mem.astype(np.float32)
    steps = 20
    run(
        rules,
        kind,
        ts,
        o2.astype(np.float32),
        steps,
        memory=memory,
        time_in_P=np.zeros(n, np.float32),
        hgf=hgf.astype(np.float32),
        igf1=igf1.astype(np.float32),
        drug_conc=np.stack([c_tki, c_kdm5]).astype(np.float32),
    )
    np.testing.assert_array_equal(memory, mem.astype(np.float32))  # frozen
    for gi, (ct, m, ox, hg, ig, ck) in enumerate(ENTRY_CASES):
        h = min(1.0, max(0.0, (15 - ox) / 10))
        E = hill(ct, 0.8, 1.0, 2.0)
        a = hg / (hg + 5.0) + ig / (ig + 10.0)
        k = 0.0
        if pre_existing:
            k += kb * (1 + wh * h)
        if drug_induced:
            k += ki * E * (1 + m + ws * a + wh * h)
        k *= 1 - hill(ck, 0.9, 2.0, 1.0)
        sel = g == gi
        assert_binomial(
            (ts[sel] == P).sum(),
            sel.sum(),
            -math.expm1(-k * steps * DT / 60),
            f"case {gi}, k={k:.4g}/h",
        )


# ---------------------------------------------------------------------------------- P -> S
def test_exit_off_drug_slowed_by_memory_and_hypoxia_with_relaxing_memory():
    """Off drug, P -> S at k_out / (1 + s_m m + s_h h) while memory relaxes as m0 exp(-d t)
    (E = 0). The survival in P over the steps is the product of exp(-k_j dt), k_j from the
    memory at the start of step j, m_j = m0 exp(-d j dt): accounted for exactly. k_out = 1 /h,
    s_m = 1.5, s_h = 2, d = 0.3 /h; groups (m0, O2) = (0, 38), (0.8, 38), (0.8, 10 -> h = 0.5).
    Binomial bound per group. Reverted cells are S with time_in_P 0, and every cell's memory
    ends at m0 exp(-d n dt) (float32)."""
    shape = (300, 100)
    n = shape[0] * shape[1]
    cases = [(0.0, 38.0), (0.8, 38.0), (0.8, 10.0)]
    kind, ts = full_lattice(shape, np.full(n, P))
    g = groups(n, len(cases))
    m0 = np.array([c[0] for c in cases])[g]
    o2 = np.array([c[1] for c in cases])[g].astype(np.float32)
    d = 0.3
    tr = transitions(
        exit_per_h=1.0,
        memory_exit_slowing=1.5,
        hypoxia_exit_slowing=2.0,
        memory_decay_per_h=d,
        memory_gain_per_h=0.7,
    )
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=33, dt_min=DT)
    memory = m0.astype(np.float32)
    tip = np.full(n, 30.0, np.float32)
    steps = 20
    tot = run(rules, kind, ts, o2, steps, memory=memory, time_in_P=tip)
    for gi, (m, ox) in enumerate(cases):
        h = min(1.0, max(0.0, (15 - ox) / 10))
        mj = m * np.exp(-d * np.arange(steps) * DT / 60)
        k = 1.0 / (1 + 1.5 * mj + 2.0 * h)  # 1/h, per step j
        stay = math.exp(-np.sum(k) * DT / 60)
        sel = g == gi
        assert_binomial((ts[sel] == S).sum(), sel.sum(), 1 - stay, f"case {gi}")
    assert tot["exited_P"] == (ts == S).sum() and tot["became_R"] == 0
    assert np.all(tip[ts == S] == 0) and np.all(tip[ts == P] == 30.0 + steps * DT)
    np.testing.assert_allclose(memory, m0 * math.exp(-d * steps * DT / 60), rtol=1e-5, atol=1e-7)


EXIT_CASES = [  # (C_tki, C_kdm5)
    (3.0, 0.0),  # E = 0.75: factor 0.25
    (1e12, 0.0),  # E = 1 - 1e-12: no exit
    (3.0, 2.0),  # E = 0.75 and speed-up F = 2 x 0.5 = 1: factor 1.25
    (0.0, 2.0),  # speed-up alone: factor 2
]


def test_exit_under_targeted_drug_and_exit_speedup():
    """P -> S at k_out (1 - E + F) / (1 + s_m m), E = C/(C + 1) of the targeted drug, F = fold x
    E_kdm5 = 2 C/(C + 2) (exit_speedup). Memory frozen at 0.4, k_out = 1 /h, s_m = 1, 15 steps,
    10,000 cells per case (EXIT_CASES). Under saturating drug (1 - E = 1e-12) the expected
    number of exits is 1e-9: none. Binomial bound per group."""
    shape = (200, 200)
    n = shape[0] * shape[1]
    kind, ts = full_lattice(shape, np.full(n, P))
    g = groups(n, len(EXIT_CASES))
    conc = np.array(EXIT_CASES)[g].T.astype(np.float64)
    tr = transitions(exit_per_h=1.0, memory_exit_slowing=1.0)
    drugs = (tki(), drug("kdm5", exit_speedup=dict(emax=1.0, ec50_uM=2.0, hill=1.0, fold=2.0)))
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=34, dt_min=DT, drugs=drugs)
    steps = 15
    run(
        rules,
        kind,
        ts,
        np.full(n, 38.0, np.float32),
        steps,
        memory=np.full(n, 0.4, np.float32),
        drug_conc=conc,
    )
    for gi, (ct, ck) in enumerate(EXIT_CASES):
        factor = 1 - hill(ct, 1, 1, 1) + 2.0 * hill(ck, 1, 2, 1)
        k = 1.0 * factor / 1.4
        sel = g == gi
        assert_binomial(
            (ts[sel] == S).sum(), sel.sum(), -math.expm1(-k * steps * DT / 60), f"case {gi}"
        )
    assert (ts[g == 1] == S).sum() == 0


# ---------------------------------------------------------------------------------- P -> R
@pytest.mark.parametrize("ramp_h,tip0_min", [(1e6, 0.0), (2.0, 180.0), (10.0, 0.0)])
def test_resistance_rate_and_mutability_ramp(ramp_h, tip0_min):
    """P -> R at mu (1 + a min(1, time_in_P / ramp) E_target) (TransitionConfig; the adaptive
    rise of the mutation rate acts under the targeted drug). mu = 0.3 /h, a = 3; two groups:
    no drug (E = 0) and targeted drug at E = 0.75. Cases: time_in_P 0 with a huge ramp (rate mu);
    time_in_P beyond the ramp (mu (1 + a E)); time_in_P 0 with a 10 h ramp, rising by dt per
    step (accounted for exactly: survival exp(-dt sum_j k_j), time_in_P = t0 + j dt at step j).
    Exit off. Binomial bound per group."""
    shape = (200, 100)
    n = shape[0] * shape[1]
    kind, ts = full_lattice(shape, np.full(n, P))
    g = groups(n, 2)
    conc = np.where(g == 1, 3.0, 0.0)[None, :]
    mu, a = 0.3, 3.0
    tr = transitions(resistance_per_h=mu, adaptive_mutability=a, mutability_ramp_h=ramp_h)
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=35, dt_min=DT, drugs=(tki(),))
    tip = np.full(n, tip0_min, np.float32)
    steps = 20
    tot = run(rules, kind, ts, np.full(n, 38.0, np.float32), steps, time_in_P=tip, drug_conc=conc)
    for gi, E in ((0, 0.0), (1, 0.75)):
        t_j = tip0_min + DT * np.arange(steps)
        k = mu * (1 + a * np.minimum(1.0, t_j / (ramp_h * 60)) * E)
        sel = g == gi
        assert_binomial(
            (ts[sel] == R).sum(), sel.sum(), -math.expm1(-np.sum(k) * DT / 60), f"E={E}"
        )
    assert tot["became_R"] == (ts == R).sum() and tot["exited_P"] == 0
    assert np.all(tip[ts == P] == tip0_min + steps * DT)


@pytest.mark.parametrize("with_drug", [False, True])
def test_competing_exit_and_resistance_split_in_proportion(with_drug):
    """P -> S and P -> R compete: a cell leaves P with probability 1 - exp(-(k_S + k_R) dt) per
    step, and goes to S with probability k_S / (k_S + k_R). Off drug k_S = 0.6, k_R = 0.4 /h;
    under drug (E = 0.5, time_in_P beyond the ramp) k_S = 0.6 x 0.5, k_R = 0.4 (1 + 3 x 0.5).
    After 10 steps (S, P, R) is multinomial: each marginal is checked with its binomial bound,
    and the S share of the cells that left P with Binomial(n_left, k_S / (k_S + k_R))."""
    shape = (100, 100)
    n = shape[0] * shape[1]
    kind, ts = full_lattice(shape, np.full(n, P))
    tr = transitions(
        exit_per_h=0.6,
        resistance_per_h=0.4,
        adaptive_mutability=3.0,
        mutability_ramp_h=1.0,
        memory_exit_slowing=1.0,
    )
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=36, dt_min=DT, drugs=(tki(),))
    c = 1.0 if with_drug else 0.0
    steps = 10
    run(
        rules,
        kind,
        ts,
        np.full(n, 38.0, np.float32),
        steps,
        time_in_P=np.full(n, 120.0, np.float32),
        drug_conc=np.full((1, n), c),
    )
    E = hill(c, 1, 1, 1)
    kS, kR = 0.6 * (1 - E), 0.4 * (1 + 3.0 * E)
    stay = math.exp(-(kS + kR) * steps * DT / 60)
    nS, nP, nR = (ts == S).sum(), (ts == P).sum(), (ts == R).sum()
    assert nS + nP + nR == n
    assert_binomial(nP, n, stay, "P")
    assert_binomial(nS, n, (1 - stay) * kS / (kS + kR), "S")
    assert_binomial(nR, n, (1 - stay) * kR / (kS + kR), "R")
    assert_binomial(nS, nS + nR, kS / (kS + kR), "split")


# ---------------------------------------------------------------------------------- P -> E
@pytest.mark.parametrize(
    "delay_h,ramp_h,tip0_min", [(0.0, 2.0, 180.0), (0.0, 10.0, 0.0), (0.5, 1.0, 0.0)]
)
def test_expansion_rate_ramp_and_only_under_drug(delay_h, ramp_h, tip0_min):
    """P -> E (a persister resumes cycling: DTEP) at k_E E_target clip((time_in_P - delay) /
    ramp, 0, 1), with k_E = 0.3 /h; groups without drug (E = 0: no expansion at all) and with
    the targeted drug at E = 0.75. time_in_P starts beyond the ramp (constant rate), or at 0 with
    a 10 h ramp, or at 0 with a 30 min delay (no expansion in the first 5 steps) and a 1 h ramp,
    rising by dt per step (survival in P exp(-dt sum_j k_j)). Exit and resistance off. Binomial
    bound; the count became_E equals the E cells, and E cells keep counting their time in P."""
    shape = (200, 100)
    n = shape[0] * shape[1]
    kind, ts = full_lattice(shape, np.full(n, P))
    g = groups(n, 2)
    conc = np.where(g == 1, 3.0, 0.0)[None, :]
    tr = transitions(expansion_per_h=0.3, expansion_ramp_h=ramp_h, expansion_delay_h=delay_h)
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=135, dt_min=DT, drugs=(tki(),))
    tip = np.full(n, tip0_min, np.float32)
    steps = 20
    tot = run(rules, kind, ts, np.full(n, 38.0, np.float32), steps, time_in_P=tip, drug_conc=conc)
    assert (ts[g == 0] == DTEP).sum() == 0
    t_j = tip0_min + DT * np.arange(steps)
    k = 0.3 * 0.75 * np.clip((t_j - delay_h * 60) / (ramp_h * 60), 0.0, 1.0)
    assert_binomial((ts[g == 1] == DTEP).sum(), (g == 1).sum(), -math.expm1(-np.sum(k) * DT / 60))
    assert tot["became_E"] == (ts == DTEP).sum() and tot["exited_P"] == tot["became_R"] == 0
    assert np.all(tip == tip0_min + steps * DT)


def test_competing_exit_expansion_and_resistance_split_in_proportion():
    """Under the targeted drug (E = 0.5, time in P beyond both ramps) a persister leaves P at
    k_S + k_E + k_R per hour, k_S = 0.6 (1 - E), k_E = 0.8 E, k_R = 0.4 (1 + 3 E), and goes to
    each state in proportion to its rate; after 10 steps (S, P, E, R) is multinomial: each
    marginal is checked with its binomial bound. Expanded cells do not expand again, and with
    their own exit 0 here they only go on to R, at k_R: the E -> R share is bounded too."""
    shape = (100, 100)
    n = shape[0] * shape[1]
    kind, ts = full_lattice(shape, np.full(n, P))
    tr = transitions(
        exit_per_h=0.6,
        expansion_per_h=0.8,
        expansion_ramp_h=1.0,
        resistance_per_h=0.4,
        adaptive_mutability=3.0,
        mutability_ramp_h=1.0,
    )
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=136, dt_min=DT, drugs=(tki(),))
    steps = 10
    run(
        rules,
        kind,
        ts,
        np.full(n, 38.0, np.float32),
        steps,
        time_in_P=np.full(n, 120.0, np.float32),
        drug_conc=np.ones((1, n)),
    )
    E_ = hill(1.0, 1, 1, 1)
    kS, kE, kR = 0.6 * (1 - E_), 0.8 * E_, 0.4 * (1 + 3.0 * E_)
    k = kS + kE + kR
    T = steps * DT / 60
    stay = math.exp(-k * T)
    # E cells: entered at rate kE from P, left only to R at kR (closed form of the chain)
    in_E = kE / (k - kR) * (math.exp(-kR * T) - math.exp(-k * T))
    counts = {st: (ts == st).sum() for st in (S, P, DTEP, R)}
    assert sum(counts.values()) == n
    assert_binomial(counts[P], n, stay, "P")
    assert_binomial(counts[S], n, (1 - stay) * kS / k, "S")
    assert_binomial(counts[DTEP], n, in_E, "E")
    assert_binomial(counts[R], n, 1 - stay - (1 - stay) * kS / k - in_E, "R")


@pytest.mark.parametrize("with_drug", [False, True])
def test_expanded_persisters_revert_or_become_resistant(with_drug):
    """E -> S at k_X (1 - E) / (1 + s_m m) with its own rate k_X = expanded_exit_per_h (1.2 /h;
    the P rate exit_per_h, 0.05 /h, must not be used), competing with E -> R at k_R = 0.4
    (1 + 3 E); memory 0.5 with slowing 1 (factor 1/1.5). Off drug and under drug at E = 0.5.
    Multinomial marginals with binomial bounds; an E cell never becomes P, time in P restarts on
    reversion and goes on counting otherwise."""
    shape = (100, 100)
    n = shape[0] * shape[1]
    kind, ts = full_lattice(shape, np.full(n, DTEP))
    tr = transitions(
        exit_per_h=0.05,
        expanded_exit_per_h=1.2,
        expansion_per_h=5.0,
        resistance_per_h=0.4,
        adaptive_mutability=3.0,
        mutability_ramp_h=1.0,
        memory_exit_slowing=1.0,
    )
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=137, dt_min=DT, drugs=(tki(),))
    c = 1.0 if with_drug else 0.0
    steps = 10
    tip = np.full(n, 120.0, np.float32)
    tot = run(
        rules,
        kind,
        ts,
        np.full(n, 38.0, np.float32),
        steps,
        memory=np.full(n, 0.5, np.float32),
        time_in_P=tip,
        drug_conc=np.full((1, n), c),
    )
    E_ = hill(c, 1, 1, 1)
    kS, kR = 1.2 * (1 - E_) / 1.5, 0.4 * (1 + 3.0 * E_)
    stay = math.exp(-(kS + kR) * steps * DT / 60)
    nS, nE, nR = (ts == S).sum(), (ts == DTEP).sum(), (ts == R).sum()
    assert nS + nE + nR == n and (ts == P).sum() == 0
    assert_binomial(nE, n, stay, "E")
    assert_binomial(nS, n, (1 - stay) * kS / (kS + kR), "S")
    assert tot["exited_P"] == nS and tot["became_R"] == nR and tot["became_E"] == 0
    assert np.all(tip[ts == DTEP] == 120.0 + steps * DT) and np.all(tip[ts == S] == 0.0)


def test_expanded_daughters_are_expanded_and_grow_under_drug():
    """A DTEP colony: one E cell under a saturating cytostatic targeted drug (block_division at
    1 - 1e-12, which stops S and P) divides at r_max f_E and its daughters are E with the
    mother's time in P, so the colony grows as a branching process: mean size after t is
    exp(r t) exactly per step of the exp(r dt) - 1 rule ((1 + p)^n). 400 isolated founders,
    doubling 6 h, f_E = 0.5, 12 steps of 1 h; the mean colony size is checked against (1 + p)^n
    with a bound of 6 standard errors of the sample mean, and every cell of the colonies is E."""
    shape = (100, 100)
    grid = Grid(shape, 20.0)
    dt = 60.0
    p = growing_tumor(doubling_time_h=6.0, expanded_cycle_factor=0.5)
    drugs = (drug("tki", block_division=dict(emax=1.0, ec50_uM=1.0, hill=1.0)),)
    rules = TumorRules(p, grid, seed=139, dt_min=dt, drugs=drugs)
    sites = sparse_cells(shape, 5)[:400]
    kind = np.zeros(grid.n_sites, np.uint8)
    ts = np.zeros(grid.n_sites, np.uint8)
    kind[sites], ts[sites] = codes.TUMOR, DTEP
    tip = np.zeros(grid.n_sites, np.float32)
    tip[sites] = 5000.0
    conc = np.full((1, grid.n_sites), 1e12)
    steps = 12
    run(
        rules,
        kind,
        ts,
        np.full(grid.n_sites, 38.0, np.float32),
        steps,
        time_in_P=tip,
        drug_conc=conc,
    )
    tumor = kind == codes.TUMOR
    assert np.all(ts[tumor] == DTEP) and np.all(tip[tumor] == np.float32(5000.0 + steps * dt))
    pdiv = math.expm1(math.log(2) / (6.0 * 60) * 0.5 * dt)
    mean = (1 + pdiv) ** steps
    # Galton-Watson with offspring 1 + Bernoulli(p): var = s2 m^(n-1) (m^n - 1) / (m - 1)
    m = 1 + pdiv
    var = pdiv * (1 - pdiv) * m ** (steps - 1) * (m**steps - 1) / pdiv
    got = tumor.sum() / sites.size
    assert abs(got - mean) < 6 * math.sqrt(var / sites.size), (got, mean)


# ---------------------------------------------------------------------------------- kill
KILL_CASES = [  # (state, hgf, igf1, C_met_inhibitor)
    (S, 0.0, 0.0, 0.0),
    (S, 5.0, 0.0, 0.0),  # a_met 0.5: protection 0.4
    (S, 5.0, 0.0, 0.02),  # MET inhibitor E = 0.5: a_met 0.25, protection 0.2
    (S, 5.0, 10.0, 0.0),  # + IGF-1 a = 0.5: protection 1 - 0.6 x 0.75 = 0.55
    (P, 5.0, 10.0, 0.0),  # persisters: no protection term
    (P, 0.0, 0.0, 0.0),
    (DTEP, 5.0, 10.0, 0.0),  # expanded persisters: as tolerant as P
    (R, 5.0, 0.0, 0.0),  # resistant: never killed
]


def test_drug_kill_rates_protection_and_cleanup():
    """Sensitive cells die at k_S (1 - protection), protection = 1 - (1 - 0.8 a_met (1 - E_met))
    (1 - 0.5 a_igf (1 - E_igf)); persisters at k_S tol + k_P; resistant cells never. k_S = 0.8 x
    C/(C + 1) = 0.4 /h at C = 1; tol = 0.25; k_P = 0.6 x 0.5 = 0.3 /h (OXPHOS-like kill_P at its
    EC50), so k_S tol + k_P = 0.4 /h; MET inhibitor at its EC50 (KILL_CASES). 8000 cells per
    case, 20 steps: survival exp(-k t), binomial bound per group. Killed cells leave EMPTY
    voxels with state NONE, memory 0 and time_in_P 0; survivors keep theirs (memory frozen, no
    transitions)."""
    shape = (280, 200)
    n = shape[0] * shape[1]
    g = groups(n, len(KILL_CASES))
    tab = np.array(KILL_CASES, dtype=np.float64)[g].T
    kind, ts = full_lattice(shape, tab[0])
    hgf, igf1 = tab[1].astype(np.float32), tab[2].astype(np.float32)
    conc = np.stack([np.ones(n), np.full(n, 0.01), tab[3]])
    drugs = (
        tki(rate=0.8),
        drug("oxphos", kill_P=dict(emax=1.0, ec50_uM=0.01, hill=1.0, rate_per_h=0.6)),
        drug("meti", cancel_met=dict(emax=1.0, ec50_uM=0.02, hill=1.0)),
    )
    rules = TumorRules(
        still_tumor(persister_tolerance=0.25), Grid(shape, 20.0), seed=37, dt_min=DT, drugs=drugs
    )
    memory = np.full(n, 0.7, np.float32)
    tip = np.where(ts == P, 50.0, 0.0).astype(np.float32)
    ts0 = ts.copy()
    steps = 20
    tot = run(
        rules,
        kind,
        ts,
        np.full(n, 38.0, np.float32),
        steps,
        memory=memory,
        time_in_P=tip,
        hgf=hgf,
        igf1=igf1,
        drug_conc=conc,
    )
    kS = 0.8 * hill(1.0, 1, 1, 1)
    kP = kS * 0.25 + 0.6 * hill(0.01, 1, 0.01, 1)
    for gi, (st, hg, ig, cm) in enumerate(KILL_CASES):
        a_met = hg / (hg + 5.0) * (1 - hill(cm, 1, 0.02, 1))
        a_igf = ig / (ig + 10.0)
        prot = 1 - (1 - 0.8 * a_met) * (1 - 0.5 * a_igf)
        k = {S: kS * (1 - prot), P: kP, DTEP: kP, R: 0.0}[st]
        sel = g == gi
        assert_binomial(
            (kind[sel] == codes.TUMOR).sum(),
            sel.sum(),
            math.exp(-k * steps * DT / 60),
            f"case {gi}",
        )
    dead = kind == codes.EMPTY
    assert tot["killed"] == dead.sum() and np.all(kind[~dead] == codes.TUMOR)
    assert tot["killed_S"] == (dead & (ts0 == S)).sum()
    assert tot["killed_P"] == (dead & ((ts0 == P) | (ts0 == DTEP))).sum()
    assert np.all(ts[dead] == codes.NONE) and np.all(memory[dead] == 0) and np.all(tip[dead] == 0)
    assert np.all(memory[~dead] == np.float32(0.7))
    np.testing.assert_array_equal(ts[~dead], ts0[~dead])
    assert np.all(tip[~dead & (ts0 == P)] == 50.0 + steps * DT)


def test_basal_turnover_adds_to_the_drug_kill_for_every_state():
    """death_per_h = 0.3: every tumor cell, S, P and R alike, dies at 0.3 /h on top of any drug
    kill (one loss event): without drug survival is exp(-0.3 t) for all three states; with a TKI
    killing S at 0.4 /h, S survive exp(-0.7 t), P exp(-(0.3 + 0.4 tol)) and R still exp(-0.3 t).
    Binomial bound per (drug, state) group of 6000 cells, 15 steps; the counts add up and a dead
    cell's voxel is empty."""
    shape = (180, 200)
    n = shape[0] * shape[1]
    g = groups(n, 6)  # (no drug, drug) x (S, P, R)
    states = np.array([S, P, R] * 2, dtype=np.uint8)[g]
    kind, ts = full_lattice(shape, states)
    conc = np.where(g < 3, 0.0, 1.0)[None, :]
    rules = TumorRules(
        still_tumor(persister_tolerance=0.25, death_per_h=0.3),
        Grid(shape, 20.0),
        seed=41,
        dt_min=DT,
        drugs=(tki(rate=0.8),),
    )
    ts0 = ts.copy()
    steps = 15
    tot = run(rules, kind, ts, np.full(n, 38.0, np.float32), steps, drug_conc=conc)
    t_h = steps * DT / 60
    kS = 0.8 * hill(1.0, 1, 1, 1)
    for gi in range(6):
        st = [S, P, R][gi % 3]
        k = 0.3 + (0.0 if gi < 3 else {S: kS, P: kS * 0.25, R: 0.0}[st])
        sel = g == gi
        assert_binomial(
            (kind[sel] == codes.TUMOR).sum(), sel.sum(), math.exp(-k * t_h), f"group {gi}"
        )
    dead = kind == codes.EMPTY
    assert tot["killed"] == dead.sum() > 0
    assert tot["killed_S"] == (dead & (ts0 == S)).sum()
    assert tot["killed_P"] == (dead & (ts0 == P)).sum()
    assert np.all(ts[dead] == codes.NONE)


# ---------------------------------------------------------------------------------- division
@pytest.mark.parametrize("c_tki", [1.0, 1e12])
def test_block_division_spares_resistant_cells(c_tki):
    """Division per step with probability exp(r dt) - 1, r = r_max f_state (1 - E_block) for S
    and P, r_max f_R for R (resistant cells divide through the cytostatic drug). Doubling 0.5 h,
    f_P = 0.5, f_R = 1 - 0.3; E_block = C/(C + 1): 0.5, or 1 - 1e-12 (saturating: expected S and
    P divisions 1e-9, so none). Isolated cells (neighbourhoods disjoint, no conflicts), the same
    lattice stepped once at 60 different steps: divisions per state are Binomial(cells x 60, p).
    Expanded persisters (E, f_E = 0.4) divide through the drug like R (DTEPs proliferate in
    drug). Daughters copy the mother's phenotype."""
    shape = (180, 180)
    grid = Grid(shape, 20.0)
    sites = sparse_cells(shape, 3)
    states = np.array([S, P, R, DTEP])[np.arange(sites.size) % 4]
    p = growing_tumor(
        doubling_time_h=0.5,
        persister_cycle_factor=0.5,
        resistance_cost=0.3,
        expanded_cycle_factor=0.4,
    )
    drugs = (drug("tki", block_division=dict(emax=1.0, ec50_uM=1.0, hill=1.0)),)
    rules = TumorRules(p, grid, seed=38, dt_min=DT, drugs=drugs)
    o2 = np.full(grid.n_sites, 38.0, np.float32)
    conc = np.full((1, grid.n_sites), c_tki)
    trials = 60
    by_state = {S: 0, P: 0, R: 0, DTEP: 0}
    for step in range(trials):
        kind = np.zeros(grid.n_sites, np.uint8)
        ts = np.zeros(grid.n_sites, np.uint8)
        kind[sites], ts[sites] = codes.TUMOR, states
        c = rules.apply(kind, ts, o2, step, drug_conc=conc)
        assert c.blocked == c.lost_conflicts == 0
        src, tgt = rules.last_division
        for st in by_state:
            by_state[st] += int((ts[src] == st).sum())
        np.testing.assert_array_equal(ts[tgt], ts[src])
    r_max = math.log(2) / 30.0
    Eb = hill(c_tki, 1, 1, 1)
    for st, f in ((S, 1.0 * (1 - Eb)), (P, 0.5 * (1 - Eb)), (R, 0.7), (DTEP, 0.4)):
        n_cells = int((states == st).sum()) * trials
        assert_binomial(by_state[st], n_cells, math.expm1(r_max * f * DT), f"state {st}")
    if c_tki > 1e6:
        assert by_state[S] == by_state[P] == 0


def test_resistant_growth_under_saturating_cytostatic_drug():
    """Under a saturating block_division drug (1 - E = 1e-12), isolated resistant cells grow as
    a Galton-Watson process with p = exp(r dt) - 1, r = (1 - cost) ln2 / doubling: after n steps
    mean N0 m^n, variance N0 p(1-p) m^(n-1) (m^n - 1)/(m - 1), m = 1 + p; 5-sigma bound. Sensitive
    cells placed between the clones do not divide at all."""
    shape = (120, 120)
    grid = Grid(shape, 20.0)
    rsites = sparse_cells(shape, 10, offset=2)
    ssites = sparse_cells(shape, 10, offset=7)
    kind = np.zeros(grid.n_sites, np.uint8)
    ts = np.zeros(grid.n_sites, np.uint8)
    kind[rsites] = kind[ssites] = codes.TUMOR
    ts[rsites], ts[ssites] = R, S
    cost, t_d = 0.3, 2.0
    p = growing_tumor(doubling_time_h=t_d, resistance_cost=cost)
    drugs = (drug("tki", block_division=dict(emax=1.0, ec50_uM=1.0, hill=1.0)),)
    rules = TumorRules(p, grid, seed=39, dt_min=DT, drugs=drugs)
    o2 = np.full(grid.n_sites, 38.0, np.float32)
    conc = np.full((1, grid.n_sites), 1e12)
    steps = 40
    tot = run(rules, kind, ts, o2, steps, drug_conc=conc)
    assert tot["blocked"] + tot["lost_conflicts"] < 0.02 * tot["divisions"]
    N0 = rsites.size
    N = int(((kind == codes.TUMOR) & (ts == R)).sum())
    pr = math.expm1((1 - cost) * math.log(2) / (t_d * 60) * DT)
    m = 1 + pr
    mean = N0 * m**steps
    var = N0 * pr * (1 - pr) * m ** (steps - 1) * (m**steps - 1) / (m - 1)
    assert abs(N - mean) < 5 * math.sqrt(var), (N, mean, math.sqrt(var))
    assert ((kind == codes.TUMOR) & (ts == S)).sum() == ssites.size
    np.testing.assert_array_equal(np.sort(np.flatnonzero(ts == S)), np.sort(ssites))


# ---------------------------------------------------------------------------------- memory
def memory_exact(m0, E, g_h, d_h, t_min):
    """Closed form of dm/dt = g E (1 - m) - d (1 - E) m."""
    a, b = g_h / 60 * E, d_h / 60 * (1 - E)
    k = a + b
    if k == 0:
        return m0
    m_eq = a / k
    return m_eq + (m0 - m_eq) * math.exp(-k * t_min)


@pytest.mark.parametrize("E", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("m0", [0.0, 0.5, 1.0])
def test_relax_memory_solves_the_memory_ode(E, m0):
    """relax_memory over one step equals a numerical solution (RK45, rtol 1e-10) of dm/dt =
    g E (1 - m) - d (1 - E) m over dt, g = 0.2, d = 0.1 /h (to float32 rounding); with g = d = 0
    memory does not change. Uses a 60-min step so that the change is large."""
    tr = transitions(memory_gain_per_h=0.2, memory_decay_per_h=0.1)
    rules = TumorRules(still_tumor(tr), Grid((1, 1), 20.0), seed=0, dt_min=60.0)
    got = rules.relax_memory(np.array([m0]), np.array([E]))
    sol = solve_ivp(
        lambda t, m: 0.2 / 60 * E * (1 - m) - 0.1 / 60 * (1 - E) * m,
        (0, 60.0),
        [m0],
        rtol=1e-10,
        atol=1e-12,
    )
    assert got.dtype == np.float32
    assert abs(float(got[0]) - sol.y[0, -1]) < 1e-7
    frozen = TumorRules(still_tumor(), Grid((1, 1), 20.0), seed=0, dt_min=60.0)
    assert float(frozen.relax_memory(np.array([m0]), np.array([E]))[0]) == np.float32(m0)


def test_memory_over_many_steps_in_apply_is_the_exact_composition():
    """Inside apply, memory relaxes exactly each step, so after n steps at constant E it equals
    the closed form at t = n dt: groups with E = 0, 0.25, 0.75 (targeted drug without kill) and
    m0 = 0.9, 0.1, 0.5; g = 0.5, d = 0.2 /h; 60 steps; agreement to float32 accumulation
    (2e-6)."""
    shape = (3, 50)
    n = 150
    kind, ts = full_lattice(shape, np.full(n, S))
    g = groups(n, 3)
    Es, m0s = [0.0, 0.25, 0.75], [0.9, 0.1, 0.5]
    conc = np.array([e / (1 - e) for e in Es])[g][None, :]  # C = E / (1 - E): E at ec50 1
    tr = transitions(memory_gain_per_h=0.5, memory_decay_per_h=0.2)
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=40, dt_min=DT, drugs=(tki(),))
    memory = np.array(m0s)[g].astype(np.float32)
    steps = 60
    run(rules, kind, ts, np.full(n, 38.0, np.float32), steps, memory=memory, drug_conc=conc)
    for gi, (E, m0) in enumerate(zip(Es, m0s)):
        expect = memory_exact(m0, E, 0.5, 0.2, steps * DT)
        np.testing.assert_allclose(memory[g == gi], expect, atol=2e-6)


@pytest.mark.parametrize("case", ["stay_P", "revert", "enter"])
def test_daughter_inherits_phenotype_memory_and_time_in_P(case):
    """A lone cell that divides with certainty (doubling 0.0001 h: p = 1) under the targeted
    drug (E = 0.5, g = 0.2, d = 0.1 /h): the daughter lands on a neighbour and copies the
    mother's phenotype, memory and time in P after this step's transition and memory update:
    memory = closed form after dt; time in P = t0 + dt for a persister that stays one, 0 after
    reversion (exit at 1e6 /h: certain) or entry (basal entry at 1e6 /h)."""
    shape = (5, 5)
    grid = Grid(shape, 20.0)
    kw = dict(memory_gain_per_h=0.2, memory_decay_per_h=0.1)
    if case == "revert":
        kw["exit_per_h"] = 1e6
    if case == "enter":
        kw.update(pre_existing=True, entry_basal_per_h=1e6)
    p = growing_tumor(
        doubling_time_h=1e-4, persister_cycle_factor=1.0, transitions=transitions(**kw)
    )
    rules = TumorRules(p, grid, seed=41, dt_min=DT, drugs=(tki(),))
    kind = np.zeros(25, np.uint8)
    ts = np.zeros(25, np.uint8)
    kind[12] = codes.TUMOR
    ts[12] = S if case == "enter" else P
    memory = np.zeros(25, np.float32)
    memory[12] = 0.3
    tip = np.zeros(25, np.float32)
    tip[12] = 42.0
    c = rules.apply(
        kind,
        ts,
        np.full(25, 38.0, np.float32),
        0,
        memory=memory,
        time_in_P=tip,
        drug_conc=np.ones((1, 25)),
    )
    assert c.divisions == 1
    src, tgt = (int(x[0]) for x in rules.last_division)
    assert src == 12 and kind[tgt] == codes.TUMOR
    want_state = {"stay_P": P, "revert": S, "enter": P}[case]
    want_tip = {"stay_P": 42.0 + DT, "revert": 0.0, "enter": 0.0}[case]
    assert ts[src] == ts[tgt] == want_state
    assert tip[src] == tip[tgt] == np.float32(want_tip)
    assert memory[src] == memory[tgt]
    assert abs(float(memory[tgt]) - memory_exact(0.3, 0.5, 0.2, 0.1, DT)) < 1e-7


def test_time_in_P_grows_and_restarts():
    """time_in_P grows by dt per step for persisters (no transitions: t0 + n dt exactly), stays
    at its value for sensitive cells, restarts at 0 on entry into P (then grows again) and on
    reversion to S."""
    shape = (10, 10)
    n = 100
    grid = Grid(shape, 20.0)
    o2 = np.full(n, 38.0, np.float32)
    # persisters, nothing else happening
    kind, ts = full_lattice(shape, np.where(np.arange(n) < 50, P, S))
    tip = np.where(ts == P, 17.0, 99.0).astype(np.float32)
    run(TumorRules(still_tumor(), grid, 1, DT), kind, ts, o2, 25, time_in_P=tip)
    assert np.all(tip[:50] == 17.0 + 25 * DT) and np.all(tip[50:] == 99.0)
    # entry: certain in the first step; the clock restarts at 0, then counts
    kind, ts = full_lattice(shape, np.full(n, S))
    tip = np.full(n, 99.0, np.float32)
    rules = TumorRules(
        still_tumor(transitions(pre_existing=True, entry_basal_per_h=1e6)), grid, 2, DT
    )
    rules.apply(kind, ts, o2, 0, time_in_P=tip)
    assert np.all(ts == P) and np.all(tip == 0.0)
    run(rules, kind, ts, o2, 3, time_in_P=tip)
    assert np.all(tip == 3 * DT)
    # reversion: certain in the first step
    kind, ts = full_lattice(shape, np.full(n, P))
    tip = np.full(n, 500.0, np.float32)
    TumorRules(still_tumor(transitions(exit_per_h=1e6)), grid, 3, DT).apply(
        kind, ts, o2, 0, time_in_P=tip
    )
    assert np.all(ts == S) and np.all(tip == 0.0)
