"""Persister biology, drug kill, cytostasis, memory, secretion, stroma and initial conditions, each
rule tested in isolation against its rate (issue 3).

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
from scipy import ndimage, stats
from scipy.integrate import solve_ivp

import tmesim
from tmesim import codes, rng
from tmesim.grid import Grid
from tmesim.initial import initial_state, stroma_region
from tmesim.scenario import (CafConfig, DrugConfig, EffectConfig, TamConfig, TransitionConfig,
                             TumorConfig, SignallingConfig)
from tmesim.simulation import Model
from tmesim.steps.fields import FieldSolver
from tmesim.steps.stroma import StromaRules
from tmesim.steps.tumor import TumorRules

DT = 6.0
ALPHA = 1e-6          # two-sided tail probability of every binomial check
S, P, R = codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT


# ---------------------------------------------------------------------------------- helpers
def hill(c, emax, ec50, h):
    """The Emax/Hill curve of MODEL.md section 3, written out independently of tmesim.drugs."""
    return emax * c ** h / (c ** h + ec50 ** h)


def assert_binomial(k, n, p, what=""):
    """k successes out of n trials is consistent with probability p: both exact binomial tails
    beyond k are above ALPHA / 2 (p = 0 demands k = 0)."""
    k, n = int(k), int(n)
    if p <= 0:
        assert k == 0, (what, k, n, p)
        return
    lo = stats.binom.cdf(k, n, p)
    hi = stats.binom.sf(k - 1, n, p)
    assert min(lo, hi) > ALPHA / 2, (what, k, n, p, k / max(n, 1))


def transitions(**kw):
    """All phenotype transitions off and memory frozen, then ``kw``."""
    base = dict(pre_existing=False, drug_induced=False, entry_basal_per_h=0.0,
                entry_induced_per_h=0.0, exit_per_h=0.0, resistance_per_h=0.0,
                memory_gain_per_h=0.0, memory_decay_per_h=0.0)
    base.update(kw)
    return TransitionConfig(**base)


# signalling constants the expectations below are written with (explicit, not the defaults)
SIGNALLING = dict(hgf_half_max_ng_per_mL=5.0, igf1_half_max_ng_per_mL=10.0,
                  met_protection_max=0.8, igf1r_protection_max=0.5)
OXYGEN = dict(hypoxic_threshold_mmHg=15.0, necrosis_threshold_mmHg=5.0, necrosis_max_mmHg=2.5)


def growing_tumor(**kw):
    """Division at the full rate at 38 mmHg; no transitions unless given."""
    kw.setdefault("transitions", transitions())
    return TumorConfig(proliferation_threshold_mmHg=5.0, proliferation_saturation_mmHg=38.0,
                       signalling=SignallingConfig(**SIGNALLING), **OXYGEN, **kw)


def still_tumor(tr=None, signalling=None, **kw):
    """Tumor parameters with no division below 40 mmHg (the tests give 10-38 mmHg, above the
    5 mmHg necrosis threshold): h = clip((15 - O2)/10, 0, 1) is 0 at 38 and 0.5 at 10 mmHg."""
    kw.setdefault("proliferation_threshold_mmHg", 40.0)
    kw.setdefault("proliferation_saturation_mmHg", 50.0)
    return TumorConfig(transitions=tr or transitions(),
                       signalling=signalling or SignallingConfig(**SIGNALLING), **OXYGEN, **kw)


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
    tr = transitions(pre_existing=True, drug_induced=True, entry_basal_per_h=0.5,
                     entry_induced_per_h=5.0, hypoxia_weight=2.0)
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


@pytest.mark.parametrize("pre_existing,drug_induced",
                         [(True, True), (False, True), (True, False), (False, False)])
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
    tr = transitions(pre_existing=pre_existing, drug_induced=drug_induced, entry_basal_per_h=kb,
                     entry_induced_per_h=ki, hypoxia_weight=wh)
    p = still_tumor(tr, signalling=SignallingConfig(entry_weight=ws, **SIGNALLING))
    drugs = (tki(emax=0.8, ec50=1.0, h=2.0),
             drug("kdm5", block_entry=dict(emax=0.9, ec50_uM=2.0, hill=1.0)))
    rules = TumorRules(p, Grid(shape, 20.0), seed=32, dt_min=DT, drugs=drugs)
    memory = mem.astype(np.float32)
    steps = 20
    run(rules, kind, ts, o2.astype(np.float32), steps, memory=memory,
        time_in_P=np.zeros(n, np.float32), hgf=hgf.astype(np.float32),
        igf1=igf1.astype(np.float32), drug_conc=np.stack([c_tki, c_kdm5]).astype(np.float32))
    np.testing.assert_array_equal(memory, mem.astype(np.float32))   # frozen
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
        assert_binomial((ts[sel] == P).sum(), sel.sum(), -math.expm1(-k * steps * DT / 60),
                        f"case {gi}, k={k:.4g}/h")


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
    tr = transitions(exit_per_h=1.0, memory_exit_slowing=1.5, hypoxia_exit_slowing=2.0,
                     memory_decay_per_h=d, memory_gain_per_h=0.7)
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=33, dt_min=DT)
    memory = m0.astype(np.float32)
    tip = np.full(n, 30.0, np.float32)
    steps = 20
    tot = run(rules, kind, ts, o2, steps, memory=memory, time_in_P=tip)
    for gi, (m, ox) in enumerate(cases):
        h = min(1.0, max(0.0, (15 - ox) / 10))
        mj = m * np.exp(-d * np.arange(steps) * DT / 60)
        k = 1.0 / (1 + 1.5 * mj + 2.0 * h)                    # 1/h, per step j
        stay = math.exp(-np.sum(k) * DT / 60)
        sel = g == gi
        assert_binomial((ts[sel] == S).sum(), sel.sum(), 1 - stay, f"case {gi}")
    assert tot["exited_P"] == (ts == S).sum() and tot["became_R"] == 0
    assert np.all(tip[ts == S] == 0) and np.all(tip[ts == P] == 30.0 + steps * DT)
    np.testing.assert_allclose(memory, m0 * math.exp(-d * steps * DT / 60), rtol=1e-5,
                               atol=1e-7)


EXIT_CASES = [  # (C_tki, C_kdm5)
    (3.0, 0.0),     # E = 0.75: factor 0.25
    (1e12, 0.0),    # E = 1 - 1e-12: no exit
    (3.0, 2.0),     # E = 0.75 and speed-up F = 2 x 0.5 = 1: factor 1.25
    (0.0, 2.0),     # speed-up alone: factor 2
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
    run(rules, kind, ts, np.full(n, 38.0, np.float32), steps,
        memory=np.full(n, 0.4, np.float32), drug_conc=conc)
    for gi, (ct, ck) in enumerate(EXIT_CASES):
        factor = 1 - hill(ct, 1, 1, 1) + 2.0 * hill(ck, 1, 2, 1)
        k = 1.0 * factor / 1.4
        sel = g == gi
        assert_binomial((ts[sel] == S).sum(), sel.sum(), -math.expm1(-k * steps * DT / 60),
                        f"case {gi}")
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
    tot = run(rules, kind, ts, np.full(n, 38.0, np.float32), steps, time_in_P=tip,
              drug_conc=conc)
    for gi, E in ((0, 0.0), (1, 0.75)):
        t_j = tip0_min + DT * np.arange(steps)
        k = mu * (1 + a * np.minimum(1.0, t_j / (ramp_h * 60)) * E)
        sel = g == gi
        assert_binomial((ts[sel] == R).sum(), sel.sum(), -math.expm1(-np.sum(k) * DT / 60),
                        f"E={E}")
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
    tr = transitions(exit_per_h=0.6, resistance_per_h=0.4, adaptive_mutability=3.0,
                     mutability_ramp_h=1.0, memory_exit_slowing=1.0)
    rules = TumorRules(still_tumor(tr), Grid(shape, 20.0), seed=36, dt_min=DT, drugs=(tki(),))
    c = 1.0 if with_drug else 0.0
    steps = 10
    run(rules, kind, ts, np.full(n, 38.0, np.float32), steps,
        time_in_P=np.full(n, 120.0, np.float32), drug_conc=np.full((1, n), c))
    E = hill(c, 1, 1, 1)
    kS, kR = 0.6 * (1 - E), 0.4 * (1 + 3.0 * E)
    stay = math.exp(-(kS + kR) * steps * DT / 60)
    nS, nP, nR = (ts == S).sum(), (ts == P).sum(), (ts == R).sum()
    assert nS + nP + nR == n
    assert_binomial(nP, n, stay, "P")
    assert_binomial(nS, n, (1 - stay) * kS / (kS + kR), "S")
    assert_binomial(nR, n, (1 - stay) * kR / (kS + kR), "R")
    assert_binomial(nS, nS + nR, kS / (kS + kR), "split")


# ---------------------------------------------------------------------------------- kill
KILL_CASES = [  # (state, hgf, igf1, C_met_inhibitor)
    (S, 0.0, 0.0, 0.0),
    (S, 5.0, 0.0, 0.0),      # a_met 0.5: protection 0.4
    (S, 5.0, 0.0, 0.02),     # MET inhibitor E = 0.5: a_met 0.25, protection 0.2
    (S, 5.0, 10.0, 0.0),     # + IGF-1 a = 0.5: protection 1 - 0.6 x 0.75 = 0.55
    (P, 5.0, 10.0, 0.0),     # persisters: no protection term
    (P, 0.0, 0.0, 0.0),
    (R, 5.0, 0.0, 0.0),      # resistant: never killed
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
    drugs = (tki(rate=0.8),
             drug("oxphos", kill_P=dict(emax=1.0, ec50_uM=0.01, hill=1.0, rate_per_h=0.6)),
             drug("meti", cancel_met=dict(emax=1.0, ec50_uM=0.02, hill=1.0)))
    rules = TumorRules(still_tumor(persister_tolerance=0.25), Grid(shape, 20.0), seed=37,
                       dt_min=DT, drugs=drugs)
    memory = np.full(n, 0.7, np.float32)
    tip = np.where(ts == P, 50.0, 0.0).astype(np.float32)
    ts0 = ts.copy()
    steps = 20
    tot = run(rules, kind, ts, np.full(n, 38.0, np.float32), steps, memory=memory,
              time_in_P=tip, hgf=hgf, igf1=igf1, drug_conc=conc)
    kS = 0.8 * hill(1.0, 1, 1, 1)
    kP = kS * 0.25 + 0.6 * hill(0.01, 1, 0.01, 1)
    for gi, (st, hg, ig, cm) in enumerate(KILL_CASES):
        a_met = hg / (hg + 5.0) * (1 - hill(cm, 1, 0.02, 1))
        a_igf = ig / (ig + 10.0)
        prot = 1 - (1 - 0.8 * a_met) * (1 - 0.5 * a_igf)
        k = {S: kS * (1 - prot), P: kP, R: 0.0}[st]
        sel = g == gi
        assert_binomial((kind[sel] == codes.TUMOR).sum(), sel.sum(),
                        math.exp(-k * steps * DT / 60), f"case {gi}")
    dead = kind == codes.EMPTY
    assert tot["killed"] == dead.sum() and np.all(kind[~dead] == codes.TUMOR)
    assert tot["killed_S"] == (dead & (ts0 == S)).sum()
    assert tot["killed_P"] == (dead & (ts0 == P)).sum()
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
    g = groups(n, 6)                       # (no drug, drug) x (S, P, R)
    states = np.array([S, P, R] * 2, dtype=np.uint8)[g]
    kind, ts = full_lattice(shape, states)
    conc = np.where(g < 3, 0.0, 1.0)[None, :]
    rules = TumorRules(still_tumor(persister_tolerance=0.25, death_per_h=0.3), Grid(shape, 20.0),
                       seed=41, dt_min=DT, drugs=(tki(rate=0.8),))
    ts0 = ts.copy()
    steps = 15
    tot = run(rules, kind, ts, np.full(n, 38.0, np.float32), steps, drug_conc=conc)
    t_h = steps * DT / 60
    kS = 0.8 * hill(1.0, 1, 1, 1)
    for gi in range(6):
        st = [S, P, R][gi % 3]
        k = 0.3 + (0.0 if gi < 3 else {S: kS, P: kS * 0.25, R: 0.0}[st])
        sel = g == gi
        assert_binomial((kind[sel] == codes.TUMOR).sum(), sel.sum(), math.exp(-k * t_h),
                        f"group {gi}")
    dead = kind == codes.EMPTY
    assert tot["killed"] == dead.sum() > 0
    assert tot["killed_S"] == (dead & (ts0 == S)).sum()
    assert tot["killed_P"] == (dead & (ts0 == P)).sum()
    assert np.all(ts[dead] == codes.NONE)


# ---------------------------------------------------------------------------------- division
def sparse_cells(shape, spacing, offset=1):
    """Sites on a square sublattice (spacing 3 or more: the neighbourhoods are disjoint)."""
    ys, xs = np.meshgrid(np.arange(offset, shape[0], spacing),
                         np.arange(offset, shape[1], spacing), indexing="ij")
    return (ys * shape[1] + xs).ravel()


@pytest.mark.parametrize("c_tki", [1.0, 1e12])
def test_block_division_spares_resistant_cells(c_tki):
    """Division per step with probability exp(r dt) - 1, r = r_max f_state (1 - E_block) for S
    and P, r_max f_R for R (resistant cells divide through the cytostatic drug). Doubling 0.5 h,
    f_P = 0.5, f_R = 1 - 0.3; E_block = C/(C + 1): 0.5, or 1 - 1e-12 (saturating: expected S and
    P divisions 1e-9, so none). Isolated cells (neighbourhoods disjoint, no conflicts), the same
    lattice stepped once at 60 different steps: divisions per state are Binomial(1200 cells x
    60, p). Daughters copy the mother's phenotype."""
    shape = (180, 180)
    grid = Grid(shape, 20.0)
    sites = sparse_cells(shape, 3)
    states = np.array([S, P, R])[np.arange(sites.size) % 3]
    p = growing_tumor(doubling_time_h=0.5, persister_cycle_factor=0.5, resistance_cost=0.3)
    drugs = (drug("tki", block_division=dict(emax=1.0, ec50_uM=1.0, hill=1.0)),)
    rules = TumorRules(p, grid, seed=38, dt_min=DT, drugs=drugs)
    o2 = np.full(grid.n_sites, 38.0, np.float32)
    conc = np.full((1, grid.n_sites), c_tki)
    trials = 60
    by_state = {S: 0, P: 0, R: 0}
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
    E = hill(c_tki, 1, 1, 1)
    for st, f in ((S, 1.0 * (1 - E)), (P, 0.5 * (1 - E)), (R, 0.7)):
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
    mean = N0 * m ** steps
    var = N0 * pr * (1 - pr) * m ** (steps - 1) * (m ** steps - 1) / (m - 1)
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
    sol = solve_ivp(lambda t, m: 0.2 / 60 * E * (1 - m) - 0.1 / 60 * (1 - E) * m, (0, 60.0),
                    [m0], rtol=1e-10, atol=1e-12)
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
    conc = np.array([e / (1 - e) for e in Es])[g][None, :]     # C = E / (1 - E): E at ec50 1
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
    p = growing_tumor(doubling_time_h=1e-4, persister_cycle_factor=1.0,
                      transitions=transitions(**kw))
    rules = TumorRules(p, grid, seed=41, dt_min=DT, drugs=(tki(),))
    kind = np.zeros(25, np.uint8)
    ts = np.zeros(25, np.uint8)
    kind[12] = codes.TUMOR
    ts[12] = S if case == "enter" else P
    memory = np.zeros(25, np.float32)
    memory[12] = 0.3
    tip = np.zeros(25, np.float32)
    tip[12] = 42.0
    c = rules.apply(kind, ts, np.full(25, 38.0, np.float32), 0, memory=memory, time_in_P=tip,
                    drug_conc=np.ones((1, 25)))
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
    rules = TumorRules(still_tumor(transitions(pre_existing=True, entry_basal_per_h=1e6)), grid,
                       2, DT)
    rules.apply(kind, ts, o2, 0, time_in_P=tip)
    assert np.all(ts == P) and np.all(tip == 0.0)
    run(rules, kind, ts, o2, 3, time_in_P=tip)
    assert np.all(tip == 3 * DT)
    # reversion: certain in the first step
    kind, ts = full_lattice(shape, np.full(n, P))
    tip = np.full(n, 500.0, np.float32)
    TumorRules(still_tumor(transitions(exit_per_h=1e6)), grid, 3, DT).apply(
        kind, ts, o2, 0, time_in_P=tip)
    assert np.all(ts == S) and np.all(tip == 0.0)


