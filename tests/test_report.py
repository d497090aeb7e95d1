"""Report figures of a run with drugs and stroma: exposure shading and the persister maps."""

import tmesim
from tmesim.report import make_report, shade_exposure

from .helpers import make_scenario

#: the small scenario's tables beside which the report needs CAFs and a drug
CAF_AND_DRUG = """
[init.caf]
placement = "shell"
density = 0.3
[drugs.erlotinib]
preset = "egfr_tki"
transport = "uniform"
schedule = { kind = "doses", times_h = [6, 12], doses_uM = [2.0, 0.0] }
"""


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
