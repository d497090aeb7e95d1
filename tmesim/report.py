"""``tmesim report``: figures (PNG) and a summary table of a run, from the run file alone.

Figures: ``<run>_population.png`` (populations with drug exposure shaded, hypoxia, field means,
drugs, and the share of persisters near CAFs), ``<run>_maps.png`` (occupants and every field at
a few snapshots, one colour scale per field over all of them), ``<run>_persisters.png`` (tumor
states with the stroma) and, for a run of a validation experiment with published kill data,
``<run>_kill.png`` (its kill curve beside the published points). A panel whose data is all zero
(or empty) is left out and the figure's caption says so; legends sit outside the data. Kinds
and tumor states have the colours of :mod:`tmesim.colors`, the napari viewer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import codes
from .colors import KIND_COLORS, TUMOR_STATE_COLORS, TUMOR_STATE_LABELS, opaque
from .io.reader import open_run
from .io.schema import NEAR_CAF_UM

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.figure import Figure

DRUG_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
#: a legend placed to the right of its axes, outside the data
OUTSIDE = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7)


def _mid_slice(a: np.ndarray) -> np.ndarray:
    """The central z plane of a 3D array, or the 2D array itself."""
    return a[a.shape[0] // 2] if a.ndim == 3 else a


def _has_data(v) -> bool:
    """Whether ``v`` holds anything to draw: some finite value other than 0."""
    v = np.asarray(v, dtype=float)
    return bool(v.size and np.any(np.isfinite(v) & (v != 0)))


def _caption(fig, notes: list[str]) -> None:
    """Say under the figure which panels were left out and why (text gid "caption")."""
    if notes:
        fig.supxlabel("Not shown: " + "; ".join(notes) + ".", fontsize=8, gid="caption")


def _ec50s(ds) -> dict[str, tuple[float, float]]:
    """{drug: (unbound fraction, lowest EC50 of its effects in uM)} from the run's scenario;
    empty when the stored scenario cannot be read."""
    try:
        from .scenario import loads_scenario

        sc = loads_scenario(str(ds.attrs["scenario"]))
    except Exception:  # an older or foreign scenario text: shade by plasma instead
        return {}
    return {
        d.name: (d.unbound_fraction, min(e.ec50_uM for e in d.effects.values()))
        for d in sc.drugs
        if d.effects
    }


def exposure(ds, d: str, ec50s: dict) -> tuple[np.ndarray, str]:
    """The steps when drug ``d`` acts, and what the band means: its free concentration at the
    tumor cells (``mean_<d>_tumor``, else plasma x unbound fraction) at or above its lowest
    EC50; where the scenario gives no EC50, any drug in plasma."""
    if d in ec50s:
        unbound, ec50 = ec50s[d]
        col = f"mean_{d}_tumor"
        free = ds[col].values if col in ds else ds[f"plasma_{d}"].values * unbound
        return free >= ec50, f"{d} above EC50"
    return ds[f"plasma_{d}"].values > 0, f"{d} in plasma"


def shade_exposure(ax, ds, t_days, drugs) -> None:
    """Shade the periods when each drug acts (:func:`exposure`; one band colour per drug), from
    the first step it acts to the first step it does not."""
    ec50s = _ec50s(ds)
    for k, d in enumerate(drugs):
        on, what = exposure(ds, d, ec50s)
        if not on.any():
            continue
        edges = np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2]):
            ax.axvspan(
                t_days[a],
                t_days[min(b, len(t_days) - 1)],
                alpha=0.12,
                color=DRUG_COLOURS[k % len(DRUG_COLOURS)],
                lw=0,
                label=what if a == edges[0] else None,
            )


# ------------------------------------------------------------------------------ population
def population_figure(ds: xr.Dataset) -> Figure:
    """The time-series figure of a run (a matplotlib Figure): populations (drug exposure
    shaded), hypoxic fraction, field means, drugs, and the fractions of persisters (P + E) and
    of all tumor cells within NEAR_CAF_UM of a CAF. Panels without data are left out (caption)."""
    import matplotlib.pyplot as plt

    t_days = ds["step_time_h"].values / 24.0
    drugs = [n[7:] for n in map(str, ds.data_vars) if n.startswith("plasma_")]
    given = [d for d in drugs if _has_data(ds[f"plasma_{d}"].values)]
    notes: list[str] = []
    panels = []  # (draw function, title)

    def populations(ax):
        shade_exposure(ax, ds, t_days, given)
        for col, label, colour in (
            ("burden", "tumor cells", "k"),
            ("n_necrotic", "necrotic", KIND_COLORS["necrotic"]),
            ("n_S", TUMOR_STATE_LABELS["S"], TUMOR_STATE_COLORS["S"]),
            ("n_P", TUMOR_STATE_LABELS["P"], TUMOR_STATE_COLORS["P"]),
            ("n_E", TUMOR_STATE_LABELS["E"], TUMOR_STATE_COLORS["E"]),
            ("n_R", TUMOR_STATE_LABELS["R"], TUMOR_STATE_COLORS["R"]),
        ):
            if col not in ds:  # n_E: files from before format 1.3
                continue
            v = ds[col].values
            if v.max() > 0:
                ax.plot(t_days, v, label=label, color=colour, lw=1.6)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylabel("count")

    counts = [c for c in ("burden", "n_necrotic") if c in ds]
    if any(_has_data(ds[c].values) for c in counts):
        panels.append((populations, "populations"))
    else:
        notes.append("populations (no tumor cells at any time)")

    def hypoxia(ax):
        ax.plot(t_days, ds["hypoxic_fraction"].values, color="tab:purple", label="hypoxic")
        ax.set_ylabel("fraction of tumor cells")
        ax.set_ylim(-0.02, 1.02)

    if "hypoxic_fraction" in ds and _has_data(ds["hypoxic_fraction"].values):
        panels.append((hypoxia, "hypoxic fraction"))
    else:
        notes.append("hypoxic fraction (0 throughout)")

    # the non-drug fields (drugs have their own panel)
    shown = [
        n[5:-6]
        for n in map(str, ds.data_vars)
        if n.startswith("mean_") and n.endswith("_tumor") and n[5:-6] not in drugs
    ]
    zero = [f for f in shown if not _has_data(ds[f"mean_{f}"].values)]
    shown = [f for f in shown if f not in zero]
    if zero:
        notes.append("field means 0 throughout: " + ", ".join(zero))

    def fields(ax):
        for k, f in enumerate(shown):
            c = f"C{k}"
            units = ds[f"mean_{f}"].attrs.get("units", "")
            ax.plot(
                t_days, ds[f"mean_{f}_tumor"].values, color=c, label=f"{f} ({units}), tumor mean"
            )
            ax.plot(t_days, ds[f"mean_{f}"].values, "--", color=c, label=f"{f}, domain mean")

    if shown:
        panels.append((fields, "fields"))

    def drug_panel(ax):
        for k, d in enumerate(given):
            c = DRUG_COLOURS[k % len(DRUG_COLOURS)]
            ax.plot(t_days, ds[f"plasma_{d}"].values, color=c, label=f"{d} plasma")
            if f"mean_{d}_tumor" in ds:
                ax.plot(
                    t_days,
                    ds[f"mean_{d}_tumor"].values,
                    ":",
                    color=c,
                    label=f"{d} at tumor cells",
                )
        ax.set_ylabel("uM")

    if given:
        panels.append((drug_panel, "drugs"))
    elif drugs:
        notes.append("drugs (" + ", ".join(drugs) + ": never given)")

    def near_caf(ax):
        ax.plot(
            t_days,
            ds["persisters_near_caf_fraction"].values,
            color=TUMOR_STATE_COLORS["P"],
            lw=1.8,
            label="persisters (P + E)",
            gid="persisters_near_caf_fraction",
        )
        ax.plot(
            t_days,
            ds["tumor_near_caf_fraction"].values,
            color="k",
            ls="--",
            lw=1,
            label="all tumor cells",
        )
        ax.set_ylabel("fraction near CAFs")
        ax.set_ylim(-0.02, 1.02)

    near = ("persisters_near_caf_fraction", "tumor_near_caf_fraction")
    if all(n in ds for n in near) and any(_has_data(ds[n].values) for n in near):
        panels.append((near_caf, f"within {NEAR_CAF_UM:g} um of a CAF"))
    elif all(n in ds for n in near):
        notes.append("fractions near CAFs (no CAFs, or none near tumor cells)")

    ncol = 1 if len(panels) <= 1 else 2
    nrow = max(1, -(-len(panels) // ncol))
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(7.5 * ncol, 3.4 * nrow), squeeze=False, layout="constrained"
    )
    for a, (draw, title) in zip(axes.flat, panels):
        draw(a)
        a.set_title(title)
        a.set_xlabel("time (days)")
        if a.get_legend_handles_labels()[0]:
            a.legend(**OUTSIDE)
    for a in list(axes.flat)[len(panels) :]:
        a.remove()
    fig.suptitle(f"{ds.attrs['name']}  (seed {ds.attrs['seed']})")
    _caption(fig, notes)
    return fig


# ------------------------------------------------------------------------------------ maps
def snapshot_fields(ds) -> list[str]:
    """The per-voxel float arrays of the snapshots (fields, epigenetic memory)."""
    space = tuple(d for d in ("z", "y", "x") if d in ds.dims)
    return [
        str(n)
        for n in ds.data_vars
        if ds[n].dims == ("time",) + space and n not in ("kind", "tumor_state")
    ]


def colour_limits(ds, name: str, idx) -> tuple[float, float]:
    """(vmin, vmax) of field ``name`` over every snapshot ``idx`` shown (their central z plane
    in 3D), so that a colour means the same value at every time; NaN where all are NaN."""
    v = np.stack([_mid_slice(ds[name][i].values) for i in idx]).astype(float)
    if not np.isfinite(v).any():
        return np.nan, np.nan
    return float(np.nanmin(v)), float(np.nanmax(v))


def _geometry(ds):
    dims = [d for d in ("z", "y", "x") if d in ds.dims]
    ext_y = float(ds[dims[-2]].values[-1] + ds.attrs["dx_um"] / 2) / 1000
    ext_x = float(ds[dims[-1]].values[-1] + ds.attrs["dx_um"] / 2) / 1000
    return (0, ext_x, 0, ext_y), (" (central z plane)" if len(dims) == 3 else "")


def kind_handles():
    """Legend patches of the occupant kinds (gid "kind:<name>"), colours of tmesim.colors."""
    from matplotlib.patches import Patch

    return [
        Patch(color=opaque(KIND_COLORS[k]), label=k, gid=f"kind:{k}")
        for k in codes.KIND_NAMES
        if k != "empty"
    ]


def maps_figure(ds: xr.Dataset, idx: list[int]) -> Figure:
    """Occupants, then one row per field, at the snapshots ``idx`` (columns). Each field has
    one colour scale (:func:`colour_limits`) and one colour bar for its row; a field all zero
    at every shown time gets no row, and a panel all zero at its time is left blank; the
    caption names both."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    times = ds["time"].values
    extent, where = _geometry(ds)
    notes: list[str] = []
    rows = []
    for name in snapshot_fields(ds):
        vmin, vmax = colour_limits(ds, name, idx)
        if not (np.isfinite(vmin) and (vmin != 0 or vmax != 0)):
            notes.append(f"{name} (0 everywhere at every time shown)")
        else:
            rows.append((name, vmin, vmax))
    fig, axes = plt.subplots(
        1 + len(rows),
        len(idx),
        figsize=(3.8 * len(idx) + 1.6, 3.3 * (1 + len(rows))),
        squeeze=False,
        layout="constrained",
    )
    cmap = ListedColormap([opaque(KIND_COLORS.get(k)) for k in codes.KIND_NAMES])
    for j, i in enumerate(idx):
        a = axes[0, j]
        a.imshow(
            _mid_slice(ds["kind"][i].values),
            cmap=cmap,
            vmin=-0.5,
            vmax=len(codes.KIND_NAMES) - 0.5,
            interpolation="nearest",
            origin="lower",
            extent=extent,
        )
        a.set_title(f"occupants, t = {times[i]:.0f} h{where}", fontsize=9)
        a.set_xlabel("x (mm)")
        a.set_ylabel("y (mm)")
    axes[0, -1].legend(handles=kind_handles(), **OUTSIDE)
    for r, (name, vmin, vmax) in enumerate(rows, start=1):
        da = ds[name]
        units = da.attrs.get("units", "")
        norm = Normalize(vmin=vmin, vmax=vmax)
        blank = []
        for j, i in enumerate(idx):
            a = axes[r, j]
            data = _mid_slice(da[i].values)
            if not _has_data(data):
                a.set_axis_off()
                blank.append(f"{times[i]:.0f} h")
                continue
            a.imshow(data, cmap="viridis", norm=norm, origin="lower", extent=extent, gid=name)
            a.set_title(f"{name} ({units}), t = {times[i]:.0f} h", fontsize=9)
        if blank:
            notes.append(f"{name} at {', '.join(blank)} (0 everywhere)")
        fig.colorbar(
            ScalarMappable(norm=norm, cmap="viridis"),
            ax=list(axes[r, :]),
            shrink=0.8,
            label=f"{name} ({units})" if units else name,
        )
    _caption(fig, notes)
    return fig


