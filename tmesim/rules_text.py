"""A scenario's rules as sentences (shown by ``tmesim validate``): phenotypes, transitions,
stroma and drugs, with the numbers the run will use."""

from __future__ import annotations

TARGET_VERBS = {
    "kill_S": "kills sensitive cells",
    "kill_P": "kills persisters",
    "block_entry": "blocks entry into the persister state",
    "block_division": "stops division of sensitive cells and persisters",
    "exit_speedup": "drives persisters back to the sensitive state",
    "cancel_met": "cancels HGF/MET signalling",
    "cancel_igf1r": "cancels IGF-1/IGF-1R signalling",
}


def _g(x: float) -> str:
    return f"{x:.3g}"


def controller_text(d) -> str:
    c = d.controller
    when = f"every {_g(c.decide_every_h)} h from day {_g(c.start_day)}" + (
        "" if c.stop_day >= 1e8 else f" until day {_g(c.stop_day)}"
    )
    if c.kind == "adaptive":
        return (
            f"adaptive control (Zhang 2017) {when}: {_g(c.dose_uM)} uM until the burden falls "
            f"to {_g(c.lower_fraction)} x its value at the first decision, then none until it "
            f"is back to {_g(c.upper_fraction)} x"
        )
    if c.kind == "modulation":
        return (
            f"dose modulation (Gatenby 2009) {when}: starting at {_g(c.dose_uM)} uM, the dose "
            f"moves by {_g(100 * c.step_fraction)} % to hold the burden within "
            f"{_g(100 * c.tolerance)} % of {_g(c.target_fraction)} x its first value "
            f"({_g(c.min_dose_uM)}-{_g(c.max_dose_uM)} uM)"
        )
    return (
        f"biomarker-guided {when}: a biopsy of {c.biopsy_cells} cells in a "
        f"{_g(c.biopsy_size_um)} um box; {_g(c.dose_uM)} uM once the persister fraction "
        f"exceeds {_g(c.on_fraction)}"
        + (f", stopped below {_g(c.off_fraction)}" if c.off_fraction > 0 else "")
    )


def schedule_text(d) -> str:
    if d.controller.kind != "none":
        return controller_text(d)
    s = d.schedule
    if s.kind == "none":
        return "not given"
    pk = (
        f"one-compartment PK, half-life {_g(d.half_life_h)} h, boluses of {_g(s.dose_uM)} uM"
        f" every {_g(s.interval_h)} h"
        if d.half_life_h > 0
        else f"plasma held at {_g(s.dose_uM)} uM"
    )
    stop = "" if s.stop_day >= 1e8 else f" until day {_g(s.stop_day)}"
    if s.kind == "continuous":
        return f"continuous from day {_g(s.start_day)}{stop}: {pk}"
    if s.kind == "intermittent":
        return (
            f"intermittent from day {_g(s.start_day)}{stop}, {_g(s.on_days)} days on and "
            f"{_g(s.off_days)} days off: {pk}"
        )
    doses = ", ".join(f"{_g(d_)} uM at {_g(t)} h" for t, d_ in zip(s.times_h, s.doses_uM))
    kind = f"boluses, half-life {_g(d.half_life_h)} h" if d.half_life_h > 0 else "plasma levels"
    return f"explicit {kind}: {doses}"


def drug_sentences(sc) -> list[str]:
    sg = sc.tumor.signalling
    out = []
    for d in sc.drugs:
        head = f"Drug {d.name}" + (f" ({d.preset})" if d.preset else "")
        transport = {
            "bath": "from the domain faces and vessels",
            "vessels": "from vessels",
            "uniform": "uniformly (well mixed)",
        }[d.transport]
        out.append(
            f"{head}: {schedule_text(d)}; {_g(100 * d.unbound_fraction)} % unbound, "
            f"reaches tissue {transport}, D = {_g(d.diffusion_um2_per_min)} um^2/min."
        )
        for target, e in d.effects.items():
            s = (
                f"  {d.name} {TARGET_VERBS[target]} with EC50 {_g(e.ec50_uM)} uM, Hill "
                f"{_g(e.hill)}, up to {_g(100 * e.emax)} %"
            )
            if target in ("kill_S", "kill_P"):
                s += f" of {_g(e.rate_per_h)} /h"
            if target == "kill_S":
                s += (
                    f", reduced by HGF protection up to {_g(100 * sg.met_protection_max)} % and "
                    f"IGF-1 protection up to {_g(100 * sg.igf1r_protection_max)} %; persisters "
                    f"die at {_g(100 * sc.tumor.persister_tolerance)} % of it"
                )
            if target == "exit_speedup":
                s += f" (adds {_g(e.fold)} x E to the reversion factor)"
            out.append(s + ".")
    return out