# ---------------------------------------------------------------------------------- secretion
def secretion_scenario(field="hgf", decay=None, field_dt=0.0):
    """24 x 24 voxels, no tumor, oxygen and one preset field (optionally another decay), the
    solver converged to 1e-3 of the starting residual, ``field_dt`` field steps (0: one)."""
    text = ("[run]\ndt_min = 6\n[grid]\nshape = [24, 24]\ndx_um = 20\n[init.tumor]\n"
            f"shape = 'none'\n[fields.{field}]\n")
    if decay is not None:
        text += f"decay_per_min = {decay}\n"
    text += f"[solver]\ntolerance = 1e-3\ndt_min = {field_dt}\n"
    return tmesim.loads_scenario(text)


def test_caf_hgf_secretion_conserves_mass_and_approaches_steady_state():
    """HGF with no-flux faces, decay lambda, no uptake (no tumor cells), secreted by n_caf CAFs
    at s_caf and n_tam TAMs at s_tam (the preset's values, read from the scenario). The Laplacian
    sums to zero, so the domain mean M obeys the implicit-Euler recursion M' = (M + h Q/n) /
    (1 + lambda h) per field step h, Q = n_caf s_caf + n_tam s_tam (relative 1e-4; the solver
    converges to 1e-3 of the residual): from zero it approaches Q / (n lambda) (lambda = 0.05
    /min, 40 steps: within 1e-4). With lambda = 0.01 /min and ten field steps per agent step it
    follows the continuous Q/(n lambda) (1 - exp(-lambda t)) to within twice the leading
    implicit-Euler error, t lambda^2 h exp(-lambda t) (at most 1e-3 here), plus 1e-4, of the
    plateau."""
    grid = Grid((24, 24), 20.0)
    n = grid.n_sites
    kind = np.zeros(n, np.uint8)
    u = rng.uniform_range(5, 0, 99, n)
    kind[u < 0.05] = codes.CAF
    kind[(u > 0.97)] = codes.TAM
    for sub, steps, lam in ((0, 40, 0.05), (0.6, 20, 0.01)):
        sc = secretion_scenario("hgf", lam, sub)
        hi = sc.field_names.index("hgf")
        fc = sc.field("hgf")
        assert fc.decay_per_min == lam and not fc.boundary
        Q = (kind == codes.CAF).sum() * fc.secretion_per_min["caf"] + \
            (kind == codes.TAM).sum() * fc.secretion_per_min.get("tam", 0.0)
        assert Q > 0
        plateau = Q / (n * lam)
        solver = FieldSolver(sc, grid, threads=1)
        fields = np.zeros((len(sc.fields), n), np.float32)
        fields[sc.field_names.index("oxygen")] = 38.0
        ts = np.zeros(n, np.uint8)
        M = 0.0
        h = solver.dt
        for step in range(steps):
            solver.step(fields, kind, ts)
            for _ in range(solver.n_sub):
                M = (M + h * Q / n) / (1 + lam * h)
            mean = fields[hi].astype(np.float64).mean()
            assert mean == pytest.approx(M, rel=1e-4)
            if sub:
                t = (step + 1) * DT
                bound = lam ** 2 * h * t * math.exp(-lam * t) + 1e-4
                assert abs(mean - plateau * -math.expm1(-lam * t)) < bound * plateau
        if not sub:
            assert mean == pytest.approx(plateau, rel=1e-4)
            assert fields[hi][kind == codes.CAF].mean() > mean   # sources sit on the peaks


