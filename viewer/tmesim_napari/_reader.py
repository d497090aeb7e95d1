"""The napari reader: a tmesim run file as lazily loaded napari layers.

``get_reader(path)`` answers ``None`` quickly for anything that is not a tmesim run (it reads the
HDF5 signature, then the root ``format`` attribute; the extension alone proves nothing), and
otherwise :func:`read_run`, which returns napari layer-data tuples ``(data, kwargs, layer_type)``:

- one Image layer per field, named with its units (``"oxygen (mmHg)"``) and coloured by its role
  (:mod:`tmesim_napari._roles`: the dataset's ``role`` attribute, else the run's scenario, else
  the field's name), bottom to top: oxygen, the others in the scenario's order (its fields, then
  its drugs); all hidden except oxygen and the first drug;
- ``epigenetic memory`` (Image, hidden) when the run has it;
- ``kind`` and ``tumor state`` Labels layers with the fixed colours of :mod:`tmesim_napari._style`.

Every array is ``(time, [z,] y, x)``: a dask array with one chunk per snapshot, read from the file
only when napari shows that snapshot. Each read opens the file (in SWMR mode while a writer holds
it) and closes it again, so no handle is left behind, a run that is still being written can be
viewed (and re-read larger, see :func:`tmesim_napari.refresh_layers`), and a run file replaced by a
new run is never served from a stale handle. Scale: voxel edge ``dx_um`` in µm on the spatial axes
(translated by half a voxel, so world coordinates are voxel centres, as in ``tmesim.open_run``); on
the time axis the snapshot interval in hours, so the slider reads hours.

This module reads the documented file schema only (``tmesim.io.schema``, files opened and checked
by ``tmesim.io.runfile``), and field roles the file does not store from the run's own scenario
text (:mod:`tmesim_napari._roles`, with the scenario layer's field presets): never the simulator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from tmesim.errors import RunFileError
from tmesim.io import schema
from tmesim.io.runfile import (
    H5_ERRORS,
    HDF5_SIGNATURE,
    attr_str,
    code_names,
    event_rows,
    open_run_file,
    reading,
    short_error,
    to_str,
)

from . import _style
from ._roles import field_role, scenario_roles

# a damaged file is claimed only if its first bytes hold the format string: the writer stores the
# root attributes (format, scenario text, ...) when it creates the file, so they sit near the start
_SNIFF_BYTES = 1 << 20
META_KEY = "tmesim"  # layer.metadata[META_KEY] describes where a layer came from
# code names as README's schema documents them, for a file whose datasets lack attrs["names"]
DEFAULT_KIND_NAMES = ("empty", "tumor", "caf", "tam", "vessel", "necrotic")
DEFAULT_TUMOR_STATE_NAMES = ("none", "S", "P", "R")


# ------------------------------------------------------------------------------------- opening
def _open(path):
    """Open a run file for one read (tmesim.io.runfile's opener, with all its checks: the file
    may have been replaced since :func:`read_info` looked at it)."""
    return open_run_file(path)


def sniff(path) -> str | None:
    """What ``path`` is: ``"tmesim"`` (a run file), ``"damaged"`` (HDF5 signature and tmesim's
    format string, but HDF5 cannot open it) or ``None`` (anything else). Cheap and never raises."""
    try:
        p = os.fspath(path)
        if not os.path.isfile(p):
            return None
        with open(p, "rb") as fh:
            head = fh.read(len(HDF5_SIGNATURE))
            # tmesim writes no user block, so the signature is at offset 0
            if head != HDF5_SIGNATURE:
                return None
        try:
            # the format attribute only: whatever else the file holds is read_run's to check
            with open_run_file(p, check=False) as f:
                return "tmesim" if attr_str(f, "format") == schema.FORMAT else None
        except Exception:  # whatever HDF5 says, the file cannot be read as is
            with open(p, "rb") as fh:
                start = fh.read(_SNIFF_BYTES)
            return "damaged" if schema.FORMAT.encode() in start else None
    except (OSError, TypeError, ValueError):
        return None


def get_reader(path):
    """npe2 reader hook: :func:`read_run` for a tmesim run file (or a damaged one, so that
    napari shows why it cannot be opened), ``None`` for anything else."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    return read_run if sniff(path) is not None else None


