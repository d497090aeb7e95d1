"""Putting a run's layers into a napari viewer and re-reading them as the run grows.

These functions take a ``napari.Viewer`` (or ``ViewerModel``) but no Qt, so they work headless too.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._reader import META_KEY, RunInfo, layer_data, lazy_snapshots, read_info


def _same(a, b) -> bool:
    return os.path.normcase(str(Path(a).resolve())) == os.path.normcase(str(Path(b).resolve()))


def run_layers(viewer, path=None) -> list:
    """The viewer's layers that came from a tmesim run (from the run at ``path`` if given)."""
    out = []
    for layer in viewer.layers:
        meta = layer.metadata.get(META_KEY) if isinstance(layer.metadata, dict) else None
        if meta and (path is None or _same(meta["path"], path)):
            out.append(layer)
    return out


def time_axis(viewer, layer) -> int:
    """The viewer's dims axis that is ``layer``'s time axis (napari aligns axes from the right)."""
    return viewer.dims.ndim - layer.ndim


def add_run(viewer, path, info: RunInfo | None = None) -> list:
    """Add a run's layers (as :func:`tmesim_napari.read_run` makes them) to ``viewer``."""
    info = info or read_info(path)
    layers = []
    for data, kwargs, layer_type in layer_data(info):
        layers.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    return layers


def remove_run(viewer, path) -> None:
    """Remove every layer of the run at ``path``."""
    for layer in run_layers(viewer, path):
        viewer.layers.remove(layer)


def show_snapshot(viewer, layer, index: int) -> None:
    """Move the viewer's time slider to snapshot ``index`` of ``layer``'s run (by its time in
    hours, so runs of other intervals in the same viewer do not shift it)."""
    meta = layer.metadata[META_KEY]
    viewer.dims.set_point(time_axis(viewer, layer), meta["t0_h"] + index * meta["interval_h"])


def refresh_layers(viewer, path, to_last: bool | None = None) -> bool:
    """Re-read a run that may have grown and update its layers in place.

    Layers keep what the user changed (visibility, colormap, contrast); only data, time scale and
    metadata are replaced. A layer the run did not have before (e.g. a field that appeared) is
    added. When the run has new snapshots the time slider moves to the newest one if ``to_last``
    is True (following the run), or if it was on the last one and ``to_last`` is None; False
    leaves it. Returns True when anything changed (more snapshots, a new status, a new layer);
    the run's layers are added when the viewer has none of them yet.
    """
    layers = {layer.metadata[META_KEY]["key"]: layer for layer in run_layers(viewer, path)}
    if not layers:
        add_run(viewer, path)
        return True
    info = read_info(path)
    first = next(iter(layers.values()))
    meta = first.metadata[META_KEY]
    old_T = len(meta["times_min"])
    same_file = meta.get("created", info.created) == info.created
    changed = old_T != info.n_snapshots or meta.get("status") != info.status or not same_file
    missing = [k for k in info.datasets if k not in layers]
    if not changed and not missing:
        return False
    axis = time_axis(viewer, first)
    at_end = viewer.dims.point[axis] >= meta["t0_h"] + (old_T - 1) * meta["interval_h"] - 1e-9
    for key, layer in layers.items():
        if key not in info.datasets:
            continue
        m = layer.metadata[META_KEY]
        m.update(
            times_min=info.times_min.tolist(),
            status=info.status,
            interval_h=info.interval_h,
            t0_h=info.t0_h,
            created=info.created,
        )
        # the time scale is only known once there are two snapshots
        layer.scale = (info.interval_h,) + tuple(layer.scale[1:])
        layer.translate = (info.t0_h,) + tuple(layer.translate[1:])
        layer.data = lazy_snapshots(info, key)
    if missing:
        for data, kwargs, layer_type in layer_data(info):
            if kwargs["metadata"][META_KEY]["key"] in missing:
                getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    grew = info.n_snapshots > old_T or not same_file
    if grew and (to_last or (to_last is None and at_end)):
        show_snapshot(viewer, first, info.n_snapshots - 1)
    return True