def test_persisters_secrete_the_signal_and_sensitive_cells_do_not():
    """The signal field (preset: secretion {persister = s}, decay lambda, no uptake) is secreted
    by persisters only: the rate table gives s for tumor P and 0 for S, R and other kinds; from
    zero, one step gives a total of n_P s dt / (1 + lambda dt) (no-flux faces, relative 1e-4);
    with no persisters it stays exactly zero."""
    sc = secretion_scenario("signal")
    fc = sc.field("signal")
    s_p, lam = fc.secretion_per_min["persister"], fc.decay_per_min
    assert s_p > 0 and set(fc.secretion_per_min) == {"persister"} and not fc.uptake_per_min
    grid = Grid((24, 24), 20.0)
    n = grid.n_sites
    si = sc.field_names.index("signal")
    solver = FieldSolver(sc, grid, threads=1)
    for st, want in ((S, 0.0), (P, s_p), (R, 0.0)):
        _, src = solver.rates(np.array([codes.TUMOR], np.uint8), np.array([st], np.uint8))
        assert src[si, 0] == np.float32(want)
    _, src = solver.rates(np.array([codes.CAF, codes.TAM, codes.VESSEL], np.uint8))
    assert np.all(src[si] == 0)
    u = rng.uniform_range(6, 0, 99, n)
    kind = np.where(u < 0.5, codes.TUMOR, codes.EMPTY).astype(np.uint8)
    for with_P in (False, True):
        ts = np.where(kind == codes.TUMOR, np.where(u < 0.25, S, R), codes.NONE).astype(np.uint8)
        if with_P:
            ts[(kind == codes.TUMOR) & (u < 0.1)] = P
        fields = np.zeros((len(sc.fields), n), np.float32)
        fields[sc.field_names.index("oxygen")] = 38.0
        solver.step(fields, kind, ts)
        n_P = int((ts == P).sum())
        total = fields[si].astype(np.float64).sum()
        if with_P:
            assert n_P > 0
            assert total == pytest.approx(n_P * s_p * DT / (1 + lam * DT), rel=1e-4)
        else:
            assert np.all(fields[si] == 0)


