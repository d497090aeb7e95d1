"""The napari viewer (viewer/tmesim_napari): reader, layers, explorer, interactive runs, CLI.

Real napari under a real X server (pytest-xvfb, configured in setup.cfg, starts Xvfb where the
program is installed; without an X display these tests skip); no mocks. Run files are
written by tmesim's own Simulation/RunWriter into tmp folders; expectations come from reading the
same files with h5py and from the colours README documents, not from the viewer's own tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[test]')")
pytest.importorskip("qtpy", reason="no Qt binding for napari")
if not os.environ.get("DISPLAY"):
    pytest.skip(
        "no X display: napari's canvas needs one for OpenGL (install the Xvfb program; "
        "pytest-xvfb then starts one for the tests)",
        allow_module_level=True,
    )

import tmesim  # noqa: E402
import tmesim_napari  # noqa: E402
from tmesim.errors import RunFileError  # noqa: E402
from tmesim_napari import get_reader, read_run  # noqa: E402

from ..helpers import restamp_text_digest, scenario_text, status_in  # noqa: E402
from .live import start_gated_run  # noqa: E402

# documented colours (README "Viewing runs in napari"), spelled out independently of the viewer
KIND_RGB = {
    "tumor": (0xE6, 0x9F, 0x00),
    "caf": (0x00, 0x9E, 0x73),
    "tam": (0x94, 0x67, 0xBD),
    "vessel": (0xD6, 0x27, 0x28),
    "necrotic": (0x7F, 0x7F, 0x7F),
}
STATE_RGB = {"S": (0x56, 0xB4, 0xE9), "P": (0xF0, 0xE4, 0x42), "R": (0xE7, 0x29, 0x8A)}

#: a growth factor and two drug-like fields beside oxygen
TINY_2D_FIELDS = """
[fields.hgf]
units = "ng/mL"
diffusion_um2_per_min = 2e3
decay_per_min = 0.01

[fields.drug_a]
units = "uM"
diffusion_um2_per_min = 1e3
initial = 1.0