# ----------------------------------------------------------------------------- what a run holds
@dataclass
class FieldInfo:
    name: str
    units: str
    role: str  # "oxygen", "growth_factor", "signal", "drug", "other" or "unknown"
    dataset: str  # HDF5 path


@dataclass
class RunInfo:
    """What :func:`read_info` found in a run file (plain values; the file is closed again)."""

    path: str
    name: str
    status: str
    created: str
    shape: tuple[int, ...]
    dx_um: float
    times_min: np.ndarray  # (T,) snapshot times, minutes
    kind_names: list[str]
    tumor_state_names: list[str]
    fields: list[FieldInfo]
    has_memory: bool
    datasets: dict[str, str] = field(default_factory=dict)  # key -> HDF5 path of the snapshots

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def n_snapshots(self) -> int:
        return len(self.times_min)

    @property
    def interval_h(self) -> float:
        """Snapshot interval in hours: the median spacing (the last snapshot of a stopped run
        comes off the cadence); 1 h when there is a single snapshot."""
        if len(self.times_min) < 2:
            return 1.0
        d = float(np.median(np.diff(self.times_min))) / 60.0
        return d if d > 0 else 1.0

    @property
    def t0_h(self) -> float:
        return float(self.times_min[0]) / 60.0 if len(self.times_min) else 0.0


def _names(ds, root_attr, fallback) -> list[str]:
    names = code_names(ds, root_attr)
    return list(fallback) if names is None else names


def _fields(f) -> list[FieldInfo]:
    """The run's fields with their roles (:mod:`tmesim_napari._roles`), in the order of the
    run's scenario (fields, then drugs; HDF5 lists a group's members by name)."""
    if schema.FIELDS not in f:
        return []
    from_scenario = scenario_roles(attr_str(f, "scenario"))
    order = {name: i for i, name in enumerate(from_scenario)}
    out = []
    for name, ds in f[schema.FIELDS].items():
        attr = ds.attrs.get("role")
        role = field_role(name, to_str(attr) if attr is not None else None, from_scenario)
        out.append(FieldInfo(name, attr_str(ds, "units"), role, ds.name))
    # stable: a field the scenario does not name keeps its place after those it does
    return sorted(out, key=lambda fi: order.get(fi.name, len(order)))


def _info(f, p) -> RunInfo:
    """RunInfo of an open file whose format was checked; h5py errors from a damaged file
    propagate to read_info."""
    snaps = f[schema.SNAPSHOTS]
    kind, state = snaps["kind"], snaps["tumor_state"]
    shape = tuple(int(s) for s in f.attrs["grid_shape"])
    dx = float(f.attrs["dx_um"])
    datasets = {"kind": kind.name, "tumor_state": state.name}
    lengths = [kind.shape[0], state.shape[0], snaps["time"].shape[0]]
    has_memory = "memory" in snaps
    if has_memory:
        datasets["memory"] = snaps["memory"].name
        lengths.append(snaps["memory"].shape[0])
    fields = _fields(f)
    for fi in fields:
        datasets[f"field/{fi.name}"] = fi.dataset
        lengths.append(f[fi.dataset].shape[0])
    # the writer appends time, kind, state, memory and fields one after the other: a reader
    # that comes in between sees some one row longer; only complete snapshots count
    T = min(lengths)
    times = np.asarray(snaps["time"][:T], dtype=float)
    for dsp in datasets.values():
        if tuple(f[dsp].shape[1:]) != shape:
            raise RunFileError(
                f"{p}: {dsp} has shape {f[dsp].shape[1:]}, the grid is {shape}: damaged file"
            )
    info = RunInfo(
        path=str(Path(p).resolve()),
        name=attr_str(f, "name"),
        status=attr_str(f, "status").strip(),
        created=attr_str(f, "created"),
        shape=shape,
        dx_um=dx,
        times_min=times,
        kind_names=_names(kind, "kind_names", DEFAULT_KIND_NAMES),
        tumor_state_names=_names(state, "tumor_state_names", DEFAULT_TUMOR_STATE_NAMES),
        fields=fields,
        has_memory=has_memory,
        datasets=datasets,
    )
    return info


