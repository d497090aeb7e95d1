"""Reading runs: ``open_run(path)`` gives a lazily loaded xarray Dataset.

Snapshot arrays stay in the file until indexed (xarray's lazy indexing over h5py, the documented
backend-array protocol), so opening a large run is instant; ``open_run(path, chunks=...)`` gives
dask arrays instead (``{}``: one chunk per HDF5 chunk, i.e. per snapshot; a dict names chunk
sizes per dimension, dimensions it leaves out keep the HDF5 chunking; ``"auto"`` and ``-1`` as in
xarray; the event texts stay numpy arrays). The file is opened in SWMR mode, so a run still being
written can be read; call ``ds.close()`` (or use ``with``) to release it.

The file is checked before anything is read (tmesim.io.runfile.open_run_file): a damaged or crafted
file gives a one-line RunFileError, and so does a read of snapshot data that HDF5 finds damaged
later (a Fletcher-32 or deflate checksum that fails), naming the file and the variable.

Dimensions and coordinates (every time coordinate carries ``units``):

- ``time``: snapshots. Coordinate ``time`` in hours (the index) and ``snapshot_time_min`` in
  minutes (indexed too).
- ``z``/``y``/``x``: voxel centres in um.
- ``step``: time-series rows. Coordinates ``time_min`` (the row's time in minutes, indexed: the
  ``time_min`` column) and ``step_time_h`` (hours).
- ``event``: the run's events, ``event_time_min`` (coordinate, minutes), ``event_kind`` and
  ``event_detail`` (JSON text of an object); :func:`events` gives them as (time_min, kind, dict).

Minutes are the shared time: the time-series values at the snapshot times are
``ds["burden"].sel(time_min=ds["snapshot_time_min"])`` (on the ``time`` dimension); add
``method="nearest"`` where a snapshot may have no row of its own time (rows written on another
schedule than every step, a run still being written).

Snapshot variables: ``kind`` and ``tumor_state`` (uint8 codes with CF ``flag_values`` and
``flag_meanings``, and the names as a list in ``names``), ``memory`` and one per field;
time-series variables: one per column (``n_S``, ``burden``, ...). Every attribute is a string, a
number or an array of them, so ``ds.to_netcdf(...)`` and ``ds.to_zarr(...)`` write the dataset as
it is. Those formats keep no xarray index on a non-dimension coordinate: after reading one back,
``ds.set_xindex("time_min")`` (and ``"snapshot_time_min"``) restores ``.sel`` on them.
"""

from __future__ import annotations

import json
import os
import re
import threading

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from . import schema
from .runfile import attr_str, code_names, event_rows, open_run_file, reading

#: the run's root attributes copied (as strings) into ``ds.attrs``
_STR_ATTRS = (
    "format",
    "format_version",
    "tmesim_version",
    "backend",
    "device",
    "created",
    "scenario",
    "name",
)


class _H5Array(BackendArray):
    """An h5py dataset seen through xarray's lazy indexing (basic indexing goes to HDF5); a
    read that HDF5 finds damaged is a RunFileError naming ``where`` and the variable."""

    def __init__(self, ds, lock, where: str, name: str):
        self.ds = ds
        self.shape = ds.shape
        self.dtype = ds.dtype
        self.lock = lock
        self.where, self.name = where, name

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self._getitem
        )

    def _getitem(self, key):
        with self.lock, reading(self.where, self.name):
            return np.asarray(self.ds[key])


def open_run(path, chunks=None) -> xr.Dataset:
    """Open a run file as a lazily loaded xarray Dataset (see the module docstring).

    Args:
        path: the run file.
        chunks: None (default) for xarray's lazy arrays; ``{}``, a dict {dimension: size},
            ``"auto"`` or ``-1`` for dask arrays of that chunking (module docstring).
    """
    if chunks is not None and not isinstance(chunks, (dict, str, int)):
        raise ValueError(
            f"open_run: chunks is {str(chunks)[:80]!r}, expected None, a dict {{dimension: "
            "size}, 'auto' or an int"
        )
    f = open_run_file(path)
    try:
        with reading(str(path), "its metadata"):
            out, native = _dataset(f, str(path))
        if chunks is not None:
            out = _chunked(out, chunks, native, _token(path))
    except BaseException:
        f.close()
        raise
    out.set_close(f.close)
    return out


def events(ds: xr.Dataset) -> list[tuple[float, str, dict]]:
    """The run's events of a Dataset from :func:`open_run` (or read back from netCDF or zarr) as
    ``(time_min, kind, detail)`` tuples, ``detail`` a dict (tmesim.io.runfile.event_rows)."""
    if "event" not in ds.dims:
        return []
    return [
        (float(t), str(k), json.loads(str(d)))
        for t, k, d in zip(
            ds["event_time_min"].values, ds["event_kind"].values, ds["event_detail"].values
        )
    ]


def flag_meanings(names) -> str:
    """CF ``flag_meanings``: the code names, blank-separated, each name's blanks made ``_``."""
    return " ".join(re.sub(r"\s+", "_", n.strip()) or "_" for n in names)


