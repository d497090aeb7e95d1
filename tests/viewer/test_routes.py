"""Every route a user takes into napari with a run, taken as the user takes it (issue 19).

- ``napari run.h5`` (the real command, in a process of its own) and napari's own choice of reader
  (``viewer.open(path, plugin=None)``, File > Open): napari's builtin reader claims ``*.h5`` too;
  tmesim makes itself napari's reader for HDF5 where nobody else is (tmesim_napari._reader_choice);
- Plugins > tmesim > Run explorer / Interactive run, through the Plugins menu's own actions and
  ``window.add_plugin_dock_widget``;
- field roles (drug, HGF, IGF-1, signal) with and without the datasets' ``role`` attribute,
  against the roles of the run's own scenario;
- Follow on a run another process is writing, the view opened as napari opens files;
- a second interactive run in the same viewer.

Real napari under Xvfb (pytest-xvfb), real run files and processes; no mocks. napari's settings are
the tests' own (conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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
        "no X display: napari's canvas needs one (install Xvfb; pytest-xvfb starts it)",
        allow_module_level=True,
    )

import tmesim  # noqa: E402
from tmesim_napari import read_info, read_run  # noqa: E402
from tmesim_napari._reader_choice import claim_hdf5  # noqa: E402

from ..helpers import restamp_text_digest, scenario_text  # noqa: E402
from .live import start_gated_run  # noqa: E402

HERE = Path(__file__).resolve().parent

#: colormap of each field role, as the viewer documents it (tmesim_napari._style), spelled out
ROLE_COLORMAP = {"oxygen": "magma", "growth_factor": "green", "signal": "magenta", "drug": "cyan"}

#: CAFs and TAMs (the simulator adds hgf, igf1 and signal for them) and two drugs, listed so that
#: the first drug (osimertinib) is not the first by name
STROMA_AND_DRUGS = scenario_text(
    "run.name=roles",
    "run.seed=4",
    "run.duration_days=0.1",
    "run.snapshot_every_hours=1",
    "grid.shape=[32,36]",
    "init.tumor.radius_um=120",
    extra=textwrap.dedent("""
        [init.caf]
        placement = "shell"
        shell_width_um = 60
        density = 0.3

        [init.tam]
        placement = "random"
        density = 0.02

        [drugs.osimertinib]
        preset = "egfr_tki"
        schedule = { kind = "continuous", dose_uM = 1.0, interval_h = 24 }

        [drugs.capmatinib]
        preset = "met_inhibitor"
        schedule = { kind = "continuous", dose_uM = 2.0, interval_h = 24 }
    """),
)

#: a small 2D run: 60 six-minute steps, a snapshot every 2 h (0, 2, 4, 6 h)
SMALL = scenario_text(
    "run.name=small2d",
    "run.seed=5",
    "run.duration_days=0.25",
    "run.snapshot_every_hours=2",
    "grid.shape=[40,48]",
    "init.vessels.density=0.02",
)


def _run(tmp: Path, text: str, name: str) -> Path:
    scen = tmp / f"{name}.toml"
    scen.write_text(text)
    out = tmp / f"{name}.h5"
    tmesim.Simulation(tmesim.load_scenario(scen)).run(out)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routes")
    return {"small": _run(tmp, SMALL, "small"), "roles": _run(tmp, STROMA_AND_DRUGS, "roles")}


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


def _kind(path, index=-1) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["snapshots/kind"][index]


def _foreign(tmp: Path) -> Path:
    p = tmp / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(10)
    return p


# ----------------------------------------------------------------------------- field roles
def _field_layers(path) -> dict[str, tuple[str, dict]]:
    """{field: (layer name, layer kwargs)} of the reader's field layers, in layer order."""
    out = {}
    for _data, kw, _ in read_run(str(path)):
        meta = kw["metadata"]["tmesim"]
        if "field" in meta:
            out[meta["field"]] = (kw["name"], kw)
    return out


