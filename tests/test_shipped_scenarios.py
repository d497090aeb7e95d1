"""The shipped scenarios do what their comments say.

README's first command runs scenarios/quickstart_2d.toml; its comments promise the persister
story (growth, fast kill, persisters left at the CAF niche, regrowth off drug). The run here is the
shipped file as it is, on the CPU, read back through ``tmesim.open_run`` as a user reads it. The
thresholds come from the biology the comments state (kill rates, the calibrated entry rates, the
CAF ring), with margins, not from the run's own numbers.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import tmesim
from tmesim import codes
from tmesim.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart_2d.toml"
PC9 = ROOT / "scenarios" / "pc9_erlotinib_caf_2d.toml"

#: one-sided significance for "enriched near CAFs". Cells of one lineage sit together, so counts
#: of neighbours are not independent draws: the binomial test overstates significance, hence a
#: strict level
ENRICHED_ALPHA = 1e-3


def _run(tmp_path_factory, scenario: Path, name: str) -> tuple[dict, float]:
    """Run ``scenario`` as README does (``tmesim run``, CPU) and return its time series as
    {column: array} with ``day`` added, and the CPU seconds the run took."""
    out = tmp_path_factory.mktemp(name) / f"{name}.h5"
    cpu0 = time.process_time()
    assert main(["run", str(scenario), "-o", str(out), "--backend", "cpu", "-q"]) == 0
    cpu = time.process_time() - cpu0
    with tmesim.open_run(out) as ds:
        rows = ds["burden"].dims  # the time-series dimension, whatever its name
        cols = {
            str(k): np.asarray(ds[k].values)
            for k in [*ds.data_vars, *ds.coords]
            if ds[k].dims == rows and ds[k].dtype.kind in "fiu"
        }
    cols["day"] = cols["time_min"] / 1440.0
    return cols, cpu


def _at(ts: dict, day: float) -> int:
    """Index of the first row at or after ``day``."""
    return int(np.searchsorted(ts["day"], day - 1e-9))


def _near_caf_counts(ts: dict, i: int, who: str) -> tuple[int, int]:
    """(cells within 100 um of a CAF, cells) at row ``i`` for ``who`` = tumor or persisters."""
    if who == "tumor":
        n = int(ts["burden"][i])
        return round(ts["tumor_near_caf_fraction"][i] * n), n
    n = int(ts["n_P"][i] + ts["n_E"][i])
    return round(ts["persisters_near_caf_fraction"][i] * n), n


def _enrichment_p(k: int, n: int, p0: float) -> float:
    """One-sided binomial P(X >= k) for n cells placed like the tumor at treatment start."""
    return float(stats.binom.sf(k - 1, n, p0))


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    sc = tmesim.load_scenario(QUICKSTART)
    sch = sc.drug("erlotinib").schedule
    ts, cpu = _run(tmp_path_factory, QUICKSTART, "quickstart")
    return ts, cpu, sch.start_day, sch.stop_day


def test_quickstart_runs_in_under_a_minute(quickstart):
    """README: the first command takes under a minute on the CPU (CPU time, not wall time, which
    depends on what else the machine runs)."""
    _, cpu, _, _ = quickstart
    assert cpu < 60.0, f"{cpu:.1f} s of CPU time"


def test_quickstart_grows_then_treatment_kills_fast(quickstart):
    """Days 0-3 the tumor grows; under erlotinib (kill_S 0.06/h at full effect, about 0.05/h at
    the free steady-state level) unprotected sensitive cells halve in about 14 h, so 2 days of
    drug remove well over 40 % of the tumor even with a third of it protected by the CAF ring,
    and the nadir is under 15 % of the tumor at treatment start (the comment says 8 %)."""
    ts, _, start, stop = quickstart
    b = ts["burden"]
    i0 = _at(ts, start)
    assert b[i0] > 1.05 * b[0], (b[0], b[i0])  # it grows before treatment
    assert b[_at(ts, start + 2)] < 0.6 * b[i0], (b[i0], b[_at(ts, start + 2)])
    nadir = int(np.argmin(b))
    assert ts["day"][nadir] > stop - 1, ts["day"][nadir]  # the drug lingers past its last dose
    assert b[nadir] < 0.15 * b[i0], (b[i0], b[nadir])
    # hypoxic regions between the vessels before treatment, gone as the tumor thins; no necrosis
    assert ts["hypoxic_fraction"][i0] > 0.3
    assert ts["hypoxic_fraction"][nadir] < 0.05
    assert ts["n_necrotic"].max() == 0
    assert ts["n_R"].max() == 0  # P -> R takes months at the default rate


def test_quickstart_leaves_persisters_at_the_nadir(quickstart):
    """Before treatment persisters are the basal pool (calibrated to about 0.1 %, under 1 %);
    at the nadir they are a large share of what is left: at least 20 % of the tumor and at least
    20x their pre-treatment fraction."""
    ts, _, start, _ = quickstart
    i0, nadir = _at(ts, start), int(np.argmin(ts["burden"]))
    before, after = ts["persister_fraction"][i0], ts["persister_fraction"][nadir]
    assert before < 0.01, before
    assert after > 0.2 and after > 20 * before, (before, after)
    assert ts["n_P"][nadir] + ts["n_E"][nadir] >= 30  # a population, not a handful


def test_quickstart_survivors_sit_at_the_caf_niche(quickstart):
    """HGF from the CAF ring protects sensitive cells and raises entry into persistence, so the
    cells left at the nadir, and the persisters among them, are within 100 um of a CAF more
    often than the tumor was when treatment started (one-sided binomial against that fraction)."""
    ts, _, start, _ = quickstart
    i0, nadir = _at(ts, start), int(np.argmin(ts["burden"]))
    p0 = float(ts["tumor_near_caf_fraction"][i0])
    assert 0.1 < p0 < 0.6, p0  # the ring touches part of the tumor, not all of it
    k, n = _near_caf_counts(ts, nadir, "tumor")
    assert k / n > p0 and _enrichment_p(k, n, p0) < ENRICHED_ALPHA, (k, n, p0)
    k, n = _near_caf_counts(ts, nadir, "persisters")
    assert k / n > p0 and _enrichment_p(k, n, p0) < ENRICHED_ALPHA, (k, n, p0)


def test_quickstart_regrows_after_the_drug_stops(quickstart):
    """Off drug the survivors regrow: the protected sensitive cells divide at once (doubling
    24 h, slowed by the crowd) and persisters revert over days, so the last day's burden is at
    least 1.5x the nadir's, the new cells sensitive ones, and the persisters fewer."""
    ts, _, _, _ = quickstart
    nadir = int(np.argmin(ts["burden"]))
    assert ts["burden"][-1] > 1.5 * ts["burden"][nadir], (ts["burden"][nadir], ts["burden"][-1])
    assert ts["n_S"][-1] > 2 * ts["n_S"][nadir]
    assert ts["n_P"][-1] < ts["n_P"][nadir]