def _token(path) -> str:
    """A dask name token of the file's identity and state (path, size, modification time), so
    two opens of an unchanged file share dask's names and a changed file gets new ones."""
    from dask.base import tokenize

    st = os.stat(path)
    return tokenize(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _chunked(ds: xr.Dataset, chunks, native: dict[str, int], token: str) -> xr.Dataset:
    """``ds`` with dask arrays: a dict's missing dimensions get ``native`` (HDF5) chunk sizes,
    dimensions HDF5 does not chunk (rows, events) one chunk. The event texts stay numpy arrays
    (dask cannot size text for "auto")."""
    text = ["event_kind", "event_detail"]
    if isinstance(chunks, dict):
        unknown = [d for d in chunks if d not in ds.dims]
        if unknown:
            raise ValueError(
                f"open_run: chunks names {str(unknown)[:80]}, which are not dimensions of the "
                f"run (expected some of {sorted(map(str, ds.dims))})"
            )
        chunks = {d: chunks.get(d, native.get(str(d), -1)) for d in ds.dims}
    return ds.drop_vars(text).chunk(chunks, token=token).assign({n: ds[n] for n in text})


def _dataset(f, where: str) -> tuple[xr.Dataset, dict[str, int]]:
    """The Dataset of an open run file and its HDF5 chunk size per snapshot dimension."""
    lock = threading.Lock()
    shape = tuple(int(s) for s in f.attrs["grid_shape"])
    dims = ("z", "y", "x")[3 - len(shape) :]
    dx = float(f.attrs["dx_um"])
    snaps = f[schema.SNAPSHOTS]
    arrays = {n: snaps[n] for n in ("kind", "tumor_state", "memory") if n in snaps}
    fields = dict(f[schema.FIELDS].items())
    # the writer appends the time and then each array: a reader in between sees some of them
    # one row longer; only complete snapshots count
    T = min(ds.shape[0] for ds in [snaps["time"], *arrays.values(), *fields.values()])
    coords: dict[str, tuple] = {
        d: (d, (np.arange(n) + 0.5) * dx, {"units": "um", "long_name": f"voxel centre, {d}"})
        for d, n in zip(dims, shape)
    }
    with reading(where, "time"):
        t_min = np.asarray(snaps["time"][:T], dtype=np.float64)
    coords["time"] = ("time", t_min / 60.0, {"units": "h", "long_name": "snapshot time"})
    coords["snapshot_time_min"] = (
        "time",
        t_min,
        {"units": "min", "long_name": "snapshot time"},
    )
    h5chunks = arrays["kind"].chunks or arrays["kind"].shape
    native = {d: int(c) for d, c in zip(("time",) + dims, h5chunks)}

    def lazy(ds, name):
        arr = indexing.LazilyIndexedArray(_H5Array(ds, lock, where, name))
        return arr[indexing.BasicIndexer((slice(0, T),) + (slice(None),) * len(shape))]

    data_vars: dict[str, xr.Variable] = {}
    for name, long_name in (("kind", "occupant kind"), ("tumor_state", "tumor cell state")):
        ds = arrays[name]
        names = code_names(ds, f"{name}_names") or []
        attrs: dict[str, object] = {"long_name": long_name}
        if names:
            attrs.update(
                flag_values=np.arange(len(names), dtype=ds.dtype),
                flag_meanings=flag_meanings(names),
                names=list(names),
            )
        data_vars[name] = xr.Variable(("time",) + dims, lazy(ds, name), attrs)
    if "memory" in arrays:
        data_vars["memory"] = xr.Variable(
            ("time",) + dims,
            lazy(arrays["memory"], "memory"),
            {"units": "1", "long_name": "epigenetic memory of tumor cells"},
        )
    for name, ds in fields.items():
        data_vars[name] = xr.Variable(
            ("time",) + dims, lazy(ds, name), {"units": attr_str(ds, "units")}
        )
    ts = f[schema.TIMESERIES]
    N = min((ts[c].shape[0] for c in ts), default=0)
    indexed = ["snapshot_time_min"]
    if N and "time_min" in ts:
        for col, ds in ts.items():
            with reading(where, col):
                values = np.asarray(ds[:N])
            if col == "time_min":
                row = {"long_name": "time of the time-series row"}
                coords[col] = ("step", values, {"units": "min", **row})
                coords["step_time_h"] = ("step", values / 60.0, {"units": "h", **row})
                indexed.append(col)
            else:
                data_vars[col] = xr.Variable(("step",), values, {"units": attr_str(ds, "units")})
    with reading(where, "the events"):
        rows = event_rows(f)
    coords["event_time_min"] = (
        "event",
        np.array([r[0] for r in rows], dtype=np.float64),
        {"units": "min", "long_name": "event time"},
    )
    data_vars["event_kind"] = xr.Variable(
        ("event",), np.array([r[1] for r in rows], dtype=object), {"long_name": "event kind"}
    )
    data_vars["event_detail"] = xr.Variable(
        ("event",),
        np.array([json.dumps(r[2], ensure_ascii=False) for r in rows], dtype=object),
        {"long_name": "event detail, JSON object"},
    )
    gattrs: dict[str, object] = {k: attr_str(f, k) for k in _STR_ATTRS}
    gattrs.update(
        seed=int(f.attrs["seed"]),
        dx_um=dx,
        dt_min=float(f.attrs["dt_min"]),
        status=attr_str(f, "status").strip(),
        path=where,
    )
    out = xr.Dataset(data_vars, coords=coords, attrs=gattrs)
    for name in indexed:
        out = out.set_xindex(name)
    return out, native