def test_field_roles_with_and_without_the_attribute(files, tmp_path):
    src = files["roles"]
    scen = tmp_path / "roles.toml"
    scen.write_text(STROMA_AND_DRUGS)
    expected = {fc.name: fc.role for fc in tmesim.load_scenario(scen).fields}
    # the scenario these tests rely on: every role, two drugs, the first not the first by name
    assert expected == {
        "oxygen": "oxygen",
        "hgf": "growth_factor",
        "igf1": "growth_factor",
        "signal": "signal",
        "osimertinib": "drug",
        "capmatinib": "drug",
    }
    with_attr = tmp_path / "with_attr.h5"
    without = tmp_path / "without_attr.h5"
    shutil.copy(src, with_attr)
    shutil.copy(src, without)
    with h5py.File(with_attr, "r+") as f:
        for name, ds in f["snapshots/fields"].items():
            # as the writer stores it (where this tmesim's writer already does, unchanged)
            ds.attrs.setdefault("role", expected[name])
        restamp_text_digest(f)
    with h5py.File(without, "r+") as f:
        for ds in f["snapshots/fields"].values():
            if "role" in ds.attrs:
                del ds.attrs["role"]
        restamp_text_digest(f)
    for path in (with_attr, without):
        layers = _field_layers(path)
        assert set(layers) == set(expected), path.name
        for name, (_layer, kw) in layers.items():
            role = expected[name]
            assert kw["metadata"]["tmesim"]["role"] == role, (path.name, name)
            assert kw["colormap"] == ROLE_COLORMAP[role], (path.name, name)
            assert kw["contrast_limits"][0] == 0.0, "concentrations start at 0"
        # shown: oxygen and the scenario's first drug; the rest (the other drug too) hidden
        shown = {name for name, (_, kw) in layers.items() if kw["visible"]}
        assert shown == {"oxygen", "osimertinib"}, path.name
        # bottom to top: oxygen, then the scenario's order (its fields, then its drugs)
        order = list(layers)
        assert order[0] == "oxygen" and order.index("osimertinib") < order.index("capmatinib")
        assert layers["osimertinib"][0] == "osimertinib (uM)"
    # the drug fields hold the drug (the test would pass on empty fields otherwise)
    with h5py.File(src, "r") as f:
        assert f["snapshots/fields/osimertinib"][-1].max() > 0
        assert f["snapshots/fields/capmatinib"][-1].max() > 0

    # the attribute wins over the scenario
    overridden = tmp_path / "overridden.h5"
    shutil.copy(without, overridden)
    with h5py.File(overridden, "r+") as f:
        f["snapshots/fields/capmatinib"].attrs["role"] = "signal"
        restamp_text_digest(f)
    assert _field_layers(overridden)["capmatinib"][1]["colormap"] == ROLE_COLORMAP["signal"]
    # no readable scenario: the known fields by their names, anything else unknown (grey)
    no_scenario = tmp_path / "no_scenario.h5"
    shutil.copy(without, no_scenario)
    with h5py.File(no_scenario, "r+") as f:
        f.attrs["scenario"] = "this is [not toml"
        restamp_text_digest(f)
    layers = _field_layers(no_scenario)
    for name in ("oxygen", "hgf", "igf1", "signal"):
        assert layers[name][1]["colormap"] == ROLE_COLORMAP[expected[name]], name
    assert layers["capmatinib"][1]["metadata"]["tmesim"]["role"] == "unknown"
    assert layers["capmatinib"][1]["colormap"] == "gray"


# ------------------------------------------------------------------ napari's choice of reader
def test_napari_chooses_tmesim_for_a_run(files, viewer, napari_settings, tmp_path):
    from napari.errors import MultipleReaderError, ReaderPluginError

    path = str(files["small"])
    v = viewer()
    # napari's builtin reader claims *.h5 too: with no preference napari cannot choose
    with pytest.raises(MultipleReaderError):
        v.open(path, plugin=None)
    assert claim_hdf5() == ["*.h5", "*.hdf5", "*.hdf"]
    assert napari_settings.plugins.extension2reader == {
        "*.h5": "tmesim",
        "*.hdf5": "tmesim",
        "*.hdf": "tmesim",
    }
    # napari saved the choice in its settings file, where `napari run.h5` will read it
    assert "tmesim" in napari_settings.config_path.read_text()
    layers = v.open(path, plugin=None)  # napari's own choice, no plugin named
    assert [ly.name for ly in layers][-2:] == ["kind", "tumor state"]
    assert np.array_equal(v.layers["kind"].data[-1].compute(), _kind(path))
    assert v.layers["kind"].metadata["tmesim"]["path"] == str(Path(path).resolve())
    # File > Open and drag and drop call this (a dialog only where napari cannot choose)
    v2 = viewer()
    v2.window._qt_viewer._qt_open([path], stack=False)
    assert [ly.name for ly in v2.layers][-2:] == ["kind", "tumor state"]
    # a foreign HDF5 file is refused by tmesim (napari then offers its other readers)
    with pytest.raises(ReaderPluginError):
        v.open(str(_foreign(tmp_path)), plugin=None)
    # a second claim changes nothing
    assert claim_hdf5() == []


