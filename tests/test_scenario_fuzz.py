"""Careless and hostile scenarios through the real entry point, ``tmesim validate``.

The fuzzer mutates the shipped scenarios (scenarios/**/*.toml) along the schema's own keys
(tmesim.scenario's dataclasses and their ``param`` ranges): wrong types, numbers out of range
(nan, inf, 1e308, -0.0, 5000-digit integers), unknown keys, tables where numbers belong and
numbers where tables belong, nesting thousands deep, strings with NUL, control characters and a
million characters, bytes that are not UTF-8, and the same through ``--set KEY=VALUE``. Every
example runs ``tmesim.cli.main(["validate", ...])`` in this process and must

- exit 0 or 2 and raise nothing (an exception is a traceback for the user);
- on 2, print one line of under 300 characters, ``tmesim validate: error: ...``, naming the key
  path when the mutation put a value that the schema's type or range refuses;
- on 0, hold a scenario that meets the rules below (:func:`assert_meets_the_rules`): what the
  schema cannot say alone (persister and resistant fractions summing to at most 1, a tumor that
  holds a cell, stops after starts, run names that stay in the working folder, names that are
  not the run file's own, a runnable number of steps and of boluses);
- take under :data:`SLOW_S` seconds;
- and what it accepts (on grids of up to :data:`MODEL_SITES` voxels) builds a model that takes a
  step without a traceback.

A few cases run ``python3 -m tmesim validate`` as a process (bytes that are not UTF-8, nesting
100,000 deep, a 50 MB file), to be sure nothing escapes the console either.

Deterministic in CI (``derandomize=True``, a fixed number of examples, under a minute on two
cores). A larger campaign, by hand::

    TMESIM_FUZZ_EXAMPLES=4000 TMESIM_FUZZ_TALLY=/tmp/tally.json \\
        python3 -m pytest -p no:xvfb -q tests/test_scenario_fuzz.py -k "mutated or overrides"

``TMESIM_FUZZ_TALLY`` counts the failures by kind instead of stopping at the first, and writes
the counts, the exit codes, the slowest validation and one example of each failure to the JSON
file named (``TMESIM_FUZZ_VERBOSE=1`` prints every example with its time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tmesim
from tmesim import scenario as S
from tmesim.cli import main

ROOT = Path(__file__).resolve().parents[1]
#: examples per fuzz test in CI; TMESIM_FUZZ_EXAMPLES overrides it for a campaign by hand
EXAMPLES = int(os.environ.get("TMESIM_FUZZ_EXAMPLES", "0") or 0)
TALLY_PATH = os.environ.get("TMESIM_FUZZ_TALLY")
#: a validation that takes longer than this is a hang
SLOW_S = 10.0
#: the longest error line accepted: the key path, the value (each cut short: :func:`echo_ok`)
#: and the expectation, which may list the keys of a table (tumor has 16)
MAX_LINE = 600
#: the most characters of a user's value, and of a key path, that an error line may echo
MAX_ECHO = 130


def fuzz(n: int):
    return settings(
        derandomize=True,
        max_examples=EXAMPLES or n,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# ------------------------------------------------------------------------ the shipped scenarios
def _shipped() -> dict[str, dict]:
    """Every scenario file under scenarios/ that validates as it is (sweeps and comparisons are
    other kinds of file), as parsed TOML."""
    out = {}
    for p in sorted((ROOT / "scenarios").rglob("*.toml")):
        try:
            tmesim.load_scenario(p)
        except tmesim.errors.UserError:
            continue
        out[str(p.relative_to(ROOT))] = tomllib.loads(p.read_text())
    return out


BASES = _shipped()


def test_the_fuzzer_has_scenarios_to_mutate():
    assert len(BASES) >= 10, sorted(BASES)
    assert any("drugs" in b for b in BASES.values())


# -------------------------------------------------------------------------- TOML from the test
class HugeInt:
    """An integer of ``digits`` digits, written out as TOML text (Python refuses to convert an
    integer of over 4300 digits to or from text)."""

    def __init__(self, digits: int, sign: str = ""):
        self.digits, self.sign = digits, sign

    def __repr__(self):
        return f"HugeInt({self.sign}{self.digits} digits)"


class Deep:
    """A value nested ``depth`` levels: lists [[[...]]] or inline tables {a = {a = ...}}."""

    def __init__(self, depth: int, kind: str):
        self.depth, self.kind = depth, kind

    def __repr__(self):
        return f"Deep({self.depth}, {self.kind})"


BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(k: str) -> str:
    return k if BARE.match(k) else toml_str(k)


def toml_str(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_val(v) -> str:
    """A value as TOML text, written here (not by tmesim) so that the fuzzer can write what
    tmesim would refuse to."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, HugeInt):
        return v.sign + "9" * v.digits
    if isinstance(v, Deep):
        if v.kind == "list":
            return "[" * v.depth + "1" + "]" * v.depth
        return "{a = " * v.depth + "1" + " }" * v.depth
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_val(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def toml_doc(data: dict, head: str = "") -> str:
    """A document of [tables]; ``head`` goes first (top-level keys)."""
    lines = [head] if head else []

    def table(prefix: list[str], d: dict):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix and (scalars or not subs):
            lines.append("[" + ".".join(toml_key(k) for k in prefix) + "]")
        for k, v in scalars.items():
            lines.append(f"{toml_key(k)} = {toml_val(v)}")
        for k, v in subs.items():
            table(prefix + [k], v)

    table([], data)
    return "\n".join(lines) + "\n"


def test_the_fuzzers_toml_writer_round_trips():
    data = {
        "a": {"b": 1, "c": [1.5, 'x\x00\n"\\'], "d": {"e": float("inf"), "f": {}}},
        "key with space": -0.0,
    }
    back = tomllib.loads(toml_doc(data))
    assert back["a"]["c"] == [1.5, 'x\x00\n"\\'] and back["a"]["d"]["e"] == float("inf")
    assert math.copysign(1, back["key with space"]) == -1


# ------------------------------------------------------------------------------- the schema
Leaf = tuple[str, typing.Any, dict]  # key path, annotated type, param metadata


def _walk(cls, prefix: str, out: list[Leaf]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("name", "text", "base_dir", "fields", "drugs") and f.metadata == {}:
            continue  # set from the table names, or not keys at all
        tp, path = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            out.append((path, tp, {}))
            _walk(tp, path + ".", out)
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            out.append((path, tp, dict(f.metadata)))
            for target in S.EFFECT_TARGETS:
                out.append((f"{path}.{target}", S.EffectConfig, {}))
                _walk(S.EffectConfig, f"{path}.{target}.", out)
        else:
            out.append((path, tp, dict(f.metadata)))


def leaves(base: dict) -> list[Leaf]:
    """Every key path of the schema in ``base``: the sections, the fields it has (and oxygen and
    a new one) and its drugs (and a new one), each with its type and range."""
    out: list[Leaf] = []
    _walk(S.Scenario, "", out)
    for name in {*base.get("fields", {}), "oxygen", "tracer"}:
        out.append((f"fields.{name}", S.FieldConfig, {}))
        _walk(S.FieldConfig, f"fields.{name}.", out)
    for name in {*base.get("drugs", {}), "newdrug"}:
        out.append((f"drugs.{name}", S.DrugConfig, {}))
        _walk(S.DrugConfig, f"drugs.{name}.", out)
    return out


LEAVES = {k: leaves(b) for k, b in BASES.items()}


# ------------------------------------------------------------------------- hostile values
NASTY_FLOATS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    1e308,
    -1e308,
    1.7976931348623157e308,
    -0.0,
    0.0,
    5e-324,
    -5e-324,
    1e-300,
    -1.0,
    0.5,
    1.0,
    1.0000000000000002,
    2.0,
    1e9,
    1e18,
]
NASTY_INTS = [0, -1, 1, 2, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**300]
NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "tab\there",
    "line\nbreak",
    "\x1b[31mred",
    "\x7f",
    "../../x",
    "../x",
    "/tmp/abs",
    "a/b",
    "a\\b",
    "-x",
    ".hidden",
    "..",
    "\u202eevil",
    "é",
    "kind",
    "burden",
    "time",
    "x",
    "plasma_x",
    "oxygen",
    "none",
    "disk",
    "tumor",
    "x" * 5000,
]
HUGE_STRING = "y" * 600_000