@pytest.mark.slow
def test_pc9_shows_what_its_comments_say(tmp_path_factory):
    """scenarios/pc9_erlotinib_caf_2d.toml (about 4 minutes of CPU time), each point of its
    comments: growth to day 3 with a hypoxic half and no necrosis; erlotinib at clinical exposure
    removes at least 95 % of the tumor by day 10 (kill_S about 0.05/h for a week); about a dozen
    persisters (the calibrated 0.3 % plateau of 2,000 cells, plus the pre-existing 0.3 %), half
    the cells left; the HGF-protected cells left sit near the CAF shell more often than the
    tumor did at day 3; TAMs decline; no resistance."""
    ts, _ = _run(tmp_path_factory, PC9, "pc9")
    sch = tmesim.load_scenario(PC9).drug("erlotinib").schedule
    b = ts["burden"]
    i0 = _at(ts, sch.start_day)
    assert b[i0] > 1.05 * b[0]
    assert ts["hypoxic_fraction"][i0] > 0.3 and ts["n_necrotic"].max() == 0
    assert ts["hypoxic_fraction"][_at(ts, sch.start_day + 2)] < 0.05
    assert b[-1] < 0.05 * b[i0], (b[i0], b[-1])
    n_pers = ts["n_P"][_at(ts, sch.start_day + 2) :] + ts["n_E"][_at(ts, sch.start_day + 2) :]
    assert n_pers.min() >= 3 and n_pers.max() <= 40, n_pers  # about a dozen
    assert ts["persister_fraction"][-1] > 0.3
    p0 = float(ts["tumor_near_caf_fraction"][i0])
    k, n = _near_caf_counts(ts, _at(ts, sch.start_day + 4), "tumor")
    assert k / n > p0 and _enrichment_p(k, n, p0) < ENRICHED_ALPHA, (k, n, p0)
    assert ts["n_tam"][-1] < 0.7 * ts["n_tam"][0]
    assert ts["n_R"].max() == 0


@pytest.mark.slow
def test_spheroid_cores_appear_where_its_comments_put_them(tmp_path_factory):
    """scenarios/spheroid_3d.toml with 30-minute steps (about 2.5 CPU minutes instead of 6; the
    oxygen field is solved implicitly and every cell rate is under 0.2/h, so the onsets move by
    under a few hours): its comments derive, for a sphere in a 38 mmHg bath with a diffusion
    length of 100 um, a hypoxic centre beyond a radius of about 255 um and a necrotic one beyond
    about 410 um. The run shows the first hypoxic cells and the first necrotic voxels at those
    radii (within 10 %, radii of the sphere of the same volume), the hypoxic core first, and the
    spheroid still clear of the cube's faces when the run ends."""
    path = tmp_path_factory.mktemp("spheroid") / "spheroid.h5"
    sc = tmesim.load_scenario(ROOT / "scenarios" / "spheroid_3d.toml", overrides=["run.dt_min=30"])
    tmesim.Simulation(sc, backend="cpu").run(path)
    with tmesim.open_run(path) as ds:
        burden, necrotic = ds["burden"].values, ds["n_necrotic"].values
        hypoxic = ds["hypoxic_fraction"].values
        kind = ds["kind"][-1].values  # the last snapshot is the run's end
    volume_um3 = (burden + necrotic) * sc.grid.dx_um**3
    radius = (3 * volume_um3 / (4 * np.pi)) ** (1 / 3)
    first_hyp, first_nec = int(np.argmax(hypoxic > 0)), int(np.argmax(necrotic > 0))
    assert hypoxic[first_hyp] > 0 and necrotic[first_nec] > 0
    assert first_hyp < first_nec
    assert abs(radius[first_hyp] / 255 - 1) < 0.1, radius[first_hyp]
    assert abs(radius[first_nec] / 410 - 1) < 0.1, radius[first_nec]
    faces = [kind[0], kind[-1], kind[:, 0], kind[:, -1], kind[:, :, 0], kind[:, :, -1]]
    assert not any(np.isin(f, [codes.TUMOR, codes.NECROTIC]).any() for f in faces)
