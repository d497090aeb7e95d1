"""Per-step observables: one time-series row, computed from the state arrays.

Column names follow DESIGN.md so that every tool agrees (see tmesim.io.schema).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import codes
from .io import schema


def columns(sc) -> dict:
    """{column: units} of a scenario's time series, in a fixed order."""
    cols = dict(schema.BASE_COLUMNS)
    cols.update(schema.field_columns(sc.field_names, [f.units for f in sc.fields]))
    cols.update(schema.drug_columns(sc.drug_names))
    return cols


def near_caf(kind: np.ndarray, shape, dx_um: float, distance_um: float = schema.NEAR_CAF_UM):
    """(n_sites,) bool: voxels within ``distance_um`` (Euclidean, centre to centre) of a CAF."""
    caf = (kind == codes.CAF).reshape(shape)
    if not caf.any():
        return np.zeros(kind.shape, dtype=bool)
    d = ndimage.distance_transform_edt(~caf) * dx_um
    return (d <= distance_um).ravel()


def observe(state, sc, counts=None, sweeps: int = 0, doses=None, stroma=None) -> dict:
    """One row of observables for ``state`` (host numpy arrays).

    hypoxic_fraction is the fraction of tumor cells below the hypoxic threshold; mean_<field> is
    the domain mean and mean_<field>_tumor the mean over tumor cells (NaN without tumor cells);
    *_near_caf_fraction count cells within schema.NEAR_CAF_UM of a CAF (0 without CAFs).
    """
    kinds = np.bincount(state.kind, minlength=len(codes.KIND_NAMES))
    tumor = state.kind == codes.TUMOR
    states = np.bincount(state.tumor_state[tumor], minlength=len(codes.TUMOR_STATE_NAMES))
    n_S, n_P, n_R = (int(states[c]) for c in (codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT))
    burden = n_S + n_P + n_R
    row = {
        "time_min": float(state.time_min),
        "n_S": n_S, "n_P": n_P, "n_R": n_R,
        "n_caf": int(kinds[codes.CAF]), "n_tam": int(kinds[codes.TAM]),
        "n_necrotic": int(kinds[codes.NECROTIC]), "n_vessel": int(kinds[codes.VESSEL]),
        "burden": burden,
        "persister_fraction": n_P / burden if burden else 0.0,
        "resistant_fraction": n_R / burden if burden else 0.0,
        "divisions": counts.divisions if counts else 0,
        "necroses": counts.necroses if counts else 0,
        "cleared": counts.cleared if counts else 0,
        "field_sweeps": sweeps,
    }
    for key in ("killed", "killed_S", "killed_P", "entered_P", "exited_P", "became_R"):
        row[key] = getattr(counts, key) if counts else 0
    row["tam_recruited"] = stroma.tam_recruited if stroma else 0
    row["tam_died"] = stroma.tam_died if stroma else 0
    row["mean_memory"] = float(state.memory[tumor].mean(dtype=np.float64)) if burden else 0.0
    pers = tumor & (state.tumor_state == codes.PERSISTER)
    row["mean_time_in_P_h"] = float(state.time_in_P_min[pers].mean(dtype=np.float64) / 60) \
        if n_P else 0.0
    if kinds[codes.CAF] and burden:
        near = near_caf(state.kind, sc.grid.shape, sc.grid.dx_um)
        row["tumor_near_caf_fraction"] = float(np.count_nonzero(near & tumor) / burden)
        row["persisters_near_caf_fraction"] = float(np.count_nonzero(near & pers) / n_P) \
            if n_P else 0.0
    else:
        row["tumor_near_caf_fraction"] = row["persisters_near_caf_fraction"] = 0.0
    for i, name in enumerate(sc.drug_names):
        row[f"plasma_{name}"] = float(state.plasma[i])
        row[f"dose_{name}"] = float(doses[i]) if doses is not None and len(doses) > i else 0.0
        row[f"cumulative_dose_{name}"] = float(state.dose_total[i])
    names = sc.field_names
    if "oxygen" in names and burden:
        o2 = state.fields[names.index("oxygen")][tumor]
        row["hypoxic_fraction"] = float(np.mean(o2 < sc.tumor.hypoxic_threshold_mmHg))
    else:
        row["hypoxic_fraction"] = 0.0
    for i, name in enumerate(names):
        f = state.fields[i]
        row[f"mean_{name}"] = float(f.mean(dtype=np.float64))
        row[f"mean_{name}_tumor"] = float(f[tumor].mean(dtype=np.float64)) if burden else np.nan
    return row