def tumor_sentences(sc) -> list[str]:
    t, tr, sg = sc.tumor, sc.tumor.transitions, sc.tumor.signalling
    out = [
        f"Persisters divide at {_g(100 * t.persister_cycle_factor)} % of the sensitive rate; "
        f"resistant cells at {_g(100 * (1 - t.resistance_cost))} % (fitness cost "
        f"{_g(100 * t.resistance_cost)} %) and resist the drugs that kill sensitive cells."
    ]
    if t.death_per_h > 0:
        out.append(
            f"Every tumor cell dies at {_g(t.death_per_h)} /h of basal turnover (mean life "
            f"{_g(1 / t.death_per_h / 24)} d); its voxel empties for a neighbour to fill."
        )
    entry = []
    if tr.pre_existing:
        entry.append(
            f"{_g(tr.entry_basal_per_h)} /h without drug (pre-existing origin), x (1 + "
            f"{_g(tr.hypoxia_weight)} hypoxia)"
        )
    if tr.drug_induced:
        entry.append(
            f"{_g(tr.entry_induced_per_h)} /h x drug effect x (1 + memory + "
            f"{_g(sg.entry_weight)} signalling + {_g(tr.hypoxia_weight)} hypoxia) "
            "(drug-induced origin)"
        )
    out.append(
        "S -> P at "
        + (" plus ".join(entry) if entry else "no rate (both origins off)")
        + "; blocked by block_entry drugs."
    )
    out.append(
        f"P -> S at {_g(tr.exit_per_h)} /h off drug, slowed by 1 + "
        f"{_g(tr.memory_exit_slowing)} memory + {_g(tr.hypoxia_exit_slowing)} hypoxia; "
        f"memory rises at {_g(tr.memory_gain_per_h)} /h under drug and relaxes at "
        f"{_g(tr.memory_decay_per_h)} /h without."
    )
    if tr.expansion_per_h > 0:
        out.append(
            f"P -> E (expanded persisters, DTEPs) at up to {_g(tr.expansion_per_h)} /h x drug "
            f"effect, none in a persister's first {_g(tr.expansion_delay_h)} h, then rising to "
            f"the full rate over {_g(tr.expansion_ramp_h)} h; E cells divide "
            f"at {_g(100 * t.expanded_cycle_factor)} % of the sensitive rate through "
            f"division-blocking drugs, are as tolerant as P, and revert (E -> S) at "
            f"{_g(tr.expanded_exit_per_h)} /h off drug."
        )
    out.append(
        f"P -> R (and E -> R) at {_g(tr.resistance_per_h)} /h, up to "
        f"{_g(1 + tr.adaptive_mutability)}x under drug after {_g(tr.mutability_ramp_h)} h "
        "as a persister."
    )
    out.append(
        f"HGF (half-max {_g(sg.hgf_half_max_ng_per_mL)} ng/mL) and IGF-1 (half-max "
        f"{_g(sg.igf1_half_max_ng_per_mL)} ng/mL) speed division by up to "
        f"{_g(100 * sg.hgf_growth_gain)} % and {_g(100 * sg.igf1_growth_gain)} %."
    )
    ti = sc.init.tumor
    if ti.persister_fraction or ti.resistant_fraction:
        out.append(
            f"Initially {_g(100 * ti.persister_fraction)} % of tumor cells are persisters "
            f"and {_g(100 * ti.resistant_fraction)} % resistant"
            + (
                ""
                if ti.resistant_placement == "random"
                else " (exactly, drawn among the cells "
                + (
                    "beside an empty voxel"
                    if ti.resistant_placement == "edge"
                    else "with no empty neighbour"
                )
                + ")"
            )
            + "."
        )
    return out


def stroma_sentences(sc) -> list[str]:
    out = []
    for name, cfg in (("CAFs", sc.init.caf), ("TAMs", sc.init.tam)):
        if cfg.placement == "none":
            continue
        where = {
            "random": "at random",
            "shell": f"in a {_g(cfg.shell_width_um)} um shell "
            f"{_g(cfg.shell_gap_um)} um outside the tumor",
            "clusters": f"in {cfg.clusters} clusters of radius {_g(cfg.cluster_radius_um)} um",
            "mask": f"from mask {cfg.mask}",
        }[cfg.placement]
        out.append(f"{name} start {where}, in {_g(100 * cfg.density)} % of the free voxels there.")
    if sc.init.caf.placement != "none":
        out.append(f"CAFs step into an empty neighbour at {_g(sc.caf.motility_per_h)} /h.")
    tam = sc.tam
    if sc.init.tam.placement != "none" or tam.recruitment_per_h > 0:
        out.append(
            f"TAMs step at {_g(tam.motility_per_h)} /h, up the signal with probability "
            f"{_g(tam.chemotaxis)}; recruited at vessels at {_g(tam.recruitment_per_h)} "
            f"+ {_g(tam.recruitment_signal_gain)} s/(s + {_g(tam.signal_half_max)}) /h per "
            f"vessel voxel; leave at {_g(tam.death_per_h)} /h."
        )
    return out


def rule_sentences(sc) -> list[str]:
    return tumor_sentences(sc) + stroma_sentences(sc) + drug_sentences(sc)
