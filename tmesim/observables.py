"""Per-step observables: one time-series row, computed from the state arrays.

Column names follow DESIGN.md so that every tool agrees (see tmesim.io.schema).
"""

from __future__ import annotations

import numpy as np

from . import codes
from .io import schema


def columns(sc) -> dict:
    """{column: units} of a scenario's time series, in a fixed order."""
    cols = dict(schema.BASE_COLUMNS)
    cols.update(schema.field_columns(sc.field_names, [f.units for f in sc.fields]))
    return cols


def observe(state, sc, counts=None, sweeps: int = 0) -> dict:
    """One row of observables for ``state`` (host numpy arrays).

    hypoxic_fraction is the fraction of tumor cells below the hypoxic threshold; mean_<field> is
    the domain mean and mean_<field>_tumor the mean over tumor cells (NaN without tumor cells).
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