def persister_figure(ds: xr.Dataset, idx: list[int]) -> Figure:
    """Maps of tumor states (S, P, E, R) with CAFs, TAMs, vessels and necrosis at the snapshots
    ``idx``; persisters circled so that the few that survive a drug stay visible."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    times = ds["time"].values
    extent, where = _geometry(ds)
    fig, axes = plt.subplots(
        1, len(idx), figsize=(4.2 * len(idx) + 1.8, 4.2), squeeze=False, layout="constrained"
    )
    # one code per map colour: 0 empty, 1 S, 2 P, 3 R, 4 E (the tumor state codes), 5 CAF,
    # 6 TAM, 7 vessel, 8 necrotic
    colours = [opaque(None)] + [opaque(TUMOR_STATE_COLORS[s]) for s in ("S", "P", "R", "E")]
    colours += [opaque(KIND_COLORS[k]) for k in ("caf", "tam", "vessel", "necrotic")]
    cmap = ListedColormap(colours)
    for j, i in enumerate(idx):
        kind = _mid_slice(ds["kind"][i].values)
        state = _mid_slice(ds["tumor_state"][i].values)
        m = np.zeros(kind.shape, dtype=np.int8)
        tumor = kind == codes.TUMOR
        m[tumor] = state[tumor]
        for code, k in ((5, codes.CAF), (6, codes.TAM), (7, codes.VESSEL), (8, codes.NECROTIC)):
            m[kind == k] = code
        a = axes[0, j]
        a.imshow(
            m,
            cmap=cmap,
            vmin=-0.5,
            vmax=len(colours) - 0.5,
            interpolation="nearest",
            origin="lower",
            extent=extent,
        )
        py, px = np.nonzero(tumor & (state == codes.PERSISTER))
        ny, nx = kind.shape
        a.scatter(
            (px + 0.5) / nx * extent[1],
            (py + 0.5) / ny * extent[3],
            s=10,
            facecolors="none",
            edgecolors="k",
            linewidths=0.6,
        )
        a.set_title(
            f"tumor states with stroma, t = {times[i]:.0f} h{where}\n"
            f"P = {int(py.size)} in this plane",
            fontsize=9,
        )
        a.set_xlabel("x (mm)")
        a.set_ylabel("y (mm)")
    states = [
        Patch(color=opaque(TUMOR_STATE_COLORS[s]), label=lbl, gid=f"state:{s}")
        for s, lbl in (
            ("S", TUMOR_STATE_LABELS["S"]),
            ("P", TUMOR_STATE_LABELS["P"] + " (circled)"),
            ("E", TUMOR_STATE_LABELS["E"]),
            ("R", TUMOR_STATE_LABELS["R"]),
        )
    ]
    axes[0, -1].legend(
        handles=states + [h for h in kind_handles() if h.get_label() != "tumor"], **OUTSIDE
    )
    return fig


# ------------------------------------------------------------------------- validation kill
@dataclass(frozen=True)
class PublishedKill:
    """Published survival of a validation experiment's kill: ``points`` are (days of drug,
    surviving fraction, lowest, highest accepted), surviving fraction = burden / burden at
    ``drug_day`` (the day the drug starts in the experiment's scenario)."""

    experiment: str
    drug_day: float
    points: tuple[tuple[float, float, float, float], ...]
    source: str


#: the validation experiments (tmesim.validation.EXPERIMENTS) with published kill data: the
#: values and the accepted range are judge_biphasic's (0.3 % after 9 days of 2 uM erlotinib
#: from day 1, passing from 0.1 % to 1 %)
PUBLISHED_KILL = {
    "biphasic": PublishedKill(
        "biphasic",
        1.0,
        ((9.0, 0.003, 0.001, 0.01),),
        "Sharma et al. 2010 (PC9, 2 uM erlotinib)",
    ),
}


def validation_experiment(name: str) -> str | None:
    """The validation experiment a run belongs to, recognised by its run name: the scenario
    files of scenarios/validation name each run after its file (``run.name`` =
    ``sharma_biphasic`` in sharma_biphasic.toml), which an experiment's arms run. None for any
    other run."""
    from .validation import EXPERIMENTS

    for e in EXPERIMENTS:
        if any(Path(a.file).stem == name for a in e.arms):
            return e.name
    return None


def kill_figure(ds: xr.Dataset) -> Figure | None:
    """The kill curve of a validation run (surviving fraction against days of drug, log
    scale; line gid "kill") with the published points (gid "published") and the accepted
    range; None for a run of no experiment with published kill data."""
    import matplotlib.pyplot as plt

    exp = validation_experiment(str(ds.attrs.get("name", "")))
    pub = PUBLISHED_KILL.get(exp) if exp else None
    if pub is None:
        return None
    day = ds["step_time_h"].values / 24.0
    burden = ds["burden"].values.astype(float)
    i0 = int(np.argmin(np.abs(day - pub.drug_day)))
    n0 = burden[i0]
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    after = slice(i0, None)
    if n0 > 0:
        ax.plot(
            day[after] - day[i0],
            burden[after] / n0,
            color="k",
            lw=1.8,
            label="tmesim: all tumor cells",
            gid="kill",
        )
        tol = sum(ds[c].values.astype(float) for c in ("n_P", "n_E") if c in ds)
        ax.plot(
            day[after] - day[i0],
            np.asarray(tol)[after] / n0,
            color=TUMOR_STATE_COLORS["P"],
            lw=1.4,
            label="tmesim: persisters (P + E)",
        )
    t, y, lo, hi = (np.array(v) for v in zip(*pub.points))
    eb = ax.errorbar(
        t,
        y,
        yerr=[y - lo, hi - y],
        fmt="o",
        color="tab:red",
        capsize=4,
        label=f"{pub.source}; bar: accepted range",
    )
    eb.lines[0].set_gid("published")  # the points (a container's gid reaches no artist)
    ax.set_yscale("log")
    ax.set_xlabel(f"days of drug (from day {day[i0]:g})")
    ax.set_ylabel("surviving fraction")
    ax.set_title(f"{ds.attrs['name']}: kill curve and published survival", fontsize=10)
    ax.legend(**OUTSIDE)
    if n0 <= 0:
        _caption(fig, ["the tmesim curve (no tumor cells at the start of the drug)"])
    return fig


# ----------------------------------------------------------------------------------- table
def summary_table(ds) -> str:
    """Initial and final values of the main observables, as aligned text."""
    rows = [
        ("time", "h", "step_time_h"),
        ("tumor cells (burden)", "cells", "burden"),
        ("sensitive", "cells", "n_S"),
        ("persisters", "cells", "n_P"),
        ("expanded persisters", "cells", "n_E"),
        ("resistant", "cells", "n_R"),
        ("persister fraction", "1", "persister_fraction"),
        ("persisters near CAFs (fraction)", "1", "persisters_near_caf_fraction"),
        ("CAFs", "cells", "n_caf"),
        ("TAMs", "cells", "n_tam"),
        ("necrotic voxels", "voxels", "n_necrotic"),
        ("vessels", "voxels", "n_vessel"),
        ("hypoxic fraction of tumor", "1", "hypoxic_fraction"),
    ]
    rows = [r for r in rows if r[2] in ds.data_vars or r[2] in ds.coords]
    for name in ds.data_vars:
        if name.startswith("plasma_"):
            rows.append((f"{name[7:]} plasma", "uM", name))
    for name in ds.data_vars:
        if name.startswith("mean_") and name.endswith("_tumor"):
            rows.append((f"{name[5:-6]} in tumor (mean)", ds[name].attrs.get("units", ""), name))
    lines = [
        f"Run '{ds.attrs['name']}' ({ds.attrs['status']}), seed {ds.attrs['seed']}, "
        f"{ds.attrs['backend']} backend",
        f"{'observable':32s} {'units':>7s} {'start':>12s} {'end':>12s}",
    ]
    for label, units, var in rows:
        v = ds[var].values
        lines.append(f"{label:32s} {units:>7s} {v[0]:12.4g} {v[-1]:12.4g}")
    dx = ds.attrs["dx_um"]
    ndim = len([d for d in ("z", "y", "x") if d in ds.dims])
    for when, i in (("start", 0), ("end", -1)):
        n = float(ds["burden"].values[i] + ds["n_necrotic"].values[i])
        r = (n * 3 / (4 * np.pi)) ** (1 / 3) * dx if ndim == 3 else (n / np.pi) ** 0.5 * dx
        lines.append(f"{'equivalent radius (' + when + ')':32s} {'um':>7s} {r:12.4g}")
    return "\n".join(lines)


def snapshot_indices(ds, times_h=None) -> list[int]:
    """The snapshots the maps show: those nearest ``times_h`` (h), or the first, middle and
    last."""
    times = ds["time"].values
    if times_h:
        return [int(np.argmin(np.abs(times - t))) for t in times_h]
    return sorted({0, len(times) // 2, len(times) - 1})


def make_report(path, out_dir=None, times_h=None) -> tuple[list[Path], str]:
    """Write <run>_population.png, <run>_maps.png, <run>_persisters.png and, for a validation
    run with published kill data, <run>_kill.png; return their paths and the summary table.

    Args:
        path: a run file.
        out_dir: where to write (default: beside the run file).
        times_h: snapshot times (h) for the maps; default first, middle and last snapshot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    out_dir = Path(out_dir) if out_dir else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, suffix: str, dpi: int = 110) -> None:
        p = out_dir / f"{path.stem}_{suffix}.png"
        fig.savefig(p, dpi=dpi)
        plt.close(fig)
        written.append(p)

    with open_run(path) as ds:
        save(population_figure(ds), "population")
        idx = snapshot_indices(ds, times_h)
        save(maps_figure(ds, idx), "maps", dpi=100)
        if "tumor_state" in ds:
            save(persister_figure(ds, idx), "persisters")
        kill = kill_figure(ds)
        if kill is not None:
            save(kill, "kill")
        table = summary_table(ds)
    return written, table
