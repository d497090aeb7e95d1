"""Scenarios: defaults, overrides, and bad input rejected with a named key path and exit code 2."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tmesim
from tmesim.cli import main
from tmesim.scenario import summary

GOOD = """
[run]
name = "t"
[grid]
shape = [32, 32]
[init.tumor]
shape = "disk"
radius_um = 100
"""

# (description, TOML text, key path expected in the message, a word of the expectation)
BAD = [
    ("unknown section", GOOD + "[rnu]\nseed = 1\n", "rnu", "no such section"),
    (
        "unknown key",
        GOOD.replace("shape = [32, 32]", "shape = [32, 32]\ndxx_um = 20"),
        "grid.dxx_um",
        "no such key",
    ),
    (
        "wrong type",
        GOOD.replace("shape = [32, 32]", 'shape = [32, 32]\ndx_um = "20"'),
        "grid.dx_um",
        "a number",
    ),
    (
        "negative diffusion",
        GOOD + "[fields.oxygen]\ndiffusion_um2_per_min = -5\n",
        "fields.oxygen.diffusion_um2_per_min",
        ">= 0",
    ),
    ("grid of 4 axes", GOOD.replace("[32, 32]", "[4, 4, 4, 4]"), "grid.shape", "2 entries"),
    ("grid with a zero axis", GOOD.replace("[32, 32]", "[32, 0]"), "grid.shape[1]", "positive"),
    (
        "threshold above saturation",
        GOOD + "[tumor]\nproliferation_threshold_mmHg = 50\n",
        "tumor.proliferation_threshold_mmHg",
        "below tumor.proliferation_saturation_mmHg",
    ),
    ("sphere on a 2D grid", GOOD.replace('"disk"', '"sphere"'), "init.tumor.shape", "disk"),
    (
        "centre of the wrong dimension",
        GOOD.replace("radius_um = 100", "radius_um = 100\ncenter_um = [1, 2, 3]"),
        "init.tumor.center_um",
        "2 entries",
    ),
    (
        "unknown choice",
        GOOD.replace("shape = [32, 32]", 'shape = [32, 32]\nneighbourhood = "hex"'),
        "grid.neighbourhood",
        "'moore'",
    ),
    (
        "fraction above one",
        GOOD.replace("radius_um = 100", "radius_um = 100\nfill_fraction = 1.5"),
        "init.tumor.fill_fraction",
        "<= 1",
    ),
    (
        "unknown occupant kind",
        GOOD + "[fields.oxygen]\nuptake_per_min = { tumour = 10 }\n",
        "fields.oxygen.uptake_per_min.tumour",
        "occupant kind",
    ),
    (
        "z face on a 2D grid",
        GOOD + '[fields.oxygen]\nboundary = { faces = ["z-"], value = 3 }\n',
        "fields.oxygen.boundary[0].faces",
        "2D grid",
    ),
    (
        "missing mask file",
        GOOD.replace('"disk"', '"mask"\nmask = "nowhere.npy"'),
        "init.tumor.mask",
        "existing .npy",
    ),
    ("zero agent step", GOOD.replace('name = "t"', 'name = "t"\ndt_min = 0'), "run.dt_min", "> 0"),
    (
        "field step longer than agent step",
        GOOD + "[solver]\ndt_min = 30\n",
        "solver.dt_min",
        "at most run.dt_min",
    ),
    ("negative seed", GOOD.replace('name = "t"', 'name = "t"\nseed = -1'), "run.seed", ">= 0"),
    (
        "necrosis maximum above its threshold",
        GOOD + "[tumor]\nnecrosis_max_mmHg = 6\n",
        "tumor.necrosis_max_mmHg",
        "at or below tumor.necrosis_threshold_mmHg",
    ),
    (
        "field without units",
        GOOD + "[fields.tracer]\ndiffusion_um2_per_min = 10\n",
        "fields.tracer.units",
        "no preset",
    ),
    (
        "face named twice",
        GOOD + '[fields.oxygen]\nboundary = [{ faces = "all", value = 1 }, '
        '{ faces = ["x-"], kind = "no_flux" }]\n',
        "fields.oxygen.boundary[1].faces",
        "once",
    ),
    ("not TOML", "[run\nname=1", "(file)", "valid TOML"),
    (
        "infinite value",
        GOOD.replace("radius_um = 100", "radius_um = inf"),
        "init.tumor.radius_um",
        "finite",
    ),
    ("unknown drug preset", GOOD + '[drugs.x]\npreset = "nope"\n', "drugs.x.preset", "egfr_tki"),
    (
        "drug without effects",
        GOOD + "[drugs.x]\nschedule = { dose_uM = 1 }\n",
        "drugs.x.effects",
        "at least one effect",
    ),
    (
        "unknown effect target",
        GOOD + '[drugs.x]\npreset = "egfr_tki"\neffects = { kill_Q = {} }\n',
        "drugs.x.effects.kill_Q",
        "an effect target",
    ),
    (
        "negative EC50",
        GOOD + '[drugs.x]\npreset = "egfr_tki"\neffects = { kill_S = { ec50_uM = -1 } }\n',
        "drugs.x.effects.kill_S.ec50_uM",
        "> 0",
    ),
    (
        "doses and times differ",
        GOOD + '[drugs.x]\npreset = "egfr_tki"\nschedule = { kind = '
        '"doses", times_h = [1, 2], doses_uM = [1] }\n',
        "drugs.x.schedule.doses_uM",
        "2 doses",
    ),
    (
        "vessel transport without vessels",
        GOOD + '[drugs.x]\npreset = "egfr_tki"\ntransport = "vessels"\n',
        "drugs.x.transport",
        "no vessels",
    ),
    (
        "unknown stroma placement",
        GOOD + '[init.caf]\nplacement = "ring"\n',
        "init.caf.placement",
        "shell",
    ),
    (
        "persister fraction above 1",
        GOOD.replace("radius_um = 100", "radius_um = 100\npersister_fraction = 2"),
        "init.tumor.persister_fraction",
        "<= 1",
    ),
    (
        "uptake by an unknown state",
        GOOD + "[fields.oxygen]\nuptake_per_min = { dormant = 1 }\n",
        "fields.oxygen.uptake_per_min.dormant",
        "persister",
    ),
]


@pytest.mark.parametrize("what,text,path,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_scenario_is_named_and_exits_2(tmp_path, capsys, what, text, path, expected):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    code = main(["validate", str(f)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"'{path}'" in err, err
    assert expected in err, err
    assert "Traceback" not in err
    assert err.count("\n") == 1  # one line


def test_mask_of_wrong_shape(tmp_path, capsys):
    np.save(tmp_path / "m.npy", np.ones((10, 10)))
    f = tmp_path / "s.toml"
    f.write_text(GOOD.replace('"disk"', '"mask"\nmask = "m.npy"'))
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert "init.tumor.mask" in err and "[32, 32]" in err and "[10, 10]" in err


def test_mask_relative_to_scenario_file(tmp_path):
    m = np.zeros((32, 32), dtype=np.uint8)
    m[10:12, 10:13] = 1
    np.save(tmp_path / "m.npy", m)
    (tmp_path / "s.toml").write_text(GOOD.replace('"disk"', '"mask"\nmask = "m.npy"'))
    sc = tmesim.load_scenario(tmp_path / "s.toml")
    model = tmesim.Model(sc)
    assert (model.state.kind.reshape(32, 32) == 1).sum() == 6


def test_bad_override_is_named(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text(GOOD)
    assert main(["validate", str(f), "--set", "grid.dx_um"]) == 2
    assert "key.path=value" in capsys.readouterr().err
    assert main(["validate", str(f), "--set", "grid.dx_um=-1"]) == 2
    assert "'grid.dx_um'" in capsys.readouterr().err


def test_console_script_exits_2_without_traceback(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(GOOD + "[fields.oxygen]\ndecay_per_min = -1\n")
    p = subprocess.run(
        [sys.executable, "-m", "tmesim", "run", str(f), "-q"], capture_output=True, text=True
    )
    assert p.returncode == 2
    assert "fields.oxygen.decay_per_min" in p.stderr
    assert "Traceback" not in p.stderr


def test_output_cut_short_by_its_reader_is_no_traceback(tmp_path):
    """`tmesim validate x.toml | head -1`: the reader closes the pipe after one line; tmesim
    stops without a traceback (the shell's pipeline is not an error of the scenario)."""
    f = tmp_path / "good.toml"
    f.write_text(GOOD)
    p = subprocess.run(
        f"{sys.executable} -m tmesim validate {f} | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert p.stdout == "S"
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_defaults_and_overrides():
    sc = tmesim.loads_scenario(
        GOOD, overrides=["grid.dx_um=10", "run.seed=5", "fields.oxygen.decay_per_min=0.2"]
    )
    assert sc.grid.dx_um == 10.0 and sc.run.seed == 5
    ox = sc.field("oxygen")
    assert ox.decay_per_min == 0.2
    assert ox.diffusion_um2_per_min == 1e5 and ox.units == "mmHg"  # preset kept
    assert sc.tumor.doubling_time_h == 24.0
    assert sc.n_steps == 7 * 240
    # the stored text is a valid scenario that gives back the same object
    again = tmesim.loads_scenario(sc.text)
    assert again.grid == sc.grid and again.fields == sc.fields and again.run == sc.run
    with pytest.raises(Exception):  # noqa: B017 - frozen: any refusal to assign will do
        sc.grid.dx_um = 3


def test_summary_speaks_in_sentences():
    sc = tmesim.loads_scenario(GOOD)
    text = summary(sc)
    assert "2D lattice 32 x 32" in text
    assert "oxygen (mmHg)" in text and "diffusion length 1000 um" in text
    assert "taken up by tumor at 10 /min" in text


def test_validate_prints_memory(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text(textwrap.dedent(GOOD))
    assert main(["validate", str(f)]) == 0
    out = capsys.readouterr().out
    # the estimate must match the arrays a real state holds per voxel
    from tmesim.grid import Grid
    from tmesim.state import State

    st = State.empty(Grid((4, 4), 20.0), 1)
    per_voxel = (
        sum(a.nbytes for k, a in st.arrays().items() if k not in ("plasma", "dose_total")) // 16
    )
    assert f"{per_voxel} bytes/voxel" in out and "OK" in out
