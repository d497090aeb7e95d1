"""Report figures of a run with drugs and stroma: exposure shading and the persister maps."""

import tmesim
from tmesim.report import make_report, shade_exposure

from .helpers import CAF_AND_DRUG, make_scenario


def test_report_shades_exposure_and_maps_persisters(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = make_scenario(
        "run.seed=3",
        "grid.shape=[40,40]",
        "init.tumor.radius_um=200",
        "init.tumor.persister_fraction=0.05",
        drop=("run.name", "init.vessels"),
        extra=CAF_AND_DRUG,
    )
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "r.h5")
    written, table = make_report(path, tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["r_maps.png", "r_persisters.png", "r_population.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
    assert "persisters" in table and "erlotinib plasma" in table
    # the shaded band is exactly the period with drug in plasma: [6 h, 12 h) in step times
    with tmesim.open_run(path) as ds:
        t_days = ds["step_time_h"].values / 24.0
        fig, ax = plt.subplots()
        shade_exposure(ax, ds, t_days, ["erlotinib"])
        on = t_days[ds["plasma_erlotinib"].values > 0]
    assert len(ax.patches) == 1
    ext = ax.patches[0].get_extents()  # display units: map back to data
    x0, x1 = ax.transData.inverted().transform([[ext.x0, 0], [ext.x1, 0]])[:, 0]
    # the band runs from the first step with drug to the first step without
    assert abs(x0 - on.min()) < 1e-6 and abs(x1 - (on.max() + 0.1 / 24)) < 1e-6
    assert abs(on.min() - 6.0 / 24) < 1e-9 and abs(on.max() - 11.9 / 24) < 1e-9
    plt.close(fig)


# ----------------------------------------------------------------- colours, scales, panels
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tmesim import colors, report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def caf_run(tmp_path_factory):
    """The CAF-and-drug run above, once for the tests below (about 10 s): erlotinib only
    between 6 h and 12 h, so it is 0 at the default snapshots (0, 12, 24 h)."""
    sc = make_scenario(
        "run.seed=3",
        "grid.shape=[40,40]",
        "init.tumor.radius_um=200",
        "init.tumor.persister_fraction=0.05",
        drop=("run.name", "init.vessels"),
        extra=CAF_AND_DRUG,
    )
    return tmesim.Simulation(sc, backend="cpu").run(tmp_path_factory.mktemp("caf") / "r.h5")


@pytest.fixture(scope="module")
def caf_figures(caf_run):
    """The snapshots shown and the report's figures of caf_run, drawn once (read only)."""
    return _figures(caf_run)


def _figures(path):
    import matplotlib

    matplotlib.use("Agg")
    with tmesim.open_run(path) as ds:
        idx = report.snapshot_indices(ds)
        figs = {
            "population": report.population_figure(ds),
            "maps": report.maps_figure(ds, idx),
            "persisters": report.persister_figure(ds, idx),
        }
    for f in figs.values():
        f.canvas.draw()
    return idx, figs


def _caption(fig) -> str:
    found = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "caption")
    return found[0].get_text() if found else ""


def test_each_field_has_one_colour_scale_over_the_times_shown(caf_run, caf_figures):
    """Every image of a field has vmin/vmax equal to the min/max over all the snapshots shown,
    read from the file with h5py (not through the reader the report uses)."""
    idx, figs = caf_figures
    with h5py.File(caf_run, "r") as f:
        snap = {n: f["snapshots/fields"][n][idx] for n in f["snapshots/fields"]}
        snap["memory"] = f["snapshots/memory"][idx]
    seen = set()
    for ax in figs["maps"].axes:
        for im in ax.get_images():
            name = im.get_gid()
            if name is None:  # the occupants
                continue
            seen.add(name)
            assert im.norm.vmin == pytest.approx(float(snap[name].min()), rel=1e-6), name
            assert im.norm.vmax == pytest.approx(float(snap[name].max()), rel=1e-6), name
    # every field with a non-zero value somewhere has a row; those all zero have none
    assert seen == {n for n, v in snap.items() if np.any(v != 0)}
    assert "erlotinib" not in seen and np.all(snap["erlotinib"] == 0)


def test_all_zero_panels_are_left_out_and_named_in_the_caption(caf_run, caf_figures):
    """erlotinib (0 at every snapshot shown: dosed between two of them) gets no row; memory and
    HGF are 0 everywhere at t = 0 h (no panel there); the caption says both. The hypoxic
    fraction is not 0 and keeps its panel."""
    idx, figs = caf_figures
    with h5py.File(caf_run, "r") as f:
        t_h = f["snapshots/time"][idx] / 60.0
        zero_at = {
            n: [f"{t:.0f} h" for t, v in zip(t_h, f["snapshots/fields"][n][idx]) if not v.any()]
            for n in f["snapshots/fields"]
        }
    cap = _caption(figs["maps"])
    assert "erlotinib (0 everywhere at every time shown)" in cap
    assert zero_at["hgf"] == ["0 h"] and "hgf at 0 h (0 everywhere)" in cap
    titles = [a.get_title() for a in figs["maps"].axes]
    assert not any(t.startswith("hgf") and "t = 0 h" in t for t in titles)
    assert sum(t.startswith("hgf") for t in titles) == len(idx) - 1
    pop_titles = [a.get_title() for a in figs["population"].axes]
    assert "hypoxic fraction" in pop_titles and "hypoxic fraction" not in _caption(
        figs["population"]
    )


def test_legends_lie_outside_the_data(caf_run, caf_figures):
    """No legend of any report figure overlaps the data area (axes) it belongs to."""
    _, figs = caf_figures
    n = 0
    for fig in figs.values():
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is None:
                continue
            n += 1
            a, b = leg.get_window_extent(), ax.get_window_extent()
            assert a.x0 >= b.x1 - 1 or a.x1 <= b.x0 + 1 or a.y0 >= b.y1 - 1 or a.y1 <= b.y0 + 1
    assert n >= 5  # populations, fields, drugs, near CAFs, hypoxia, occupants, states


def _readme_colours() -> dict[str, str]:
    """The viewer colours README documents: 'tumor orange `#e69f00`, CAF green ...'."""
    text = (ROOT / "README.md").read_text()
    line = text[text.index("labels in fixed colours") :]
    line = line[: line.index("(the state layer")]
    found = dict(
        (name.lower(), col.lower())
        for name, col in re.findall(r"(\w+) [\w ]*?`(#[0-9a-fA-F]{6})`", line)
    )
    return found


def test_kind_and_state_colours_are_the_viewers_and_readmes(caf_run, caf_figures):
    """The legend patch of each kind and state in the figures has colors.py's colour, which is
    the one README documents for the napari viewer (and the viewer's own table)."""
    from matplotlib.colors import to_hex

    readme = _readme_colours()
    assert {"tumor", "caf", "tam", "vessel", "necrotic", "s", "p", "r"} <= set(readme)
    for k in ("tumor", "caf", "tam", "vessel", "necrotic"):
        assert colors.KIND_COLORS[k] == readme[k]
    for s in ("S", "P", "R"):
        assert colors.TUMOR_STATE_COLORS[s] == readme[s.lower()]
    _, figs = caf_figures
    for name, fig in (("maps", figs["maps"]), ("persisters", figs["persisters"])):
        (leg,) = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        patches = {
            t.get_text().split(" (")[0]: to_hex(h.get_facecolor())
            for t, h in zip(leg.get_texts(), leg.get_patches())
        }
        for k in ("tumor", "caf", "tam", "vessel", "necrotic"):
            if name == "maps" or k != "tumor":  # the state map shows tumor cells by state
                assert patches[k] == readme[k], (name, k)
        if name == "persisters":
            for s, label in (("S", "sensitive"), ("P", "persister"), ("R", "resistant")):
                assert patches[label] == readme[s.lower()]
            assert patches["expanded persister"] == colors.TUMOR_STATE_COLORS["E"]
    style = pytest.importorskip("tmesim_napari._style")
    assert style.KIND_COLORS == colors.KIND_COLORS
    assert style.TUMOR_STATE_COLORS == colors.TUMOR_STATE_COLORS


def test_near_caf_persister_fraction_is_plotted(caf_run, caf_figures):
    """The population figure draws persisters_near_caf_fraction, as the file holds it."""
    _, figs = caf_figures
    with h5py.File(caf_run, "r") as f:
        want = f["timeseries/persisters_near_caf_fraction"][:]
        t_days = f["timeseries/time_min"][:] / 1440.0
    (line,) = figs["population"].findobj(
        lambda a: getattr(a, "get_gid", lambda: None)() == "persisters_near_caf_fraction"
    )
    np.testing.assert_allclose(line.get_ydata(), want)
    np.testing.assert_allclose(line.get_xdata(), t_days)
    assert want.max() > 0


def test_validation_run_has_a_kill_curve_beside_the_published_point(tmp_path, caf_run):
    """A run of scenarios/validation/sharma_biphasic.toml (on a small dish, 2 days) is
    recognised by its name: the report adds <run>_kill.png, whose curve is burden / burden at
    day 1 (the drug's start) against days of drug, and whose published point is Sharma's 0.3 %
    after 9 days. Another run has no kill figure."""
    import matplotlib

    matplotlib.use("Agg")
    from tmesim.simulation import run_scenario

    path = run_scenario(
        ROOT / "scenarios" / "validation" / "sharma_biphasic.toml",
        ["grid.shape=[30, 30]", "init.tumor.size_um=[600, 600]", "run.duration_days=2"],
        out=tmp_path / "b.h5",
    ).path
    written, _ = make_report(path, tmp_path)
    assert tmp_path / "b_kill.png" in written
    with h5py.File(path, "r") as f:
        day = f["timeseries/time_min"][:] / 1440.0
        burden = f["timeseries/burden"][:].astype(float)
    i0 = int(np.argmin(np.abs(day - 1.0)))
    with tmesim.open_run(path) as ds:
        fig = report.kill_figure(ds)
    (kill,) = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "kill")
    np.testing.assert_allclose(kill.get_xdata(), day[i0:] - day[i0])
    np.testing.assert_allclose(kill.get_ydata(), burden[i0:] / burden[i0])
    assert kill.get_ydata()[-1] < 0.5  # a day of 2 uM erlotinib kills most cells
    (pub,) = fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "published")
    x, y = pub.get_xdata(), pub.get_ydata()
    assert list(x) == [9.0] and list(y) == [0.003]
    with tmesim.open_run(caf_run) as ds:
        assert report.kill_figure(ds) is None