# ---------------------------------------------------------------------------------- stroma
def stroma(caf=None, tam=None, shape=(60, 60), seed=50, hood="moore"):
    caf = caf or CafConfig(motility_per_h=0.0)
    tam = tam or TamConfig(motility_per_h=0.0, death_per_h=0.0, recruitment_per_h=0.0,
                           recruitment_signal_gain=0.0)
    grid = Grid(shape, 20.0, hood)
    return grid, StromaRules(caf, tam, grid, seed, DT)


def single_moves(grid, rules, code, sites, trials, signal=None):
    """Step a fresh lattice (stromal cells of ``code`` at ``sites``, disjoint neighbourhoods)
    once at steps 0..trials-1; returns the displacements (dy, dx) of the cells that moved and the
    number of cell-steps. Checks that each mover went to a neighbour that was empty."""
    disp = []
    for step in range(trials):
        kind = np.zeros(grid.n_sites, np.uint8)
        kind[sites] = code
        before = kind.copy()
        c = rules.apply(kind, signal, step)
        new = np.flatnonzero((kind == code) & (before != code))
        gone = np.flatnonzero((kind != code) & (before == code))
        assert np.all(before[new] == codes.EMPTY) and np.all(kind[gone] == codes.EMPTY)
        assert (kind == code).sum() == sites.size and c.lost_conflicts == 0
        moved = c.caf_moves if code == codes.CAF else c.tam_moves
        assert new.size == gone.size == moved
        nc, gc = grid.coords(new), grid.coords(gone)
        # neighbourhoods are disjoint: pair each new voxel with the vacated one next to it
        for y, x in nc:
            d = gc - (y, x)
            j = np.flatnonzero(np.abs(d).max(axis=1) == 1)
            assert j.size == 1
            disp.append(-d[j[0]])
    return np.array(disp).reshape(-1, 2), sites.size * trials