def test_the_claim_leaves_other_choices_alone(napari_settings):
    from npe2 import PluginManager, PluginManifest

    napari_settings.plugins.extension2reader = {"*.h5": "napari"}
    # another installed plugin reading *.hdf (a real npe2 registration)
    other = PluginManifest(
        name="other-hdf-reader",
        contributions={
            "commands": [
                {"id": "other-hdf-reader.read", "title": "read", "python_name": "os:getcwd"}
            ],
            "readers": [{"command": "other-hdf-reader.read", "filename_patterns": ["*.hdf"]}],
        },
    )
    pm = PluginManager.instance()
    pm.register(other)
    try:
        assert claim_hdf5() == ["*.hdf5"]
    finally:
        pm.unregister("other-hdf-reader")
    assert napari_settings.plugins.extension2reader == {"*.h5": "napari", "*.hdf5": "tmesim"}


def _napari_cli(path, tmp: Path, settings: Path, choose: str = "") -> dict:
    """Run ``napari path`` (the installed command) with ``settings`` as napari's settings file
    and tests/viewer/cli_probe.py as its startup script; what the probe saw."""
    out = tmp / f"probe-{time.monotonic_ns()}.json"
    env = dict(
        os.environ,
        NAPARI_CONFIG=str(settings),
        TMESIM_PROBE_OUT=str(out),
        TMESIM_PROBE_CHOOSE=choose,
    )
    napari_cmd = shutil.which("napari") or pytest.skip("no napari command on PATH")
    proc = subprocess.run(
        [napari_cmd, str(path)], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists(), f"the probe did not report: {proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def test_napari_command_line(files, tmp_path):
    """``napari run.h5`` as README says, twice from a fresh settings file."""
    path = files["small"]
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"application:\n  startup_script: {HERE / 'cli_probe.py'}\n")
    # a fresh napari asks which reader (its builtin one claims *.h5 too); tmesim is offered
    first = _napari_cli(path, tmp_path, settings, choose="tmesim")
    assert len(first["dialogs"]) == 1 and "tmesim" in first["dialogs"][0]["choices"]
    names = [ly["name"] for ly in first["layers"]]
    assert names[-2:] == ["kind", "tumor state"] and "oxygen (mmHg)" in names
    # used once, tmesim became napari's reader for *.h5 ("Remember" was left unticked)
    assert first["extension2reader"]["*.h5"] == "tmesim"
    # from then on the run opens without a question
    second = _napari_cli(path, tmp_path, settings)
    assert second["dialogs"] == []
    layers = {ly["name"]: ly for ly in second["layers"]}
    assert layers["kind"]["type"] == "Labels" and layers["oxygen (mmHg)"]["type"] == "Image"
    assert layers["kind"]["path"] == str(path.resolve())
    assert layers["kind"]["shape"] == [4, 40, 48]
    assert np.array_equal(np.array(layers["kind"]["last"]), _kind(path))


# ------------------------------------------------------------------------- Plugins menu
def _plugins_menu_action(v, title):
    for action in v.window.plugins_menu.actions():
        if action.menu() is not None and action.text() == "tmesim":
            for sub in action.menu().actions():
                if sub.text() == title:
                    return sub
    raise AssertionError(f"no Plugins > tmesim > {title}")


def test_plugins_menu_run_explorer(files, viewer, qtbot):
    from tmesim_napari._qt.explorer import RunExplorer

    path = str(files["small"])
    v = viewer(show=True)
    v.open(path, plugin="tmesim")
    _plugins_menu_action(v, "Run explorer").trigger()  # what clicking the menu item does
    explorer = v.window.dock_widgets["Run explorer (tmesim)"]
    assert isinstance(explorer, RunExplorer)
    assert explorer.path == str(Path(path).resolve())
    with h5py.File(path, "r") as f:
        assert np.array_equal(explorer.columns["n_S"], f["timeseries/n_S"][:])
    assert {e[1] for e in explorer.legend.entries} >= {"tumor", "vessel", "S"}
    v.dims.set_point(0, 4.0)  # 4 h: the third snapshot
    assert explorer.snapshot_index == 2 and explorer.marker_time_h == pytest.approx(4.0)
    # the same widget through napari's API (which hands widgets a public-only viewer proxy)
    _, again = v.window.add_plugin_dock_widget("tmesim", "Run explorer")
    assert isinstance(again, RunExplorer) and again.path == explorer.path


def _wait_done(runner, qtbot, timeout=60000):
    qtbot.waitUntil(lambda: runner.result is not None or runner.error is not None, timeout=timeout)
    assert runner.error is None, runner.error


