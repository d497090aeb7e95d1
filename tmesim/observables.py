"""Per-step observables: one time-series row, computed from the state arrays.

Column names follow DESIGN.md so that every tool agrees (see tmesim.io.schema).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import codes
from .backend import array_module, as_host
from .io import schema


def columns(sc) -> dict:
    """{column: units} of a scenario's time series, in a fixed order."""
    cols = dict(schema.BASE_COLUMNS)
    cols.update(schema.field_columns(sc.field_names, [f.units for f in sc.fields]))
    cols.update(schema.drug_columns(sc.drug_names))
    return cols


def _edt(xp):
    """The exact Euclidean distance transform for arrays of module ``xp``: scipy's on the host,
    cupyx's (the same exact distances, float64) on a GPU."""
    if not getattr(xp, "__name__", "").startswith("cupy"):
        return ndimage.distance_transform_edt
    from cupyx.scipy import ndimage as cundimage

    return cundimage.distance_transform_edt


def near_caf(kind, shape, dx_um: float, distance_um: float = schema.NEAR_CAF_UM):
    """(n_sites,) bool: voxels within ``distance_um`` (Euclidean, centre to centre) of a CAF.

    ``kind`` numpy or cupy; the result lives where ``kind`` does."""
    xp = array_module(kind)
    caf = (kind == codes.CAF).reshape(shape)
    if not caf.any():
        return xp.zeros(kind.shape, dtype=bool)
    d = _edt(xp)(~caf)
    d *= dx_um  # in place: the same products, one float64 grid fewer (tmesim.memory)
    return (d <= distance_um).ravel()


def observe(state, sc, counts=None, sweeps: int = 0, doses=None, stroma=None) -> dict:
    """One row of observables for ``state`` (per-site arrays numpy or cupy).

    hypoxic_fraction is the fraction of tumor cells below the hypoxic threshold; mean_<field> is
    the domain mean and mean_<field>_tumor the mean over tumor cells (NaN without tumor cells);
    *_near_caf_fraction count cells within schema.NEAR_CAF_UM of a CAF (0 without CAFs).

    Every reduction runs where the arrays live; the small results (counts and float64 sums)
    travel to the host in one transfer (a second one, of two counts, when CAFs and tumor cells
    are both present). A mean is its float64 sum divided by its count on the host: numpy's
    ``mean(dtype=float64)`` is exactly that division, so the row is the same number for number
    as computing the means with numpy.
    """
    xp = array_module(state.kind)
    nk, ns = len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES)
    names = sc.field_names
    tumor = state.kind == codes.TUMOR
    # persisters: slow-cycling (P) and expanded (E), the drug-tolerant states
    pers = tumor & ((state.tumor_state == codes.PERSISTER) | (state.tumor_state == codes.EXPANDED))
    o2 = names.index("oxygen") if "oxygen" in names else None

    def one(a):  # a device (or numpy) scalar as a float64 vector of one
        return xp.asarray(a, dtype=xp.float64).reshape(1)

    # every value exact in float64: counts (< 2**53) and float64 sums
    hyp = state.fields[o2][tumor] < sc.tumor.hypoxic_threshold_mmHg if o2 is not None else None
    parts = [
        xp.bincount(state.kind, minlength=nk)[:nk].astype(xp.float64),
        xp.bincount(state.tumor_state[tumor], minlength=ns)[:ns].astype(xp.float64),
        one(state.memory[tumor].sum(dtype=xp.float64)),
        one(state.time_in_P_min[pers].sum(dtype=xp.float64)),
        one(xp.count_nonzero(hyp) if hyp is not None else 0),
    ]
    for i in range(len(names)):
        f = state.fields[i]
        parts.append(one(f.sum(dtype=xp.float64)))
        parts.append(one(f[tumor].sum(dtype=xp.float64)))
    v = as_host(xp.concatenate(parts))
    kinds, states = v[:nk].astype(np.int64), v[nk : nk + ns].astype(np.int64)
    mem_sum, tip_sum, n_hypoxic = v[nk + ns : nk + ns + 3]
    field_sums = v[nk + ns + 3 :]
    n_S, n_P, n_R, n_E = (
        int(states[c]) for c in (codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT, codes.EXPANDED)
    )
    burden = n_S + n_P + n_R + n_E
    n_tol = n_P + n_E
    n_tumor = int(kinds[codes.TUMOR])  # what a mean over kind == TUMOR divides by
    row = {
        "time_min": float(state.time_min),
        "n_S": n_S,
        "n_P": n_P,
        "n_R": n_R,
        "n_E": n_E,
        "n_caf": int(kinds[codes.CAF]),
        "n_tam": int(kinds[codes.TAM]),
        "n_necrotic": int(kinds[codes.NECROTIC]),
        "n_vessel": int(kinds[codes.VESSEL]),
        "burden": burden,
        "persister_fraction": n_tol / burden if burden else 0.0,
        "resistant_fraction": n_R / burden if burden else 0.0,
        "divisions": counts.divisions if counts else 0,
        "necroses": counts.necroses if counts else 0,
        "cleared": counts.cleared if counts else 0,
        "field_sweeps": sweeps,
    }
    for key in (
        "killed",
        "killed_S",
        "killed_P",
        "entered_P",
        "exited_P",
        "became_R",
        "became_E",
    ):
        row[key] = getattr(counts, key) if counts else 0
    row["tam_recruited"] = stroma.tam_recruited if stroma else 0
    row["tam_died"] = stroma.tam_died if stroma else 0
    row["mean_memory"] = float(mem_sum / n_tumor) if burden else 0.0
    row["mean_time_in_P_h"] = float(tip_sum / n_tol / 60) if n_tol else 0.0
    if kinds[codes.CAF] and burden:
        near = near_caf(state.kind, sc.grid.shape, sc.grid.dx_um)
        n_near = as_host(xp.stack([xp.count_nonzero(near & tumor), xp.count_nonzero(near & pers)]))
        row["tumor_near_caf_fraction"] = float(int(n_near[0]) / burden)
        row["persisters_near_caf_fraction"] = float(int(n_near[1]) / n_tol) if n_tol else 0.0
    else:
        row["tumor_near_caf_fraction"] = row["persisters_near_caf_fraction"] = 0.0
    for i, name in enumerate(sc.drug_names):
        row[f"plasma_{name}"] = float(state.plasma[i])
        row[f"dose_{name}"] = float(doses[i]) if doses is not None and len(doses) > i else 0.0
        row[f"cumulative_dose_{name}"] = float(state.dose_total[i])
    row["hypoxic_fraction"] = float(n_hypoxic / n_tumor) if o2 is not None and burden else 0.0
    n_sites = state.kind.shape[0]
    for i, name in enumerate(names):
        row[f"mean_{name}"] = float(field_sums[2 * i] / n_sites)
        row[f"mean_{name}_tumor"] = float(field_sums[2 * i + 1] / n_tumor) if burden else np.nan
    return row