def test_caf_random_walk_rate_and_uniform_direction():
    """A CAF steps with probability 1 - exp(-motility dt) per step (motility 2 /h: 0.181) into a
    uniformly chosen empty neighbour: over 400 isolated CAFs x 30 steps the number of moves is
    binomial, each of the 8 Moore directions is equally likely (chi-square p > 1e-4), and CAFs
    only ever move into empty neighbours, one per voxel, their number conserved."""
    grid, rules = stroma(caf=CafConfig(motility_per_h=2.0))
    sites = sparse_cells(grid.shape, 3)
    disp, trials = single_moves(grid, rules, codes.CAF, sites, 30)
    assert_binomial(len(disp), trials, -math.expm1(-2.0 / 60 * DT), "moves")
    keys, counts = np.unique(disp[:, 0] * 3 + disp[:, 1], return_counts=True)
    assert len(keys) == 8 and stats.chisquare(counts).pvalue > 1e-4


def test_stroma_moves_keep_one_cell_per_voxel_and_conserve_counts():
    """Crowded lattice (tumor 30 %, vessels 5 %, CAFs 15 %, TAMs 10 %), fast motility, no TAM
    death or recruitment, 30 steps: CAF and TAM counts are conserved, tumor and vessel voxels
    never change, every voxel that gains a stromal cell was empty, and conflicts happen (the
    crowding tests their resolution). Then with death and recruitment on, the counts change by
    exactly what StromaCounts reports."""
    grid = Grid((50, 50), 20.0)
    u = rng.uniform_range(9, 0, 99, grid.n_sites)
    kind0 = np.select([u < 0.3, u < 0.35, u < 0.5, u < 0.6],
                      [codes.TUMOR, codes.VESSEL, codes.CAF, codes.TAM], codes.EMPTY)
    kind0 = kind0.astype(np.uint8)
    signal = (u * 3).astype(np.float32)
    for tam in (TamConfig(motility_per_h=5.0, death_per_h=0.0, recruitment_per_h=0.0,
                          recruitment_signal_gain=0.0),
                TamConfig(motility_per_h=5.0, death_per_h=0.5, recruitment_per_h=0.5,
                          recruitment_signal_gain=1.0)):
        rules = StromaRules(CafConfig(motility_per_h=5.0), tam, grid, 51, DT)
        kind = kind0.copy()
        conflicts = 0
        for step in range(30):
            before = kind.copy()
            c = rules.apply(kind, signal, step)
            conflicts += c.lost_conflicts
            fixed = (before == codes.TUMOR) | (before == codes.VESSEL)
            np.testing.assert_array_equal(kind[fixed], before[fixed])
            gained = (kind != before) & ((kind == codes.CAF) | (kind == codes.TAM))
            assert np.all(before[gained] == codes.EMPTY)
            assert (kind == codes.CAF).sum() == (before == codes.CAF).sum()
            assert (kind == codes.TAM).sum() == (before == codes.TAM).sum() + c.tam_recruited \
                - c.tam_died
            assert c.caf_moves == (gained & (kind == codes.CAF)).sum()
            assert c.tam_moves + c.tam_recruited == (gained & (kind == codes.TAM)).sum()
        assert conflicts > 0