def scalars() -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(NASTY_FLOATS),
        st.sampled_from(NASTY_INTS),
        st.sampled_from(NASTY_STRINGS),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.text(st.characters(codec="utf-8"), max_size=30),
        st.builds(HugeInt, st.sampled_from([4301, 5000, 20000]), st.sampled_from(["", "-", "+"])),
        st.just(HUGE_STRING),
        st.dates(),
        st.datetimes(),
        st.times(),
    )


def values() -> st.SearchStrategy:
    """Any TOML value: a scalar, a list or a table of them, or something nested very deep."""
    nested = st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.sampled_from(["a", "kind", "value", "x", "0", ""]), inner, max_size=3
            ),
        ),
        max_leaves=6,
    )
    deep = st.builds(
        Deep, st.sampled_from([40, 200, 900, 3000, 30000]), st.sampled_from(["list", "table"])
    )
    return st.one_of(nested, deep)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def near_range(tp, meta) -> st.SearchStrategy:
    """Values at and just beyond a parameter's documented bounds, and of its own type."""
    lo, hi = meta.get("lo"), meta.get("hi")
    inner = tp
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
    out: list = []
    for b in (lo, hi):
        if b is not None:
            out += [b, math.nextafter(b, -math.inf), math.nextafter(b, math.inf), b - 1, b + 1]
            if inner is int:
                out += [int(b) - 1, int(b), int(b) + 1]
    if meta.get("choices"):
        choices = list(meta["choices"])
        out += choices + [c.upper() for c in choices] + [c + " " for c in choices]
        if typing.get_origin(inner) is tuple:
            out += [choices, choices + ["nope"], []]
    if inner is int:
        return st.one_of(st.sampled_from(out or [0]), st.integers(-(2**70), 2**70))
    if inner is float:
        return st.one_of(st.sampled_from(out or [0.0]), st.floats(), st.integers(-(10**6), 10**6))
    if typing.get_origin(inner) is tuple:
        return st.lists(st.one_of(st.sampled_from(out or [0]), scalars()), max_size=5)
    return st.sampled_from(out) if out else st.nothing()


