"""``tmesim report``: figures (PNG) and a summary table of a run, from the run file alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import codes
from .io.reader import open_run

KIND_COLOURS = {  # fixed colours per occupant kind, shared by every figure
    "empty": "#ffffff",
    "tumor": "#d62728",
    "caf": "#2ca02c",
    "tam": "#9467bd",
    "vessel": "#1f77b4",
    "necrotic": "#3a3a3a",
}


def _mid_slice(a: np.ndarray) -> np.ndarray:
    """The central z plane of a 3D array, or the 2D array itself."""
    return a[a.shape[0] // 2] if a.ndim == 3 else a


# phenotype map colours: sensitive, persister, resistant; CAFs, TAMs and vessels as in KIND_COLOURS
STATE_COLOURS = {"S": "#f4a6a6", "P": "#ff7f0e", "R": "#000080", "E": "#8c510a"}
DRUG_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def shade_exposure(ax, ds, t_days, drugs) -> None:
    """Shade the periods when each drug's plasma level is above zero (one band colour per drug)."""
    for k, d in enumerate(drugs):
        on = ds[f"plasma_{d}"].values > 0
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
                label=f"{d} on" if a == edges[0] else None,
            )


def persister_maps(ds, idx, out: Path, extent, where: str) -> Path:
    """Maps of tumor phenotypes (S, P, R) with CAFs, TAMs and vessels, at the snapshots ``idx``;
    persisters drawn enlarged so that the few that survive a drug stay visible."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    times = ds["time"].values
    fig, axes = plt.subplots(1, len(idx), figsize=(4.6 * len(idx), 4.4), squeeze=False)
    # one code per map colour: 0 empty/necrotic, 1 S, 2 P, 3 R, 4 E (tumor states), 5 CAF,
    # 6 TAM, 7 vessel
    colours = [
        "#ffffff",
        STATE_COLOURS["S"],
        STATE_COLOURS["P"],
        STATE_COLOURS["R"],
        STATE_COLOURS["E"],
        KIND_COLOURS["caf"],
        KIND_COLOURS["tam"],
        KIND_COLOURS["vessel"],
    ]
    cmap = ListedColormap(colours)
    for j, i in enumerate(idx):
        kind = _mid_slice(ds["kind"][i].values)
        state = _mid_slice(ds["tumor_state"][i].values)
        m = np.zeros(kind.shape, dtype=np.int8)
        tumor = kind == codes.TUMOR
        m[tumor] = state[tumor]
        m[kind == codes.CAF] = 5
        m[kind == codes.TAM] = 6
        m[kind == codes.VESSEL] = 7
        a = axes[0, j]
        a.imshow(
            m,
            cmap=cmap,
            vmin=-0.5,
            vmax=7.5,
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
            edgecolors=STATE_COLOURS["P"],
            linewidths=0.8,
        )
        a.set_title(
            f"S/P/R with stroma, t = {times[i]:.0f} h{where}\nP = {int(py.size)} in this plane",
            fontsize=9,
        )
        a.set_xlabel("x (mm)")
        a.set_ylabel("y (mm)")
    axes[0, -1].legend(
        handles=[
            Patch(color=STATE_COLOURS[k], label=lbl)
            for k, lbl in (
                ("S", "sensitive"),
                ("P", "persister (circled)"),
                ("E", "expanded persister"),
                ("R", "resistant"),
            )
        ]
        + [Patch(color=KIND_COLOURS[k], label=k) for k in ("caf", "tam", "vessel")],
        loc="upper right",
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


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


def make_report(path, out_dir=None, times_h=None) -> tuple[list[Path], str]:
    """Write <run>_population.png (populations with drug exposure shaded, hypoxia, fields, drugs),
    <run>_maps.png (occupants and fields) and <run>_persisters.png (S/P/R with stroma); return
    their paths and the summary table.

    Args:
        path: a run file.
        out_dir: where to write (default: beside the run file).
        times_h: snapshot times (h) for the maps; default first, middle and last snapshot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    path = Path(path)
    out_dir = Path(out_dir) if out_dir else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with open_run(path) as ds:
        t_days = ds["step_time_h"].values / 24.0
        drugs = [n[7:] for n in map(str, ds.data_vars) if n.startswith("plasma_")]
        fig, axes = plt.subplots(1, 4 if drugs else 3, figsize=(20 if drugs else 15, 4.2))
        ax = axes[0]
        shade_exposure(ax, ds, t_days, drugs)
        for col, label in (
            ("burden", "tumor cells"),
            ("n_necrotic", "necrotic"),
            ("n_S", "sensitive"),
            ("n_P", "persister"),
            ("n_E", "expanded persister"),
            ("n_R", "resistant"),
        ):
            if col not in ds:  # n_E: files from before format 1.3
                continue
            v = ds[col].values
            if v.max() > 0:
                ax.plot(t_days, v, label=label)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("time (days)")
        ax.set_ylabel("count")
        ax.set_title("populations")
        ax.legend(fontsize=8)
        ax = axes[1]
        ax.plot(t_days, ds["hypoxic_fraction"].values, color="tab:purple")
        ax.set_xlabel("time (days)")
        ax.set_ylabel("fraction of tumor cells")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("hypoxic fraction")
        ax = axes[2]
        # the non-drug fields (drugs have their own panel)
        shown = [
            n[5:-6]
            for n in map(str, ds.data_vars)
            if n.startswith("mean_") and n.endswith("_tumor") and n[5:-6] not in drugs
        ]
        for k, f in enumerate(shown):
            c = f"C{k}"
            units = ds[f"mean_{f}"].attrs.get("units", "")
            ax.plot(
                t_days, ds[f"mean_{f}_tumor"].values, color=c, label=f"{f} ({units}), tumor mean"
            )
            ax.plot(t_days, ds[f"mean_{f}"].values, "--", color=c, label=f"{f}, domain mean")
        ax.set_xlabel("time (days)")
        ax.set_title("fields")
        ax.legend(fontsize=8)
        if drugs:
            ax = axes[3]
            for d in drugs:
                ax.plot(t_days, ds[f"plasma_{d}"].values, label=f"{d} plasma")
                if f"mean_{d}_tumor" in ds:
                    ax.plot(t_days, ds[f"mean_{d}_tumor"].values, ":", label=f"{d} at tumor cells")
            ax.set_xlabel("time (days)")
            ax.set_ylabel("uM")
            ax.set_title("drugs")
            ax.legend(fontsize=8)
        fig.suptitle(f"{ds.attrs['name']}  (seed {ds.attrs['seed']})")
        fig.tight_layout()
        p = out_dir / f"{path.stem}_population.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

        times = ds["time"].values
        if times_h:
            idx = [int(np.argmin(np.abs(times - t))) for t in times_h]
        else:
            idx = sorted({0, len(times) // 2, len(times) - 1})
        fields = [
            n
            for n in ds.data_vars
            if ds[n].dims[:1] == ("time",) and n not in ("kind", "tumor_state")
        ]
        nrow = 1 + len(fields)
        fig, axes = plt.subplots(nrow, len(idx), figsize=(4 * len(idx), 3.6 * nrow), squeeze=False)
        cmap = ListedColormap([KIND_COLOURS[k] for k in codes.KIND_NAMES])
        dims = [d for d in ("z", "y", "x") if d in ds.dims]
        ext_y = float(ds[dims[-2]].values[-1] + ds.attrs["dx_um"] / 2) / 1000
        ext_x = float(ds[dims[-1]].values[-1] + ds.attrs["dx_um"] / 2) / 1000
        extent = (0, ext_x, 0, ext_y)
        where = " (central z plane)" if len(dims) == 3 else ""
        for j, i in enumerate(idx):
            kind = _mid_slice(ds["kind"][i].values)
            a = axes[0, j]
            a.imshow(
                kind,
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
            for r, name in enumerate(fields, start=1):
                a = axes[r, j]
                da = ds[name]
                im = a.imshow(
                    _mid_slice(da[i].values), cmap="viridis", origin="lower", extent=extent
                )
                a.set_title(
                    f"{name} ({da.attrs.get('units', '')}), t = {times[i]:.0f} h", fontsize=9
                )
                fig.colorbar(im, ax=a, shrink=0.8)
        axes[0, -1].legend(
            handles=[
                Patch(color=KIND_COLOURS[k], label=k) for k in codes.KIND_NAMES if k != "empty"
            ],
            loc="upper right",
            fontsize=7,
        )
        fig.tight_layout()
        p = out_dir / f"{path.stem}_maps.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
        if "tumor_state" in ds:
            written.append(
                persister_maps(ds, idx, out_dir / f"{path.stem}_persisters.png", extent, where)
            )
        table = summary_table(ds)
    return written, table
