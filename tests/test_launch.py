"""The launch layer (tmesim.launch): the CUDA sources found, assembled and compiled (nvcc
where present), the portable C++ build cached in a private folder, the sources shipped with the
package.

The kernels themselves are checked against their numpy twins beside each driver's tests:
tests/test_rng_kernel.py, tests/steps/test_fields_kernel.py, tests/steps/test_tumor_kernel.py,
tests/steps/test_stroma_kernel.py (each on the portable C++ build and on a GPU when one is present,
through the ``launcher`` fixture of tests/conftest.py).
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tmesim import launch


# ------------------------------------------------------------------------------------------ sources
def test_assembled_source_compiles_with_nvcc(tmp_path):
    """What get_module hands to NVRTC (preamble + inlined includes) is valid CUDA and exports
    every kernel the sources declare (TM_KERNEL), in every file of KERNEL_SOURCES."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    src = tmp_path / "all.cu"
    src.write_text(launch.kernel_source())
    r = subprocess.run(
        [
            nvcc,
            "--ptx",
            "-arch=sm_80",
            "-std=c++17",
            "-Werror",
            "all-warnings",
            str(src),
            "-o",
            str(tmp_path / "all.ptx"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    ptx = (tmp_path / "all.ptx").read_text()
    d = launch.find_kernel_dir()
    declared = [
        m.group(1)
        for f in launch.KERNEL_SOURCES
        for m in re.finditer(r"TM_KERNEL\s+void\s+(\w+)\s*\(", (d / f).read_text())
    ]
    assert {
        "tm_rng_raw_at",
        "tm_laplacian",
        "tm_tumor_decide",
        "tm_stroma_decide",
        "tm_lod_sweep",
    } <= set(declared)
    for name in declared:
        assert f".entry {name}(" in ptx, name


def test_missing_sources_name_every_place_searched(monkeypatch, tmp_path):
    monkeypatch.setattr(
        launch, "kernel_dir_candidates", lambda: [("somewhere", tmp_path / "nope"), ("zip", None)]
    )
    with pytest.raises(launch.KernelSourceError) as e:
        launch.find_kernel_dir()
    assert str(tmp_path / "nope") in str(e.value) and "zip: not on a file system" in str(e.value)


def test_portable_builds_are_cached_in_a_private_folder(monkeypatch, tmp_path):
    """The portable library is loaded from a folder only this user can write to (mode 0700,
    owned by this user); a folder open to others, or not this user's, is passed over."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(launch.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    d = launch.portable_cache_dir()
    assert d == tmp_path / "cache" / "tmesim" / "portable"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid == os.getuid()
    d.chmod(0o777)
    fallback = launch.portable_cache_dir()
    assert fallback == tmp_path / "tmp" / f"tmesim-portable-{os.getuid()}"
    assert stat.S_IMODE(fallback.stat().st_mode) == 0o700
    fallback.chmod(0o755)
    with pytest.raises(launch.KernelSourceError, match="mode 0755, expected 0700"):
        launch.portable_cache_dir()


@pytest.mark.gpu
def test_module_is_built_once_per_device(gpu_launcher):
    assert launch.get_module(gpu_launcher.device_id) is launch.get_module(gpu_launcher.device_id)


# ---------------------------------------------------------------------------------------- packaging
def test_kernels_ship_with_the_package():
    """setup.cfg maps kernels/ to tmesim/kernels/ and takes every source file as package data."""
    cfg = configparser.ConfigParser()
    root = Path(launch.__file__).resolve().parent.parent
    if not (root / "setup.cfg").is_file():
        pytest.skip("not a source checkout")
    cfg.read(root / "setup.cfg")
    assert "tmesim.kernels" in cfg["options"]["packages"].split()
    mapping = dict(
        line.split("=") for line in cfg["options"]["package_dir"].split("\n") if "=" in line
    )
    assert {k.strip(): v.strip() for k, v in mapping.items()}["tmesim.kernels"] == "kernels"
    patterns = cfg["options.package_data"]["tmesim.kernels"].replace(",", " ").split()
    for f in (root / "kernels").iterdir():
        if f.suffix in (".cu", ".cuh", ".h"):
            assert any(fnmatch.fnmatch(f.name, p) for p in patterns), f.name


# ------------------------------------------------------------------------------- planted library
_PLANTED = r"""
#include <cstdio>
#include <cstdlib>
extern "C" __attribute__((constructor)) void planted() {
    const char *p = std::getenv("TM_PLANTED_MARKER");
    if (p) { FILE *f = std::fopen(p, "w"); if (f) { std::fputs("ran", f); std::fclose(f); } }
}
"""


def _plant(folder: Path, tmp_path: Path, cxx: str) -> None:
    """A library at the exact name the portable build would load from ``folder``; loading it
    writes the marker file (what a real attacker's library would do instead is worse)."""
    src = tmp_path / "planted.cpp"
    src.write_text(_PLANTED)
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / launch.portable_library_name(cxx)
    subprocess.run([cxx, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)


def _load_in_child(tmp_path: Path, cache: Path, tmp: Path):
    """``PortableLauncher()`` in a fresh process whose cache and temporary folders are given."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), TMPDIR=str(tmp))
    env["TM_PLANTED_MARKER"] = str(tmp_path / "marker")
    code = "from tmesim.launch import PortableLauncher; PortableLauncher()"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("how", ["private", "other_owner", "open_to_all"])
def test_a_library_planted_by_another_user_is_never_loaded(tmp_path, how):
    """A library planted where the portable build looks, under the name anyone can compute, runs
    only from a folder private to this user ("private", the control showing the planted library
    would run if found). Another user's folder, or one that others can write to, is passed over
    for every candidate (here both are the attacker's), so the build refuses and loads nothing."""
    cxx = launch.find_cxx()
    if cxx is None:
        pytest.skip("no C++ compiler")
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir()
    folders = [cache / "tmesim" / "portable", tmp / f"tmesim-portable-{os.getuid()}"]
    for folder in folders:
        _plant(folder, tmp_path, cxx)
        if how == "private":
            folder.chmod(0o700)
        elif how == "open_to_all":
            folder.chmod(0o777)
        else:
            if os.getuid() != 0:
                pytest.skip("making a folder another user's needs root")
            os.chown(folder, 12345, 12345)
            folder.chmod(0o755)
    r = _load_in_child(tmp_path, cache, tmp)
    ran = (tmp_path / "marker").exists()
    if how == "private":
        assert r.returncode == 0 and ran, r.stderr
    else:
        assert not ran, "the planted library was loaded"
        assert r.returncode != 0 and "no private folder for the portable kernel build" in r.stderr


def test_a_library_file_writable_by_others_is_rebuilt_not_loaded(tmp_path):
    """In this user's private folder, a cached library that others may write to (or that is a
    symbolic link) is not trusted: the build replaces it with a fresh one."""
    cxx = launch.find_cxx()
    if cxx is None:
        pytest.skip("no C++ compiler")
    folder = tmp_path / "cache" / "tmesim" / "portable"
    _plant(folder, tmp_path, cxx)
    folder.chmod(0o700)
    lib = folder / launch.portable_library_name(cxx)
    lib.chmod(0o666)
    assert launch._private_file_problem(lib) == "mode 0666, writable by others"
    link = tmp_path / "link.so"
    link.symlink_to(lib)
    assert launch._private_file_problem(link) == "not a plain file"
    lib.chmod(0o755)
    assert launch._private_file_problem(lib) is None