# --------------------------------------------------------------- what must be refused, by key
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _union_inner(tp):
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def must_refuse(path: str, tp, meta: dict, v) -> bool:
    """Whether a value at a schema key is invalid by its type and range alone (an independent
    restatement of the schema's rules; False means it may or may not be valid)."""
    tp = _union_inner(tp)
    if isinstance(v, (HugeInt, Deep)):
        return True
    if dataclasses.is_dataclass(tp):
        return not isinstance(v, dict)
    origin = typing.get_origin(tp)
    if tp is bool:
        return not isinstance(v, bool)
    if tp in (int, float):
        if not _is_number(v) or (tp is int and not isinstance(v, int)):
            return True
        try:
            x = float(v)
        except OverflowError:
            return True
        if not math.isfinite(x):
            return True
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (v < lo or (meta.get("lo_open") and v == lo)):
            return True
        return hi is not None and v > hi
    if tp is str:
        if not isinstance(v, str):
            return True
        if meta.get("choices") and v not in meta["choices"]:
            return True
        allowed = "\n\t" if path.endswith(".description") else ""
        return any(CONTROL.match(c) and c not in allowed for c in v)
    if origin is tuple:
        elem = typing.get_args(tp)[0]
        if isinstance(v, str) and elem is str:
            v = [v]
        if isinstance(v, dict) and dataclasses.is_dataclass(elem):
            v = [v]
        if not isinstance(v, list):
            return True
        if dataclasses.is_dataclass(elem):
            return any(not isinstance(x, dict) for x in v)
        return any(must_refuse(path, elem, meta, x) for x in v)
    if origin is dict:
        if not isinstance(v, dict):
            return True
        if dataclasses.is_dataclass(typing.get_args(tp)[1]):
            return any(k not in S.EFFECT_TARGETS or not isinstance(x, dict) for k, x in v.items())
        return any(
            k not in S.RATE_KEYS or must_refuse(path, float, {"lo": 0}, x) for k, x in v.items()
        )
    return False