@pytest.mark.parametrize("chemotaxis", [0.0, 0.7])
def test_tam_chemotaxis_up_a_linear_gradient(chemotaxis):
    """Signal = x (a linear gradient along x). A moving TAM follows the signal with probability
    c (to an x + 1 neighbour: dx = +1), else steps to a uniform neighbour (dx = +1 or -1 with
    probability 3/8 each, 0 with 2/8). So per move P(dx = 1) = c + (1 - c) 3/8 = p_up, P(dx = -1)
    = (1 - c) 3/8 = p_down, mean dx = c, variance p_up + p_down - c^2: the mean is checked within
    5 standard errors (c = 0: no drift) and the count of dx = +1 with its binomial bound. Moves
    happen with probability 1 - exp(-motility dt) (binomial)."""
    tam = TamConfig(motility_per_h=3.0, chemotaxis=chemotaxis, death_per_h=0.0,
                    recruitment_per_h=0.0, recruitment_signal_gain=0.0)
    grid, rules = stroma(tam=tam)
    signal = np.tile(np.arange(grid.shape[1], dtype=np.float32), grid.shape[0])
    sites = sparse_cells(grid.shape, 3)
    disp, trials = single_moves(grid, rules, codes.TAM, sites, 40, signal)
    assert_binomial(len(disp), trials, -math.expm1(-3.0 / 60 * DT), "moves")
    c = chemotaxis
    p_up, p_down = c + (1 - c) * 3 / 8, (1 - c) * 3 / 8
    mean, var = p_up - p_down, p_up + p_down - (p_up - p_down) ** 2
    dx = disp[:, 1]
    assert abs(dx.mean() - mean) < 5 * math.sqrt(var / dx.size), (dx.mean(), mean)
    assert_binomial((dx == 1).sum(), dx.size, p_up, "up")


def test_tam_chemotaxis_has_no_drift_across_the_gradient():
    """In a linear gradient along x the three x + 1 neighbours have equal signal; an unbiased
    rule would pick among them uniformly, so the mean displacement across the gradient (dy) is 0
    (5 standard errors). A first-in-neighbour-order tie-break (an earlier version) sent every
    chemotactic step to (dy, dx) = (-1, +1): mean dy = -c (-0.7 here)."""
    tam = TamConfig(motility_per_h=3.0, chemotaxis=0.7, death_per_h=0.0,
                    recruitment_per_h=0.0, recruitment_signal_gain=0.0)
    grid, rules = stroma(tam=tam)
    signal = np.tile(np.arange(grid.shape[1], dtype=np.float32), grid.shape[0])
    disp, _ = single_moves(grid, rules, codes.TAM, sparse_cells(grid.shape, 3), 40, signal)
    dy = disp[:, 0]
    # random steps: dy = +1 or -1 with 3/8 each; chemotactic ones, unbiased: +-1 or 0 with 1/3
    var = 0.7 * 2 / 3 + 0.3 * 6 / 8
    assert abs(dy.mean()) < 5 * math.sqrt(var / dy.size), dy.mean()


