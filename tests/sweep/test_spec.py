"""The sweep file (tmesim.sweep.spec): grid, Latin hypercube and seeds expanded into runs, each
run's scenario carrying its values; mistakes named in one line, exit 2."""

import numpy as np
import pytest

import tmesim
from tmesim import sweep as sw
from tmesim.cli import main

from ..helpers import write_sweep


def test_sweep_file_grid_lhs_seeds(tmp_path):
    p = write_sweep(
        tmp_path,
        diff='{start = 1e4, stop = 1e6, num = 3, scale = "log"}',
        extra="""
[latin_hypercube]
samples = 5
seed = 3
"tumor.necrosis_max_rate_per_h" = {min = 0.1, max = 0.6}
"fields.oxygen.decay_per_min" = {min = 0.01, max = 1.0, scale = "log"}
""",
    )
    spec = sw.load_sweep(p)
    np.testing.assert_allclose(spec.grid["fields.oxygen.diffusion_um2_per_min"], [1e4, 1e5, 1e6])
    runs = spec.runs()
    assert len(runs) == 2 * 3 * 5 * 2
    assert [r.id for r in runs[:3]] == ["r0000", "r0001", "r0002"]
    assert [r.params["seed"] for r in runs[:4]] == [1, 2, 1, 2]  # seeds fastest
    assert runs[0].overrides["run.name"] == "t_r0000"
    assert runs[0].h5 == tmp_path / "out" / "runs" / "r0000.h5"
    # Latin hypercube: each of the 5 strata of each parameter holds exactly one sample
    pts = sw.latin_hypercube({"a": (0.1, 0.6, False), "b": (0.01, 1.0, True)}, 5, 3)
    a = np.array([q["a"] for q in pts])
    b = np.array([q["b"] for q in pts])
    assert sorted(((a - 0.1) / 0.5 * 5).astype(int)) == [0, 1, 2, 3, 4]
    assert sorted(((np.log(b) - np.log(0.01)) / np.log(100) * 5).astype(int)) == [0, 1, 2, 3, 4]
    assert pts == sw.latin_hypercube({"a": (0.1, 0.6, False), "b": (0.01, 1.0, True)}, 5, 3)
    assert pts != sw.latin_hypercube({"a": (0.1, 0.6, False), "b": (0.01, 1.0, True)}, 5, 4)
    # each run's scenario carries its values (as plain TOML, not numpy reprs)
    sc = tmesim.load_scenario(spec.scenario, overrides=runs[7].overrides)
    assert sc.run.seed == runs[7].params["seed"]
    assert sc.tumor.necrosis_max_rate_per_h == runs[7].params["tumor.necrosis_max_rate_per_h"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[replicates2]\nn = 1\n", "key 'replicates2'"),
        ('[latin_hypercube]\nsamples = 2\n"x.y" = {min = 2, max = 1}\n', "min < max"),
    ],
)
def test_sweep_file_mistakes_are_one_line_exit_2(tmp_path, capsys, extra, message):
    p = write_sweep(tmp_path, extra=extra)
    assert main(["sweep", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_misspelt_parameter_refuses_the_whole_sweep(tmp_path, capsys):
    p = write_sweep(tmp_path)
    p.write_text(p.read_text().replace('"run.duration_days" = 2', '"tumor.doubling_hours" = 3'))
    assert main(["sweep", str(p), "-q"]) == 2
    assert "no run has a valid scenario" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escape", "/abs/olute", "-x", ".hidden", "a" * 190, "a\nb"])
def test_a_sweep_name_that_cannot_name_its_runs_is_refused(tmp_path, capsys, name):
    """The name becomes each run's run.name (<name>_r0001) and its runs' folder: a name that is
    not a valid run name with room for the run id is refused before any run starts."""
    p = write_sweep(tmp_path)
    p.write_text(p.read_text().replace('name = "t"', f"name = {name!r}".replace("'", '"')))
    assert main(["sweep", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep.name" in err and "at most 184 bytes" in err
    assert not (tmp_path / "out").exists()


def test_the_longest_sweep_name_names_valid_runs(tmp_path):
    """A name just inside the limit gives run names every scenario accepts."""
    p = write_sweep(tmp_path)
    p.write_text(p.read_text().replace('name = "t"', f'name = "{"a" * 184}"'))
    spec = sw.load_sweep(p)
    for r in spec.runs():
        assert tmesim.load_scenario(spec.scenario, overrides=r.overrides).run.name.endswith(r.id)