# ------------------------------------------------------------ what an accepted scenario holds
#: names a field or drug may not take: the run file's own datasets, coordinates and columns
#: (tmesim.io.schema, tmesim.io.reader.open_run)
FILE_NAMES = {"kind", "tumor_state", "memory", "time", "step", "step_time_h", "x", "y", "z", "day"}
DERIVED_PREFIXES = ("mean_", "plasma_", "dose_", "cumulative_dose_")
# (read with defaults, so that this file also measures a tmesim from before these bounds)
MAX_BOLUSES = getattr(S, "MAX_BOLUSES", 10**5)
MAX_AGENT_STEPS = getattr(S, "MAX_AGENT_STEPS", 10**8)
MAX_SCENARIO_BYTES = getattr(S, "MAX_SCENARIO_BYTES", 1 << 20)
RUN_NAME = re.compile(r"^[\w+=,@()][\w+=,@() .-]*$")


def _walk_values(obj, path=""):
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name not in ("text", "base_dir"):
                yield from _walk_values(getattr(obj, f.name), f"{path}.{f.name}".lstrip("."))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_values(v, f"{path}.{k}")
    elif isinstance(obj, tuple):
        for i, v in enumerate(obj):
            yield from _walk_values(v, f"{path}[{i}]")
    else:
        yield path, obj


def assert_meets_the_rules(sc) -> None:
    """The rules an accepted scenario meets that its keys' ranges alone do not say (issue 18)."""
    from tmesim.io import schema

    for path, v in _walk_values(sc):
        if isinstance(v, float):
            assert math.isfinite(v), path
        if isinstance(v, str):
            allowed = "\n\t" if path.endswith(".description") else ""
            assert not any(CONTROL.match(c) and c not in allowed for c in v), (path, v)
            assert len(v) <= 4096, path
    ti = sc.init.tumor
    assert ti.persister_fraction + ti.resistant_fraction <= 1 + 1e-12
    if ti.shape in ("disk", "sphere"):
        assert ti.radius_um > 0
    if ti.size_um is not None:
        assert all(s > 0 for s in ti.size_um)
    for d in sc.drugs:
        if d.schedule.kind in ("continuous", "intermittent"):
            assert d.schedule.stop_day > d.schedule.start_day, d.name
        if d.controller.kind != "none":
            assert d.controller.stop_day > d.controller.start_day, d.name
        if d.half_life_h > 0 and d.schedule.kind in ("continuous", "intermittent"):
            span_h = min(d.schedule.stop_day, sc.run.duration_days) * 24 - d.schedule.start_day * 24
            assert span_h / d.schedule.interval_h <= MAX_BOLUSES + 1, d.name
    name = sc.run.name
    assert RUN_NAME.match(name) and ".." not in name and name == name.strip(), name
    assert len(name.encode()) <= 200
    names = list(sc.field_names)
    for n in names:
        assert n not in FILE_NAMES and not n.startswith(DERIVED_PREFIXES), n
        assert n.isascii() and n.isidentifier() and len(n) <= 64, n
    cols = list(schema.BASE_COLUMNS)
    cols += list(schema.field_columns(names, [f.units for f in sc.fields]))
    cols += list(schema.drug_columns(sc.drug_names))
    every = cols + names + sorted(FILE_NAMES)
    assert len(every) == len(set(every)), sorted({c for c in every if every.count(c) > 1})
    assert 1 <= sc.n_steps <= MAX_AGENT_STEPS
    if sc.init.tumor.shape not in ("none", "mask") and math.prod(sc.grid.shape) <= 2**20:
        from tmesim.grid import Grid
        from tmesim.initial import tumor_region

        region = tumor_region(sc, Grid(sc.grid.shape, sc.grid.dx_um, sc.grid.neighbourhood))
        assert region.any(), "the initial tumor holds no voxel"