[fields.drug_b]
units = "uM"
diffusion_um2_per_min = 1e3
initial = 2.0
"""


def tiny_2d(*sets: str, extra: str = "") -> str:
    """The 2D run's scenario (40 x 48 voxels, 60 steps, a snapshot every 2 h, four fields), with
    ``sets`` and ``extra`` tables on top."""
    return scenario_text(
        "run.name=tiny2d",
        "run.seed=5",
        "run.duration_days=0.25",
        "run.snapshot_every_hours=2",
        "grid.shape=[40,48]",
        "init.vessels.density=0.02",
        *sets,
        extra=TINY_2D_FIELDS + extra,
    )


TINY_2D = tiny_2d()
TINY_3D = scenario_text(
    "run.name=tiny3d",
    "run.seed=3",
    "run.duration_days=0.25",
    "run.snapshot_every_hours=3",
    "grid.shape=[12,14,16]",
    "grid.dx_um=25",
    "init.tumor.shape=sphere",
    "init.tumor.radius_um=100",
    "init.vessels.placement=none",
    drop=("init.vessels.density",),
)


def _write_run(tmp: Path, text: str, name: str, **overrides) -> Path:
    scen = tmp / f"{name}.toml"
    scen.write_text(text)
    out = tmp / f"{name}.h5"
    tmesim.Simulation(tmesim.load_scenario(scen, overrides=overrides or None)).run(out)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewer_runs")
    r2 = _write_run(tmp, TINY_2D, "tiny2d")
    # drug_a and drug_b are plain [fields] tables (role "other"): marked as drugs here, as the
    # attribute a writer stores wins over the scenario (test_routes.py takes real [drugs])
    with h5py.File(r2, "r+") as f:
        f["snapshots/fields/drug_a"].attrs["role"] = "drug"
        f["snapshots/fields/drug_b"].attrs["role"] = "drug"
        f["snapshots/fields/hgf"].attrs["role"] = "growth_factor"
        restamp_text_digest(f)
    r3 = _write_run(tmp, TINY_3D, "tiny3d")
    return {"2d": r2, "3d": r3, "dir": tmp}


@pytest.fixture
def viewer(qapp):
    made = []

    def make(show=False):
        v = napari.Viewer(show=show)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()


def _by_name(tuples):
    return {kw["name"]: (data, kw, kind) for data, kw, kind in tuples}


# ------------------------------------------------------------------------------------ reader
def test_reader_2d_layer_tuples_match_the_file(runs):
    path = runs["2d"]
    reader = get_reader(str(path))
    assert callable(reader)
    layers = _by_name(reader(str(path)))
    assert set(layers) == {
        "hgf (ng/mL)",
        "drug_a (uM)",
        "drug_b (uM)",
        "oxygen (mmHg)",
        "epigenetic memory",
        "kind",
        "tumor state",
    }
    with h5py.File(path, "r") as f:
        T = f["snapshots/kind"].shape[0]
        times_h = f["snapshots/time"][:] / 60.0
        kind = f["snapshots/kind"][:]
        state = f["snapshots/tumor_state"][:]
        oxy = f["snapshots/fields/oxygen"][:]
    assert T == 4 and np.allclose(times_h, [0, 2, 4, 6])
    for name, (data, kw, _ltype) in layers.items():
        assert data.shape == (T, 40, 48), name
        assert data.chunks[0] == (1,) * T, "one dask chunk per snapshot"
        assert kw["scale"] == (2.0, 20.0, 20.0), "hours per snapshot, um per voxel"
        assert kw["translate"] == (0.0, 10.0, 10.0), "world coordinates are voxel centres"
        assert kw["axis_labels"] == ("time", "y", "x")
        assert kw["units"] == ("hour", "micrometer", "micrometer")
    # lazily read values equal the file's
    assert np.array_equal(layers["kind"][0][2].compute(), kind[2])
    assert np.array_equal(layers["tumor state"][0].compute(), state)
    assert np.allclose(layers["oxygen (mmHg)"][0][-1].compute(), oxy[-1])
    assert layers["kind"][2] == "labels" and layers["tumor state"][2] == "labels"
    # visible: oxygen and the first drug only
    visible = {n for n, (_, kw, _) in layers.items() if kw.get("visible", True)}
    assert visible == {"oxygen (mmHg)", "drug_a (uM)", "kind", "tumor state"}
    # concentration contrast starts at 0 and covers the data
    lo, hi = layers["oxygen (mmHg)"][1]["contrast_limits"]
    assert lo == 0.0 and hi >= oxy[[0, -1]].max() and hi > 30
    assert layers["drug_b (uM)"][1]["contrast_limits"][1] >= 2.0
    assert layers["oxygen (mmHg)"][1]["colormap"] != layers["drug_a (uM)"][1]["colormap"]
    # fixed colours by code name
    cmap = layers["kind"][1]["colormap"]
    names = [
        n.decode() if isinstance(n, bytes) else n
        for n in h5py.File(path, "r")["snapshots/kind"].attrs["names"]
    ]
    for name, rgb in KIND_RGB.items():
        got = np.round(np.asarray(cmap.map(names.index(name)))[:3] * 255).astype(int)
        assert tuple(got) == rgb, name
    assert np.asarray(cmap.map(names.index("empty")))[3] == 0, "empty voxels are transparent"


def test_reader_3d_layers_are_volumes(runs):
    path = runs["3d"]
    layers = _by_name(read_run(str(path)))
    assert set(layers) == {"oxygen (mmHg)", "epigenetic memory", "kind", "tumor state"}
    with h5py.File(path, "r") as f:
        T = f["snapshots/kind"].shape[0]
        kind = f["snapshots/kind"][-1]
    assert T == 3
    for _name, (data, kw, _) in layers.items():
        assert data.shape == (T, 12, 14, 16)
        assert kw["scale"] == (3.0, 25.0, 25.0, 25.0)
        assert kw["axis_labels"] == ("time", "z", "y", "x")
    assert layers["kind"][1]["rendering"] == "iso_categorical"
    assert layers["oxygen (mmHg)"][1]["rendering"] == "minip"
    assert np.array_equal(layers["kind"][0][-1].compute(), kind)


def test_foreign_and_missing_files_are_not_claimed(tmp_path):
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(10)
    other_format = tmp_path / "other_format.h5"
    with h5py.File(other_format, "w") as f:
        f.attrs["format"] = "something-else"
        f["x"] = np.arange(3)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all")
    for p in (foreign, other_format, text, tmp_path / "missing.h5", tmp_path):
        t0 = time.perf_counter()
        assert get_reader(str(p)) is None, p
        assert time.perf_counter() - t0 < 0.5, "get_reader must answer fast"
    assert get_reader([str(foreign), str(text)]) is None


def test_damaged_files_give_a_clear_message(runs, tmp_path):
    src = runs["2d"]
    size = src.stat().st_size
    truncated = tmp_path / "truncated.h5"
    shutil.copy(src, truncated)
    with open(truncated, "r+b") as fh:
        fh.truncate(size // 2)
    # claimed (it is one of ours), then refused with one line, fast, not a crash
    reader = get_reader(str(truncated))
    assert reader is not None
    t0 = time.perf_counter()
    with pytest.raises(RunFileError, match="truncated") as exc:
        reader(str(truncated))
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(exc.value) and str(truncated) in str(exc.value)

    corrupt = tmp_path / "corrupt.h5"
    shutil.copy(src, corrupt)
    with open(corrupt, "r+b") as fh:  # scramble the metadata right after the superblock
        fh.seek(200)
        fh.write(np.random.default_rng(0).bytes(4096))
    with pytest.raises(RunFileError, match="damaged") as exc:
        read_run(str(corrupt))
    assert "\n" not in str(exc.value)

    newer = tmp_path / "newer.h5"
    shutil.copy(src, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = "99.0"
    with pytest.raises(RunFileError, match="newer tmesim"):
        read_run(str(newer))


def test_view_cli_errors_are_one_line(runs, tmp_path):
    trunc = tmp_path / "cut.h5"
    shutil.copy(runs["2d"], trunc)
    with open(trunc, "r+b") as fh:
        fh.truncate(1000)
    for target, what in ((tmp_path / "missing.h5", "no such file"), (trunc, "truncated")):
        proc = subprocess.run(
            [sys.executable, "-m", "tmesim", "view", str(target)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and what in lines[0] and lines[0].startswith("tmesim view: error")


# ------------------------------------------------------------------------------ in napari
def _canvas_pixel(v, shot, world_yx):
    """Screenshot pixel (row, col) of a world point (um) in a 2D view."""
    h, w = shot.shape[:2]
    camera = v.scene.camera if hasattr(v, "scene") else v.camera  # napari 0.9 moved it
    cy, cx = camera.center[-2:]
    z = camera.zoom
    return int(round(h / 2 + (world_yx[0] - cy) * z)), int(round(w / 2 + (world_yx[1] - cx) * z))


def _interior_voxels(labels2d, code, n=3):
    """Voxels of ``code`` whose 3x3 neighbourhood is all ``code`` (free of edge blending);
    isolated single voxels (vessels) when there are none."""
    m = labels2d == code
    inner = m.copy()
    inner[1:-1, 1:-1] &= (
        m[:-2, 1:-1]
        & m[2:, 1:-1]
        & m[1:-1, :-2]
        & m[1:-1, 2:]
        & m[:-2, :-2]
        & m[2:, 2:]
        & m[:-2, 2:]
        & m[2:, :-2]
    )
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    ys, xs = np.nonzero(inner if inner.any() else m)
    return list(zip(ys[:n], xs[:n]))


def test_npe2_open_and_screenshot_colours(runs, viewer):
    v = viewer(show=True)
    path = str(runs["2d"])
    layers = v.open(path, plugin="tmesim")  # the `napari run.h5` path, through npe2
    assert [ly.name for ly in layers][-2:] == ["kind", "tumor state"]
    assert v.dims.ndim == 3
    with h5py.File(path, "r") as f:
        kind = f["snapshots/kind"][-1]
        state = f["snapshots/tumor_state"][-1]
        kind_names = [
            n.decode() if isinstance(n, bytes) else n for n in f["snapshots/kind"].attrs["names"]
        ]
    v.dims.set_current_step(0, 3)
    v.window.resize(1200, 900)
    for ly in v.layers:
        ly.visible = ly.name in ("kind", "tumor state")
    v.reset_view()
    shot = v.screenshot(canvas_only=True, flash=False)
    checked = 0
    # tumor voxels show their state's colour (the state layer is on top), vessels their kind's
    for y, x in _interior_voxels(state, 1):
        r, c = _canvas_pixel(v, shot, ((y + 0.5) * 20, (x + 0.5) * 20))
        assert np.abs(shot[r, c, :3].astype(int) - STATE_RGB["S"]).max() <= 2, (y, x)
        checked += 1
    for y, x in _interior_voxels(kind, kind_names.index("vessel")):
        r, c = _canvas_pixel(v, shot, ((y + 0.5) * 20, (x + 0.5) * 20))
        assert np.abs(shot[r, c, :3].astype(int) - KIND_RGB["vessel"]).max() <= 2, (y, x)
        checked += 1
    assert checked >= 4
    # with the state layer hidden, tumor voxels show the kind colour
    v.layers["tumor state"].visible = False
    shot = v.screenshot(canvas_only=True, flash=False)
    ((y, x),) = _interior_voxels(kind, kind_names.index("tumor"), n=1)
    r, c = _canvas_pixel(v, shot, ((y + 0.5) * 20, (x + 0.5) * 20))
    assert np.abs(shot[r, c, :3].astype(int) - KIND_RGB["tumor"]).max() <= 2


def test_time_slider_changes_the_view_and_the_marker(runs, viewer):
    from tmesim_napari._qt.explorer import RunExplorer, _text_overlay

    v = viewer(show=True)
    path = str(runs["2d"])
    v.open(path, plugin="tmesim")
    explorer = RunExplorer(v)  # opened after the layers: finds the run
    v.window.add_dock_widget(explorer)
    assert explorer.path == str(Path(path).resolve())
    for ly in v.layers:
        ly.visible = ly.name == "tumor state"
    v.reset_view()
    with h5py.File(path, "r") as f:
        n_tumor = (f["snapshots/tumor_state"][:] > 0).reshape(4, -1).sum(axis=1)
    assert n_tumor[-1] > n_tumor[0], "the fixture's tumor grows"
    sky = np.array(STATE_RGB["S"])
    counts = []
    for i in (0, 3):
        v.dims.set_current_step(0, i)
        shot = v.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
        counts.append(int((np.abs(shot - sky).max(axis=-1) <= 2).sum()))
        assert explorer.snapshot_index == i
        assert explorer.marker_time_h == pytest.approx(2.0 * i)
        assert explorer._markers[0].get_xdata()[0] == pytest.approx(2.0 * i)
        assert _text_overlay(v).text == f"t = {2.0 * i:.1f} h"
    # pixels of the S colour scale with the number of S cells shown
    assert counts[1] / counts[0] == pytest.approx(n_tumor[-1] / n_tumor[0], rel=0.05)
    # the plot carries the run's columns
    assert np.array_equal(explorer.columns["n_S"], h5py.File(path, "r")["timeseries/n_S"][:])
    names = {e[1] for e in explorer.events}
    assert {"start"} <= names


def test_view_run_follows_a_run_being_written(tmp_path, viewer, qtbot):
    """``tmesim view`` on a run another process is still writing, then refresh."""
    scen = tmp_path / "live.toml"
    scen.write_text(tiny_2d("run.name=live"))
    out = tmp_path / "live.h5"
    gate = tmp_path / "go"
    # a writer that holds after its first snapshots until the test lets it go on
    proc = start_gated_run(scen, out, gate)
    try:
        v = tmesim_napari.view_run(out, show=False, block=False, refresh_s=0.2)
        qtbot.waitUntil(lambda: True)
        made = v
        explorer = v.window.dock_widgets["tmesim run"]
        assert explorer.following, "a running run is followed by default"
        assert v.layers["kind"].data.shape[0] == 2
        assert v.layers["kind"].metadata["tmesim"]["status"] == "running"
        assert explorer.snapshot_index == 1
        gate.touch()
        assert proc.wait(timeout=60) == 0
        qtbot.waitUntil(lambda: not explorer.following, timeout=10000)
        assert v.layers["kind"].data.shape[0] == 4
        assert v.layers["kind"].metadata["tmesim"]["status"] == "finished"
        assert explorer.snapshot_index == 3, "the slider followed to the last snapshot"
        with h5py.File(out, "r") as f:
            assert np.array_equal(v.layers["kind"].data[3].compute(), f["snapshots/kind"][3])
            assert len(explorer.columns["n_S"]) == f["timeseries/n_S"].shape[0] == 61
    finally:
        gate.touch()
        proc.wait(timeout=60)
        if "made" in locals():
            made.close()


def test_view_run_3d_opens_as_volumes(runs, viewer):
    v = tmesim_napari.view_run(runs["3d"], show=False, block=False)
    try:
        assert v.dims.ndisplay == 3
        assert v.dims.ndim == 4
        assert v.layers["kind"].data.shape == (3, 12, 14, 16)
        assert v.dims.current_step[0] == 2
    finally:
        v.close()


# ---------------------------------------------------------------------------- interactive
def _scenario_with_drug(tmp_path) -> Path:
    scen = tmp_path / "interactive.toml"
    scen.write_text(tiny_2d("run.duration_days=0.1"))
    return scen


def test_prefilled_overrides(tmp_path):
    from tmesim_napari._qt.runner import default_overrides, parse_overrides

    scen = _scenario_with_drug(tmp_path)
    lines = default_overrides(scen)
    assert lines[:3] == ["run.duration_days=0.1", "run.seed=5", "run.snapshot_every_hours=2.0"]
    text = "\n".join(lines) + "\n# a comment\n\nrun.seed = 9\n"
    sc = tmesim.load_scenario(scen, overrides=parse_overrides(text))
    assert sc.run.seed == 9 and sc.run.duration_days == 0.1
    drug = tmp_path / "drug.toml"
    drug.write_text(
        tiny_2d(
            extra=textwrap.dedent("""
        [drugs.erlotinib]
        preset = "egfr_tki"
        schedule = { kind = "intermittent", dose_uM = 2.0, on_days = 1, off_days = 2 }
    """)
        )
    )
    try:
        drug_lines = default_overrides(drug)
    except tmesim.ScenarioError as exc:
        if "no such key" not in str(exc):
            raise
        pytest.skip(f"this tmesim has no [drugs] section yet ({exc})")
    assert 'drugs.erlotinib.schedule.kind="intermittent"' in drug_lines
    assert "drugs.erlotinib.schedule.dose_uM=2.0" in drug_lines


def test_interactive_run_to_completion(tmp_path, viewer, qtbot):
    from tmesim_napari._qt.runner import ScenarioRunner

    v = viewer()
    out = tmp_path / "interactive.h5"
    runner = ScenarioRunner(v, scenario=_scenario_with_drug(tmp_path), output=out)
    text = runner.overrides_edit.toPlainText().replace("run.seed=5", "run.seed=8")
    runner.overrides_edit.setPlainText(text)
    assert runner.start()
    qtbot.waitUntil(lambda: runner.result is not None or runner.error is not None, timeout=60000)
    assert runner.error is None
    assert runner.result["status"] == "finished" and runner.result["steps"] == 24
    with h5py.File(out, "r") as f:
        assert status_in(f) == "finished"
        assert f.attrs["seed"] == 8
        T = f["snapshots/kind"].shape[0]
        last = f["snapshots/kind"][-1]
    assert T == 3  # 0, 2 and 2.4 h (the end)
    assert v.layers["kind"].data.shape[0] == T
    assert np.array_equal(v.layers["kind"].data[-1].compute(), last)
    assert runner.updates >= 2, "the layers were updated while the run went on"
    assert runner.explorer is not None and len(runner.explorer.columns["n_S"]) == 25


def test_interactive_pause_and_stop(tmp_path, viewer, qtbot):
    from tmesim_napari._qt.runner import STOP_REASON, ScenarioRunner

    v = viewer()
    out = tmp_path / "stopped.h5"
    scen = tmp_path / "long.toml"
    scen.write_text(TINY_2D)
    runner = ScenarioRunner(v, scenario=scen, output=out)
    runner.overrides_edit.setPlainText("run.duration_days=20\nrun.snapshot_every_hours=1")
    assert runner.start()
    qtbot.waitUntil(lambda: runner.updates >= 1, timeout=30000)
    runner.toggle_pause()
    qtbot.waitUntil(lambda: runner.link.paused_at_step is not None, timeout=10000)
    held = runner.link.paused_at_step
    qtbot.wait(300)
    assert runner.link.paused_at_step == held, "no step while paused"
    runner.toggle_pause()
    qtbot.waitUntil(lambda: runner.link.paused_at_step is None, timeout=10000)
    runner.stop()
    qtbot.waitUntil(lambda: runner.result is not None or runner.error is not None, timeout=30000)
    assert runner.error is None
    assert runner.result["status"] == "stopped" and runner.result["steps"] < 4800
    with h5py.File(out, "r") as f:
        assert status_in(f) == "stopped"
        kinds = [k.decode() if isinstance(k, bytes) else k for k in f["events/kind"][:]]
        assert kinds[-1] == "stop" and STOP_REASON in f["events/detail"][-1].decode()


def test_interactive_bad_override_is_reported(tmp_path, viewer):
    from tmesim_napari._qt.runner import ScenarioRunner

    v = viewer()
    runner = ScenarioRunner(v, scenario=_scenario_with_drug(tmp_path), output=tmp_path / "x.h5")
    runner.overrides_edit.setPlainText("grid.dx_um=-5")
    assert not runner.start()
    assert "grid.dx_um" in runner.status.text()
    assert not (tmp_path / "x.h5").exists()
