"""Render the README's viewer screenshot from a shipped scenario.

    python -m tmesim_napari.screenshot                       # quickstart_2d -> docs/viewer.png
    python -m tmesim_napari.screenshot --run runs/q.h5 -o shot.png
    python -m tmesim_napari.screenshot --scenario scenarios/spheroid_3d.toml \\
        --set grid.shape=[48,48,48] -o docs/viewer_3d.png

Runs the scenario (into a temporary folder) unless ``--run`` names an existing run file, opens it
as ``tmesim view`` does (layers, explorer dock), moves to the last snapshot and saves the whole
window. Without a display it starts a virtual X server (Xvfb, through pyvirtualdisplay), since
napari needs OpenGL.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def render(run_path, out, size=(1400, 860)) -> Path:
    """Save a screenshot of napari showing ``run_path`` to ``out`` (PNG); returns ``out``."""
    import imageio.v3 as iio
    from qtpy.QtWidgets import QApplication

    from .view import view_run

    viewer = view_run(run_path, show=True, block=False, follow=False)
    try:
        viewer.window.resize(*size)
        viewer.reset_view()
        for _ in range(3):  # let Qt lay out the docks and the plot before grabbing
            QApplication.processEvents()
        img = viewer.screenshot(canvas_only=False, flash=False)
    finally:
        viewer.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, img)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tmesim_napari.screenshot",
        description="Screenshot of napari showing a tmesim run.",
    )
    p.add_argument(
        "--scenario",
        default="scenarios/quickstart_2d.toml",
        help="scenario to run (default: scenarios/quickstart_2d.toml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="scenario override (repeatable)",
    )
    p.add_argument("--run", help="use this run file instead of running the scenario")
    p.add_argument("-o", "--output", default="docs/viewer.png", help="PNG to write")
    p.add_argument("--size", default="1400x860", help="window size WIDTHxHEIGHT in pixels")
    args = p.parse_args(argv)
    import tmesim
    from tmesim.errors import UserError

    display = None
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
            from pyvirtualdisplay import Display

            display = Display(backend="xvfb", size=(w + 200, h + 200), color_depth=24)
            display.start()
        with tempfile.TemporaryDirectory() as tmp:
            run = args.run
            if run is None:
                sc = tmesim.load_scenario(args.scenario, overrides=args.set)
                run = Path(tmp) / f"{sc.run.name}.h5"
                print(f"running {args.scenario} ({sc.n_steps} steps) ...", file=sys.stderr)
                tmesim.Simulation(sc).run(run)
            out = render(run, args.output, (w, h))
        print(f"wrote {out}")
        return 0
    except UserError as exc:
        print(f"screenshot: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if display is not None:
            display.stop()


if __name__ == "__main__":
    sys.exit(main())
