"""Movies of a run: one frame per snapshot of one layer (``kind``, ``tumor_state``, ``memory`` or
a field), ``python -m tmesim.movie run.h5 -o run.mp4``.

Frames are drawn with matplotlib and written by its animation writers: ffmpeg where matplotlib
finds it (``.mp4``, ``.mkv``, ``.webm``, ``.mov``, ``.avi``), else Pillow as an animated GIF (a
video name then becomes ``.gif``); :func:`write_movie` says which. The colour scale is fixed over
the whole run (a field's range over every frame; the codes' colours of tmesim.colors, those of
``tmesim report`` and napari), so a change of colour is a change of value. A 3D run is shown as
its middle z plane.

Each voxel is a square of ``scale`` pixels (chosen so the larger side is about 600 pixels, one
pixel per voxel from 600 voxels up; lattices over 1200 voxels take every n-th voxel), drawn
nearest-neighbour at the frame's bottom left (y up, as in the report's maps); the legend or
colour bar, the layer's name and the snapshot time stand in a panel on the right.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import codes
from .errors import UserError, shown

#: file types ffmpeg writes; Pillow writes .gif
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
#: the larger side of the lattice image, pixels (about)
TARGET_PX = 600
#: the larger side beyond which every n-th voxel is shown
MAX_PX = 1200
#: the panel beside the image: width and least height, pixels
PANEL_W, PANEL_MIN_H = 200, 300
DPI = 100


class Movie(NamedTuple):
    """What :func:`write_movie` wrote."""

    path: Path  #: the file written (a video name becomes .gif when ffmpeg is missing)
    writer: str  #: "ffmpeg" or "pillow"
    frames: int  #: one per snapshot
    note: str  #: why this writer, in words


def code_colours(layer: str, names) -> list[str]:
    """The colour of each code of ``kind`` or ``tumor_state``, by name (tmesim.colors, the
    report's and the napari viewer's; a transparent one, as for empty voxels, drawn white)."""
    from .colors import KIND_COLORS, TUMOR_STATE_COLORS, colors_for, opaque

    table = KIND_COLORS if layer == "kind" else TUMOR_STATE_COLORS
    return [opaque(c) for c in colors_for(names, table).values()]


def _writer(out: Path) -> tuple[str, Path, str]:
    from matplotlib import animation

    suffix = out.suffix.lower()
    if suffix == ".gif":
        return "pillow", out, "GIF asked for"
    if suffix not in VIDEO_SUFFIXES:
        raise UserError(
            f"movie file {shown(str(out))}: unknown type {shown(out.suffix)}, expected one of "
            f"{', '.join(VIDEO_SUFFIXES)} (ffmpeg) or .gif"
        )
    if animation.writers.is_available("ffmpeg"):
        return "ffmpeg", out, "ffmpeg found"
    return "pillow", out.with_suffix(".gif"), "ffmpeg not found: a GIF instead"


def _layers(ds) -> list[str]:
    return [str(n) for n, v in ds.data_vars.items() if v.dims[:1] == ("time",) and v.ndim > 1]


def write_movie(
    run_path, out_path, layer: str = "kind", fps: float = 4.0, scale: int | None = None
) -> Movie:
    """Write a movie of ``layer`` of the run file ``run_path``: one frame per snapshot.

    Args:
        run_path: the run file (.h5).
        out_path: .mp4 (or another VIDEO_SUFFIXES type; a .gif where ffmpeg is missing) or .gif.
        layer: "kind", "tumor_state", "memory" or a field's name.
        fps: frames (snapshots) per second.
        scale: pixels per voxel (default: the larger side about TARGET_PX pixels).

    Returns:
        a :class:`Movie`: the file written, the writer ("ffmpeg" or "pillow"), the frame count
        and why that writer.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from .io.reader import open_run

    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise UserError(f"movie: fps is {shown(fps)}, expected a number above 0")
    if scale is not None and not (isinstance(scale, int) and 1 <= scale <= 64):
        raise UserError(f"movie: scale is {shown(scale)}, expected whole pixels from 1 to 64")
    writer_name, out, note = _writer(Path(out_path))
    with open_run(run_path) as ds:
        layers = _layers(ds)
        if layer not in layers:
            raise UserError(
                f"movie of {shown(str(run_path))}: no layer {shown(layer)}, expected one of "
                f"{', '.join(layers)}"
            )
        da = ds[layer]
        T = ds.sizes["time"]
        if T == 0:
            raise UserError(f"movie of {shown(str(run_path))}: the run has no snapshots")
        plane: dict[str, object] = {}
        where = ""
        if "z" in da.dims:
            k = ds.sizes["z"] // 2
            plane["z"] = k
            where = f", z = {float(ds['z'][k]):.0f} um (middle plane)"
        ny, nx = ds.sizes["y"], ds.sizes["x"]
        step = max(1, math.ceil(max(ny, nx) / MAX_PX))
        plane.update(y=slice(None, None, step), x=slice(None, None, step))
        ny, nx = len(range(0, ny, step)), len(range(0, nx, step))
        if scale is None:
            scale = max(1, TARGET_PX // max(ny, nx))

        def frame(i: int) -> np.ndarray:
            return np.asarray(da.isel({"time": i, **plane}).values)

        categorical = layer in ("kind", "tumor_state")
        if categorical:
            names = list(da.attrs.get("names") or ())
            if not names:
                names = list(codes.KIND_NAMES if layer == "kind" else codes.TUMOR_STATE_NAMES)
            colours = code_colours(layer, names)
            imshow_kw: dict = dict(cmap=ListedColormap(colours), vmin=-0.5, vmax=len(names) - 0.5)
        else:
            lo, hi = np.inf, -np.inf
            for i in range(T):  # the scale of the whole run, one frame in memory at a time
                a = frame(i)
                if np.isfinite(a).any():
                    lo = min(lo, float(np.nanmin(a[np.isfinite(a)])))
                    hi = max(hi, float(np.nanmax(a[np.isfinite(a)])))
            if not lo <= hi:
                lo, hi = 0.0, 1.0
            if hi == lo:
                hi = lo + 1.0
            imshow_kw = dict(cmap="viridis", vmin=lo, vmax=hi)

        # even sizes: ffmpeg's yuv420p wants them
        w_img, h_img = nx * scale, ny * scale
        W = w_img + PANEL_W + (w_img + PANEL_W) % 2
        H = max(h_img, PANEL_MIN_H)
        H += H % 2
        fig = plt.figure(figsize=(W / DPI, H / DPI), dpi=DPI, facecolor="white")
        ax = fig.add_axes((0, 0, w_img / W, h_img / H))
        ax.set_axis_off()
        im = ax.imshow(
            frame(0),
            origin="lower",
            interpolation="nearest",
            resample=False,
            aspect="auto",
            **imshow_kw,
        )
        # the lattice's edge, one pixel outside it (empty voxels are as white as the panel)
        for xy in (
            (((w_img + 1) / W,) * 2, (0, (h_img + 1) / H)),
            ((0, (w_img + 1) / W), ((h_img + 1) / H,) * 2),
        ):
            fig.add_artist(Line2D(*xy, color="0.6", lw=72 / DPI, antialiased=False))
        left = (w_img + 10) / W
        units = str(da.attrs.get("units", ""))
        label = f"{layer} ({units})" if units and units != "1" else layer
        name = str(ds.attrs.get("name", Path(run_path).stem))
        fig.text(left, 1 - 10 / H, f"{name}\n{label}{where}", va="top", fontsize=9, wrap=True)
        stamp = fig.text(left, 1 - 66 / H, "", va="top", fontsize=10, weight="bold")
        if categorical:
            handles = [
                Patch(facecolor=c, edgecolor="0.5", label=n)
                for n, c in zip(names, colours)
                if n not in ("empty", "none")
            ]
            fig.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(left, 1 - 106 / H),
                frameon=False,
                fontsize=8,
            )
        else:
            cax = fig.add_axes((left, 20 / H, 18 / W, max(H - 140, 60) / H))
            fig.colorbar(im, cax=cax, label=label)
        times_h = ds["time"].values
        if writer_name == "ffmpeg":
            writer: animation.AbstractMovieWriter = animation.FFMpegWriter(
                fps=fps,  # type: ignore[arg-type]  # a float works; the stubs say int
                codec="libx264",
                extra_args=["-pix_fmt", "yuv420p"],
            )
        else:
            writer = animation.PillowWriter(fps=fps)  # type: ignore[arg-type]
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with writer.saving(fig, str(out), dpi=DPI):
                for i in range(T):
                    if i:
                        im.set_data(frame(i))
                    t = float(times_h[i])
                    stamp.set_text(f"t = {t:.1f} h ({t / 24:.2f} d)\nsnapshot {i + 1}/{T}")
                    writer.grab_frame()
        finally:
            plt.close(fig)
    return Movie(out, writer_name, T, note)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The movie command's arguments (``python -m tmesim.movie`` and ``tmesim movie``)."""
    p.add_argument("run", help="run file (.h5)")
    p.add_argument(
        "-o",
        "--out",
        help="movie file: .mp4 (a .gif where ffmpeg is missing) or .gif "
        "(default: the run's name with .mp4, beside it)",
    )
    p.add_argument(
        "--layer",
        default="kind",
        help="kind, tumor_state, memory or a field's name (default: kind)",
    )
    p.add_argument("--fps", type=float, default=4.0, help="snapshots per second (default: 4)")
    p.add_argument("--scale", type=int, help="pixels per voxel (default: about 600 px wide)")


def run_args(args: argparse.Namespace) -> int:
    """Write the movie ``args`` (from :func:`add_arguments`) ask for and say what was written."""
    out = Path(args.out) if args.out else Path(args.run).with_suffix(".mp4")
    m = write_movie(args.run, out, layer=args.layer, fps=args.fps, scale=args.scale)
    print(f"wrote {m.path}: {m.frames} frames of {args.layer} ({m.writer}; {m.note})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tmesim.movie",
        description="A movie of a run: one frame per snapshot of one layer.",
    )
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_args(args)
    except UserError as exc:
        print(f"tmesim movie: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
