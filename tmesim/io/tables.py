"""Tables of one snapshot, as pcdl gives PhysiCell users: one row per occupied voxel.

``cells(run, snapshot=-1)`` is a pandas DataFrame; ``to_anndata(run, snapshot=-1)`` the same as an
AnnData (where ``anndata`` is installed) for scanpy/squidpy. A voxel holds at most one cell, so a
row is a cell; rows follow the voxel order of the arrays (z, then y, then x), and the index
``voxel`` is the flat voxel index (the same voxel in every snapshot of the run, not the same cell:
cells move and divide).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .. import codes

#: the columns every table has before the fields (a field of one of these names is prefixed
#: ``field_``)
_AXES = ("x", "y", "z")


def _run(run):
    """(context manager, Dataset) for a path (opened and closed here) or an open Dataset."""
    if isinstance(run, xr.Dataset):
        return nullcontext(run)
    from .reader import open_run

    return open_run(Path(run))


def _names(da: xr.DataArray, default: tuple[str, ...]) -> list[str]:
    names = da.attrs.get("names")
    return [str(n) for n in names] if names is not None and len(names) else list(default)


def _categorical(codes_: np.ndarray, names: list[str]) -> pd.Categorical:
    """Codes as a Categorical of every name (a code beyond the names is missing, never a wrong
    name)."""
    c = codes_.astype(np.int64)
    c[c >= len(names)] = -1
    return pd.Categorical.from_codes(c, categories=names)


def _fields(ds: xr.Dataset) -> list[str]:
    """The snapshot variables that are fields: everything on (time, [z,] y, x) but the codes."""
    return [
        str(n)
        for n, v in ds.data_vars.items()
        if v.dims[:1] == ("time",)
        and len(v.dims) > 1
        and n not in ("kind", "tumor_state", "memory")
    ]


def cells(run, snapshot: int = -1) -> pd.DataFrame:
    """One row per occupied voxel (kind not empty) of one snapshot.

    Args:
        run: a run file path, or a Dataset from :func:`tmesim.open_run`.
        snapshot: the snapshot's index (negative counts from the end).

    Columns: ``ix``, ``iy`` (and ``iz`` in 3D), the voxel's integer indices; ``x_um``, ``y_um``
    (``z_um``), its centre in um; ``kind`` and ``tumor_state`` (Categoricals of the code names,
    tmesim.codes); ``memory`` (epigenetic memory, 1); one column per field at the voxel, in the
    field's units; ``snapshot`` and ``time_min`` (the snapshot's time, minutes). Units are in
    ``df.attrs["units"]``, the run's name, seed and path in ``df.attrs``.
    """
    with _run(run) as ds:
        T = ds.sizes["time"]
        if not -T <= snapshot < T:
            raise IndexError(f"snapshot {snapshot} is out of range: the run has {T} snapshots")
        i = snapshot % T
        snap = ds.isel(time=i)
        dims = [d for d in ("z", "y", "x") if d in snap["kind"].dims]
        kind = np.asarray(snap["kind"].values)
        idx = np.nonzero(kind != codes.EMPTY)
        cols: dict[str, object] = {}
        units: dict[str, str] = {}
        for d, ix in sorted(zip(dims, idx), key=lambda p: _AXES.index(p[0])):
            cols[f"i{d}"] = ix.astype(np.int64)
        for d, ix in sorted(zip(dims, idx), key=lambda p: _AXES.index(p[0])):
            cols[f"{d}_um"] = np.asarray(snap[d].values)[ix]
            units[f"{d}_um"] = "um"
        cols["kind"] = _categorical(kind[idx], _names(snap["kind"], codes.KIND_NAMES))
        cols["tumor_state"] = _categorical(
            np.asarray(snap["tumor_state"].values)[idx],
            _names(snap["tumor_state"], codes.TUMOR_STATE_NAMES),
        )
        if "memory" in snap:
            cols["memory"] = np.asarray(snap["memory"].values)[idx]
            units["memory"] = "1"
        for name in _fields(ds):
            col = (
                name
                if name not in cols and name not in ("snapshot", "time_min")
                else f"field_{name}"
            )
            cols[col] = np.asarray(snap[name].values)[idx]
            units[col] = str(snap[name].attrs.get("units", ""))
        n = len(idx[0])
        t_min = float(snap["snapshot_time_min"].values)
        cols["snapshot"] = np.full(n, i, dtype=np.int64)
        cols["time_min"] = np.full(n, t_min)
        units["time_min"] = "min"
        flat = np.ravel_multi_index(idx, kind.shape) if n else np.zeros(0, dtype=np.int64)
        df = pd.DataFrame(cols, index=pd.Index(flat, name="voxel"))
        df.attrs.update(
            units=units,
            name=str(ds.attrs.get("name", "")),
            seed=ds.attrs.get("seed"),
            path=str(ds.attrs.get("path", "")),
            snapshot=i,
            time_min=t_min,
        )
    return df


def to_anndata(run, snapshot: int = -1):
    """The :func:`cells` table of one snapshot as an AnnData (needs ``anndata``).

    ``X``: memory and every field (float32), one variable each (``var["units"]``); ``obs``:
    kind, tumor_state, the voxel indices, snapshot and time_min; ``obsm["spatial"]``: the voxel
    centres (x, y[, z]) in um, as squidpy expects; ``uns["tmesim"]``: the run's name, seed, path
    and the snapshot's time.
    """
    try:
        import anndata
    except ImportError:
        raise ImportError(
            "to_anndata needs the anndata package (pip install anndata); cells() gives the "
            "same table as a pandas DataFrame"
        ) from None
    df = cells(run, snapshot)
    units = df.attrs["units"]
    pos = [c for c in ("x_um", "y_um", "z_um") if c in df]
    index_cols = [c for c in ("ix", "iy", "iz") if c in df]
    obs_cols = ["kind", "tumor_state", *index_cols, "snapshot", "time_min"]
    var_cols = [c for c in df.columns if c not in obs_cols and c not in pos]
    obs = df[obs_cols].copy()
    obs.index = obs.index.astype(str)
    var = pd.DataFrame({"units": [units.get(c, "") for c in var_cols]}, index=var_cols)
    adata = anndata.AnnData(
        X=df[var_cols].to_numpy(dtype=np.float32),
        obs=obs,
        var=var,
        obsm={"spatial": df[pos].to_numpy(dtype=np.float64)},
    )
    adata.uns["tmesim"] = {k: df.attrs[k] for k in ("name", "seed", "path", "snapshot", "time_min")}
    return adata