def test_the_band_shows_when_the_drug_acts_not_when_any_is_left(tmp_path):
    """A bolus with a 36 h half-life lingers in plasma to the end of the run, but acts only
    while the free drug at the cells (plasma x unbound fraction, uniform transport) is at or
    above its EC50: the band ends when that falls below, well before the run ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ec50, unbound = 0.05, 0.05
    sc = make_scenario(
        "run.seed=3",
        "run.duration_days=3",
        "grid.shape=[24,24]",
        drop=("run.name", "init.vessels"),
        extra=f"""
[drugs.erlotinib]
preset = "egfr_tki"
transport = "uniform"
half_life_h = 36
unbound_fraction = {unbound}
schedule = {{ kind = "doses", times_h = [6], doses_uM = [2.0] }}
effects.kill_S = {{ ec50_uM = {ec50}, rate_per_h = 0.06 }}
effects.block_division = {{ ec50_uM = 0.5 }}
""",
    )
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "b.h5")
    with tmesim.open_run(path) as ds:
        t_h = ds["step_time_h"].values
        plasma = ds["plasma_erlotinib"].values
        fig, ax = plt.subplots()
        shade_exposure(ax, ds, t_h / 24.0, ["erlotinib"])
    # independently: 2 uM x 0.05 = 0.1 uM free halves to 0.05 (the lowest EC50) in one half-life
    assert plasma[-1] > 0
    assert len(ax.patches) == 1 and ax.get_legend_handles_labels()[1] == ["erlotinib above EC50"]
    ext = ax.patches[0].get_extents()
    x0, x1 = ax.transData.inverted().transform([[ext.x0, 0], [ext.x1, 0]])[:, 0] * 24.0
    assert abs(x0 - 6.0) < 0.2 and abs(x1 - (6.0 + 36.0)) < 0.3
    plt.close(fig)