def test_plugins_menu_interactive_runs(viewer, qtbot, tmp_path):
    """Plugins > tmesim > Interactive run, two runs in a row: the second replaces the first."""
    from tmesim_napari._qt.runner import ScenarioRunner

    scen = tmp_path / "interactive.toml"
    scen.write_text(SMALL.replace("duration_days = 0.25", "duration_days = 0.1"))
    v = viewer(show=True)
    _plugins_menu_action(v, "Interactive run").trigger()
    runner = v.window.dock_widgets["Interactive run (tmesim)"]
    assert isinstance(runner, ScenarioRunner)
    assert runner.load(scen)
    outs = []
    for seed in (8, 9):
        out = tmp_path / f"run{seed}.h5"
        outs.append(out)
        runner.output_edit.setText(str(out))
        text = runner.overrides_edit.toPlainText()
        runner.overrides_edit.setPlainText(text + f"\nrun.seed={seed}")
        assert runner.start()
        _wait_done(runner, qtbot)
        assert runner.result["status"] == "finished"
        run_layers = [ly for ly in v.layers if "tmesim" in ly.metadata]
        # one run's layers, each name once, all from this run's file
        names = [ly.name for ly in run_layers]
        assert len(names) == len(set(names)) and "kind" in names
        assert {ly.metadata["tmesim"]["path"] for ly in run_layers} == {str(out.resolve())}
        assert np.array_equal(v.layers["kind"].data[-1].compute(), _kind(out))
        assert runner.explorer.path == str(out.resolve())
    assert not np.array_equal(_kind(outs[0]), _kind(outs[1])), "two different runs"
    # the first run's file is still there, to open again
    assert read_info(outs[0]).status == "finished"


def test_add_plugin_dock_widget_interactive_run(viewer, qtbot, tmp_path):
    """The runner through napari's API: napari hands it a public-only proxy of the viewer."""
    from tmesim_napari._qt.runner import ScenarioRunner

    scen = tmp_path / "proxy.toml"
    scen.write_text(SMALL.replace("duration_days = 0.25", "duration_days = 0.05"))
    v = viewer()
    _, runner = v.window.add_plugin_dock_widget("tmesim", "Interactive run")
    assert isinstance(runner, ScenarioRunner)
    assert runner.load(scen)
    runner.output_edit.setText(str(tmp_path / "proxy.h5"))
    assert runner.start()
    _wait_done(runner, qtbot)
    assert np.array_equal(v.layers["kind"].data[-1].compute(), _kind(tmp_path / "proxy.h5"))
    assert "tmesim run" in v.window.dock_widgets


# --------------------------------------------------------------------------------- Follow
def _shown(layer) -> np.ndarray:
    """The 2D slice napari shows of ``layer`` (what the canvas draws)."""
    return np.asarray(layer._slice.image.raw)


def test_follow_shows_the_newest_snapshot(tmp_path, viewer, qtbot):
    """A run opened as napari opens files (slider on the first snapshot), then Follow."""
    scen = tmp_path / "live.toml"
    scen.write_text(SMALL.replace('name = "small2d"', 'name = "live"'))
    out = tmp_path / "live.h5"
    gate = tmp_path / "go"
    # a writer that holds after its first snapshots until the test lets it go on
    proc = start_gated_run(scen, out, gate)
    try:
        v = viewer(show=True)
        v.open(str(out), plugin="tmesim")
        kind, oxygen = v.layers["kind"], v.layers["oxygen (mmHg)"]
        first = _kind_swmr(out, 0)
        assert np.array_equal(_shown(kind), first), "napari opens a file on its first snapshot"
        _, explorer = v.window.add_plugin_dock_widget("tmesim", "Run explorer")
        explorer.timer.setInterval(200)
        explorer.set_follow(True)
        # following shows the newest snapshot at once
        assert explorer.snapshot_index == 1
        assert np.array_equal(_shown(kind), _kind_swmr(out, 1))
        gate.touch()
        assert proc.wait(timeout=60) == 0
        qtbot.waitUntil(lambda: not explorer.following, timeout=15000)
        with h5py.File(out, "r") as f:
            T = f["snapshots/kind"].shape[0]
            last_kind = f["snapshots/kind"][-1]
            last_oxygen = f["snapshots/fields/oxygen"][-1]
        assert T == 4 and kind.data.shape[0] == T
        assert explorer.snapshot_index == T - 1
        assert v.dims.point[0] == pytest.approx(6.0), "the slider is on the newest snapshot (6 h)"
        assert np.array_equal(_shown(kind), last_kind)
        assert np.allclose(_shown(oxygen), last_oxygen)
    finally:
        gate.touch()
        proc.wait(timeout=60)


def _kind_swmr(path, index) -> np.ndarray:
    """Snapshot ``index`` of a file another process is writing."""
    from tmesim.io.runfile import open_run_file

    with open_run_file(str(path)) as f:
        return f["snapshots/kind"][index]
