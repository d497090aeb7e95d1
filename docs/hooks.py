"""MkDocs hooks: the pages and tables that are generated from the code, so that they cannot drift.

- ``scenario-reference.md`` is made at build time from the scenario schema (tmesim.scenario's
  dataclasses and their ``param(...)`` metadata): every key, its type, unit, default, accepted
  range or choices and its sentence of documentation, with the field and drug presets and the
  sources of the defaults. It is not a file in the repository.
- A page may hold markers, HTML comments that GitHub does not show, which the build replaces by a
  table made from the code:

  ``<!-- tmesim:defaults tumor.transitions -->``  the keys of that scenario section with their
  defaults, units and sources (the defaults of tmesim.scenario);
  ``<!-- tmesim:sources -->``  the legend of the source tags ([PC-het], [Sharma], ...);
  ``<!-- tmesim:columns -->``  the time-series columns every run has, with units
  (tmesim.io.schema.BASE_COLUMNS);
  ``<!-- tmesim:codes -->``  the kind and tumor-state codes (tmesim.codes);
  ``<!-- tmesim:format-version -->``  the run-file format version written today.

Everything here but the two hook functions runs without MkDocs installed (tests/test_docs.py
imports it to check the reference against the schema).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing

#: the generated page's path inside docs/
REFERENCE_PAGE = "scenario-reference.md"

_MARKER = re.compile(r"<!-- tmesim:([a-z-]+)(?: ([A-Za-z0-9_.]+))? -->")


# ------------------------------------------------------------------------------ the schema walk


@dataclasses.dataclass
class Key:
    """One scenario key: its dotted path (``fields.<name>.boundary[i].kind``) and its schema."""

    path: str
    type: object
    default: object
    meta: dict


@dataclasses.dataclass
class Section:
    """One table of the scenario: its path (``tumor.transitions``), class and keys."""

    path: str
    cls: type
    keys: list[Key]


def _unwrap_optional(tp):
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    args = typing.get_args(tp)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _is_key(f: dataclasses.Field, tp) -> bool:
    """A user key: a ``param(...)`` (it has a unit entry in its metadata) or a nested table.
    Fields without either (a field's or drug's ``name``, a scenario's ``text`` and ``base_dir``)
    are filled in by tmesim, never read from a file."""
    inner, _ = _unwrap_optional(tp)
    return "unit" in f.metadata or dataclasses.is_dataclass(inner)


def sections() -> list[Section]:
    """Every table of a scenario, in the order of the schema, each with its keys."""
    from tmesim import scenario

    out: list[Section] = []

    def walk(cls, path: str) -> None:
        hints = typing.get_type_hints(cls)
        section = Section(path, cls, [])
        out.append(section)
        nested: list[tuple[typing.Any, str]] = []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if not f.init or not _is_key(f, tp):
                continue
            inner, _ = _unwrap_optional(tp)
            origin, args = typing.get_origin(inner), typing.get_args(inner)
            where = f"{path}.{f.name}" if path else f.name
            if dataclasses.is_dataclass(inner):
                nested.append((inner, where))
            elif origin is tuple and args and dataclasses.is_dataclass(args[0]):
                nested.append((args[0], f"{where}[i]"))
            elif origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
                nested.append((args[1], f"{where}.<target>"))
            else:
                section.keys.append(Key(where, tp, _default(f), dict(f.metadata)))
        for sub, where in nested:
            walk(sub, where)

    # the scenario's named tables: [fields.NAME] and [drugs.NAME] hold one table per field/drug
    hints = typing.get_type_hints(scenario.Scenario)
    top = [f for f in dataclasses.fields(scenario.Scenario) if _is_key(f, hints[f.name])]
    for f in top:
        walk(hints[f.name], f.name)
    walk(scenario.FieldConfig, "fields.<name>")
    walk(scenario.DrugConfig, "drugs.<name>")
    return [s for s in out if s.keys]


def key_paths() -> list[str]:
    """The dotted path of every key the reference lists."""
    return [k.path for s in sections() for k in s.keys]


# ------------------------------------------------------------------------------ formatting


def _num(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e7:
            return str(int(v))
        return f"{v:.6g}"
    return str(v)


def toml(v) -> str:
    """A value as it would be written in a scenario file."""
    if v is None:
        return "(not set)"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + " }" if v else "{}"
    return _num(v)


def type_name(tp) -> str:
    tp, optional = _unwrap_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    names = {float: "number", int: "integer", bool: "true/false", str: "string"}
    if tp in names:
        out = names[tp]
    elif origin is tuple:
        out = f"list of {names.get(args[0], str(args[0]))}s"
    elif origin is dict:
        out = "table: kind = number"
    else:
        out = str(tp)
    return out + (" (optional)" if optional else "")


def allowed(key: Key) -> str:
    """The accepted range or choices of a key, as the validation checks them."""
    from tmesim import scenario

    m = key.meta
    parts = []
    if m.get("choices"):
        each = "each one of" if typing.get_origin(key.type) is tuple else "one of"
        parts.append(f"{each} " + ", ".join(f"`{c}`" for c in m["choices"]))
    lo, hi = m.get("lo"), m.get("hi")
    if lo is not None:
        parts.append(("> " if m.get("lo_open") else ">= ") + _num(lo))
    if hi is not None:
        parts.append("<= " + _num(hi))
    if typing.get_origin(key.type) is dict:
        parts.append("keys: " + ", ".join(f"`{k}`" for k in scenario.RATE_KEYS) + "; values >= 0")
    if key.path.endswith("boundary[i].faces"):
        parts.append("each one of `all`, " + ", ".join(f"`{f}`" for f in scenario.FACES))
    if key.path.endswith(".preset"):
        parts.append("one of " + ", ".join(f"`{p}`" for p in scenario.DRUG_PRESETS))
    return "; ".join(parts) or "any"


def _cell(text: str) -> str:
    """Text for one table cell: one line, pipes escaped, angle brackets as text (not HTML)."""
    return _text(" ".join(str(text).split()).replace("|", "\\|"))


def _text(text: str) -> str:
    """Prose that may hold ``<run.name>``: angle brackets shown, not taken as HTML tags."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _doc(cls) -> str:
    return textwrap.dedent(inspect.getdoc(cls) or "").strip()


def _section_of(path: str) -> Section:
    for s in sections():
        if s.path == path:
            return s
    raise KeyError(f"no scenario section {path!r}; sections are {[s.path for s in sections()]}")


def defaults_table(path: str) -> str:
    """The keys of one scenario section with their defaults, units and documentation (which
    names the source of each default)."""
    rows = [
        "| key | default | unit | what it is, and where the default comes from |",
        "|---|---|---|---|",
    ]
    for k in _section_of(path).keys:
        rows.append(
            f"| `{k.path}` | {_cell(toml(k.default))} | {_cell(k.meta.get('unit', ''))} "
            f"| {_cell(k.meta.get('doc', ''))} |"
        )
    return "\n".join(rows)


def sources_list() -> str:
    """The source tags of the defaults, from tmesim.scenario's module documentation."""
    from tmesim import scenario

    doc = scenario.__doc__ or ""
    block = doc.split("Sources of defaults:", 1)[1].split("Rates of the persister", 1)[0]
    entries: list[str] = []
    for line in block.splitlines():
        m = re.match(r"\s*(\[[^\]]+\])\s+(.*)", line)
        if m:
            entries.append(f"- **{m.group(1)}** {m.group(2).strip()}")
        elif line.strip() and entries:
            entries[-1] += " " + line.strip()
    return "\n".join(entries)


def columns_table() -> str:
    from tmesim.io import schema

    rows = ["| column | units |", "|---|---|"]
    rows += [f"| `{c}` | {u} |" for c, u in schema.BASE_COLUMNS.items()]
    return "\n".join(rows)


def codes_table() -> str:
    from tmesim import codes

    rows = ["| code | `kind` | `tumor_state` |", "|---|---|---|"]
    n = max(len(codes.KIND_NAMES), len(codes.TUMOR_STATE_NAMES))
    for i in range(n):
        kind = codes.KIND_NAMES[i] if i < len(codes.KIND_NAMES) else ""
        state = codes.TUMOR_STATE_NAMES[i] if i < len(codes.TUMOR_STATE_NAMES) else ""
        rows.append(f"| {i} | {kind and f'`{kind}`'} | {state and f'`{state}`'} |")
    return "\n".join(rows)


def _presets_tables() -> list[str]:
    from tmesim import scenario

    out = [
        "## Field presets",
        "",
        "A field named `oxygen`, `hgf`, `igf1` or `signal` starts from these values; a scenario "
        "changes any of them in its `[fields.NAME]` table. A field of another name gives at least "
        "`units` and `diffusion_um2_per_min`. `oxygen` is always present; `hgf` is added when "
        "CAFs or TAMs are placed, `igf1` and `signal` when TAMs are placed or recruited. Each "
        "drug has a field of its own name (uM), made from its `[drugs.NAME]` table.",
        "",
        "| field | preset values |",
        "|---|---|",
    ]
    for name, values in scenario.FIELD_PRESETS.items():
        text = "; ".join(f"`{k}` = {toml(v)}" for k, v in values.items())
        out.append(f"| `{name}` | {_cell(text)} |")
    out += [
        "",
        "## Drug presets",
        "",
        '`[drugs.NAME] preset = "..."` fills what the table leaves out; an effect named in the '
        "table changes only the entries it gives (sources in `tmesim/drug_presets.py`).",
        "",
        "| preset | effects | what it stands for |",
        "|---|---|---|",
    ]
    for name, values in scenario.DRUG_PRESETS.items():
        effects = "; ".join(
            f"`{t}`: " + ", ".join(f"{k} = {toml(v)}" for k, v in e.items())
            for t, e in values.get("effects", {}).items()
        )
        out.append(f"| `{name}` | {_cell(effects)} | {_cell(values.get('description', ''))} |")
    out += [
        "",
        "## Effect targets",
        "",
        "The keys of `[drugs.NAME.effects]`; each is an Emax/Hill curve of the free local "
        "concentration (the `drugs.<name>.effects.<target>` keys above).",
        "",
        "| target | what the effect does |",
        "|---|---|",
    ]
    out += [f"| `{t}` | {_cell(d)} |" for t, d in scenario.EFFECT_TARGETS.items()]
    return out


def scenario_reference_markdown() -> str:
    """The whole scenario reference page."""
    from tmesim import scenario

    lines = [
        "# Scenario reference",
        "",
        "<!-- generated at build time by docs/hooks.py from tmesim/scenario.py: do not edit -->",
        "",
        "A scenario is a TOML file. Every quantity carries its unit in its key; any key left out "
        "takes the default below. `tmesim validate SCENARIO.toml` checks a file and prints what it "
        "will simulate; `--set key.path=value` (or `overrides=` in Python) changes one key. A key "
        "that is not listed here, a value of the wrong type or out of range is refused with its "
        "key path, the value and what was expected.",
        "",
        "This page is generated from the schema in `tmesim/scenario.py` each time the "
        "documentation is built. In key paths, `<name>` is a field or drug name (a short ASCII "
        "identifier that is none of the run file's own names), `[i]` an entry of a list of "
        "tables and `<target>` an effect target.",
        "",
        "Limits on any scenario: a file of at most "
        f"{scenario.MAX_SCENARIO_BYTES >> 20} MiB of UTF-8 text, tables nested at most "
        f"{scenario.MAX_DEPTH} deep, strings of at most {scenario.MAX_STRING} characters, at most "
        f"{scenario.MAX_AGENT_STEPS:.0e} agent steps, at most {scenario.MAX_BOLUSES:.0e} boluses "
        f"of one drug, field and drug names of at most {scenario.MAX_NAME} characters, "
        f"`run.name` of at most {scenario.MAX_RUN_NAME_BYTES} bytes "
        f"({_text(scenario.RUN_NAME_RULE)}).",
        "",
    ]
    lines += [
        "Checks across keys (`tmesim.scenario`'s whole-scenario validation): `grid.shape` has 2 "
        "or 3 entries, each >= 1, fewer than 2^31 voxels in all; the oxygen thresholds are in "
        "order (`necrosis_max_mmHg` <= `necrosis_threshold_mmHg` <= `hypoxic_threshold_mmHg` "
        "<= `proliferation_saturation_mmHg`, and `proliferation_threshold_mmHg` < "
        "`proliferation_saturation_mmHg`); `doubling_time_h` is at least one agent step; "
        "`init.tumor.persister_fraction + resistant_fraction` <= 1; a `disk` needs a 2D grid and "
        "a `sphere` a 3D one; `center_um` and `size_um` have one entry per grid axis; a "
        "`rectangle` needs `size_um`, a `mask` placement its `mask` file of the grid's shape; "
        "random vessels need a `density` > 0; each face is named by at most one boundary entry; "
        "a schedule's `stop_day` comes after its `start_day`; with `medium.stirred` every solved "
        "field has one Dirichlet value. The [model](model.md) says what each key does.",
        "",
    ]
    for s in sections():
        lines += [f"## `[{s.path}]`", ""]
        doc = _doc(s.cls)
        if doc and not doc.startswith(s.cls.__name__ + "("):
            lines += ["```text", doc, "```", ""]
        lines += [
            "| key | type | unit | default | accepted | description |",
            "|---|---|---|---|---|---|",
        ]
        for k in s.keys:
            lines.append(
                f"| `{k.path}` | {_cell(type_name(k.type))} | {_cell(k.meta.get('unit', ''))} "
                f"| {_cell(toml(k.default))} | {_cell(allowed(k))} "
                f"| {_cell(k.meta.get('doc', ''))} |"
            )
        lines.append("")
    lines += _presets_tables()
    lines += ["", "## Sources of the defaults", "", sources_list(), ""]
    return "\n".join(lines)


def expand_markers(markdown: str) -> str:
    """Replace the ``<!-- tmesim:... -->`` markers of a page by their tables."""

    def one(m: re.Match) -> str:
        what, arg = m.group(1), m.group(2)
        if what == "defaults" and arg:
            return defaults_table(arg)
        if what == "sources":
            return sources_list()
        if what == "columns":
            return columns_table()
        if what == "codes":
            return codes_table()
        if what == "format-version":
            from tmesim.io import schema

            return schema.FORMAT_VERSION
        raise ValueError(f"docs: unknown marker {m.group(0)!r}")

    return _MARKER.sub(one, markdown)


# ------------------------------------------------------------------------------ the MkDocs hooks


def on_files(files, config):
    """Add the generated scenario reference to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, REFERENCE_PAGE, content=scenario_reference_markdown()))
    return files


def on_page_markdown(markdown, page, config, files):
    return expand_markers(markdown)


_HREF = re.compile(r'(href=")([^"#:]+\.md)(#[^"]*)?(")')


def on_page_content(html, page, config, files):
    """Links of a notebook's Markdown cells to other pages (``../model.md``): MkDocs rewrites
    those of Markdown pages to the pages' URLs, mkdocs-jupyter leaves them as written, so they
    are rewritten here; a link to no page is a warning (an error under --strict)."""
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    import logging
    import posixpath

    log = logging.getLogger("mkdocs.hooks.tmesim")

    def one(m: re.Match) -> str:
        src = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), m[2]))
        target = files.get_file_from_path(src)
        if target is None:
            log.warning(f"{page.file.src_uri}: link to {m[2]!r}, which is not a page of the site")
            return m[0]
        return m[1] + target.url_relative_to(page.file) + (m[3] or "") + m[4]

    return _HREF.sub(one, html)
