"""Scenarios: TOML files validated into frozen, typed objects with units and defaults.

A scenario is read once, validated completely, and then never changes. Every quantity carries its
unit in its key (``dx_um``, ``doubling_time_h``, ``diffusion_um2_per_min``). Anything left out takes
the default documented here; every default cites where it comes from.

Errors name the dotted key path, the value and what was expected (:class:`ScenarioError`).

Sources of defaults:
  [PC-het] PhysiCell sample project "heterogeneity" (PhysiCell_settings.xml): oxygen diffusion
           1e5 um^2/min, decay 0.1 /min, far-field 38 mmHg, tumor uptake 10 /min.
  [PC-core] PhysiCell core cell parameters (standard O2-dependent phenotype): hypoxic threshold
           15 mmHg, necrosis threshold 5 mmHg with maximal necrosis at 2.5 mmHg, maximal necrosis
           rate 1/(6 h); proliferation 0 at 5 mmHg rising linearly to saturation.
  [PC9]    PC9 doubling time about 24 h (Sharma et al. 2010, Cell 141:69).
  [Sharma] Sharma et al. 2010, Cell 141:69: about 0.3 % of PC9 cells survive 9 days of 2 uM
           erlotinib as drug-tolerant persisters; they re-sensitise after about nine doublings off
           drug; IGF-1R signalling and KDM5A are needed to form them, and HDAC inhibition ablates
           them.
  [Russo]  Russo et al. 2022 (Nat Genet): persisters raise their mutation rate 7-50-fold.
  [Straus] Straussman et al. 2012 (Nature 487:500): HGF from stromal fibroblasts protects tumor
           cells from targeted drugs through MET; MET inhibition removes the protection.
  [Nauman] Nauman et al. 2007 (Biophys J): IGF-1 diffusion about 9.5e3 um^2/min in tissue.
  [Fryst]  Frystyk 1994: free IGF-1 plasma half-life about 14 min.
  [chosen] No measured value exists; the value is chosen to give the behaviour described next to
           it and is named as such in `tmesim validate`.
Rates of the persister biology are calibrated by scenarios/validation (see its README): the
command `tmesim validate-model` reproduces the calibration targets.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .codes import KIND_NAMES, STATE_KEYS
from .drug_presets import DRUG_PRESETS
from .errors import _MISSING, ScenarioError

# keys of per-kind rate tables: occupant kinds, and tumor states that override "tumor"
RATE_KEYS = KIND_NAMES + tuple(STATE_KEYS)

FACES = ("z-", "z+", "y-", "y+", "x-", "x+")

#: longest push reach in voxel edges ([tumor.mechanics]; keeps lattice distances in 16 bits)
MAX_PUSH_REACH_VOXELS = 1000

# Bounds on what a scenario may ask for, so that a careless or hostile file is refused with a
# message instead of ending in an overflow, a hang or an allocation of terabytes.
#: largest scenario file: a scenario is a few kB of text; TOML takes seconds a few MB
MAX_SCENARIO_BYTES = 1 << 20
#: deepest nesting of tables and lists (the schema's deepest key, fields.NAME.boundary[i].faces[j],
#: is 6 levels down); Python's TOML reader recurses per level and slows quadratically with the
#: length of a dotted key
MAX_DEPTH = 16
#: longest string value: file paths (masks) are the longest the schema has
MAX_STRING = 4096
#: most agent steps in one run: 1.1e8 steps of 6 minutes are 1,300 years of simulated time;
#: the time series alone would hold a row per step
MAX_AGENT_STEPS = 10**8
#: most boluses of one drug over a run (one-compartment PK keeps their times and amounts in
#: memory and scans them every step): one every 6 minutes for more than a year
MAX_BOLUSES = 10**5
#: longest field or drug name: it names HDF5 datasets and time-series columns
MAX_NAME = 64
#: longest run name in UTF-8 bytes: the run file <run.name>.h5 (and the writer's .h5.part)
#: stays under the 255 bytes a file name may have
MAX_RUN_NAME_BYTES = 200


def param(
    default,
    unit: str = "",
    doc: str = "",
    *,
    lo=None,
    hi=None,
    lo_open=False,
    choices=None,
    multiline=False,
):
    """A scenario parameter: default, unit, a sentence of documentation and its accepted range.

    ``lo``/``hi`` are inclusive bounds (``lo_open`` makes the lower one exclusive); ``choices``
    lists accepted strings; ``multiline`` lets a string hold newlines and tabs (other control
    characters are refused in every string).
    """
    meta = dict(
        unit=unit, doc=doc, lo=lo, hi=hi, lo_open=lo_open, choices=choices, multiline=multiline
    )
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopConfig:
    """Conditions that end a run before its duration."""

    on_extinction: bool = param(True, "", "stop when no tumor cell is left")
    max_burden: int = param(0, "cells", "stop when the tumor burden reaches this (0: off)", lo=0)
    wall_time_hours: float = param(
        0.0,
        "h",
        "after this much wall-clock time, checkpoint and end "
        'the run as "interrupted" (resume it with tmesim resume; '
        "0: off)",
        lo=0,
    )


@dataclass(frozen=True)
class RunConfig:
    """The run: identity, random seed, duration, agent time step and output cadence."""

    name: str = param("tmesim_run", "", "run name, used for the default output file name")
    seed: int = param(0, "", "random seed; same seed, same run", lo=0, hi=2**63 - 1)
    duration_days: float = param(7.0, "d", "simulated time", lo=0, lo_open=True)
    dt_min: float = param(6.0, "min", "agent step (MODEL.md section 2)", lo=0, hi=120, lo_open=True)
    snapshot_every_hours: float = param(
        12.0, "h", "lattice and field snapshots", lo=0, lo_open=True
    )
    checkpoint_every_hours: float = param(
        24.0,
        "h",
        "simulated time between checkpoints in the "
        "run file, for `tmesim resume` (0: only on SIGTERM/"
        "SIGUSR1 and wall-time stops)",
        lo=0,
    )
    stop: StopConfig = field(default_factory=StopConfig)


@dataclass(frozen=True)
class GridConfig:
    """The lattice: 2D (y, x) or 3D (z, y, x), one cell per voxel."""

    shape: tuple[int, ...] = param(
        (128, 128), "voxels", "(y, x) or (z, y, x); the number of entries sets the dimension"
    )
    dx_um: float = param(
        20.0,
        "um",
        "voxel edge (one cell per voxel; at most a metre, so that every coordinate of the "
        "lattice is a finite number)",
        lo=0,
        lo_open=True,
        hi=1e6,
    )
    neighbourhood: str = param(
        "moore", "", "neighbours a daughter may be placed in", choices=("moore", "von_neumann")
    )


@dataclass(frozen=True)
class TumorInitConfig:
    """Initial tumor: a disk (2D), sphere (3D), rectangle/box, a mask file, or none."""

    shape: str = param(
        "disk",
        "",
        "initial tumor geometry",
        choices=("disk", "sphere", "rectangle", "mask", "none"),
    )
    center_um: tuple[float, ...] | None = param(
        None, "um", "centre (z, y, x) or (y, x); default: domain centre"
    )
    radius_um: float = param(200.0, "um", "disk or sphere radius", lo=0)
    size_um: tuple[float, ...] | None = param(None, "um", "rectangle extent per axis")
    mask: str | None = param(None, "", ".npy file of the grid's shape; nonzero voxels get a cell")
    fill_fraction: float = param(
        1.0, "", "fraction of the region's voxels that get a cell", lo=0, hi=1
    )
    persister_fraction: float = param(
        0.0,
        "",
        "initial cells that are persisters (pre-existing DTP-like cells, selection model)",
        lo=0,
        hi=1,
    )
    resistant_fraction: float = param(
        0.0,
        "",
        "initial cells that are resistant (pre-existing resistance, 1e-4..1e-3 [Emert 2021])",
        lo=0,
        hi=1,
    )
    resistant_placement: str = param(
        "random",
        "",
        "which initial cells are resistant: random (each cell with resistant_fraction), or "
        "exactly round(resistant_fraction x cells) chosen at random among the cells with an "
        "empty lattice neighbour (edge: free space beside them) or with none (interior: "
        "surrounded by other cells)",
        choices=("random", "edge", "interior"),
    )


@dataclass(frozen=True)
class StromaInitConfig:
    """Where stromal cells (CAFs or TAMs) start: none, random, a shell around the tumor,
    clusters, or a mask file. Stromal cells only go into empty voxels."""

    placement: str = param(
        "none",
        "",
        "how the cells are placed",
        choices=("none", "random", "shell", "clusters", "mask"),
    )
    density: float = param(
        0.05,
        "",
        "fraction of the candidate voxels that get a cell "
        "(random: all empty voxels; shell: the shell; clusters: the clusters)",
        lo=0,
        hi=1,
    )
    shell_width_um: float = param(
        200.0, "um", "shell: width of the ring outside the tumor edge", lo=0, lo_open=True
    )
    shell_gap_um: float = param(0.0, "um", "shell: distance from the tumor edge to the ring", lo=0)
    clusters: int = param(4, "", "clusters: how many", lo=1, hi=100000)
    cluster_radius_um: float = param(100.0, "um", "clusters: radius of each", lo=0, lo_open=True)
    mask: str | None = param(None, "", ".npy file of the grid's shape; nonzero voxels get a cell")


@dataclass(frozen=True)
class VesselInitConfig:
    """Vessels: fixed voxels that are sources of oxygen and of the drugs."""

    placement: str = param(
        "none", "", "how vessels are placed", choices=("none", "random", "lines", "mask")
    )
    density: float = param(0.0, "", "fraction of voxels that are vessels (random)", lo=0, hi=1)
    axis: str = param("x", "", "direction of straight vessels (lines)", choices=("x", "y", "z"))
    spacing_um: float = param(
        400.0, "um", "distance between straight vessels (lines)", lo=0, lo_open=True
    )
    mask: str | None = param(None, "", ".npy file of the grid's shape; nonzero voxels are vessels")
    outside_tumor: bool = param(True, "", "keep vessels out of the initial tumor")


@dataclass(frozen=True)
class InitConfig:
    tumor: TumorInitConfig = field(default_factory=TumorInitConfig)
    vessels: VesselInitConfig = field(default_factory=VesselInitConfig)
    caf: StromaInitConfig = field(default_factory=StromaInitConfig)
    tam: StromaInitConfig = field(default_factory=StromaInitConfig)


@dataclass(frozen=True)
class TransitionConfig:
    """Phenotype transitions of tumor cells (MODEL.md section 3), rates per hour.

    S -> P at  (entry_basal (1 + hypoxia_weight h)
                + entry_induced E_target (1 + m + signalling + hypoxia_weight h)) (1 - E_block)
    P -> S at  exit (1 - E_target + F_speedup) / (1 + memory_exit_slowing m
                                                   + hypoxia_exit_slowing h)
               with F_speedup the summed fold x E of exit_speedup drugs
    P -> E at  expansion E_target clip((time_in_P - expansion_delay_h) / expansion_ramp_h, 0, 1)
    E -> S at  expanded_exit (1 - E_target + F_speedup) / (the same slowing as P -> S)
    P -> R and E -> R at  resistance (1 + adaptive_mutability min(1, time_in_P / mutability_ramp_h)
               E_target)
    dm/dt  =   memory_gain E_target (1 - m) - memory_decay (1 - E_target) m
    where h in [0, 1] is the hypoxia level (0 at or above the hypoxic threshold, 1 at or below the
    necrosis threshold), m the cell's memory, E_target the combined effect of the drugs that
    kill sensitive cells, and time_in_P the time the cell's lineage has spent as a persister (P
    or E). E is the drug-tolerant expanded persister (DTEP, Sharma et al. 2010): a persister that
    has regained cycling in drug (TumorConfig.expanded_cycle_factor, not slowed by division-
    blocking drugs), as drug-tolerant as P, heritable, and reversible off drug.
    """

    pre_existing: bool = param(
        True, "", "selection origin: basal entry and the initial persister fraction are on"
    )
    drug_induced: bool = param(True, "", "adaptation origin: drug-induced entry is on")
    entry_basal_per_h: float = param(
        4e-5,
        "1/h",
        "S -> P without drug; with exit_per_h it sets "
        "a pre-existing persister pool of about 0.1 % [Sharma, "
        "calibrated]",
        lo=0,
    )
    entry_induced_per_h: float = param(
        7e-5,
        "1/h",
        "S -> P per unit targeted-drug effect; sets "
        "the persister plateau under erlotinib with the basal pool "
        "to about 0.3 % [Sharma, calibrated]",
        lo=0,
    )
    exit_per_h: float = param(
        0.01,
        "1/h",
        "P -> S off drug without memory: mean 4 days, about "
        "9 days with the memory of a long exposure [Sharma]",
        lo=0,
    )
    expansion_per_h: float = param(
        7.5e-4,
        "1/h",
        "P -> E (the persister resumes cycling in drug) at full targeted-drug effect, once "
        "expansion_delay_h + expansion_ramp_h in P [calibrated: about 20 % of the persisters "
        "of day 10 found expanding colonies by day 31 of continuous erlotinib, Sharma]",
        lo=0,
    )
    expansion_delay_h: float = param(
        168.0,
        "h",
        "no P -> E in a persister's first week: the DTPs of 9 days are not proliferating "
        "[Sharma] [chosen]",
        lo=0,
    )
    expansion_ramp_h: float = param(
        336.0,
        "h",
        "time in P, after the delay, over which P -> E rises to its full rate (DTEP colonies "
        "appear after weeks in drug [Sharma; Ramirez]) [chosen]",
        lo=0,
        lo_open=True,
    )
    expanded_exit_per_h: float = param(
        0.005,
        "1/h",
        "E -> S off drug without memory (mean about 8 days, twice the DTPs': DTEPs "
        "re-sensitise off drug, more slowly than DTPs [Sharma]) [chosen]",
        lo=0,
    )
    resistance_per_h: float = param(
        1e-7,
        "1/h",
        "P -> R and E -> R, basal [calibrated: under 5 % of 9-day survivors resistant; "
        "resistant clones from persisters after months in drug, Hata 2016; Ramirez 2016]",
        lo=0,
    )
    adaptive_mutability: float = param(
        10.0,
        "",
        "extra fold-increase of P -> R under the "
        "targeted drug, reached after mutability_ramp_h in P "
        "(7-50-fold [Russo])",
        lo=0,
    )
    mutability_ramp_h: float = param(
        72.0, "h", "time in P over which the mutability rises [chosen]", lo=0, lo_open=True
    )
    memory_gain_per_h: float = param(
        0.02, "1/h", "rise of memory under full targeted-drug effect (about 2 days) [chosen]", lo=0
    )
    memory_decay_per_h: float = param(
        0.005, "1/h", "relaxation of memory without drug (about 8 days) [chosen]", lo=0
    )
    memory_exit_slowing: float = param(
        1.0, "", "P -> S is slower by 1 + this x memory [chosen]", lo=0
    )
    hypoxia_weight: float = param(
        1.0, "", "hypoxia raises S -> P by 1 + this x h (quiescence) [chosen]", lo=0
    )
    hypoxia_exit_slowing: float = param(1.0, "", "P -> S is slower by 1 + this x h [chosen]", lo=0)


@dataclass(frozen=True)
class SignallingConfig:
    """Survival and growth signalling from HGF (through MET) and IGF-1 (through IGF-1R).

    Each ligand L activates its receptor by a = L / (L + half_max); protection from drug kill is
    1 - (1 - p_met a_hgf (1 - E_cancel_met)) (1 - p_igf a_igf (1 - E_cancel_igf1r)), and the
    division factor is 1 + g_hgf a_hgf (1 - E_cancel_met) + g_igf a_igf (1 - E_cancel_igf1r).
    """

    hgf_half_max_ng_per_mL: float = param(
        5.0,
        "ng/mL",
        "HGF for half-maximal MET activation [chosen; HGF acts at 1-50 ng/mL in culture]",
        lo=0,
        lo_open=True,
    )
    igf1_half_max_ng_per_mL: float = param(
        10.0, "ng/mL", "IGF-1 for half-maximal IGF-1R activation [chosen]", lo=0, lo_open=True
    )
    met_protection_max: float = param(
        0.8,
        "",
        "largest fraction of the kill of sensitive cells that HGF removes [Straus; chosen]",
        lo=0,
        hi=1,
    )
    igf1r_protection_max: float = param(
        0.5,
        "",
        "largest fraction of the kill of sensitive cells that IGF-1 removes [chosen]",
        lo=0,
        hi=1,
    )
    hgf_growth_gain: float = param(
        0.2, "", "division speeds up by up to this fraction with HGF [chosen]", lo=0
    )
    igf1_growth_gain: float = param(
        0.2, "", "division speeds up by up to this fraction with IGF-1 [chosen]", lo=0
    )
    entry_weight: float = param(
        1.0,
        "",
        "signalling term in drug-induced S -> P entry, x the summed receptor activation [chosen]",
        lo=0,
    )


@dataclass(frozen=True)
class MechanicsConfig:
    """Bounded displacement at division (tmesim/steps/mechanics.py): a tumor cell due to divide
    with no empty neighbour pushes a chain of cells one voxel along the shortest path to the
    nearest free voxel, if the chain spans at most ``push_reach_um``, and its daughter takes the
    freed neighbour. Distances are chamfer lengths on the lattice (a step along an axis is one
    voxel edge, a diagonal step 1.4 or 1.7 of it), so the reach is a length in um and the rim of
    dividing cells is about push_reach_um + dx thick on any lattice. 0 (or under 0.95 of a voxel
    edge, where not even one cell fits) is pure contact inhibition: a cell divides only into an
    empty neighbour (HAL's and Strobl et al.'s on-lattice rule)."""

    push_reach_um: float = param(
        60.0,
        "um",
        "longest chain of cells a division may push, as a length: cells within about reach + dx "
        "of free space divide; 0: contact inhibition [chosen: three cell diameters, the least "
        "that gives a colony the same speed on 20 and 10 um lattices within 20 %, "
        "scenarios/validation/colony_growth.toml]",
        lo=0,
        hi=2000,
    )
    pushable: tuple[str, ...] = param(
        ("tumor", "necrotic"),
        "",
        "occupant kinds a push may displace (vessels never move)",
        choices=("tumor", "necrotic", "caf", "tam"),
    )


@dataclass(frozen=True)
class TumorConfig:
    """Growth, hypoxia and necrosis of tumor cells (MODEL.md section 3)."""

    doubling_time_h: float = param(
        24.0, "h", "doubling time at full oxygen [PC9]", lo=0, lo_open=True
    )
    proliferation_threshold_mmHg: float = param(
        5.0, "mmHg", "no division at or below this oxygen [PC-core]", lo=0
    )
    proliferation_saturation_mmHg: float = param(
        38.0, "mmHg", "full division rate at or above this [PC-het]", lo=0, lo_open=True
    )
    hypoxic_threshold_mmHg: float = param(
        15.0, "mmHg", "cells below this count as hypoxic [PC-core]", lo=0
    )
    necrosis_threshold_mmHg: float = param(
        5.0, "mmHg", "necrosis starts below this [PC-core]", lo=0
    )
    necrosis_max_mmHg: float = param(
        2.5, "mmHg", "necrosis rate is maximal at or below this [PC-core]", lo=0
    )
    necrosis_max_rate_per_h: float = param(
        1.0 / 6.0, "1/h", "maximal necrosis rate [PC-core]", lo=0
    )
    necrotic_clearance_per_h: float = param(
        1.0 / 48.0,
        "1/h",
        "necrotic voxels become empty at this rate (chosen: debris cleared over about two days)",
        lo=0,
    )
    persister_cycle_factor: float = param(
        0.05,
        "",
        "division of persisters relative to sensitive cells (slow cycling) [MODEL.md]",
        lo=0,
        hi=1,
    )
    expanded_cycle_factor: float = param(
        0.5,
        "",
        "division of expanded persisters (DTEPs) relative to sensitive cells; drugs that block "
        "division do not slow it (DTEPs proliferate in drug [Sharma]) [chosen]",
        lo=0,
        hi=1,
    )
    resistance_cost: float = param(
        0.1, "", "fitness cost: resistant cells divide at 1 - cost [MODEL.md]", lo=0, hi=1
    )
    persister_tolerance: float = param(
        0.01,
        "",
        "persisters die at this fraction of the kill rate of sensitive cells [MODEL.md]",
        lo=0,
        hi=1,
    )
    death_per_h: float = param(
        0.0,
        "1/h",
        "basal turnover (apoptosis) of every tumor cell, S, "
        "P and R alike, on top of any drug kill; the voxel empties and a "
        "neighbour may refill it (0: no turnover)",
        lo=0,
    )
    transitions: TransitionConfig = field(default_factory=TransitionConfig)
    signalling: SignallingConfig = field(default_factory=SignallingConfig)
    mechanics: MechanicsConfig = field(default_factory=MechanicsConfig)


@dataclass(frozen=True)
class CafConfig:
    """Cancer-associated fibroblasts: secrete HGF (see fields.hgf), wander slowly, do not divide."""

    motility_per_h: float = param(
        0.02, "1/h", "rate of stepping into a random empty neighbour (about 10 um/h [chosen])", lo=0
    )


@dataclass(frozen=True)
class TamConfig:
    """Tumor-associated macrophages: secrete IGF-1 and some HGF, walk up the recruitment signal,
    are recruited at vessels and turn over."""

    motility_per_h: float = param(
        1.0,
        "1/h",
        "rate of stepping into an empty neighbour (macrophages crawl about 0.3-2 um/min [chosen])",
        lo=0,
    )
    chemotaxis: float = param(
        0.7,
        "",
        "probability that a step goes to the empty neighbour with "
        "the most recruitment signal rather than a random one [chosen]",
        lo=0,
        hi=1,
    )
    recruitment_per_h: float = param(
        0.0,
        "1/h",
        "TAMs recruited per vessel voxel without signal (placed in an empty neighbour) [chosen]",
        lo=0,
    )
    recruitment_signal_gain: float = param(
        0.01, "1/h", "extra recruitment per vessel voxel at saturating signal [chosen]", lo=0
    )
    signal_half_max: float = param(
        1.0, "signal units", "signal for half the extra recruitment [chosen]", lo=0, lo_open=True
    )
    death_per_h: float = param(1.0 / 120.0, "1/h", "turnover (mean life 5 days) [chosen]", lo=0)


@dataclass(frozen=True)
class BoundaryConfig:
    """One boundary condition applied to a set of domain faces."""

    faces: tuple[str, ...] = param(("all",), "", "faces: z-, z+, y-, y+, x-, x+ or all")
    kind: str = param("dirichlet", "", "fixed value or zero flux", choices=("dirichlet", "no_flux"))
    value: float = param(0.0, "field units", "the fixed value (dirichlet)", lo=0)


@dataclass(frozen=True)
class FieldConfig:
    """A diffusing field: dc/dt = D lap c - decay c - uptake(kind) c + secretion(kind) + vessels.

    Faces not named by any boundary entry are no-flux.
    """

    name: str = ""
    units: str = param("", "", "units of the concentration, e.g. mmHg, ng/mL, uM")
    diffusion_um2_per_min: float = param(0.0, "um^2/min", "diffusion coefficient", lo=0)
    decay_per_min: float = param(0.0, "1/min", "first-order decay (where decay_in says)", lo=0)
    decay_in: str = param(
        "everywhere",
        "",
        "where decay acts: everywhere, or tissue (voxels with an occupant of any kind, not the "
        "empty medium around the cells)",
        choices=("everywhere", "tissue"),
    )
    initial: float = param(0.0, "field units", "initial value everywhere", lo=0)
    vessel_value: float = param(0.0, "field units", "value that vessels hold the field at", lo=0)
    uptake_per_min: dict[str, float] = param({}, "1/min", "first-order uptake by occupant kind")
    secretion_per_min: dict[str, float] = param(
        {}, "units/min", "zero-order secretion by occupant kind"
    )
    boundary: tuple[BoundaryConfig, ...] = param((), "", "boundary conditions per face")
    role: str = param(
        "other",
        "",
        "what the field is, for readers and viewers",
        choices=("oxygen", "growth_factor", "signal", "drug", "other"),
    )


@dataclass(frozen=True)
class EffectConfig:
    """One pharmacodynamic effect: E = emax C^hill / (C^hill + ec50^hill) of the free local
    concentration C (uM). Kill targets use rate_per_h (rate at E = 1); exit_speedup uses fold."""

    emax: float = param(1.0, "", "largest effect", lo=0, hi=1)
    ec50_uM: float = param(
        1.0, "uM", "concentration of half the largest effect", lo=0, lo_open=True
    )
    hill: float = param(1.0, "", "Hill coefficient", lo=0, lo_open=True, hi=10)
    rate_per_h: float = param(0.0, "1/h", "kill_S, kill_P: death rate at E = 1", lo=0)
    fold: float = param(
        0.0, "", "exit_speedup: adds fold E to the P -> S factor (1 - E_target)", lo=0
    )


EFFECT_TARGETS = {
    "kill_S": "kills sensitive cells (and persisters at persister_tolerance of the rate); its "
    "effect is the targeted-drug stress that induces persistence",
    "kill_P": "kills persisters",
    "block_division": "stops division of sensitive cells and persisters (cytostasis)",
    "block_entry": "blocks S -> P entry",
    "exit_speedup": "speeds P -> S reversion",
    "cancel_met": "cancels HGF/MET protection and growth signalling",
    "cancel_igf1r": "cancels IGF-1/IGF-1R protection and growth signalling",
}


@dataclass(frozen=True)
class ScheduleConfig:
    """When a drug is given.

    continuous: from start_day to stop_day; intermittent: on_days on, off_days off, repeated;
    doses: explicit times_h with doses_uM. With a half-life (one-compartment PK) each dose is a
    bolus of dose_uM into plasma, repeated every interval_h while on; without one (square wave)
    the plasma level is dose_uM while on (for kind "doses": each dose sets the level until the
    next).
    """

    kind: str = param(
        "continuous", "", "schedule kind", choices=("continuous", "intermittent", "doses", "none")
    )
    dose_uM: float = param(0.0, "uM", "plasma level (square wave) or bolus (one-compartment)", lo=0)
    start_day: float = param(0.0, "d", "first dose", lo=0)
    stop_day: float = param(1e9, "d", "no dose at or after this day", lo=0)
    on_days: float = param(7.0, "d", "intermittent: days on", lo=0, lo_open=True)
    off_days: float = param(7.0, "d", "intermittent: days off", lo=0)
    interval_h: float = param(
        24.0, "h", "one-compartment: time between boluses while on", lo=0, lo_open=True
    )
    times_h: tuple[float, ...] = param((), "h", "doses: times of the doses")
    doses_uM: tuple[float, ...] = param((), "uM", "doses: amount of each dose")


@dataclass(frozen=True)
class ControllerConfig:
    """A feedback controller that doses the drug instead of its schedule (tmesim.controllers)."""

    kind: str = param(
        "none",
        "",
        "none (use the schedule), adaptive (Zhang 2017), modulation "
        "(Gatenby 2009) or biomarker (a simulated biopsy)",
        choices=("none", "adaptive", "modulation", "biomarker"),
    )
    dose_uM: float = param(
        1.0,
        "uM",
        "dose level when treating (adaptive, biomarker) or the first dose (modulation)",
        lo=0,
    )
    start_day: float = param(0.0, "d", "first decision", lo=0)
    stop_day: float = param(1e9, "d", "no dosing at or after this day", lo=0)
    decide_every_h: float = param(24.0, "h", "time between decisions", lo=0, lo_open=True)
    lower_fraction: float = param(
        0.5,
        "",
        "adaptive: pause when burden falls to this x baseline [Zhang 2017: 50 %]",
        lo=0,
        lo_open=True,
    )
    upper_fraction: float = param(
        1.0, "", "adaptive: treat again when burden is back to this x baseline", lo=0, lo_open=True
    )
    target_fraction: float = param(
        1.0, "", "modulation: burden to hold, x baseline", lo=0, lo_open=True
    )
    tolerance: float = param(0.1, "", "modulation: relative band without a change", lo=0, hi=1)
    step_fraction: float = param(
        0.5, "", "modulation: relative dose change per decision", lo=0, lo_open=True, hi=1
    )
    min_dose_uM: float = param(0.1, "uM", "modulation: smallest non-zero dose", lo=0)
    max_dose_uM: float = param(10.0, "uM", "modulation: largest dose", lo=0, lo_open=True)
    biopsy_center_um: tuple[float, ...] | None = param(
        None, "um", "biomarker: biopsy centre (default: domain centre)"
    )
    biopsy_size_um: float = param(
        400.0, "um", "biomarker: edge of the sampled box", lo=0, lo_open=True
    )
    biopsy_cells: int = param(200, "cells", "biomarker: cells sampled per biopsy", lo=1)
    on_fraction: float = param(
        0.01,
        "",
        "biomarker: start the drug when the measured persister fraction exceeds this",
        lo=0,
        hi=1,
    )
    off_fraction: float = param(
        0.0, "", "biomarker: stop it when the measurement falls below this (0: never)", lo=0, hi=1
    )


@dataclass(frozen=True)
class DrugConfig:
    """A drug: pharmacokinetics, tissue transport (its own field) and pharmacodynamics."""

    name: str = ""
    preset: str | None = param(None, "", "a drug class whose values fill what is left out")
    description: str = param("", "", "what the drug stands for", multiline=True)
    half_life_h: float = param(
        0.0,
        "h",
        "plasma half-life (one-compartment PK); 0 means a "
        "square wave that follows the schedule exactly",
        lo=0,
    )
    unbound_fraction: float = param(
        1.0,
        "",
        "free fraction of the plasma level that reaches "
        "tissue (erlotinib about 0.05 in vivo; 1 in culture)",
        lo=0,
        lo_open=True,
        hi=1,
    )
    transport: str = param(
        "bath",
        "",
        "bath: domain faces and vessels held at the free plasma "
        "level (a dish or a tissue slab); vessels: only vessels supply it; "
        "uniform: the tissue level equals the free plasma level (well mixed)",
        choices=("bath", "vessels", "uniform"),
    )
    diffusion_um2_per_min: float = param(
        1.0e3,
        "um^2/min",
        "tissue diffusion (PhysiCell examples use 1e3; free small molecules about 1e4)",
        lo=0,
    )
    decay_per_min: float = param(0.0, "1/min", "tissue clearance", lo=0)
    uptake_per_min: dict[str, float] = param({}, "1/min", "first-order uptake by occupant kind")
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    effects: dict[str, EffectConfig] = param(
        {}, "", "pharmacodynamic effects by target: " + ", ".join(EFFECT_TARGETS)
    )
    controller: ControllerConfig = field(default_factory=ControllerConfig)


@dataclass(frozen=True)
class SolverConfig:
    """The field solver (see tmesim.steps.fields for the method and its accuracy)."""

    method: str = param(
        "adi",
        "",
        "adi: implicit Euler solved by ADI iteration (exact steady "
        "state at any step); lod: BioFVM's split LOD, accurate only for small "
        "steps",
        choices=("adi", "lod"),
    )
    dt_min: float = param(0.0, "min", "field time step; 0 means one step per agent step", lo=0)
    preconditioner: str = param(
        "multigrid",
        "",
        "adi: the conjugate gradients' preconditioner: multigrid (one aggregation V-cycle, "
        "iterations flat with the grid size) or adi (a symmetric product of line solves at one "
        "pseudo-step, iterations growing with the grid)",
        choices=("multigrid", "adi"),
    )
    tolerance: float = param(
        3e-2,
        "",
        "adi: stop iterating when the largest residual has fallen "
        "to this fraction of its value at the start of the step (or to "
        "min(tolerance, 1e-6) of the right-hand side, near float32 "
        "rounding)",
        lo=0,
        lo_open=True,
        hi=0.5,
    )
    max_iterations: int = param(
        200, "", "adi: most conjugate-gradient iterations per field step", lo=1, hi=100000
    )


@dataclass(frozen=True)
class MediumConfig:
    """The culture medium: the empty voxels around the cells (tmesim.steps.medium)."""

    stirred: bool = param(
        False,
        "",
        "a stirred (well-mixed) bath: every empty voxel farther than boundary_layer_um from "
        "every occupied voxel, and open to a domain face along a grid axis, is held at each "
        "field's bath value (its Dirichlet face value)",
    )
    boundary_layer_um: float = param(
        0.0,
        "um",
        "thickness of the unstirred layer of medium around the cells, in which fields diffuse "
        "(stirred only; 0: the bath reaches the cells)",
        lo=0,
    )


@dataclass(frozen=True)
class Scenario:
    """A validated, frozen scenario. Build it with :func:`load_scenario` or
    :func:`parse_scenario`."""

    run: RunConfig = field(default_factory=RunConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    init: InitConfig = field(default_factory=InitConfig)
    tumor: TumorConfig = field(default_factory=TumorConfig)
    caf: CafConfig = field(default_factory=CafConfig)
    tam: TamConfig = field(default_factory=TamConfig)
    fields: tuple[FieldConfig, ...] = ()
    drugs: tuple[DrugConfig, ...] = ()
    solver: SolverConfig = field(default_factory=SolverConfig)
    medium: MediumConfig = field(default_factory=MediumConfig)
    text: str = ""  # the TOML text it came from, overrides applied (stored in run files)
    base_dir: str = "."  # where relative paths in the scenario (masks) are resolved

    @property
    def ndim(self) -> int:
        return len(self.grid.shape)

    @property
    def n_steps(self) -> int:
        """Agent steps in the whole run."""
        return int(round(self.run.duration_days * 1440.0 / self.run.dt_min))

    def field(self, name: str) -> FieldConfig:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def drug_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.drugs)

    def drug(self, name: str) -> DrugConfig:
        for d in self.drugs:
            if d.name == name:
                return d
        raise KeyError(name)


# Defaults of the known fields; a field of another name must give its own parameters.
FIELD_PRESETS: dict[str, dict] = {
    "oxygen": dict(
        units="mmHg",
        diffusion_um2_per_min=1.0e5,  # [PC-het]
        decay_per_min=0.1,  # [PC-het]
        initial=38.0,  # [PC-het] far-field
        vessel_value=38.0,  # [PC-het]
        uptake_per_min={
            "tumor": 10.0,  # [PC-het]; MODEL.md section 4
            "persister": 15.0,
        },  # [chosen] persisters rely on OXPHOS (MODEL.md)
        boundary=[{"faces": ["all"], "kind": "dirichlet", "value": 38.0}],
        role="oxygen",
    ),
    "hgf": dict(
        units="ng/mL",
        diffusion_um2_per_min=2.0e3,  # Stokes-Einstein for 85 kDa, slowed in matrix (MODEL.md)
        decay_per_min=0.05,  # [chosen] binding to heparan sulfate in the matrix
        # keeps HGF near its source: diffusion length about 190 um
        secretion_per_min={"caf": 2.0, "tam": 0.2},  # [chosen] about 20 ng/day per 1e6 CAFs
        # (reported 1-30); gives 3-5 ng/mL (about the MET half-maximum) within 100 um of CAF nests
        uptake_per_min={"tumor": 0.005},  # [chosen] MET-mediated internalisation
        role="growth_factor",
    ),
    "igf1": dict(
        units="ng/mL",
        diffusion_um2_per_min=9.5e3,  # [Nauman]
        decay_per_min=0.05,  # [Fryst] half-life about 14 min
        secretion_per_min={"tam": 5.0},  # [chosen] about 10 ng/mL among TAMs at 5 % of voxels
        uptake_per_min={"tumor": 0.005},  # [chosen]
        role="growth_factor",
    ),
    "signal": dict(
        units="a.u.",
        diffusion_um2_per_min=6.0e3,  # [chosen] a 10-20 kDa chemokine (IL-6/CXCL12-sized)
        decay_per_min=0.01,  # [chosen]
        secretion_per_min={"persister": 0.05},  # [chosen] about 1 a.u. (the TAM half-maximum)
        # near a cluster of a few dozen persisters
        role="signal",
    ),
}
REQUIRED_FIELDS = ("oxygen",)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "a table of numbers"
    return str(tp)


def _check_range(path, value, meta):
    lo, hi = meta.get("lo"), meta.get("hi")
    unit = f" {meta['unit']}" if meta.get("unit") else ""
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        rel = ">" if meta.get("lo_open") else ">="
        bound = f"{rel} {lo}{unit}" + (f" and <= {hi}{unit}" if hi is not None else "")
        raise ScenarioError(path, value, f"a value {bound}")
    if hi is not None and value > hi:
        raise ScenarioError(path, value, f"a value <= {hi}{unit}")


def _convert(path: str, value, tp, meta):
    """Check ``value`` against the annotated type ``tp`` and convert it (lists become tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _convert(path, value, inner[0], meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ScenarioError(path, value, "a table")
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ScenarioError(path, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(path, value, _type_name(tp))
        _check_range(path, value, meta)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(path, value, _type_name(tp))
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float64
            number = math.inf
        if not math.isfinite(number):
            raise ScenarioError(path, value, "a finite number")
        _check_range(path, number, meta)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ScenarioError(path, value, _type_name(tp))
        _check_text(path, value, meta.get("multiline", False))
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ScenarioError(path, value, "one of " + ", ".join(repr(c) for c in choices))
        return value
    if origin is tuple:
        elem = args[0]
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            # one string, or one table of a dataclass, stands for a tuple of one
            if (elem is str and isinstance(value, str)) or (
                dataclasses.is_dataclass(elem) and isinstance(value, dict)
            ):
                value = [value]
            else:
                raise ScenarioError(path, value, _type_name(tp))
        return tuple(_convert(f"{path}[{i}]", v, elem, meta) for i, v in enumerate(value))
    if origin is dict and dataclasses.is_dataclass(args[1]):
        if not isinstance(value, dict):
            raise ScenarioError(
                path, value, "a table of effects by target: " + ", ".join(EFFECT_TARGETS)
            )
        out = {}
        for k, v in value.items():
            if k not in EFFECT_TARGETS:
                raise ScenarioError(
                    f"{path}.{k}", v, "an effect target: " + ", ".join(EFFECT_TARGETS)
                )
            out[k] = _convert(f"{path}.{k}", v, args[1], {})
        return out
    if origin is dict:
        if not isinstance(value, dict):
            raise ScenarioError(
                path, value, "a table of kind = number, kinds: " + ", ".join(RATE_KEYS)
            )
        out = {}
        for k, v in value.items():
            if k not in RATE_KEYS:
                raise ScenarioError(
                    f"{path}.{k}", v, "an occupant kind or tumor state: " + ", ".join(RATE_KEYS)
                )
            out[k] = _convert(f"{path}.{k}", v, float, dict(meta, lo=0, hi=None))
        return out
    raise TypeError(f"unsupported schema type {tp!r} at {path}")  # a bug in the schema


#: characters a string value may not hold: C0 controls (NUL, escape, ...) and DEL; a multi-line
#: text (a drug's description) may hold newlines and tabs
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _check_text(path: str, value: str, multiline: bool = False) -> None:
    """A string value: printable text of at most MAX_STRING characters, encodable as UTF-8
    (HDF5 attributes and the stored scenario text hold it; a NUL ends a C string early)."""
    if len(value) > MAX_STRING:
        raise ScenarioError(path, value, f"a string of at most {MAX_STRING} characters")
    bad = (_CONTROL_BUT_LINES if multiline else _CONTROL).search(value)
    if bad:
        allowed = " (newlines and tabs are allowed)" if multiline else ""
        raise ScenarioError(
            path,
            value,
            f"text without control characters{allowed}; "
            f"{bad.group()!r} is at position {bad.start()}",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from Python, TOML cannot hold one)
        raise ScenarioError(path, value, "valid Unicode text") from None


def _no_such_key(where: str, value, names) -> ScenarioError:
    key = where.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, sorted(names), n=1) if len(key) < 100 else []
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ScenarioError(
        where, value, f"no such key{hint}; keys here are: {', '.join(sorted(names))}"
    )


def _build(cls, data: dict, path: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            raise _no_such_key(f"{path}.{key}" if path else str(key), data[key], names)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _convert(where, data[f.name], hints[f.name], f.metadata)
    return cls(**kwargs)


# The run file's names, which a field or drug name must not take. They are the run-file
# schema's (tmesim.io.schema), written out here because the scenario layer imports nothing of the
# file code (tests/test_layout.py); tests/test_scenario.py checks that the two agree.
#: the time-series columns every run has (tmesim.io.schema.BASE_COLUMNS)
RUN_FILE_COLUMNS = (
    "time_min",
    "n_S",
    "n_P",
    "n_R",
    "n_E",
    "n_caf",
    "n_tam",
    "n_necrotic",
    "n_vessel",
    "burden",
    "persister_fraction",
    "resistant_fraction",
    "hypoxic_fraction",
    "divisions",
    "necroses",
    "cleared",
    "field_sweeps",
    "killed",
    "killed_S",
    "killed_P",
    "entered_P",
    "exited_P",
    "became_R",
    "became_E",
    "tam_recruited",
    "tam_died",
    "mean_memory",
    "mean_time_in_P_h",
    "tumor_near_caf_fraction",
    "persisters_near_caf_fraction",
)


def field_column_names(name: str) -> tuple[str, ...]:
    """The time-series columns made for a field (tmesim.io.schema.field_columns)."""
    return (f"mean_{name}", f"mean_{name}_tumor")


def drug_column_names(name: str) -> tuple[str, ...]:
    """The time-series columns made for a drug (tmesim.io.schema.drug_columns)."""
    return (f"plasma_{name}", f"dose_{name}", f"cumulative_dose_{name}")


#: names a field or drug may not take: the run file's own datasets, coordinates and dimensions
#: (tmesim.io.reader.open_run: kind, tumor_state and memory are data variables beside the
#: fields, and event_kind and event_detail beside the events; time, snapshot_time_min, step,
#: step_time_h, event_time_min and the axes are coordinates, event a dimension), the in-memory
#: series' "day", and the time-series columns: a field or drug of one of these names would
#: shadow it
RESERVED_NAMES = frozenset(
    {"kind", "tumor_state", "memory", "time", "step", "step_time_h", "day", "x", "y", "z"}
    | {"snapshot_time_min", "event", "event_time_min", "event_kind", "event_detail"}
    | set(RUN_FILE_COLUMNS)
)
#: the prefixes of the columns made for each field (mean_) and drug (plasma_, dose_,
#: cumulative_dose_): a name that starts with one could be another's column
RESERVED_PREFIXES = ("mean_", "plasma_", "dose_", "cumulative_dose_")


def _check_name(where: str, name, what: str) -> None:
    """A field or drug name: it names an HDF5 dataset, time-series columns and an xarray
    variable, so it is a short ASCII identifier that is none of the run file's own names."""
    if not isinstance(name, str) or not (name.isidentifier() and name.isascii()):
        raise ScenarioError(where, name, f"a {what} name made of letters (a-z, A-Z), digits and _")
    if len(name) > MAX_NAME:
        raise ScenarioError(where, name, f"a {what} name of at most {MAX_NAME} characters")
    if name in RESERVED_NAMES:
        raise ScenarioError(
            where,
            name,
            f"a {what} name that is not one of the run file's own names (kind, tumor_state, "
            "memory, time, step, x, y, z, day, the event variables and the time-series columns "
            "such as burden)",
        )
    for prefix in RESERVED_PREFIXES:
        if name.startswith(prefix):
            raise ScenarioError(
                where,
                name,
                f"a {what} name that does not start with {prefix} (the run file's columns are "
                "mean_<field>, plasma_<drug>, dose_<drug> and cumulative_dose_<drug>)",
            )


def _check_columns(fields, drugs) -> None:
    """Every time-series column and data variable of a run is named once (a field named
    ``oxygen_tumor`` would make a second mean_oxygen_tumor beside oxygen's own)."""
    seen: dict[str, str] = {}
    owners = [("base", c) for c in RUN_FILE_COLUMNS]
    drug_names = {d.name for d in drugs}
    for f in fields:
        where = f"drugs.{f.name}" if f.name in drug_names else f"fields.{f.name}"
        owners += [(where, f.name)]
        owners += [(where, c) for c in field_column_names(f.name)]
    for d in drugs:
        owners += [(f"drugs.{d.name}", c) for c in drug_column_names(d.name)]
    for where, col in owners:
        if col in seen and seen[col] != where:
            other = seen[col]
            if where == "base":
                where, other = other, where
            raise ScenarioError(
                where,
                where.split(".", 1)[1],
                f"a name whose run-file column {col} is not also "
                + ("a column of every run" if other == "base" else f"made for {other}"),
            )
        seen[col] = where


def _named_tables(data: dict, path: str, what: str):
    """(name, table, key path) of each [path.NAME] table, checking the name and the table."""
    for name, spec in data.items():
        where = f"{path}.{name}"
        _check_name(where, name, what)
        if not isinstance(spec, dict):
            raise ScenarioError(where, spec, f"a table of {what} parameters")
        if "name" in spec:
            raise ScenarioError(
                f"{where}.name", spec["name"], f"no such key (the table name is the {what} name)"
            )
        yield name, spec, where


def _build_fields(data, path="fields") -> tuple[FieldConfig, ...]:
    if not isinstance(data, dict):
        raise ScenarioError(path, data, "a table of fields, e.g. [fields.oxygen]")
    merged: dict[str, object] = {name: {} for name in REQUIRED_FIELDS}
    merged.update(data)
    out = []
    for name, spec, where in _named_tables(merged, path, "field"):
        preset = FIELD_PRESETS.get(name)
        if preset is None:
            for key in ("units", "diffusion_um2_per_min"):
                if key not in spec:
                    raise ScenarioError(
                        f"{where}.{key}",
                        _MISSING,
                        f"a value: '{name}' has no preset, so it must give "
                        "units and diffusion_um2_per_min",
                    )
            values = dict(spec)
        else:
            values = {**preset, **spec}
        fc = _build(FieldConfig, values, where)
        out.append(dataclasses.replace(fc, name=name))
    return tuple(out)


def _build_drugs(data, path="drugs") -> tuple[DrugConfig, ...]:
    if not isinstance(data, dict):
        raise ScenarioError(path, data, "a table of drugs, e.g. [drugs.erlotinib]")
    out = []
    for name, spec, where in _named_tables(data, path, "drug"):
        values = dict(spec)
        preset = values.get("preset")
        if preset is not None:
            if not isinstance(preset, str) or preset not in DRUG_PRESETS:
                raise ScenarioError(
                    f"{where}.preset", preset, "one of " + ", ".join(sorted(DRUG_PRESETS))
                )
            base = DRUG_PRESETS[preset]
            merged_effects = {k: dict(v) for k, v in base.get("effects", {}).items()}
            user_effects = values.get("effects", {})
            if not isinstance(user_effects, dict):  # else the preset's would silently stand
                raise ScenarioError(
                    f"{where}.effects",
                    user_effects,
                    "a table of effects by target: " + ", ".join(EFFECT_TARGETS),
                )
            for k, v in user_effects.items():
                if isinstance(v, dict) and k in merged_effects:
                    merged_effects[k].update(v)
                else:
                    merged_effects[k] = v
            values = {
                **{k: v for k, v in base.items() if k != "effects"},
                **values,
                "effects": merged_effects,
            }
        dc = _build(DrugConfig, values, where)
        if not dc.effects:
            raise ScenarioError(
                f"{where}.effects",
                _MISSING,
                "at least one effect (or a preset); targets: " + ", ".join(EFFECT_TARGETS),
            )
        out.append(dataclasses.replace(dc, name=name))
    return tuple(out)


def _stroma_present(sc_data: dict) -> tuple[bool, bool]:
    init = sc_data.get("init", {}) if isinstance(sc_data.get("init", {}), dict) else {}
    caf = init.get("caf", {}) if isinstance(init.get("caf", {}), dict) else {}
    tam = init.get("tam", {}) if isinstance(init.get("tam", {}), dict) else {}
    tam_cfg = sc_data.get("tam", {}) if isinstance(sc_data.get("tam", {}), dict) else {}
    has_caf = caf.get("placement", "none") != "none"
    has_tam = tam.get("placement", "none") != "none" or bool(tam_cfg.get("recruitment_per_h", 0))
    return has_caf, has_tam


def _drug_field(d: DrugConfig) -> FieldConfig:
    """The tissue field of a drug: its value at vessels (and faces, for a bath) follows the free
    plasma level, set every step (FieldSolver.set_supply)."""
    boundary: tuple[BoundaryConfig, ...] = ()
    if d.transport == "bath":
        boundary = (BoundaryConfig(faces=("all",), kind="dirichlet", value=0.0),)
    return FieldConfig(
        name=d.name,
        units="uM",
        diffusion_um2_per_min=d.diffusion_um2_per_min,
        decay_per_min=d.decay_per_min,
        initial=0.0,
        vessel_value=0.0,
        uptake_per_min=dict(d.uptake_per_min),
        secretion_per_min={},
        boundary=boundary,
        role="drug",
    )


#: what a run name may hold: it names the run file <run.name>.h5 in the working folder
_RUN_NAME = re.compile(r"[\w+=,@() .-]+")
RUN_NAME_RULE = (
    f"a file name of 1 to {MAX_RUN_NAME_BYTES} bytes: letters, digits, spaces and _ - . + = , @ "
    "( ), not starting with '.', '-' or a space, without '..' (the run file is <run.name>.h5 in "
    "the working folder; tmesim run -o PATH writes elsewhere)"
)


def run_name_ok(name: str, room: int = 0) -> bool:
    """Whether ``name`` (and ``room`` bytes appended to it) may name a run: the run name becomes
    the default run file, ``<run.name>.h5`` in the working folder, so no separator, parent
    reference, option-like or hidden name, or character a shell or a file system treats
    specially."""
    return (
        bool(name)
        and _RUN_NAME.fullmatch(name) is not None
        and name[0] not in ".- "
        and not name.endswith(" ")
        and ".." not in name
        and len(name.encode("utf-8")) + room <= MAX_RUN_NAME_BYTES
    )


def _check_run_name(name: str) -> None:
    if not run_name_ok(name):
        raise ScenarioError("run.name", name, RUN_NAME_RULE)


def _check_tumor_init(sc: Scenario) -> None:
    """The initial tumor: fractions that fit in one population, a size that is positive, and a
    region that holds at least one voxel centre (else the run starts without a tumor)."""
    ti, g = sc.init.tumor, sc.grid
    if ti.persister_fraction + ti.resistant_fraction > 1 + 1e-12:
        raise ScenarioError(
            "init.tumor.resistant_fraction",
            ti.resistant_fraction,
            f"at most 1 - init.tumor.persister_fraction ({1 - ti.persister_fraction:g}): the two "
            "are fractions of the same initial cells",
        )
    if ti.size_um is not None:
        for i, s in enumerate(ti.size_um):
            if s <= 0:
                raise ScenarioError(f"init.tumor.size_um[{i}]", s, "an extent > 0 um")
    if ti.shape in ("disk", "sphere") and ti.radius_um <= 0:
        raise ScenarioError(
            "init.tumor.radius_um", ti.radius_um, 'a radius > 0 um (shape = "none" for no tumor)'
        )
    if ti.shape not in ("disk", "sphere", "rectangle"):
        return
    centre = ti.center_um or tuple(n * g.dx_um / 2 for n in g.shape)
    # the voxel centre nearest to the region's centre, axis by axis (tmesim.initial's centres,
    # (i + 0.5) dx): the region holds a voxel if and only if it holds this one
    gaps = []
    value: object
    for n, c in zip(g.shape, centre):
        i = min(max(round(min(max(c / g.dx_um - 0.5, 0.0), n - 1.0)), 0), n - 1)
        gaps.append(abs((i + 0.5) * g.dx_um - c))
    if ti.shape == "rectangle":
        assert ti.size_um is not None, "checked before: a rectangle has size_um"
        empty = not all(gap <= s / 2 for gap, s in zip(gaps, ti.size_um))
        key, value = "init.tumor.size_um", list(ti.size_um)
    else:
        # (products, not **: a Python float overflows to inf under * but raises under **)
        empty = not sum(gap * gap for gap in gaps) <= ti.radius_um * ti.radius_um
        key, value = "init.tumor.radius_um", ti.radius_um
    if empty:
        raise ScenarioError(
            key,
            value,
            "a region that holds at least one voxel centre of the grid (the nearest is "
            f"{math.sqrt(sum(x * x for x in gaps)):.4g} um from the region's centre "
            f'{[float(c) for c in centre]}); shape = "none" for no tumor',
        )


def _check_run_length(sc: Scenario) -> None:
    """A runnable number of agent steps: the duration over the step, at most MAX_AGENT_STEPS
    (1e308 days would overflow the step count)."""
    r = sc.run
    steps = r.duration_days * 1440.0 / r.dt_min
    if not steps <= MAX_AGENT_STEPS:
        raise ScenarioError(
            "run.duration_days",
            r.duration_days,
            f"at most {MAX_AGENT_STEPS:.0e} agent steps of run.dt_min ({r.dt_min:g} min): "
            f"at most {MAX_AGENT_STEPS * r.dt_min / 1440.0:.4g} days",
        )


def _check_dosing(sc: Scenario, d: DrugConfig) -> None:
    """Start and stop days in order, and a number of boluses that fits in memory."""
    sch, c = d.schedule, d.controller
    where = f"drugs.{d.name}.schedule"
    if sch.stop_day < sch.start_day or (
        sch.stop_day == sch.start_day and sch.kind in ("continuous", "intermittent")
    ):
        raise ScenarioError(
            f"{where}.stop_day",
            sch.stop_day,
            f'a day after start_day ({sch.start_day:g}); kind = "none" gives no dose',
        )
    if c.kind != "none" and c.stop_day <= c.start_day:
        raise ScenarioError(
            f"drugs.{d.name}.controller.stop_day",
            c.stop_day,
            f'a day after the controller\'s start_day ({c.start_day:g}); kind = "none" for no '
            "controller",
        )
    if d.half_life_h > 0 and sch.kind in ("continuous", "intermittent"):
        # tmesim.drugs.Pharmacokinetics lists the bolus times up to the stop or the run's end
        end_h = min(sch.stop_day * 24.0, sc.run.duration_days * 24.0 + 1.0)
        n = (end_h - sch.start_day * 24.0) / sch.interval_h
        if n > MAX_BOLUSES:
            shortest = (end_h - sch.start_day * 24.0) / MAX_BOLUSES
            raise ScenarioError(
                f"{where}.interval_h",
                sch.interval_h,
                f"at least {shortest:.3g} h: every {sch.interval_h:g} h gives {n:.3g} boluses "
                f"over the run, and at most {MAX_BOLUSES:.0e} are kept (a drug given this "
                "often is a constant infusion: half_life_h = 0 holds the plasma at dose_uM)",
            )


def _validate_whole(sc: Scenario, base_dir: Path) -> None:
    """Checks that involve more than one key."""
    g = sc.grid
    _check_run_name(sc.run.name)
    if len(g.shape) not in (2, 3):
        raise ScenarioError("grid.shape", list(g.shape), "2 entries (y, x) or 3 entries (z, y, x)")
    for i, n in enumerate(g.shape):
        if n < 1:
            raise ScenarioError(f"grid.shape[{i}]", n, "a positive number of voxels")
    if math.prod(g.shape) > 2**31 - 1:
        raise ScenarioError("grid.shape", list(g.shape), "fewer than 2**31 voxels in all")
    _check_run_length(sc)
    ndim = len(g.shape)
    t = sc.tumor
    # oxygen thresholds in order: (lower key, upper key, must the lower be strictly below?)
    for low, high, strict in (
        ("proliferation_threshold_mmHg", "proliferation_saturation_mmHg", True),
        ("hypoxic_threshold_mmHg", "proliferation_saturation_mmHg", False),
        ("necrosis_max_mmHg", "necrosis_threshold_mmHg", False),
        ("necrosis_threshold_mmHg", "hypoxic_threshold_mmHg", False),
    ):
        lo_v, hi_v = getattr(t, low), getattr(t, high)
        if lo_v > hi_v or (strict and lo_v == hi_v):
            rel = "below" if strict else "at or below"
            raise ScenarioError(f"tumor.{low}", lo_v, f"a value {rel} tumor.{high} ({hi_v} mmHg)")
    reach_voxels = t.mechanics.push_reach_um / g.dx_um
    if reach_voxels > MAX_PUSH_REACH_VOXELS:
        raise ScenarioError(
            "tumor.mechanics.push_reach_um",
            t.mechanics.push_reach_um,
            f"at most {MAX_PUSH_REACH_VOXELS} voxel edges (grid.dx_um = {g.dx_um:g} um)",
        )
    if t.doubling_time_h * 60 < sc.run.dt_min:
        raise ScenarioError(
            "tumor.doubling_time_h",
            t.doubling_time_h,
            f"at least one agent step ({sc.run.dt_min:g} min = "
            f"{sc.run.dt_min / 60:g} h); shorten run.dt_min for faster cells",
        )
    ti = sc.init.tumor
    if ti.shape == "sphere" and ndim != 3:
        raise ScenarioError(
            "init.tumor.shape",
            ti.shape,
            "'disk' on a 2D grid (a sphere needs a 3-entry grid.shape)",
        )
    if ti.shape == "disk" and ndim != 2:
        raise ScenarioError(
            "init.tumor.shape",
            ti.shape,
            "'sphere' on a 3D grid (a disk needs a 2-entry grid.shape)",
        )
    for key in ("center_um", "size_um"):
        v = getattr(ti, key)
        if v is not None and len(v) != ndim:
            raise ScenarioError(
                f"init.tumor.{key}", list(v), f"{ndim} entries, one per grid axis ({_axes(ndim)})"
            )
    if ti.shape == "rectangle" and ti.size_um is None:
        raise ScenarioError("init.tumor.size_um", _MISSING, f"{ndim} extents in um for a rectangle")
    _check_tumor_init(sc)
    if ti.shape == "mask":
        _check_mask("init.tumor.mask", ti.mask, g.shape, base_dir)
    vi = sc.init.vessels
    if vi.placement == "mask":
        _check_mask("init.vessels.mask", vi.mask, g.shape, base_dir)
    for kind in ("caf", "tam"):
        stroma = getattr(sc.init, kind)
        if stroma.placement == "mask":
            _check_mask(f"init.{kind}.mask", stroma.mask, g.shape, base_dir)
    if vi.placement == "lines" and vi.axis == "z" and ndim == 2:
        raise ScenarioError("init.vessels.axis", vi.axis, "'x' or 'y' on a 2D grid")
    if vi.placement == "random" and vi.density <= 0:
        raise ScenarioError("init.vessels.density", vi.density, "a value > 0 for random vessels")
    for fc in sc.fields:
        seen: dict[str, int] = {}  # face -> index of the boundary entry that sets it
        for i, b in enumerate(fc.boundary):
            for face in b.faces:
                where = f"fields.{fc.name}.boundary[{i}].faces"
                if face != "all" and face not in FACES:
                    raise ScenarioError(where, face, "one of all, " + ", ".join(FACES))
                if face in ("z-", "z+") and ndim == 2:
                    raise ScenarioError(where, face, "a face of a 2D grid: y-, y+, x-, x+ or all")
                for f in FACES if face == "all" else (face,):
                    if f in seen and seen[f] != i:
                        raise ScenarioError(
                            where,
                            face,
                            f"each face named once; {f} is already set by boundary[{seen[f]}]",
                        )
                    seen[f] = i
    _check_medium(sc)
    for d in sc.drugs:
        sch = d.schedule
        where = f"drugs.{d.name}.schedule"
        if sch.kind == "doses":
            if not sch.times_h:
                raise ScenarioError(
                    f"{where}.times_h", _MISSING, 'a list of dose times in hours for kind = "doses"'
                )
            if len(sch.times_h) != len(sch.doses_uM):
                raise ScenarioError(
                    f"{where}.doses_uM",
                    list(sch.doses_uM),
                    f"{len(sch.times_h)} doses, one per entry of times_h",
                )
            if any(t < 0 for t in sch.times_h):
                raise ScenarioError(f"{where}.times_h", list(sch.times_h), "times >= 0 h")
            if any(x < 0 for x in sch.doses_uM):
                raise ScenarioError(f"{where}.doses_uM", list(sch.doses_uM), "doses >= 0 uM")
        _check_dosing(sc, d)
        c = d.controller
        if c.kind == "adaptive" and c.upper_fraction <= c.lower_fraction:
            raise ScenarioError(
                f"drugs.{d.name}.controller.upper_fraction",
                c.upper_fraction,
                f"a value above lower_fraction ({c.lower_fraction:g})",
            )
        if c.kind == "biomarker" and c.off_fraction > c.on_fraction:
            raise ScenarioError(
                f"drugs.{d.name}.controller.off_fraction",
                c.off_fraction,
                f"a value at or below on_fraction ({c.on_fraction:g})",
            )
        if (
            c.kind == "biomarker"
            and c.biopsy_center_um is not None
            and len(c.biopsy_center_um) != ndim
        ):
            raise ScenarioError(
                f"drugs.{d.name}.controller.biopsy_center_um",
                list(c.biopsy_center_um),
                f"{ndim} entries ({_axes(ndim)})",
            )
        if c.kind == "modulation" and c.min_dose_uM > c.max_dose_uM:
            raise ScenarioError(
                f"drugs.{d.name}.controller.min_dose_uM",
                c.min_dose_uM,
                f"at most max_dose_uM ({c.max_dose_uM:g})",
            )
        if d.transport == "vessels" and sc.init.vessels.placement == "none":
            raise ScenarioError(
                f"drugs.{d.name}.transport",
                d.transport,
                '"bath" or "uniform": this scenario has no vessels '
                '(init.vessels.placement = "none")',
            )
    if sc.run.snapshot_every_hours * 60 < sc.run.dt_min:
        raise ScenarioError(
            "run.snapshot_every_hours",
            sc.run.snapshot_every_hours,
            f"at least one agent step ({sc.run.dt_min} min)",
        )
    if sc.solver.dt_min > sc.run.dt_min:
        raise ScenarioError(
            "solver.dt_min",
            sc.solver.dt_min,
            f"at most run.dt_min ({sc.run.dt_min} min), or 0 for one field step per agent step",
        )
    if sc.n_steps < 1:
        raise ScenarioError(
            "run.duration_days",
            sc.run.duration_days,
            f"at least one agent step ({sc.run.dt_min} min)",
        )


#: thickest unstirred layer in voxel edges ([medium]; keeps lattice distances in 16 bits)
MAX_BOUNDARY_LAYER_VOXELS = 1000


def _check_medium(sc: Scenario) -> None:
    """A stirred bath holds each solved field at its bath value, the one value of its Dirichlet
    faces: every such field needs one (well-mixed drugs are not solved and need none)."""
    m = sc.medium
    if not m.stirred:
        return
    if m.boundary_layer_um / sc.grid.dx_um > MAX_BOUNDARY_LAYER_VOXELS:
        raise ScenarioError(
            "medium.boundary_layer_um",
            m.boundary_layer_um,
            f"at most {MAX_BOUNDARY_LAYER_VOXELS} voxel edges (grid.dx_um = {sc.grid.dx_um:g} um)",
        )
    drugs = {d.name: d for d in sc.drugs}
    for fc in sc.fields:
        d = drugs.get(fc.name)
        if d is not None and d.transport == "uniform":
            continue
        bc = face_conditions(fc, sc.ndim)
        values = sorted({v for kind, v in bc.values() if kind == "dirichlet"})
        if d is not None and not values:
            raise ScenarioError(
                f"drugs.{d.name}.transport",
                d.transport,
                '"bath" or "uniform" when medium.stirred = true (the stirred bath holds the '
                "medium at the drug's bath level)",
            )
        if not values:
            raise ScenarioError(
                f"fields.{fc.name}.boundary",
                _MISSING,
                "a Dirichlet face when medium.stirred = true: the stirred bath holds the medium "
                'at the value of the field\'s Dirichlet faces (e.g. boundary = { faces = "all", '
                'kind = "dirichlet", value = 0 } for a field the medium washes out)',
            )
        if len(values) > 1:
            raise ScenarioError(
                f"fields.{fc.name}.boundary",
                [v for v in values],
                "one value on every Dirichlet face when medium.stirred = true (it is the value "
                "the stirred bath holds)",
            )


def _axes(ndim):
    return "z, y, x" if ndim == 3 else "y, x"


def _check_mask(path, mask, shape, base_dir: Path):
    import numpy as np

    if not mask:
        raise ScenarioError(path, _MISSING, "the path of a .npy file")
    p = Path(mask)
    if not p.is_absolute():
        p = base_dir / p
    if not p.is_file():
        raise ScenarioError(path, mask, f"an existing .npy file (looked at {p})")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # any unreadable file is the user's to fix
        raise ScenarioError(path, mask, f"a readable .npy array ({exc})") from None
    if tuple(arr.shape) != tuple(shape):
        raise ScenarioError(
            path, mask, f"an array of the grid's shape {list(shape)}, not {list(arr.shape)}"
        )


def resolve_path(sc: Scenario, p: str) -> Path:
    """A path from the scenario, relative to the scenario file's folder."""
    path = Path(p)
    return path if path.is_absolute() else Path(sc.base_dir) / path


# ---------------------------------------------------------------------------------------------
# Loading and overrides
# ---------------------------------------------------------------------------------------------


def _toml_loads(text: str, where: str, value) -> dict:
    """Parse TOML text, refusing what Python's reader cannot take as a one-line ScenarioError at
    ``where`` (showing ``value``): bad syntax, integers of over 4300 digits (Python's limit on
    converting text to int), nesting deeper than its recursion, and dotted keys so long that
    reading them takes quadratic time."""
    deep = _DEEP_KEY.search(text)
    if deep:
        line = text.count("\n", 0, deep.start()) + 1
        raise ScenarioError(
            where,
            value,
            f"keys nested at most {MAX_DEPTH} deep (the key {deep.group()[:40]}... on line "
            f"{line} is deeper)",
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(where, value, f"valid TOML ({str(exc)[:120]})") from None
    except RecursionError:
        raise ScenarioError(
            where, value, f"valid TOML with lists and tables nested at most {MAX_DEPTH} deep"
        ) from None
    except ValueError as exc:  # int(): "Exceeds the limit (4300 digits) ..."
        raise ScenarioError(
            where, value, f"valid TOML with numbers of at most 4300 digits ({str(exc)[:60]})"
        ) from None


#: a key of more than MAX_DEPTH dotted parts (bare or quoted): the TOML reader's time grows
#: with the square of its length (50,000 parts take minutes), so it is refused before reading
# (possessive quantifiers and the look-behind keep the search linear in the text's length)
_KEY_PART = r"""(?:[A-Za-z0-9_-]++|"(?:[^"\\\n]|\\.)*+"|'[^'\n]*+')"""
_DEEP_KEY = re.compile(
    rf"(?<![A-Za-z0-9_-])(?:{_KEY_PART}[ \t]*+\.[ \t]*+){{{MAX_DEPTH},}}{_KEY_PART}"
)


def parse_value(text: str, key: str = "(--set)"):
    """A ``--set`` value: TOML syntax (numbers, true/false, [lists], "strings"), else a string.

    Raises:
        ScenarioError: at ``key`` for TOML that is valid but beyond the reader (numbers of over
            4300 digits, nesting deeper than its recursion).
    """
    try:
        return _toml_loads(f"v = {text}", key, text)["v"]
    except ScenarioError as exc:
        if exc.expected.startswith("valid TOML ("):  # a syntax error: the text is a string
            return text
        raise


def apply_overrides(data: dict, overrides) -> dict:
    """Set ``key.path=value`` pairs (a dict or ``["a.b=1", ...]``) into nested ``data``."""
    if overrides is None:
        return data
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for item in overrides:
            if "=" not in item:
                raise ScenarioError(item, _MISSING, "an override of the form key.path=value")
            key, text = item.split("=", 1)
            key = key.strip()
            parsed.append((key, parse_value(text.strip(), key)))
        items = parsed
    for key, value in items:
        if not isinstance(key, str):
            raise ScenarioError(str(key), value, "a dotted key path such as grid.dx_um")
        parts = key.split(".")
        if not all(parts):
            raise ScenarioError(key, value, "a dotted key path such as grid.dx_um")
        if len(parts) > MAX_DEPTH:
            raise ScenarioError(key, value, f"a key path of at most {MAX_DEPTH} parts")
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ScenarioError(".".join(parts[: i + 1]), nxt, "a table to set a key inside")
            node = nxt
        node[parts[-1]] = value
    return data


def toml_value(v) -> str:
    """A plain value as TOML text (what ``--set key=value`` and TOML files parse back)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # a TOML basic string holds no raw control character: they go as \uXXXX escapes
        return '"' + _TOML_ESCAPE.sub(_toml_escape, v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


_TOML_ESCAPE = re.compile(r'[\x00-\x1f\x7f"\\]')


def _toml_escape(m: re.Match) -> str:
    ch = m.group()
    return "\\" + ch if ch in '"\\' else f"\\u{ord(ch):04X}"


def _to_toml(data: dict) -> str:
    """Write nested plain data back as TOML (used to store the scenario with overrides applied)."""
    lines: list[str] = []
    val = toml_value

    def table(prefix, d):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix and (scalars or not subs):
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {val(v)}")
        for k, v in subs.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines).lstrip() + "\n"


def parse_scenario(
    data: dict, *, text: str | None = None, base_dir: str | os.PathLike = ".", overrides=None
) -> Scenario:
    """Validate plain nested data (as from TOML) into a :class:`Scenario`."""
    if not isinstance(data, dict):
        raise ScenarioError("(top level)", data, "a table")
    _check_depth(data)
    data = apply_overrides(_deepcopy(data), overrides)
    _check_depth(data)
    top = {f.name for f in dataclasses.fields(Scenario) if f.name not in ("text", "base_dir")}
    for key in data:
        if key not in top:
            raise ScenarioError(
                key, data[key], f"no such section; sections are: {', '.join(sorted(top))}"
            )
    rest = {k: v for k, v in data.items() if k not in ("fields", "drugs")}
    sc = _build(Scenario, rest, "")
    field_data = data.get("fields", {})
    if isinstance(field_data, dict):
        # stromal cells need the fields they secrete and sense: added with their defaults
        has_caf, has_tam = _stroma_present(data)
        field_data = dict(field_data)
        for name, needed in (("hgf", has_caf or has_tam), ("igf1", has_tam), ("signal", has_tam)):
            if needed and name not in field_data:
                field_data[name] = {}
    fields = _build_fields(field_data)
    drugs = _build_drugs(data.get("drugs", {}))
    for d in drugs:
        if d.name in {f.name for f in fields}:
            raise ScenarioError(
                f"drugs.{d.name}",
                d.name,
                "a drug name that is not also a "
                "field name (each drug gets a field of its own name)",
            )
    fields = fields + tuple(_drug_field(d) for d in drugs)
    _check_columns(fields, drugs)
    if overrides or text is None:
        text = _to_toml(data)
    sc = dataclasses.replace(sc, fields=fields, drugs=drugs, text=text, base_dir=str(base_dir))
    _validate_whole(sc, Path(base_dir))
    return sc


def _check_depth(data: dict) -> None:
    """Refuse tables and lists nested deeper than MAX_DEPTH (walked without recursion: the data
    may come from Python as deep as memory allows)."""
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ScenarioError(
                path,
                node,
                f"tables and lists nested at most {MAX_DEPTH} deep (the deepest key of a "
                "scenario is 6 levels down)",
            )
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))


def _deepcopy(d):
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def load_scenario(path: str | os.PathLike, overrides=None) -> Scenario:
    """Read, validate and freeze a scenario file.

    Args:
        path: a TOML scenario file.
        overrides: ``{"grid.dx_um": 10}`` or ``["grid.dx_um=10", ...]``, applied before validation.
    """
    p = Path(path)
    if not p.is_file():
        raise ScenarioError("(file)", str(path), "an existing scenario file")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError("(file)", str(path), f"a readable file ({exc.strerror})") from None
    if len(raw) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            "(file)",
            str(path),
            f"a scenario file of at most {MAX_SCENARIO_BYTES >> 20} MiB "
            f"(this one is {p.stat().st_size} bytes)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(
            "(file)",
            str(path),
            f"UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line} is not UTF-8; "
            "save the file as UTF-8)",
        ) from None
    data = _toml_loads(text, "(file)", str(path))
    return parse_scenario(data, text=text, base_dir=p.resolve().parent, overrides=overrides)


def loads_scenario(text: str, overrides=None, base_dir=".") -> Scenario:
    """Like :func:`load_scenario`, from TOML text."""
    if len(text) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            "(text)", text, f"a scenario of at most {MAX_SCENARIO_BYTES >> 20} MiB of text"
        )
    data = _toml_loads(text, "(text)", text[:40])
    return parse_scenario(data, text=text, base_dir=base_dir, overrides=overrides)


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def face_conditions(fc: FieldConfig, ndim: int) -> dict[str, tuple[str, float]]:
    """Boundary condition per face, {face: ("dirichlet"|"no_flux", value)}; unnamed faces are
    no-flux."""
    faces = FACES[6 - 2 * ndim :]
    out = {f: ("no_flux", 0.0) for f in faces}
    for b in fc.boundary:
        for face in b.faces:
            for f in faces if face == "all" else (face,):
                out[f] = (b.kind, b.value)
    return out


def summary(sc: Scenario) -> str:
    """A human-readable account of the scenario: what will be simulated, in sentences."""
    g, r, t = sc.grid, sc.run, sc.tumor
    ext = " x ".join(f"{n * g.dx_um / 1000:g}" for n in g.shape)
    lines = [
        f"Scenario '{r.name}': {sc.ndim}D lattice {' x '.join(map(str, g.shape))} voxels "
        f"({_axes(sc.ndim)}) of {g.dx_um:g} um = {ext} mm, {g.neighbourhood} neighbourhood.",
        f"Runs {r.duration_days:g} days in {sc.n_steps} agent steps of {r.dt_min:g} min, seed "
        f"{r.seed}; snapshots every {r.snapshot_every_hours:g} h.",
    ]
    ti = sc.init.tumor
    if ti.shape in ("disk", "sphere"):
        lines.append(
            f"Initial tumor: a {ti.shape} of radius {ti.radius_um:g} um, "
            f"{ti.fill_fraction:.0%} filled."
        )
    elif ti.shape == "rectangle" and ti.size_um is not None:
        lines.append(f"Initial tumor: a box of {' x '.join(f'{s:g}' for s in ti.size_um)} um.")
    elif ti.shape == "mask":
        lines.append(f"Initial tumor: from mask {ti.mask}.")
    vi = sc.init.vessels
    if vi.placement == "random":
        lines.append(f"Vessels: random, {vi.density:.2%} of voxels.")
    elif vi.placement == "lines":
        lines.append(f"Vessels: straight along {vi.axis}, every {vi.spacing_um:g} um.")
    elif vi.placement == "mask":
        lines.append(f"Vessels: from mask {vi.mask}.")
    mech = t.mechanics
    # on when a chain of one cell fits the reach (tmesim.steps.mechanics.reach_units >= 10)
    if math.floor(10 * mech.push_reach_um / g.dx_um + 0.5) >= 10:
        crowded = (
            f"none empty: the cell pushes a chain of {', '.join(mech.pushable)} cells spanning "
            f"at most {mech.push_reach_um:g} um toward the nearest free voxel, else waits"
        )
    else:
        crowded = "none empty: no division"
    lines.append(
        f"Tumor cells divide every {t.doubling_time_h:g} h at full oxygen; the rate falls "
        f"linearly from {t.proliferation_saturation_mmHg:g} mmHg to zero at "
        f"{t.proliferation_threshold_mmHg:g} mmHg; the daughter goes to a random empty "
        f"neighbour ({crowded})."
    )
    lines.append(
        f"Below {t.necrosis_threshold_mmHg:g} mmHg cells become necrotic, at up to "
        f"{t.necrosis_max_rate_per_h:.3g} /h (reached at {t.necrosis_max_mmHg:g} mmHg); necrotic "
        f"voxels clear at {t.necrotic_clearance_per_h:.3g} /h. Hypoxic means below "
        f"{t.hypoxic_threshold_mmHg:g} mmHg."
    )
    for fc in sc.fields:
        ell = (
            math.sqrt(fc.diffusion_um2_per_min / fc.decay_per_min)
            if fc.decay_per_min > 0
            else float("inf")
        )
        s = (
            f"Field {fc.name} ({fc.units}): D = {fc.diffusion_um2_per_min:g} um^2/min, decay "
            f"{fc.decay_per_min:g} /min"
            f"{' in tissue only (not in the medium)' if fc.decay_in == 'tissue' else ''} "
            f"(diffusion length {ell:.0f} um), starts at "
            f"{fc.initial:g}"
        )
        if fc.uptake_per_min:
            s += "; taken up by " + ", ".join(
                f"{k} at {v:g} /min" for k, v in fc.uptake_per_min.items()
            )
        if fc.secretion_per_min:
            s += "; secreted by " + ", ".join(
                f"{k} at {v:g} {fc.units}/min" for k, v in fc.secretion_per_min.items()
            )
        bc = face_conditions(fc, sc.ndim)
        fixed = [f for f, (k, _) in bc.items() if k == "dirichlet"]
        if fixed:
            vals = sorted({bc[f][1] for f in fixed})
            s += (
                f"; held at {', '.join(f'{v:g}' for v in vals)} {fc.units} on faces "
                f"{' '.join(fixed)}"
            )
        s += f"; vessels hold it at {fc.vessel_value:g}." if vi.placement != "none" else "."
        lines.append(s)
    if sc.medium.stirred:
        layer = sc.medium.boundary_layer_um
        where = (
            f"farther than {layer:g} um (the unstirred layer) from every occupied voxel "
            if layer > 0
            else ""
        )
        lines.append(
            f"Medium: stirred; every empty voxel {where}open to a domain face along a grid axis "
            "is held at each field's bath value (its Dirichlet face value)."
        )
    from .rules_text import rule_sentences

    lines.extend(rule_sentences(sc))
    sv = sc.solver
    fdt = sv.dt_min or r.dt_min
    how = (
        f"implicit Euler by conjugate gradients ({sv.preconditioner} preconditioner)"
        if sv.method == "adi"
        else "LOD (BioFVM's split scheme)"
    )
    lines.append(f"Fields solved by {how} with steps of {fdt:g} min.")
    return "\n".join(lines)
