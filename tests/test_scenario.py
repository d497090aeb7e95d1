"""Scenarios: defaults, overrides, and bad input rejected with a named key path and exit code 2."""

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tmesim
from tmesim.cli import main
from tmesim.scenario import summary, toml_value

ROOT = Path(__file__).resolve().parents[1]

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
    ("unknown drug preset", GOOD + '[drugs.d]\npreset = "nope"\n', "drugs.d.preset", "egfr_tki"),
    (
        "drug without effects",
        GOOD + "[drugs.d]\nschedule = { dose_uM = 1 }\n",
        "drugs.d.effects",
        "at least one effect",
    ),
    (
        "unknown effect target",
        GOOD + '[drugs.d]\npreset = "egfr_tki"\neffects = { kill_Q = {} }\n',
        "drugs.d.effects.kill_Q",
        "an effect target",
    ),
    (
        "negative EC50",
        GOOD + '[drugs.d]\npreset = "egfr_tki"\neffects = { kill_S = { ec50_uM = -1 } }\n',
        "drugs.d.effects.kill_S.ec50_uM",
        "> 0",
    ),
    (
        "doses and times differ",
        GOOD + '[drugs.d]\npreset = "egfr_tki"\nschedule = { kind = '
        '"doses", times_h = [1, 2], doses_uM = [1] }\n',
        "drugs.d.schedule.doses_uM",
        "2 doses",
    ),
    (
        "vessel transport without vessels",
        GOOD + '[drugs.d]\npreset = "egfr_tki"\ntransport = "vessels"\n',
        "drugs.d.transport",
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

# What a key's type and range alone accepted before, and the whole scenario does not: careless and
# hostile values found by fuzzing (issue 18; tests/test_scenario_fuzz.py)
TUMOR = GOOD.replace("radius_um = 100", "radius_um = 100\n{}")
DRUG = GOOD + '[drugs.d]\npreset = "egfr_tki"\n{}\n'
SEMANTIC = [
    (
        "persister and resistant fractions above 1",
        TUMOR.format("persister_fraction = 0.7\nresistant_fraction = 0.4"),
        "init.tumor.resistant_fraction",
        "at most 1 - init.tumor.persister_fraction (0.3)",
    ),
    (
        "a disk of radius 0",
        GOOD.replace("radius_um = 100", "radius_um = 0"),
        "init.tumor.radius_um",
        "> 0",
    ),
    (
        "a negative rectangle",
        GOOD.replace('"disk"', '"rectangle"\nsize_um = [200, -100]'),
        "init.tumor.size_um[1]",
        "> 0",
    ),
    (
        "a tumor outside the grid",
        TUMOR.format("center_um = [5000, 320]"),
        "init.tumor.radius_um",
        "at least one voxel centre",
    ),
    (
        "a disk smaller than a voxel between voxel centres",
        GOOD.replace("radius_um = 100", "radius_um = 5"),
        "init.tumor.radius_um",
        "at least one voxel centre",
    ),
    (
        "a controller stopping before it starts",
        DRUG.format('controller = { kind = "adaptive", start_day = 5, stop_day = 2 }'),
        "drugs.d.controller.stop_day",
        "after the controller's start_day (5)",
    ),
    (
        "a controller stopping as it starts",
        DRUG.format('controller = { kind = "biomarker", start_day = 3, stop_day = 3 }'),
        "drugs.d.controller.stop_day",
        "after the controller's start_day (3)",
    ),
    (
        "a schedule stopping before it starts",
        DRUG.format("schedule = { dose_uM = 1, start_day = 4, stop_day = 1 }"),
        "drugs.d.schedule.stop_day",
        "after start_day (4)",
    ),
    (
        "a continuous schedule stopping as it starts",
        DRUG.format("schedule = { dose_uM = 1, start_day = 4, stop_day = 4 }"),
        "drugs.d.schedule.stop_day",
        'kind = "none" gives no dose',
    ),
    (
        "a bolus every 3.6 ms",
        DRUG.format("half_life_h = 24\nschedule = { dose_uM = 1, interval_h = 1e-6 }"),
        "drugs.d.schedule.interval_h",
        "at least 0.00169 h: every 1e-06 h gives 1.69e+08 boluses",
    ),
    (
        "a 1e308-day run",
        GOOD.replace('name = "t"', 'name = "t"\nduration_days = 1e308'),
        "run.duration_days",
        "at most 1e+08 agent steps of run.dt_min (6 min): at most 4.167e+05 days",
    ),
    (
        "a run of 1e12 steps",
        GOOD.replace('name = "t"', 'name = "t"\nduration_days = 1e9\ndt_min = 1'),
        "run.duration_days",
        "at most 1e+08 agent steps of run.dt_min (1 min): at most 6.944e+04 days",
    ),
    (
        "a voxel of 1e308 um (every coordinate infinite)",
        GOOD.replace("shape = [32, 32]", "shape = [32, 32]\ndx_um = 1e308"),
        "grid.dx_um",
        "<= 1000000.0 um",
    ),
    (
        "a tumor 1e308 um away",
        TUMOR.format("center_um = [1e308, 0]"),
        "init.tumor.radius_um",
        "the nearest is inf um",
    ),
    (
        "an integer beyond float64",
        GOOD.replace("radius_um = 100", "radius_um = 1" + "0" * 400),
        "init.tumor.radius_um",
        "a finite number",
    ),
    (
        "5000 digits",
        GOOD.replace('name = "t"', 'name = "t"\nseed = ' + "7" * 5000),
        "(file)",
        "4300",
    ),
    (
        "CAFs from a mask that is not given (an AssertionError when the model was built)",
        GOOD + '[init.caf]\nplacement = "mask"\n',
        "init.caf.mask",
        "the path of a .npy file",
    ),
    (
        "TAMs from a missing mask file",
        GOOD + '[init.tam]\nplacement = "mask"\nmask = "nowhere.npy"\n',
        "init.tam.mask",
        "an existing .npy file",
    ),
    (
        "effects as a list beside a preset (the preset's effects stood, silently)",
        DRUG.format("effects = [{}]"),
        "drugs.d.effects",
        "a table of effects by target",
    ),
    ("preset as a table", GOOD + "[drugs.d.preset]\na = 1\n", "drugs.d.preset", "egfr_tki"),
    ("preset as a list", GOOD + "[drugs.d]\npreset = [1]\n", "drugs.d.preset", "egfr_tki"),
    (
        "lists nested 40 deep",
        GOOD + "[caf]\nx = " + "[" * 40 + "]" * 40,
        "caf.x" + "[0]" * 15,
        "16 deep",
    ),
    ("lists nested 5000 deep", GOOD + "[caf]\nx = " + "[" * 5000 + "]" * 5000, "(file)", "16 deep"),
    (
        "tables nested 2000 deep",
        GOOD + "[caf]\nx = " + "{a=" * 2000 + "1" + "}" * 2000,
        "(file)",
        "16 deep",
    ),
    ("a dotted key 30 deep", GOOD + "[caf]\n" + "a." * 30 + "b = 1", "(file)", "16 deep"),
    (
        "a NUL in the units",
        GOOD + '[fields.oxygen]\nunits = "mm\\u0000Hg"\n',
        "fields.oxygen.units",
        "'\\x00' is at position 2",
    ),
    (
        "an escape in the units",
        GOOD + '[fields.oxygen]\nunits = "\\u001b[31m"\n',
        "fields.oxygen.units",
        "control characters",
    ),
]
# names of the run file's own datasets, coordinates and columns, taken by a field or a drug
for _name, _where in [
    ("kind", "fields"),
    ("tumor_state", "fields"),
    ("memory", "fields"),
    ("burden", "fields"),
    ("time", "fields"),
    ("time_min", "drugs"),
    ("step", "fields"),
    ("x", "drugs"),
    ("y", "fields"),
    ("z", "drugs"),
    ("day", "fields"),
    ("n_S", "drugs"),
]:
    _table = (
        '\nunits = "a.u."\ndiffusion_um2_per_min = 10\n'
        if _where == "fields"
        else '\npreset = "egfr_tki"\n'
    )
    SEMANTIC.append(
        (
            f"{_where} named {_name}",
            GOOD + f"[{_where}.{_name}]{_table}",
            f"{_where}.{_name}",
            "the run file's own names",
        )
    )
for _name, _prefix in [
    ("plasma_erl", "plasma_"),
    ("mean_o2", "mean_"),
    ("dose_a", "dose_"),
    ("cumulative_dose_a", "cumulative_dose_"),
]:
    SEMANTIC.append(
        (
            f"a field named {_name}",
            GOOD + f'[fields.{_name}]\nunits = "a"\ndiffusion_um2_per_min = 1\n',
            f"fields.{_name}",
            f"does not start with {_prefix}",
        )
    )
SEMANTIC += [
    (
        "a field whose column is another field's",
        GOOD + '[fields.oxygen_tumor]\nunits = "a"\ndiffusion_um2_per_min = 1\n',
        "fields.oxygen_tumor",
        "mean_oxygen_tumor is not also made for fields.oxygen",
    ),
    (
        "a field whose column is a column of every run",
        GOOD + '[fields.time_in_P_h]\nunits = "h"\ndiffusion_um2_per_min = 1\n',
        "fields.time_in_P_h",
        "mean_time_in_P_h is not also a column of every run",
    ),
    ("a non-ASCII field name", GOOD + '[fields."\u00e9"]\nunits = "a"\n', "fields.\u00e9", "a-z"),
]
# run.name is the default run file, <run.name>.h5 in the working folder
for _bad in [
    "../../x",
    "/tmp/abs",
    "a/b",
    "a\\\\b",
    "",
    "-rf",
    ".hidden",
    "..",
    "a..b",
    " lead",
    "n" * 201,
]:
    SEMANTIC.append(
        (
            f"run.name {_bad[:20]!r}",
            GOOD.replace('name = "t"', f'name = "{_bad}"'),
            "run.name",
            "letters, digits",
        )
    )
for _bad in ["a\\u0000b", "a\\nb", "a\\u001bb"]:
    SEMANTIC.append(
        (
            f"run.name {_bad!r}",
            GOOD.replace('name = "t"', f'name = "{_bad}"'),
            "run.name",
            "control characters",
        )
    )
BAD += SEMANTIC


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


def test_a_5000_digit_override_names_its_key(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text(GOOD)
    assert main(["validate", str(f), "--set", "run.seed=" + "7" * 5000]) == 2
    err = capsys.readouterr().err
    assert "'run.seed'" in err and "4300 digits" in err and "(5000 characters)" in err, err
    assert err.count("\n") == 1 and len(err) < 300


def test_messages_echo_values_and_keys_cut_short():
    """A value of 50 MB, an integer of 5000 digits (beyond what Python writes out) and a key of
    100,000 characters are shown cut to about 80 characters, with their sizes."""
    cases = [
        ({"run": {"name": "n" * 50_000_000}}, "(50000000 characters)"),
        ({"run": {"seed": 10**5000}}, "an integer of about 5001 digits"),
        ({"run": {"k" * 100_000: 1}}, "(100004 characters)"),
        ({"grid": {"shape": [[1] * 10**6]}}, "got [1, 1, 1, 1, 1, 1, ...], expected an integer"),
    ]
    for data, shown in cases:
        with pytest.raises(tmesim.ScenarioError) as e:
            tmesim.scenario.parse_scenario(data)
        msg = str(e.value)
        assert shown in msg and len(msg) < 400 and "\n" not in msg, msg[:500]


@pytest.mark.parametrize(
    "name", ["quickstart_2d", "run 1", "a.b", "x-1", "caf\u00e9", "pc9+erl=2,a@b(c)", "n" * 200]
)
def test_run_names_that_stay_in_the_working_folder_are_accepted(name):
    sc = tmesim.loads_scenario(GOOD, overrides={"run.name": name})
    assert sc.run.name == name


def test_fractions_summing_to_one_and_a_tumor_at_the_edge_are_accepted():
    sc = tmesim.loads_scenario(
        TUMOR.format("persister_fraction = 0.6\nresistant_fraction = 0.4\ncenter_um = [0, 0]")
    )
    assert sc.init.tumor.persister_fraction + sc.init.tumor.resistant_fraction == 1.0
    # a quarter disk in the corner holds voxels; so does a disk of half a diagonal on a centre
    model = tmesim.Model(sc)
    assert (model.state.kind == 1).sum() > 0
    at_centre = tmesim.loads_scenario(
        GOOD.replace("radius_um = 100", "radius_um = 14.2\ncenter_um = [330, 330]")
    )
    assert (tmesim.Model(at_centre).state.kind == 1).sum() == 1


@given(st.text(st.characters(codec="utf-8")))
@settings(derandomize=True, max_examples=300, deadline=None)
def test_toml_value_writes_every_string_back(s):
    """Overrides are stored as TOML text (Scenario.text): every string, control characters
    included, is written so that TOML reads it back unchanged."""
    assert tomllib.loads("v = " + toml_value(s))["v"] == s


def test_a_description_with_newlines_is_stored_as_valid_toml():
    sc = tmesim.loads_scenario(
        GOOD + '[drugs.d]\npreset = "egfr_tki"\n',
        overrides=['drugs.d.description="two\\nlines\\tand a tab"'],
    )
    assert sc.drug("d").description == "two\nlines\tand a tab"
    assert tmesim.loads_scenario(sc.text).drug("d").description == "two\nlines\tand a tab"


# ------------------------------------------------------------------ tmesim run's output path
TINY = GOOD.replace('name = "t"', 'name = "t"\nduration_days = 0.02').replace(
    "[32, 32]", "[16, 16]"
)


def _run(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tmesim", "run", *args, "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )


def _refused(p, *words):
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


def test_run_output_onto_its_own_scenario_is_refused_untouched(tmp_path):
    """``tmesim run s.toml -o s.toml`` (or through a link, or with the scenario named where the
    ParaView sidecar goes) exits 2 and leaves the scenario as it was, with nothing beside it."""
    s = tmp_path / "s.toml"
    s.write_text(TINY)
    before = (s.read_bytes(), s.stat().st_mtime_ns)
    (tmp_path / "link.h5").symlink_to(s)
    _refused(_run(tmp_path, "s.toml", "-o", "s.toml"), "would overwrite the scenario")
    _refused(_run(tmp_path, "s.toml", "-o", str(s)), "would overwrite the scenario")
    _refused(_run(tmp_path, "s.toml", "-o", "link.h5"), "would overwrite the scenario")
    x = tmp_path / "x.xdmf"
    x.write_text(TINY)
    _refused(_run(tmp_path, "x.xdmf", "-o", "x.h5"), "ParaView sidecar would overwrite")
    _refused(_run(tmp_path, "s.toml", "-o", "r.xdmf"), "cannot end in .xdmf")
    assert (s.read_bytes(), s.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.h5", "s.toml", "x.xdmf"]


def test_run_output_onto_other_files_and_folders_is_refused(tmp_path):
    """An existing file that is not HDF5, a folder, a device, and a name too long for the file
    system: one line each, nothing written."""
    (tmp_path / "s.toml").write_text(TINY)
    notes = tmp_path / "notes.txt"
    notes.write_text("three weeks of notes")
    _refused(_run(tmp_path, "s.toml", "-o", "notes.txt"), "output notes.txt", "not HDF5")
    assert notes.read_text() == "three weeks of notes"
    (tmp_path / "runs").mkdir()
    _refused(_run(tmp_path, "s.toml", "-o", "runs"), "a folder")
    _refused(_run(tmp_path, "s.toml", "-o", "."), "a folder")
    _refused(_run(tmp_path, "s.toml", "-o", "/dev/null"), "not a regular file")
    _refused(_run(tmp_path, "s.toml", "-o", "n" * 300 + ".h5"), "File name too long")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "runs", "s.toml"]


def test_run_names_cannot_write_outside_the_working_folder(tmp_path):
    """Without -o the run file is <run.name>.h5 in the working folder: a name that climbs out
    of it, or is absolute, is refused before anything is written."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "s.toml").write_text(TINY)
    for name in ("../../x", str(tmp_path / "abs"), "sub/x"):
        _refused(_run(work, "s.toml", "--set", f'run.name="{name}"'), "'run.name'")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "a",
        "a/b",
        "a/b/s.toml",
    ]


def test_run_replaces_a_finished_run_file_and_writes_into_an_empty_file(tmp_path):
    """Run files are replaced (the writer's rule, tmesim.io.hdf5.RunWriter), and an empty file
    (made by ``mktemp``) holds nothing to lose: the checks above refuse neither."""
    (tmp_path / "s.toml").write_text(TINY)
    assert _run(tmp_path, "s.toml", "-o", "r.h5").returncode == 0
    p = _run(tmp_path, "s.toml", "-o", "r.h5")
    assert p.returncode == 0, p.stderr
    (tmp_path / "empty.h5").touch()
    p = _run(tmp_path, "s.toml", "-o", "empty.h5")
    assert p.returncode == 0, p.stderr
    assert tmesim.open_run(tmp_path / "empty.h5").attrs["status"] == "finished"


@pytest.mark.parametrize("status", ["interrupted", "running"])
def test_run_keeps_a_run_that_can_be_resumed_unless_told_to_overwrite(tmp_path, status):
    """A run interrupted (or killed: its status stays "running") can be resumed, so a new run on
    its path is refused in one line pointing at ``tmesim resume`` and the file is untouched;
    ``--overwrite`` replaces it."""
    import h5py

    (tmp_path / "s.toml").write_text(TINY)
    assert _run(tmp_path, "s.toml", "-o", "r.h5").returncode == 0
    r = tmp_path / "r.h5"
    with h5py.File(r, "r+") as f:
        f.attrs["status"] = status
    before = r.read_bytes()
    _refused(_run(tmp_path, "s.toml", "-o", "r.h5"), "can be resumed", "tmesim resume")
    assert r.read_bytes() == before
    p = _run(tmp_path, "s.toml", "-o", "r.h5", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert tmesim.open_run(r).attrs["status"] == "finished"


def test_the_reserved_names_are_the_run_files():
    """The names a field or drug may not take are the run-file schema's: every column of every
    run, and the columns made for a field and a drug (the scenario layer keeps its own copy, as
    it imports no file code)."""
    from tmesim import scenario as S
    from tmesim.io import schema

    assert tuple(schema.BASE_COLUMNS) == S.RUN_FILE_COLUMNS
    assert set(S.field_column_names("o2")) == set(schema.field_columns(["o2"], ["mmHg"]))
    assert set(S.drug_column_names("erl")) == set(schema.drug_columns(["erl"]))
    assert set(schema.BASE_COLUMNS) <= S.RESERVED_NAMES