def read_info(path) -> RunInfo:
    """Read the metadata of a run file; RunFileError with a clear message if it is not a
    complete-enough tmesim run (damaged, truncated, foreign, from a newer tmesim, empty)."""
    p = os.fspath(path)
    with open_run_file(p) as f:
        try:
            info = _info(f, p)
        except RunFileError:
            raise
        except (*H5_ERRORS, TypeError) as exc:
            raise RunFileError(
                f"{p}: incomplete or damaged tmesim run file ({short_error(exc)})"
            ) from None
    if info.n_snapshots == 0:
        raise RunFileError(
            f"{p}: holds no snapshot yet (status {info.status!r}); "
            "a run writes its first one when it starts, try again"
        )
    return info


def read_timeseries(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All time-series columns of a run, cut to the rows every column has: ({column: (N,)
    array}, {column: units}). Columns differ between runs; take whatever is there."""
    cols: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    with _open(path) as f, reading(os.fspath(path), "its time series"):
        if schema.TIMESERIES not in f:
            return cols, units
        ts = f[schema.TIMESERIES]
        names = [n for n in ts if isinstance(ts[n], h5py.Dataset)]
        n = min((ts[c].shape[0] for c in names), default=0)
        for c in names:
            cols[c] = np.asarray(ts[c][:n], dtype=float)
            units[c] = attr_str(ts[c], "units")
    return cols, units


def read_events(path) -> list[tuple[float, str, dict]]:
    """The run's events as (time_min, kind, detail) with detail parsed from JSON (never
    evaluated: a detail that is not valid JSON is kept as ``{"text": ...}``)."""
    with _open(path) as f, reading(os.fspath(path), "its events"):
        return event_rows(f)


# --------------------------------------------------------------------------------- lazy arrays
class _Snapshots:
    """The first ``n`` snapshots of one dataset as an array-like for ``dask.array.from_array``;
    every read opens the file (SWMR), reads the requested block and closes it."""

    def __init__(self, path: str, dataset: str, n: int, shape: tuple, dtype):
        self.path, self.dataset = path, dataset
        self.shape = (n,) + tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        try:
            with _open(self.path) as f:
                return np.asarray(f[self.dataset][key])
        except H5_ERRORS as exc:
            raise RunFileError(
                f"{self.path}: cannot read {self.dataset} ({short_error(exc)})"
            ) from None


def lazy_snapshots(info: RunInfo, key: str):
    """(T, [Z,] Y, X) dask array of ``info.datasets[key]``, one chunk per snapshot."""
    import dask.array as da

    dsp = info.datasets[key]
    with _open(info.path) as f, reading(info.path, dsp):
        dtype = f[dsp].dtype
    arr = _Snapshots(info.path, dsp, info.n_snapshots, info.shape, dtype)
    # the name identifies the content (file identity + rows), so napari's dask cache is reused
    # across refreshes of a growing run but never serves a replaced file's data
    token = f"tmesim-{info.path}-{info.created}-{dsp}-{info.n_snapshots}"
    return da.from_array(
        arr,
        chunks=(1,) + info.shape,
        name=token,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * arr.ndim, dtype=dtype),
    )


# --------------------------------------------------------------------------------- the layers
def _label_colormap(colors: dict):
    from napari.utils.colormaps import DirectLabelColormap

    cmap = {None: "transparent"}
    for code, c in colors.items():
        cmap[code] = c if c is not None else "transparent"
    return DirectLabelColormap(color_dict=cmap)


def _contrast(f, dsp: str, T: int, role: str) -> tuple[float, float]:
    """Contrast limits from the first and last snapshot (reading all would defeat laziness).

    Concentrations (oxygen, drugs, growth factors, signals) start at 0, so a low value looks low;
    any other field spans its own range."""
    ds = f[dsp]
    vals = [np.asarray(ds[0]), np.asarray(ds[T - 1])] if T > 1 else [np.asarray(ds[0])]
    finite = [v[np.isfinite(v)] for v in vals]
    finite = [v for v in finite if v.size]
    if not finite:
        return 0.0, 1.0
    lo = min(float(v.min()) for v in finite)
    hi = max(float(v.max()) for v in finite)
    if role in _style.ROLE_COLORMAPS:
        lo = min(0.0, lo)
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _common(info: RunInfo, key: str) -> dict:
    nd = info.ndim
    return dict(
        scale=(info.interval_h,) + (info.dx_um,) * nd,
        translate=(info.t0_h,) + (info.dx_um / 2,) * nd,
        axis_labels=("time",) + ("z", "y", "x")[3 - nd :],
        units=("hour",) + ("micrometer",) * nd,
        metadata={
            META_KEY: {
                "path": info.path,
                "key": key,
                "run": info.name,
                "status": info.status,
                "created": info.created,
                "times_min": np.asarray(info.times_min).tolist(),
                "interval_h": info.interval_h,
                "t0_h": info.t0_h,
            }
        },
    )


def layer_data(info: RunInfo) -> list[tuple]:
    """napari layer-data tuples for a run, bottom layer first (see the module docstring)."""
    three_d = info.ndim == 3
    out = []
    fields = sorted(info.fields, key=lambda fi: fi.role != "oxygen")  # stable: oxygen first
    first_drug = next((fi.name for fi in fields if fi.role == "drug"), None)
    with _open(info.path) as f:
        try:
            limits = {fi.name: _contrast(f, fi.dataset, info.n_snapshots, fi.role) for fi in fields}
        except H5_ERRORS as exc:
            raise RunFileError(f"{info.path}: damaged snapshot data ({short_error(exc)})") from None
    for fi in fields:
        key = f"field/{fi.name}"
        kw = _common(info, key)
        kw["metadata"][META_KEY].update(role=fi.role, units=fi.units, field=fi.name)
        kw.update(
            name=f"{fi.name} ({fi.units})" if fi.units else fi.name,
            colormap=_style.ROLE_COLORMAPS.get(fi.role, _style.UNKNOWN_COLORMAP),
            contrast_limits=limits[fi.name],
            visible=fi.role == "oxygen" or fi.name == first_drug,
            # additive, so the first drug shows over oxygen instead of hiding it
            blending="additive",
        )
        if three_d:
            # a minimum-intensity projection shows a hypoxic core inside an oxygenated bath
            kw["rendering"] = "minip" if fi.role == "oxygen" else "mip"
        out.append((lazy_snapshots(info, key), kw, "image"))
    if info.has_memory:
        kw = _common(info, "memory")
        kw.update(
            name="epigenetic memory",
            colormap="viridis",
            contrast_limits=(0.0, 1.0),
            visible=False,
            blending="additive",
        )
        if three_d:
            kw["rendering"] = "mip"
        out.append((lazy_snapshots(info, "memory"), kw, "image"))
    for key, names, table, label in (
        ("kind", info.kind_names, _style.KIND_COLORS, "kind"),
        ("tumor_state", info.tumor_state_names, _style.TUMOR_STATE_COLORS, "tumor state"),
    ):
        colors = _style.colors_for(names, table)
        kw = _common(info, key)
        kw["metadata"][META_KEY].update(names=list(names), colors={i: c for i, c in colors.items()})
        kw.update(
            name=label,
            colormap=_label_colormap(colors),
            opacity=1.0,
            # napari shows a label's features in the status bar under the cursor
            features={"index": list(range(len(names))), "name": list(names)},
        )
        if three_d:
            kw["rendering"] = "iso_categorical"
        out.append((lazy_snapshots(info, key), kw, "labels"))
    return out


def read_run(path) -> list[tuple]:
    """The reader function npe2 calls: layer-data tuples for one run file (or a list of one).

    Raises RunFileError, with a one-line message, for a damaged, truncated, foreign, empty or too
    new file; napari shows it as a notification."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return layer_data(read_info(path))
