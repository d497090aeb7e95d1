"""Drug presets: the pharmacodynamics and tissue transport of each drug class, as data.

A scenario's ``[drugs.NAME] preset = "..."`` starts from one of these and changes what it names
(tmesim.scenario); tmesim.drugs turns the result into PK/PD. Every number says where it comes
from. PK is the experiment's, not the drug's (a dish has no half-life), so presets carry
pharmacodynamics and document the clinical PK for scenarios that model it.
"""

from __future__ import annotations

# Presets: pharmacodynamics by target (see tmesim.scenario.EFFECT_TARGETS). Rates marked
# "calibrated" are fitted by scenarios/validation (tmesim validate-model), the rest cited or chosen.
DRUG_PRESETS: dict[str, dict] = {
    "egfr_tki": dict(
        description="EGFR tyrosine-kinase inhibitor (erlotinib/gefitinib/osimertinib-like). "
        "Clinical PK for erlotinib: half-life about 36 h, steady-state trough about "
        "3 uM total, about 95 % protein-bound (Lu 2006; product information).",
        effects={
            "kill_S": dict(emax=1.0, ec50_uM=0.06, hill=1.5, rate_per_h=0.06),
            "block_division": dict(emax=1.0, ec50_uM=0.06, hill=1.5),
        },
        # ec50: gefitinib IC50 in PC9 about 0.06 uM (MODEL.md section 4); hill: chosen;
        # rate: calibrated so that sensitive PC9 cells are cleared within about 5 days at 2 uM
    ),
    "kdm5_inhibitor": dict(
        description="KDM5 histone demethylase inhibitor (CPI-455-like; Vinogradova 2016 used "
        "6-25 uM): blocks entry into the persister state and speeds reversion "
        "(Sharma 2010: KDM5A is required for persisters).",
        effects={
            "block_entry": dict(emax=0.9, ec50_uM=2.0, hill=1.0),
            "exit_speedup": dict(emax=1.0, ec50_uM=2.0, hill=1.0, fold=2.0),
        },
    ),
    "hdac_inhibitor": dict(
        description="Histone deacetylase inhibitor (entinostat/trichostatin A-like; Sharma "
        "2010: TSA with erlotinib ablates persisters): kills persisters, partly blocks "
        "entry.",
        effects={
            "kill_P": dict(emax=1.0, ec50_uM=0.5, hill=1.0, rate_per_h=0.03),
            "block_entry": dict(emax=0.5, ec50_uM=0.5, hill=1.0),
        },
    ),
    "oxphos_inhibitor": dict(
        description="Mitochondrial complex I inhibitor (IACS-010759-like, IC50 of nM order): "
        "persisters depend on oxidative phosphorylation and die.",
        effects={"kill_P": dict(emax=1.0, ec50_uM=0.01, hill=1.0, rate_per_h=0.03)},
    ),
    "fao_inhibitor": dict(
        description="Fatty-acid oxidation inhibitor (etomoxir-like, used at tens of uM): weak "
        "persister kill.",
        effects={"kill_P": dict(emax=1.0, ec50_uM=10.0, hill=1.0, rate_per_h=0.01)},
    ),
    "gpx4_inhibitor": dict(
        description="GPX4 inhibitor (RSL3/ML210-like; Hangauer 2017: persisters are "
        "hypersensitive, EC50 tens of nM): ferroptotic persister kill.",
        effects={"kill_P": dict(emax=1.0, ec50_uM=0.05, hill=2.0, rate_per_h=0.05)},
    ),
    "aldh_inhibitor": dict(
        description="ALDH inhibitor (disulfiram-like; Raha 2014): weak persister kill.",
        effects={"kill_P": dict(emax=1.0, ec50_uM=0.5, hill=1.0, rate_per_h=0.005)},
    ),
    "met_inhibitor": dict(
        description="MET inhibitor (crizotinib-like, cellular MET IC50 about 10-20 nM): cancels "
        "HGF/MET protection (Straussman 2012).",
        effects={"cancel_met": dict(emax=1.0, ec50_uM=0.02, hill=1.0)},
    ),
    "igf1r_inhibitor": dict(
        description="IGF-1R inhibitor (linsitinib-like, IC50 about 35 nM): cancels IGF-1 "
        "protection and partly blocks persister formation (Sharma 2010).",
        effects={
            "cancel_igf1r": dict(emax=1.0, ec50_uM=0.05, hill=1.0),
            "block_entry": dict(emax=0.5, ec50_uM=0.05, hill=1.0),
        },
    ),
}