# -------------------------------------------------------------------------------- the oracle
class Tally:
    """Failures by kind, when TMESIM_FUZZ_TALLY asks for a campaign's counts."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}
        self.slowest = 0.0
        self.outcomes: dict[str, int] = {}  # exit codes, and models built and stepped

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.first.setdefault(kind, example[:2000])

    def write(self, path: str) -> None:
        Path(path).write_text(
            json.dumps(
                {
                    "counts": self.counts,
                    "outcomes": self.outcomes,
                    "slowest_s": self.slowest,
                    "first": self.first,
                },
                indent=1,
            )
        )


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def _write_tally():
    yield
    if TALLY_PATH:
        TALLY.write(TALLY_PATH)


def fail(kind: str, example: str) -> None:
    if TALLY_PATH:
        TALLY.add(kind, example)
        return
    pytest.fail(f"{kind}: {example[:3000]}")


def validate(path: Path, sets: list[str], example: str, *, refuse: str | None = None) -> int | None:
    """Run ``tmesim validate`` in this process and check what it did (the module docstring).
    ``refuse``: a key path that must be refused and named, "" when any refusal will do, None when
    either outcome may be right."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["validate", str(path)] + [f"--set={s}" for s in sets]
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except BaseException as exc:  # any escape is what the fuzzer looks for
        if isinstance(exc, KeyboardInterrupt):
            raise
        fail(f"traceback {type(exc).__name__}", f"{example}\n{type(exc).__name__}: {exc!s:.500}")
        return None
    took = time.monotonic() - t0
    TALLY.slowest = max(TALLY.slowest, took)
    TALLY.outcomes[f"exit {code}"] = TALLY.outcomes.get(f"exit {code}", 0) + 1
    if os.environ.get("TMESIM_FUZZ_VERBOSE"):
        print(f"{took:.3f} s {code} {example[:150]!r}", file=sys.__stderr__, flush=True)
    if took > SLOW_S:
        fail("hang", f"{took:.1f} s: {example}")
    text = err.getvalue()
    if code == 0:
        if refuse is not None:
            fail("accepted a value its key refuses", f"{refuse!r}: {example}")
            return code
        try:
            sc = tmesim.load_scenario(path, overrides=sets or None)
            assert_meets_the_rules(sc)
        except AssertionError as exc:
            fail("accepted an invalid scenario", f"{exc!s:.500}: {example}")
        return code
    if code != 2:
        fail(f"exit code {code}", example)
        return code
    lines = text.splitlines()
    if len(lines) != 1 or not text.startswith("tmesim validate: error: "):
        fail("not one error line", f"{text[:600]!r}: {example}")
    elif len(text) > MAX_LINE or not echo_ok(text):
        fail("error line too long", f"{len(text)} chars {text[:700]!r}: {example}")
    elif refuse and f"'{refuse}" not in text:
        fail("error does not name the key", f"{refuse} not in {text!r}: {example}")
    return code


def echo_ok(line: str) -> bool:
    """Whether a scenario error echoes at most MAX_ECHO characters of the key path and of the
    value (``scenario key 'PATH': got VALUE, expected ...``)."""
    m = re.match(r"tmesim \w+: error: scenario key '(.*?)': got (.*), expected ", line)
    if m is None:
        return len(line) <= MAX_ECHO + 100  # another user error: no value of a key to echo
    return len(m.group(1)) <= MAX_ECHO and len(m.group(2)) <= MAX_ECHO


# ---------------------------------------------------------------------------------- mutations
def set_path(data: dict, parts: list[str], value) -> None:
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


def tables(data: dict, prefix=()) -> list[tuple[tuple[str, ...], dict]]:
    out = [(prefix, data)]
    for k, v in data.items():
        if isinstance(v, dict):
            out += tables(v, prefix + (k,))
    return out


def schema_class_at(parts: tuple[str, ...]):
    """The dataclass a table at this key path is checked against (None: a table of names, of
    kinds or of effect targets, whose keys are not a fixed set)."""
    cls: typing.Any = S.Scenario
    i = 0
    while i < len(parts):
        p = parts[i]
        if cls is S.Scenario and p in ("fields", "drugs"):
            if i + 1 >= len(parts):
                return None
            cls = S.FieldConfig if p == "fields" else S.DrugConfig
            i += 2
            continue
        hints = typing.get_type_hints(cls)
        if p not in hints:
            return None
        tp = hints[p]
        if cls is S.DrugConfig and p == "effects":
            if i + 1 >= len(parts):
                return None
            cls = S.EffectConfig
            i += 2
            continue
        if not dataclasses.is_dataclass(tp):
            return None
        cls = tp
        i += 1
    return cls


