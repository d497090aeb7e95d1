"""Reading runs: ``open_run(path)`` gives a lazily loaded xarray Dataset.

Snapshot arrays stay in the file until indexed (xarray's lazy indexing over h5py, the documented
backend-array protocol), so opening a large run is instant. The file is opened in SWMR mode, so a
run still being written can be read; call ``ds.close()`` (or use ``with``) to release it.

The file is checked before anything is read (tmesim.io.runfile.open_run_file): a damaged or crafted
file gives a one-line RunFileError, and so does a read of snapshot data that HDF5 finds damaged
later (a Fletcher-32 or deflate checksum that fails), naming the file and the variable.

Dimensions: ``time`` (snapshots, coordinate in hours), ``z``/``y``/``x`` (voxel centres in um) and
``step`` (time-series rows, with coordinate ``step_time_h``). Snapshot variables: ``kind``,
``tumor_state`` and one per field; time-series variables: one per column (``n_S``, ``burden``,
...). Events are in ``ds.attrs["events"]`` as a list of (time_min, kind, detail) tuples.
"""

from __future__ import annotations

import threading

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from . import schema
from .runfile import attr_str, code_names, event_rows, open_run_file, reading


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


def open_run(path) -> xr.Dataset:
    """Open a run file as a lazily loaded xarray Dataset (see the module docstring)."""
    f = open_run_file(path)
    try:
        with reading(str(path), "its metadata"):
            out = _dataset(f, str(path))
    except BaseException:
        f.close()
        raise
    out.set_close(f.close)
    return out


def _dataset(f, where: str) -> xr.Dataset:
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
    coords = {d: (d, (np.arange(n) + 0.5) * dx, {"units": "um"}) for d, n in zip(dims, shape)}
    with reading(where, "time"):
        coords["time"] = ("time", np.asarray(snaps["time"][:T]) / 60.0, {"units": "h"})

    def lazy(ds, name):
        arr = indexing.LazilyIndexedArray(_H5Array(ds, lock, where, name))
        return arr[indexing.BasicIndexer((slice(0, T),) + (slice(None),) * len(shape))]

    data_vars = {}
    for name in ("kind", "tumor_state"):
        ds = arrays[name]
        names = code_names(ds, f"{name}_names") or []
        data_vars[name] = xr.Variable(
            ("time",) + dims,
            lazy(ds, name),
            {"names": names, "flag_values": list(range(len(names)))},
        )
    if "memory" in arrays:
        data_vars["memory"] = xr.Variable(
            ("time",) + dims, lazy(arrays["memory"], "memory"), {"units": "1"}
        )
    for name, ds in fields.items():
        data_vars[name] = xr.Variable(
            ("time",) + dims, lazy(ds, name), {"units": attr_str(ds, "units")}
        )
    ts = f[schema.TIMESERIES]
    N = min((ts[c].shape[0] for c in ts), default=0)
    if N and "time_min" in ts:
        with reading(where, "time_min"):
            coords["step_time_h"] = ("step", np.asarray(ts["time_min"][:N]) / 60.0, {"units": "h"})
        for col, ds in ts.items():
            with reading(where, col):
                values = np.asarray(ds[:N])
            data_vars[col] = xr.Variable(("step",), values, {"units": attr_str(ds, "units")})
    with reading(where, "the events"):
        events = event_rows(f)
    attrs: dict[str, object] = {
        k: attr_str(f, k)
        for k in (
            "format",
            "format_version",
            "tmesim_version",
            "backend",
            "device",
            "created",
            "scenario",
            "name",
        )
    }
    attrs.update(
        seed=int(f.attrs["seed"]),
        dx_um=dx,
        dt_min=float(f.attrs["dt_min"]),
        status=attr_str(f, "status").strip(),
        events=events,
        path=where,
    )
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
