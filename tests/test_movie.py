"""Movies of a run (tmesim.movie): one frame per snapshot, read back with Pillow; each voxel's
pixels have the colour of its kind (tmesim.colors) in 2D and in a 3D run's middle plane; a
field's colour scale is the run's, not the frame's; ``python -m tmesim.movie`` as a user runs it."""

import re
import shutil
import subprocess
import sys

import h5py
import matplotlib
import numpy as np
import pytest
from matplotlib import animation, colormaps
from matplotlib.colors import to_rgb
from PIL import Image

import tmesim
from tmesim import codes
from tmesim.colors import KIND_COLORS, opaque
from tmesim.movie import write_movie

from .helpers import SMALL_3D_SETS, make_scenario

CAF = """
[init.caf]
placement = "shell"
density = 0.3
"""
SCALE = 4  # pixels per voxel in these tests


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    sc = make_scenario(extra=CAF)
    return tmesim.Simulation(sc, backend="cpu").run(tmp_path_factory.mktemp("m2") / "r.h5")


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    sc = make_scenario(*SMALL_3D_SETS)
    return tmesim.Simulation(sc, backend="cpu").run(tmp_path_factory.mktemp("m3") / "r.h5")


def _frames(path) -> list[np.ndarray]:
    """Every frame of a GIF as an RGB array (Pillow composes each frame in full)."""
    im = Image.open(path)
    out = []
    for i in range(im.n_frames):
        im.seek(i)
        out.append(np.asarray(im.convert("RGB")).astype(int))
    return out


def _voxel_pixels(frame: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """The pixel at the centre of each voxel's square, (ny, nx, 3), y up: the image stands at the
    frame's bottom left, SCALE pixels per voxel."""
    H = frame.shape[0]
    rows = H - 1 - (np.arange(ny) * SCALE + SCALE // 2)
    cols = np.arange(nx) * SCALE + SCALE // 2
    return frame[np.ix_(rows, cols)]


def _kind_rgb(kind: np.ndarray) -> np.ndarray:
    table = np.array([to_rgb(opaque(KIND_COLORS[n])) for n in codes.KIND_NAMES]) * 255
    return np.rint(table[kind]).astype(int)


def test_kind_movie_has_a_frame_per_snapshot_coloured_by_kind(run2d, tmp_path):
    with h5py.File(run2d, "r") as f:
        kind = f["snapshots/kind"][()]
    m = write_movie(run2d, tmp_path / "k.gif", layer="kind", fps=5, scale=SCALE)
    assert (m.path, m.writer, m.frames) == (tmp_path / "k.gif", "pillow", len(kind))
    frames = _frames(m.path)
    assert len(frames) == len(kind) == 5
    present = np.unique(kind[-1])
    assert {codes.TUMOR, codes.CAF, codes.VESSEL} <= set(present.tolist())
    for i in (0, len(kind) - 1):
        got = _voxel_pixels(frames[i], *kind.shape[1:])
        np.testing.assert_array_equal(got, _kind_rgb(kind[i]))
    assert not np.array_equal(frames[0], frames[-1])


def test_3d_run_shows_the_middle_z_plane(run3d, tmp_path):
    with h5py.File(run3d, "r") as f:
        kind = f["snapshots/kind"][-1]
    m = write_movie(run3d, tmp_path / "k3.gif", scale=SCALE)
    got = _voxel_pixels(_frames(m.path)[-1], *kind.shape[1:])
    mid = kind[kind.shape[0] // 2]
    assert (mid == codes.TUMOR).sum() > 10  # the plane through the sphere's centre
    np.testing.assert_array_equal(got, _kind_rgb(mid))


def test_field_colours_use_one_scale_over_the_run(run2d, tmp_path):
    """Each voxel's colour is viridis at (value - run min) / (run max - run min): a frame's own
    range would colour the first (near uniform) frame otherwise."""
    with h5py.File(run2d, "r") as f:
        o2 = f["snapshots/fields/oxygen"][()]
    lo, hi = float(o2.min()), float(o2.max())
    assert np.ptp(o2[0]) < 0.5 * (hi - lo)  # a frame's own scale would differ
    m = write_movie(run2d, tmp_path / "o2.gif", layer="oxygen", scale=SCALE)
    frames = _frames(m.path)
    viridis = colormaps["viridis"]
    for i in (0, 2, len(o2) - 1):
        want = viridis((o2[i] - lo) / (hi - lo))[..., :3] * 255
        got = _voxel_pixels(frames[i], *o2.shape[1:])
        # a GIF holds 256 colours: a smooth field's colours are rounded to the palette (by 3.2
        # at most here; the frame's own scale would be off by 230 at 0 and 11 at 2)
        assert np.abs(got - want).max() <= 5


def test_python_m_tmesim_movie_writes_what_it_says(run2d, tmp_path):
    """``python -m tmesim.movie run.h5 -o run.mp4``: an mp4 where matplotlib finds ffmpeg, else
    a GIF of that name, and the line printed says which; a wrong layer is one line, exit 2."""
    out = tmp_path / "run.mp4"
    cmd = [sys.executable, "-m", "tmesim.movie", str(run2d), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if animation.writers.is_available("ffmpeg"):
        assert out.stat().st_size > 1000 and "(ffmpeg; ffmpeg found)" in r.stdout
    else:
        gif = out.with_suffix(".gif")
        assert r.stdout.strip() == (
            f"wrote {gif}: 5 frames of kind (pillow; ffmpeg not found: a GIF instead)"
        )
        assert Image.open(gif).n_frames == 5 and not out.exists()
    bad = subprocess.run(
        [*cmd[:-2], "-o", str(tmp_path / "x.gif"), "--layer", "oxgen"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert (
        bad.stderr.startswith("tmesim movie: error: movie of ") and "no layer 'oxgen'" in bad.stderr
    )
    assert "oxygen" in bad.stderr and not (tmp_path / "x.gif").exists()


def test_tmesim_movie_command(run2d, tmp_path, capsys):
    """``tmesim movie`` is the same command as ``python -m tmesim.movie``."""
    from tmesim.cli import main

    gif = tmp_path / "k.gif"
    assert main(["movie", str(run2d), "-o", str(gif), "--layer", "tumor_state"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {gif}: 5 frames of tumor_state (pillow")
    assert Image.open(gif).n_frames == 5
    assert main(["movie", str(run2d), "-o", str(tmp_path / "x.gif"), "--layer", "oxgen"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tmesim movie: error: ") and "no layer 'oxgen'" in err


@pytest.mark.skipif(
    not animation.writers.is_available("ffmpeg"), reason="matplotlib finds no ffmpeg"
)
def test_mp4_has_a_frame_per_snapshot(run2d, tmp_path):
    m = write_movie(run2d, tmp_path / "k.mp4", scale=SCALE)
    assert (m.writer, m.path) == ("ffmpeg", tmp_path / "k.mp4")
    ffmpeg = shutil.which(matplotlib.rcParams["animation.ffmpeg_path"])
    decoded = subprocess.run(
        [ffmpeg, "-nostdin", "-i", str(m.path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    counts = re.findall(r"frame=\s*(\d+)", decoded.stderr)
    assert counts and int(counts[-1]) == m.frames == 5
