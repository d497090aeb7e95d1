"""The documentation: the site builds with no warning, the tutorial notebook runs and draws its
figures, README and the pages name only files that exist, the scenario reference lists every key
of the schema with its default and unit, and LICENSE and CITATION.cff agree with the package.

The site build and the notebook need the docs packages of the test extra (mkdocs,
mkdocs-jupyter, nbclient, ipykernel); without them those two tests skip and say which is missing.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

import tmesim
from tmesim import scenario
from tmesim.errors import ScenarioError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOK = DOCS / "tutorials" / "first-run.ipynb"


@functools.cache
def _hooks():
    """docs/hooks.py, the generator of the scenario reference (it imports no MkDocs itself)."""
    name = "tmesim_docs_hooks"
    spec = importlib.util.spec_from_file_location(name, DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _need(module: str, what: str):
    return pytest.importorskip(module, reason=f"{what} is not installed (pip install -e '.[test]')")


def _need_kernel() -> None:
    _need("ipykernel", "ipykernel (the python3 Jupyter kernel)")
    from jupyter_client.kernelspec import NoSuchKernel, get_kernel_spec

    try:
        get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel (python3 -m ipykernel install --user)")


# ------------------------------------------------------------------------------ (1) the site


@pytest.mark.slow  # executes the tutorial again (test 2 runs it alone): 15-40 s on 2 cores
def test_the_site_builds_with_no_warning(tmp_path):
    """`mkdocs build --strict` as CI runs it: any warning (a broken link or anchor, a page left
    out of the nav, a notebook cell that raises) fails the build. The generated pages must be
    in the site, the markers replaced, and the executed tutorial must show its figures."""
    _need("mkdocs", "mkdocs")
    _need("mkdocs_jupyter", "mkdocs-jupyter")
    _need("material", "mkdocs-material")
    _need_kernel()
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=tmp_path,  # anything a plugin writes beside the working folder stays out of the tree
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert not re.search(r"^WARNING\s+-", proc.stderr, re.M), proc.stderr[-4000:]
    reference = (site / "scenario-reference" / "index.html").read_text(encoding="utf-8")
    for path in ("run.seed", "tumor.transitions.exit_per_h", "drugs.&lt;name&gt;.schedule.kind"):
        assert f"<code>{path}</code>" in reference, path
    for page in ("model", "file-format"):
        html = (site / page / "index.html").read_text(encoding="utf-8")
        assert "tmesim:" not in html, f"{page}: a marker was left unexpanded"
    model = (site / "model" / "index.html").read_text(encoding="utf-8")
    assert "<code>tumor.transitions.entry_basal_per_h</code>" in model  # a generated table
    tutorial = (site / "tutorials" / "first-run" / "index.html").read_text(encoding="utf-8")
    assert tutorial.count("data:image/png;base64,") >= 2, "the executed notebook drew no figure"
    links = re.findall(r'href="([^"]+)"', tutorial)
    assert "../../scenario-reference/" in links
    assert not [x for x in links if x.split("#")[0].endswith(".md")], "links left to sources"


# ------------------------------------------------------------------------------ (2) the notebook


def test_the_tutorial_notebook_runs_and_draws_its_figures(tmp_path, monkeypatch):
    nbformat = _need("nbformat", "nbformat")
    nbclient = _need("nbclient", "nbclient")
    _need_kernel()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the notebook is kept without outputs: the site shows those of the code it is built with
    stored = [c for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stored, f"{NOTEBOOK.name} holds outputs; clear them before committing"
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's run file goes into tmp_path
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # run from docs/tutorials/
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    by_tag = {t: c for c in nb.cells for t in c.metadata.get("tags", [])}
    for tag in ("figure", "snapshot"):
        outputs = by_tag[tag].outputs
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{tag}: no image"
        assert not [o for o in outputs if o.output_type == "error"]
    assert list(tmp_path.rglob("first-run.h5")), "the run file was not written where expected"


# ------------------------------------------------------------------------------ (3) links

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))


def _notebook_markdown() -> str:
    import json

    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def relative_links(text: str) -> list[str]:
    """The relative targets of the Markdown and HTML links of ``text``, code left out."""
    prose = _CODE.sub("", _FENCE.sub("", text))
    targets = _LINK.findall(prose) + _HTML_LINK.findall(prose)
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", t, re.I)]


def _missing(base: Path, targets, generated=()) -> list[str]:
    out = []
    for t in targets:
        path = t.split("#", 1)[0].split("?", 1)[0]
        if not path:
            continue
        where = (base / path).resolve()
        in_docs = where.is_relative_to(DOCS)
        if not where.exists() and not (in_docs and where.relative_to(DOCS).as_posix() in generated):
            out.append(t)
    return out


def test_the_link_check_sees_a_broken_link():
    text = "See [the model](MODEL.md), ![a](docs/viewer.png), `[not](code.md)` and [w](https://x)."
    assert relative_links(text) == ["MODEL.md", "docs/viewer.png"]
    assert _missing(ROOT, relative_links(text)) == ["MODEL.md"]


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file(page):
    generated = {_hooks().REFERENCE_PAGE}
    missing = _missing(page.parent, relative_links(page.read_text(encoding="utf-8")), generated)
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files {missing}"


def test_the_notebook_links_point_at_pages():
    generated = {_hooks().REFERENCE_PAGE}
    missing = _missing(NOTEBOOK.parent, relative_links(_notebook_markdown()), generated)
    assert not missing, f"{NOTEBOOK.name}: links to missing files {missing}"


def named_files(text: str) -> list[str]:
    """Files a page names in its prose without linking them: ``NAME.md`` documents (README's
    MODEL.md, DESIGN.md) and repository paths in code spans (`tmesim/steps/tumor.py`)."""
    prose = _FENCE.sub("", text)
    names = re.findall(r"(?<![\w/.-])([A-Z][A-Z_]*\.md)\b", prose)
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for span in re.findall(r"`([^`\n]+)`", prose):
        token = span.split()[0].split("::")[0] if span.split() else ""
        if "/" in token and token.split("/")[0] in tops:
            names.append(token)
    return names


def test_readme_and_pages_name_only_files_that_exist():
    """README pointed readers at MODEL.md and DESIGN.md, which are not in the repository: every
    document and repository path a page names must be there (globs and prefixes match)."""
    missing = {}
    for page in _markdown_files():
        for name in named_files(page.read_text(encoding="utf-8")):
            name = re.sub(r"<[^>]+>", "*", name)  # tmesim/steps/<family>.py: any family
            if not (list(ROOT.glob(name)) or list(ROOT.glob(name.rstrip("*") + "*"))):
                missing.setdefault(page.relative_to(ROOT).as_posix(), []).append(name)
    assert not missing, f"files named but not in the repository: {missing}"


# ------------------------------------------------------------------------------ (4) the reference

#: dataclass fields a scenario file cannot set (tmesim fills them in); checked below to be refused
NOT_KEYS = {"Scenario": {"text", "base_dir"}, "FieldConfig": {"name"}, "DrugConfig": {"name"}}


def schema_keys() -> dict[str, dataclasses.Field]:
    """Every key a scenario accepts, by a walk of tmesim.scenario's dataclasses of its own:
    nested tables by their path, named tables as ``fields.<name>`` and ``drugs.<name>``, lists
    of tables as ``[i]``, tables of effects as ``<target>``."""
    out: dict[str, dataclasses.Field] = {}

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in NOT_KEYS.get(cls.__name__, ()):
                continue
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            inner = args[0] if typing.get_origin(tp) in (typing.Union, type(int | None)) else tp
            path = f"{prefix}.{f.name}" if prefix else f.name
            if cls is scenario.Scenario and f.name == "fields":
                walk(scenario.FieldConfig, "fields.<name>")
            elif cls is scenario.Scenario and f.name == "drugs":
                walk(scenario.DrugConfig, "drugs.<name>")
            elif dataclasses.is_dataclass(inner):
                walk(inner, path)
            elif typing.get_origin(inner) is tuple and dataclasses.is_dataclass(
                typing.get_args(inner)[0]
            ):
                walk(typing.get_args(inner)[0], f"{path}[i]")
            elif typing.get_origin(inner) is dict and dataclasses.is_dataclass(
                typing.get_args(inner)[1]
            ):
                walk(typing.get_args(inner)[1], f"{path}.<target>")
            else:
                out[path] = f

    walk(scenario.Scenario, "")
    return out


def reference_rows() -> dict[str, list[str]]:
    """{key path: the cells of its row} of the generated scenario reference."""
    rows = {}
    for line in _hooks().scenario_reference_markdown().splitlines():
        m = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if m and "." in m.group(1):  # keys are dotted; preset and target rows are not
            cells = re.split(r"(?<!\\)\|", m.group(2))
            rows[m.group(1)] = [html.unescape(c.strip()) for c in cells]
    return rows


def test_the_scenario_reference_lists_every_key_of_the_schema():
    keys, rows = schema_keys(), reference_rows()
    assert len(keys) > 100
    assert sorted(set(keys) - set(rows)) == [], "keys the reference leaves out"
    assert sorted(set(rows) - set(keys)) == [], "rows for keys the schema does not have"


def _toml_number(text):
    return None if text is None else tomllib.loads(f"v = {text}")["v"]


def test_the_scenario_reference_gives_each_key_its_unit_default_and_choices():
    rows = reference_rows()
    for path, f in schema_keys().items():
        _type, unit, default, accepted, doc = rows[path]
        assert unit == f.metadata["unit"], path
        assert doc == " ".join(f.metadata["doc"].split()).replace("|", "\\|"), path
        expected = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if expected is None:
            assert default == "(not set)", path
        else:  # the default as TOML reads it back (6 significant digits)
            value = tomllib.loads(f"v = {default}")["v"]
            if isinstance(expected, tuple):
                expected = list(expected)
            assert value == pytest.approx(expected, rel=1e-5), (path, default)
        for choice in f.metadata.get("choices") or ():
            assert f"`{choice}`" in accepted, (path, choice)
        bounds = dict(re.findall(r"(?:^|; )(>=|>|<=) ([-\d.e+]+)", accepted))
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if lo is not None:
            rel = ">" if f.metadata.get("lo_open") else ">="
            assert _toml_number(bounds.get(rel)) == lo, (path, accepted)
        if hi is not None:
            assert _toml_number(bounds.get("<=")) == hi, (path, accepted)
        if lo is None and hi is None:
            assert not bounds, (path, accepted)


def test_what_the_reference_leaves_out_is_refused_by_the_loader():
    with pytest.raises(ScenarioError, match="text"):
        scenario.loads_scenario('text = "x"\n')
    with pytest.raises(ScenarioError, match="name"):
        scenario.loads_scenario('[fields.oxygen]\nname = "x"\n')
    with pytest.raises(ScenarioError, match="name"):
        scenario.loads_scenario('[drugs.d]\npreset = "egfr_tki"\nname = "x"\n')


def test_the_model_page_markers_name_real_sections():
    hooks = _hooks()
    text = (DOCS / "model.md").read_text(encoding="utf-8")
    expanded = hooks.expand_markers(text)
    assert "<!-- tmesim:" not in expanded
    for section in re.findall(r"<!-- tmesim:defaults ([\w.]+) -->", text):
        for path, f in schema_keys().items():
            if path.rsplit(".", 1)[0] == section:
                assert f"`{path}`" in expanded, path
                shown = html.unescape(expanded).replace("\\|", "|")
                assert " ".join(f.metadata["doc"].split()) in shown, path


# ------------------------------------------------------------------------------ (5) licence


def test_citation_parses_and_agrees_with_the_package_and_the_licence():
    yaml = _need("yaml", "PyYAML")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    assert cff["version"] == tmesim.__version__
    assert cff["title"] and cff["message"]
    assert cff["authors"] == [{"name": "The tmesim developers"}]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(cff["date-released"]))
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8").splitlines()
    spdx = {"BSD-3-Clause": "BSD 3-Clause License"}
    assert licence[0] == spdx[cff["license"]]
    assert "Copyright (c) 2026, the tmesim developers" in licence