def test_tam_death_is_first_order():
    """TAMs (motionless, no recruitment) die at 0.6 /h: after 10 steps each survives with
    probability exp(-0.6 h^-1 x 1 h); binomial bound; dead TAMs leave empty voxels."""
    tam = TamConfig(motility_per_h=0.0, death_per_h=0.6, recruitment_per_h=0.0,
                    recruitment_signal_gain=0.0)
    grid, rules = stroma(tam=tam, shape=(50, 50))
    kind = np.full(grid.n_sites, codes.TAM, np.uint8)
    died = sum(rules.apply(kind, None, step).tam_died for step in range(10))
    alive = (kind == codes.TAM).sum()
    assert alive + died == grid.n_sites and np.all(kind[kind != codes.TAM] == codes.EMPTY)
    assert_binomial(alive, grid.n_sites, math.exp(-0.6), "survivors")


@pytest.mark.parametrize("with_signal", [True, False])
def test_tam_recruitment_at_vessels(with_signal):
    """Each vessel voxel recruits a TAM into an empty neighbour with probability 1 - exp(-k dt),
    k = recruitment + gain s / (s + half_max) = 0.5 + 1.5 x 2/3 = 1.5 /h at s = 2 (without a
    signal field: 0.5 /h). Isolated vessels (disjoint neighbourhoods), 30 single steps:
    binomial; each new TAM sits next to a vessel; vessels stay."""
    tam = TamConfig(motility_per_h=0.0, death_per_h=0.0, recruitment_per_h=0.5,
                    recruitment_signal_gain=1.5, signal_half_max=1.0)
    grid, rules = stroma(tam=tam)
    vessels = sparse_cells(grid.shape, 3)
    signal = np.full(grid.n_sites, 2.0, np.float32) if with_signal else None
    recruited = 0
    for step in range(30):
        kind = np.zeros(grid.n_sites, np.uint8)
        kind[vessels] = codes.VESSEL
        c = rules.apply(kind, signal, step)
        new = np.flatnonzero(kind == codes.TAM)
        assert new.size == c.tam_recruited and c.lost_conflicts == 0
        assert np.all(kind[vessels] == codes.VESSEL)
        nbr, inside = grid.neighbours(new)
        assert np.all(((kind[nbr] == codes.VESSEL) & inside).sum(axis=1) == 1)
        recruited += new.size
    k = 0.5 + (1.5 * 2 / 3 if with_signal else 0.0)
    assert_binomial(recruited, vessels.size * 30, -math.expm1(-k / 60 * DT), "recruited")


# ---------------------------------------------------------------------------------- determinism
EVERYTHING = """
[run]
seed = {seed}
duration_days = 1
dt_min = 6
[grid]
shape = [40, 40]
dx_um = 20
[init.tumor]
shape = "disk"
radius_um = 250
persister_fraction = 0.1
resistant_fraction = 0.05
[init.vessels]
placement = "random"
density = 0.02
[init.caf]
placement = "shell"
density = 0.3
shell_width_um = 100
[init.tam]
placement = "random"
density = 0.05
[tam]
motility_per_h = 2.0
recruitment_per_h = 0.2
[tumor]
doubling_time_h = 6
[tumor.transitions]
entry_basal_per_h = 0.05
entry_induced_per_h = 0.2
exit_per_h = 0.1
resistance_per_h = 0.05
[drugs.erl]
preset = "egfr_tki"
half_life_h = 12
transport = "vessels"
[drugs.erl.schedule]
dose_uM = 2
interval_h = 12
[drugs.cpi]
preset = "kdm5_inhibitor"
[drugs.cpi.schedule]
kind = "intermittent"
dose_uM = 5
on_days = 0.05
off_days = 0.05
"""


def test_same_seed_same_run_other_seed_other_run():
    """With drugs (one-compartment and square-wave), CAFs, TAMs (motion, chemotaxis,
    recruitment, death), HGF/IGF-1/signal fields and every transition on: two models with the
    same seed give bit-identical state arrays after 25 steps; another seed gives a different
    lattice. The run does exercise the rules (kills, transitions, stromal moves happen)."""
    runs = []
    for seed in (7, 7, 8):
        m = Model(tmesim.loads_scenario(EVERYTHING.format(seed=seed)))
        seen = dict(killed=0, entered_P=0, divisions=0, moves=0)
        for _ in range(25):
            c = m.step()
            seen["killed"] += c.killed
            seen["entered_P"] += c.entered_P
            seen["divisions"] += c.divisions
            seen["moves"] += m.last_stroma.caf_moves + m.last_stroma.tam_moves
        assert all(v > 0 for v in seen.values()), seen
        runs.append({k: v.copy() for k, v in m.state.arrays().items()})
    a, b, c = runs
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["kind"], c["kind"])


