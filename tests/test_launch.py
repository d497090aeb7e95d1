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
