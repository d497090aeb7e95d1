"""The package's house plan, read from the sources (ast), not by importing them.

- the launch layer (``tmesim/launch.py``: finding, building and launching the kernels) knows
  nothing of the model: of tmesim it imports ``tmesim.errors`` only, besides the standard library
  and numpy (cupy only inside functions, so ``import tmesim`` works without it);
- each step family's numpy reference ``tmesim/steps/<family>.py`` has its CUDA driver
  ``tmesim/steps/<family>_kernel.py`` beside it, and the reference imports neither the driver
  nor the launch layer (the CPU path never loads them);
- the data flow one way: the scenario layer (``tmesim/scenario.py``) imports nothing
  downstream of it (no model, backend, run or file code), and the viewer's reader and layers read
  run files through ``tmesim.io`` only (the documented schema), never the simulator;
- nothing imports the removed kernel modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tmesim"
#: the modules of the launch layer
LAUNCH_LAYER = ("launch.py",)
#: what the launch layer may import of tmesim
LAUNCH_MAY_IMPORT = {"tmesim.errors"}
#: step families with a numpy reference and a kernel driver
FAMILIES = ("fields", "tumor", "stroma")
#: modules that must not exist (their contents are in tmesim.launch and
#: tmesim.steps.<family>_kernel); ``tmesim.kernels`` names only the package data of kernels/
REMOVED = {"tmesim.kernels", "tmesim.kernel_fields", "tmesim.kernel_stroma"}


def module_name(path: Path) -> str:
    rel = path.resolve().relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str | None = None) -> list[tuple[str, int, bool]]:
    """Every module that ``path`` imports, as (absolute name, line, at module level), with
    relative imports resolved as if the file were module ``name`` (default: its own name).
    ``from package import a, b`` counts ``package.a`` and ``package.b`` (either may be a module)
    as well as ``package``."""
    name = name or module_name(path)
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno, id(node) in top))
            out += [(f"{mod}.{a.name}", node.lineno, id(node) in top) for a in node.names]
    return out


#: of tmesim, what each upstream module may import (the rest of the package is downstream)
UPSTREAM_MAY_IMPORT = {
    PKG / "scenario.py": {
        "tmesim.codes",
        "tmesim.errors",
        "tmesim.drug_presets",
        "tmesim.rules_text",
    },
    PKG / "drug_presets.py": set(),
    PKG.parent / "viewer/tmesim_napari/_reader.py": {"tmesim.errors", "tmesim.io"},
    PKG.parent / "viewer/tmesim_napari/_layers.py": {"tmesim.errors", "tmesim.io"},
    PKG.parent / "viewer/tmesim_napari/_style.py": {"tmesim.colors"},
    PKG.parent / "viewer/tmesim_napari/_roles.py": {"tmesim.scenario"},
}


def tmesim_imports_outside(path: Path, allowed: set[str], name: str) -> list[str]:
    """The tmesim modules ``path`` imports that are not in ``allowed`` (or below one)."""
    return [
        f"{path.name}:{line} imports {mod}"
        for mod, line, _ in imports(path, name)
        if mod.split(".")[0] == "tmesim"
        and mod != "tmesim"
        and not any(mod == m or mod.startswith(m + ".") for m in allowed)
    ]


@pytest.mark.parametrize("path", sorted(UPSTREAM_MAY_IMPORT), ids=lambda p: p.name)
def test_upstream_modules_import_nothing_downstream(path):
    name = "tmesim_napari." + path.stem if "viewer" in path.parts else module_name(path)
    assert tmesim_imports_outside(path, UPSTREAM_MAY_IMPORT[path], name) == []


def test_the_upstream_check_sees_a_downstream_import(tmp_path):
    f = tmp_path / "scenario.py"
    f.write_text("from .drugs import Pharmacokinetics\nfrom . import simulation\n")
    allowed = UPSTREAM_MAY_IMPORT[PKG / "scenario.py"]
    assert len(tmesim_imports_outside(f, allowed, "tmesim.scenario")) == 3


def launch_layer_problems(path: Path, name: str | None = None) -> list[str]:
    """What ``path``, a module of the launch layer, imports that it may not."""
    bad = []
    for mod, line, at_top in imports(path, name):
        root = mod.split(".")[0]
        if root == "tmesim":
            # `from . import errors` gives "tmesim" and "tmesim.errors": the package itself is
            # fine (its __init__ runs in any case), anything but errors below it is not
            if mod != "tmesim" and not any(
                mod == m or mod.startswith(m + ".") for m in LAUNCH_MAY_IMPORT
            ):
                bad.append(f"{path.name}:{line} imports {mod}")
        elif root == "cupy":
            if at_top:
                bad.append(f"{path.name}:{line} imports cupy at module level")
        elif root != "numpy" and root not in sys.stdlib_module_names and root != "__future__":
            bad.append(f"{path.name}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize("name", LAUNCH_LAYER)
def test_launch_layer_imports_nothing_of_the_model(name):
    assert launch_layer_problems(PKG / name) == []


def test_the_check_sees_a_model_import(tmp_path):
    """The check above fails when the launch layer reaches into the model."""
    src = (PKG / "launch.py").read_text()
    for bad in (
        "from .steps import tumor\n",
        "from . import scenario\n",
        "from .steps.tumor import TumorRules\n",
        "import tmesim.drugs\n",
        "import cupy\n",
    ):
        f = tmp_path / "launch.py"
        f.write_text(src.replace("\nimport numpy as np\n", f"\nimport numpy as np\n{bad}", 1))
        assert launch_layer_problems(f, "tmesim.launch"), bad


@pytest.mark.parametrize("family", FAMILIES)
def test_each_step_has_its_kernel_twin_beside_it(family):
    steps = PKG / "steps"
    assert (steps / f"{family}.py").is_file()
    assert (steps / f"{family}_kernel.py").is_file()
    twin = f"tmesim.steps.{family}_kernel"
    for mod, line, _ in imports(steps / f"{family}.py"):
        assert mod != "tmesim.launch" and not mod.endswith("_kernel"), (
            f"steps/{family}.py:{line} imports {mod}: the numpy reference stands alone"
        )
    uses = {mod for mod, _, _ in imports(steps / f"{family}_kernel.py")}
    assert f"tmesim.steps.{family}" in uses, f"{twin} does not build on its numpy twin"


def test_nothing_imports_a_removed_module():
    for name in REMOVED:
        rel = name.split(".")[1:]
        assert not PKG.joinpath(*rel).with_suffix(".py").exists(), name
    bad = [
        f"{p.relative_to(PKG.parent)}:{line} imports {mod}"
        for p in sorted(PKG.rglob("*.py"))
        for mod, line, _ in imports(p)
        if mod in REMOVED or any(mod.startswith(r + ".") for r in REMOVED)
    ]
    assert bad == []