# ---------------------------------------------------------------------------------- initial
def test_initial_persister_and_resistant_fractions():
    """Each initial tumor cell is P with probability persister_fraction (0.1) and R with
    resistant_fraction (0.02), independently of the others: binomial bounds over about 15,000
    cells. With transitions.pre_existing = false there are no initial persisters and R keeps its
    fraction."""
    base = ("[grid]\nshape=[150,150]\n[init.tumor]\nradius_um=1400\npersister_fraction=0.1\n"
            "resistant_fraction=0.02\n")
    for pre in (True, False):
        text = base + f"[tumor.transitions]\npre_existing={'true' if pre else 'false'}\n"
        sc = tmesim.loads_scenario(text)
        st = initial_state(sc, Grid(sc.grid.shape, sc.grid.dx_um))
        tum = st.kind == codes.TUMOR
        N = int(tum.sum())
        assert N > 14000
        assert_binomial((st.tumor_state[tum] == P).sum(), N, 0.1 if pre else 0.0, "P")
        assert_binomial((st.tumor_state[tum] == R).sum(), N, 0.02, "R")
        assert np.all(st.tumor_state[~tum] == codes.NONE)
        assert np.all(st.memory == 0) and np.all(st.time_in_P_min == 0)


def _init(text):
    sc = tmesim.loads_scenario(text)
    grid = Grid(sc.grid.shape, sc.grid.dx_um)
    return sc, grid, initial_state(sc, grid)


def test_initial_caf_shell_within_its_ring():
    """Shell placement: every CAF lies at a centre-to-centre distance d from the nearest tumor
    voxel with gap < d <= gap + width (gap 40, width 100 um; brute-force distances), never on a
    tumor or vessel voxel, and the number placed is Binomial(free ring voxels, density 0.5)."""
    sc, grid, st = _init(
        "[grid]\nshape=[60,60]\ndx_um=20\n[init.tumor]\nradius_um=300\n"
        "[init.vessels]\nplacement='random'\ndensity=0.03\n"
        "[init.caf]\nplacement='shell'\ndensity=0.5\nshell_gap_um=40\nshell_width_um=100\n")
    kind = st.kind
    tumor = np.flatnonzero(kind == codes.TUMOR)
    caf = np.flatnonzero(kind == codes.CAF)
    tc, cc = grid.coords(tumor) * 20.0, grid.coords(caf) * 20.0
    d = np.sqrt(((cc[:, None, :] - tc[None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert caf.size > 0 and np.all(d > 40) and np.all(d <= 140 + 1e-9)
    allc = grid.coords(np.arange(grid.n_sites)) * 20.0
    dall = np.sqrt(((allc[:, None, :] - tc[None, :, :]) ** 2).sum(-1)).min(axis=1)
    ring_free = (dall > 40) & (dall <= 140 + 1e-9) & (kind != codes.VESSEL) & \
        (kind != codes.TUMOR)
    assert np.all(ring_free[caf])
    assert_binomial(caf.size, ring_free.sum(), 0.5, "shell CAFs")


def test_initial_clusters_and_random_stroma_avoid_tumor_and_vessels():
    """Clusters (3, radius 60 um = 3 voxels, density 1): CAFs form at most 3 connected groups,
    at most 3 discs of 29 voxels in all, none on tumor or vessel voxels. Random placement
    (density 0.1 for CAFs and TAMs): CAFs are Binomial(free voxels, 0.1), TAMs Binomial(voxels
    still free, 0.1), never on tumor, vessel or CAF voxels."""
    sc, grid, st = _init(
        "[run]\nseed=4\n[grid]\nshape=[60,60]\ndx_um=20\n[init.tumor]\nradius_um=200\n"
        "[init.vessels]\nplacement='random'\ndensity=0.03\n"
        "[init.caf]\nplacement='clusters'\nclusters=3\ncluster_radius_um=60\ndensity=1\n")
    caf = (st.kind == codes.CAF).reshape(grid.shape)
    region = stroma_region(sc.init.caf, sc, grid,
                           (st.kind == codes.TUMOR).reshape(grid.shape), rng.INIT_CAF)
    _, n_groups = ndimage.label(caf, structure=np.ones((3, 3)))
    assert 1 <= n_groups <= 3 and 0 < caf.sum() <= 3 * 29
    assert np.all(region[caf])
    sc, grid, st = _init(
        "[run]\nseed=5\n[grid]\nshape=[100,100]\n[init.tumor]\nradius_um=600\n"
        "[init.vessels]\nplacement='random'\ndensity=0.03\n"
        "[init.caf]\nplacement='random'\ndensity=0.1\n"
        "[init.tam]\nplacement='random'\ndensity=0.1\n")
    k = st.kind
    n_caf, n_tam = (k == codes.CAF).sum(), (k == codes.TAM).sum()
    free = grid.n_sites - (k == codes.TUMOR).sum() - (k == codes.VESSEL).sum()
    assert_binomial(n_caf, free, 0.1, "random CAFs")
    assert_binomial(n_tam, free - n_caf, 0.1, "random TAMs")