def special(v) -> bool:
    """Whether a value holds something the TOML reader itself refuses (so the key path cannot
    be named: the file as a whole is refused)."""
    if isinstance(v, (HugeInt, Deep)):
        return True
    if isinstance(v, (list, tuple)):
        return any(special(x) for x in v)
    if isinstance(v, dict):
        return any(special(x) for x in v.values())
    return False


def get_path(data, parts: list[str]):
    node = data
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return KeyError
        node = node[p]
    return node


def _under(path: str, other: str) -> bool:
    """Whether ``path`` is ``other`` or lies inside it."""
    return path == other or path.startswith(other + ".")


@st.composite
def mutations(draw):
    """(scenario text as bytes, --set items, description, refuse): ``refuse`` is the key path
    that must be refused and named, "" when the scenario must be refused (naming any key), None
    when it may be valid.

    A key is named only for a single mutation: with two, either may be reported first, and a
    mutation that a type or range cannot judge (a delete, an unknown key under fields, a value
    in range) may be refused first at another key."""
    base_name = draw(st.sampled_from(sorted(BASES)))
    data = json.loads(json.dumps(BASES[base_name]))  # a deep copy (the shipped TOML has no dates)
    sets: list[str] = []
    what: list[str] = [base_name]
    leaves_set: list[tuple[str, object, bool]] = []  # file: (path, value, must refuse)
    set_records: list[tuple[str, bool]] = []  # --set: (path, must refuse)
    refused_anyway = False  # a mutation that is refused whatever the others do
    unknown: list[tuple[tuple[str, ...], dict, str]] = []  # keys the schema does not have
    head = ""
    n_ops = draw(st.integers(1, 2))
    for _ in range(n_ops):
        op = draw(
            st.sampled_from(
                ["leaf", "leaf", "leaf", "set", "set", "unknown", "delete", "deep_key", "garbage"]
            )
        )
        if op in ("leaf", "set"):
            path, tp, meta = draw(st.sampled_from(LEAVES[base_name]))
            v = draw(st.one_of(values(), near_range(tp, meta)))
            if path.startswith("fields.tracer."):  # a field without a preset gives these two
                data.setdefault("fields", {}).setdefault("tracer", {}).update(
                    units="a.u.", diffusion_um2_per_min=1.0
                )
            bad = must_refuse(path, tp, meta, v)
            if op == "leaf":
                set_path(data, path.split("."), v)
                leaves_set.append((path, v, bad))
            else:
                sets.append(f"{path}={toml_val(v)}")
                set_records.append((path, bad))
            what.append(f"{op} {path} = {v!r:.200}")
        elif op == "unknown":
            prefix, table = draw(st.sampled_from(tables(data)))
            key = draw(st.one_of(st.sampled_from(NASTY_STRINGS), st.text(max_size=12)))
            cls = schema_class_at(prefix)
            table[key] = draw(values())
            what.append(f"unknown {'.'.join(prefix + (key,))!r:.200}")
            schema_keys = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
            if (cls is not None and key not in schema_keys) or special(table[key]):
                unknown.append((prefix, table, key))
        elif op == "delete":
            prefix, table = draw(st.sampled_from(tables(data)))
            if table:
                key = draw(st.sampled_from(sorted(table)))
                del table[key]
                what.append(f"delete {'.'.join(prefix + (key,))}")
        elif op == "deep_key":
            depth = draw(st.sampled_from([20, 50, 500, 5000, 50000]))
            sec = draw(st.sampled_from(["deep", "run", "tumor", "fields", "drugs"]))
            head = f"{sec}." + ".".join(["a"] * depth) + " = 1"
            what.append(f"dotted key {sec} of depth {depth}")
            refused_anyway = True
        else:  # --set with garbage on either side of the '='
            key = draw(st.one_of(st.sampled_from(NASTY_STRINGS), st.text(max_size=20)))
            text = draw(st.one_of(st.text(max_size=40), st.sampled_from(["[[[", "{a=", "1e999"])))
            sets.append(f"{key}={text}" if draw(st.booleans()) else key)
            what.append(f"set garbage {sets[-1]!r:.200}")
    raw = toml_doc(data, head).encode("utf-8")
    if draw(st.integers(0, 9)) == 0:  # bytes that are not UTF-8, or a NUL, somewhere
        pos = draw(st.integers(0, len(raw)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x00", b"\xed\xa0\x80", b"\x80"]))
        raw = raw[:pos] + junk + raw[pos:]
        what.append(f"bytes {junk!r} at {pos}")
        refused_anyway = True
    refused_anyway |= len(raw) > MAX_SCENARIO_BYTES  # the size is refused before reading
    # which bad values are still there: a later mutation of the same key (or a table above it)
    # replaces an earlier one; overrides come after the file
    live: list[str] = []
    unsure = False
    for prefix, table, key in unknown:  # still there: refused (the TOML reader or the schema)
        refused_anyway |= get_path(data, list(prefix)) is table and key in table
    for path, v, _ in leaves_set:  # the file as a whole is refused
        refused_anyway |= special(v) and get_path(data, path.split(".")) is v
    for path, v, bad in leaves_set:
        if not bad or get_path(data, path.split(".")) is not v:
            continue
        if any(_under(path, q) for q, _ in set_records):
            continue
        if any(_under(q, path) for q, _ in set_records):
            unsure = True  # an override inside a bad value: refused or not, depending
            continue
        live.append(path)
    for i, (path, bad) in enumerate(set_records):
        if bad and not any(_under(path, q) for q, _ in set_records[i + 1 :]):
            live.append(path)
    if refused_anyway or (live and not unsure):
        refuse = live[0] if (n_ops == 1 and live and not refused_anyway) else ""
    else:
        refuse = None
    return raw, sets, " | ".join(what), refuse


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@fuzz(400)
@given(m=mutations())
def test_mutated_scenarios(workdir, m):
    """Mutated shipped scenarios: exit 0 or 2, one short line naming the key, no traceback, no
    hang, no invalid scenario accepted."""
    raw, sets, what, refuse = m
    f = workdir / "s.toml"
    f.write_bytes(raw)
    validate(f, sets, what, refuse=refuse)


#: the largest grid the fuzzer builds a model of (the shipped 2D scenarios; not the benchmark's
#: 256^3, whose one step takes minutes on two cores)
MODEL_SITES = 50_000


def in_range(tp, meta) -> st.SearchStrategy:
    """Values a key's type and range accept: anywhere in the range, at its edges, extreme."""
    tp = _union_inner(tp)
    lo, hi = meta.get("lo"), meta.get("hi")
    if tp is bool:
        return st.booleans()
    if tp is float:
        low = 0.0 if lo is None else float(lo)
        high = 1e12 if hi is None else float(hi)
        edges = [x for x in (low, high, 1e-300, 1e-9, 1e6, 1e300) if low <= x <= high]
        if meta.get("lo_open"):
            edges = [x for x in edges if x > low] or [math.nextafter(low, math.inf)]
        return st.one_of(
            st.sampled_from(edges),
            st.floats(low, high, exclude_min=bool(meta.get("lo_open"))),
        )
    if tp is int:
        low = 0 if lo is None else int(lo)
        return st.integers(low, 10**6 if hi is None else int(hi))
    if tp is str and meta.get("choices"):
        return st.sampled_from(list(meta["choices"]))
    return st.nothing()


@st.composite
def mild_mutations(draw):
    """A shipped scenario with one to three keys set to values their own range accepts: what
    validation lets through most often, for the model to build and step."""
    base_name = draw(st.sampled_from(sorted(BASES)))
    sets, what = [], [base_name]
    usable = [x for x in LEAVES[base_name] if not x[0].startswith("fields.tracer")]
    for _ in range(draw(st.integers(1, 3))):
        path, tp, meta = draw(st.sampled_from(usable))
        v = draw(st.one_of(in_range(tp, meta), near_range(tp, meta)))
        sets.append(f"{path}={toml_val(v)}")
        what.append(f"set {path} = {v!r:.100}")
    raw = (ROOT / base_name).read_bytes()
    return raw, sets, " | ".join(what), None


@fuzz(40)
@given(m=st.one_of(mild_mutations(), mutations()))
def test_accepted_scenarios_build_and_step(workdir, m):
    """What validation accepts also builds a model and steps it: no traceback (a user error,
    such as a field the solver drives non-finite, is one line like any other) and no hang."""
    raw, sets, what, refuse = m
    f = workdir / "m.toml"
    f.write_bytes(raw)
    if validate(f, sets, what, refuse=refuse) != 0:
        return
    sc = tmesim.load_scenario(f, overrides=sets or None)
    if math.prod(sc.grid.shape) > MODEL_SITES:
        return
    TALLY.outcomes["models built"] = TALLY.outcomes.get("models built", 0) + 1
    t0 = time.monotonic()
    try:
        model = tmesim.Model(sc)
        model.step()
        model.observe()
    except tmesim.errors.UserError:
        pass
    except Exception as exc:  # a traceback for the user
        fail(f"traceback at run time {type(exc).__name__}", f"{what}\n{exc!s:.500}")
    took = time.monotonic() - t0
    if took > SLOW_S:
        fail("hang at run time", f"{took:.1f} s: {what}")


@fuzz(150)
@given(
    path=st.sampled_from(LEAVES["scenarios/quickstart_2d.toml"]).map(lambda x: x[0]),
    text=st.one_of(
        st.text(max_size=60),
        st.sampled_from(["", "=", "[", "{", '"', "'", "nan", "-inf", "1e308", "0x10", "1_000"]),
        st.builds(lambda n: "9" * n, st.sampled_from([4300, 4301, 5000])),
        st.builds(lambda n: "[" * n, st.sampled_from([10, 1000, 100000])),
    ),
)
def test_overrides_of_every_key(workdir, path, text):
    """``--set KEY=TEXT`` of any text for every key of the schema."""
    f = workdir / "q.toml"
    f.write_bytes((ROOT / "scenarios/quickstart_2d.toml").read_bytes())
    validate(f, [f"{path}={text}"], f"--set {path}={text[:200]!r}")


# ----------------------------------------------------------------- the console, end to end
def _console(tmp_path, content: bytes, *extra: str) -> subprocess.CompletedProcess:
    f = tmp_path / "s.toml"
    f.write_bytes(content)
    return subprocess.run(
        [sys.executable, "-m", "tmesim", "validate", str(f), *extra],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


QUICK = (ROOT / "scenarios/quickstart_2d.toml").read_bytes()


@pytest.mark.parametrize(
    "what,content,extra,key",
    [
        ("latin-1 bytes", QUICK.replace(b'"quickstart_2d"', b'"caf\xe9"'), (), "(file)"),
        ("a UTF-16 file", QUICK.decode().encode("utf-16"), (), "(file)"),
        ("lists nested 100000 deep", b"[run]\nseed = " + b"[" * 100000 + b"]" * 100000, (), ""),
        ("tables nested 100000 deep", b"x = " + b"{a=" * 100000 + b"1" + b"}" * 100000, (), ""),
        ("a dotted key 100000 deep", b"run." + b"a." * 100000 + b"b = 1\n", (), "(file)"),
        ("5000 digits", QUICK.replace(b"seed = 20101", b"seed = " + b"7" * 5000), (), "(file)"),
        ("5000 digits in --set", QUICK, ("--set", "run.seed=" + "7" * 5000), "run.seed"),
        ("lists 100000 deep in --set", QUICK, ("--set", "run.seed=" + "[" * 100000), ""),
        ("a NUL in the name", QUICK.replace(b"quickstart_2d", b"a\\u0000b"), (), "run.name"),
        ("a 50 MB file", QUICK.replace(b"quickstart_2d", b"n" * 50_000_000), (), "(file)"),
        ("a 1e308-day run", QUICK + b"", ("--set", "run.duration_days=1e308"), "run.duration"),
    ],
    ids=lambda x: x if isinstance(x, str) and len(x) < 40 else "",
)
def test_console_refuses_hostile_files_in_one_line(tmp_path, what, content, extra, key):
    p = _console(tmp_path, content, *extra)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2, (what, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert err.count("\n") == 1 and len(err) < MAX_LINE, err[:1000]
    assert f"'{key}" in err, err
