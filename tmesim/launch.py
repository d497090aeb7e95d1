"""The launch layer: finding the CUDA sources (``kernels/*.cu``), building them, launching them.

The sources live in the repository's ``kernels/`` folder and ship inside the installed package as
package data (setup.cfg maps ``tmesim.kernels = kernels``, so a wheel holds them in
``tmesim/kernels/``; an editable install reads the repository's folder). :func:`kernel_source`
joins them into one translation unit behind a ``#define`` preamble; :func:`get_module` builds it
with ``cupy.RawModule`` once per device.

Every kernel runs through a *launcher*, a callable ``L(name, n_work, *args)`` with the array
module of its arguments as ``L.xp``: :class:`CupyLauncher` on a GPU, or :class:`PortableLauncher`,
which calls the same sources compiled as plain C++ (``kernels/portable.h``, :func:`build_portable`)
through ctypes on numpy arrays -- how CI checks the kernels' logic against numpy without a GPU.
A backend makes its launcher (``backend.launcher()``) and every driver takes it explicitly: there
is no launcher of a "current" device.

The drivers of the steps (``tmesim.steps.<family>_kernel``, ``tmesim.rng_kernel``) share the
argument helpers at the end of this module. This module knows nothing of the model: it imports
the standard library, numpy and :mod:`tmesim.errors` only, and cupy only inside functions, so
``import tmesim`` works without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError

#: translation units, in build order; headers are pulled in by their #include lines
KERNEL_SOURCES = ("rng.cu", "fields.cu", "tumor.cu", "stroma.cu", "mechanics.cu", "observe.cu")
#: threads per block of every launch (the kernels use grid-stride loops, so any size is correct)
BLOCK = 256
#: most blocks per launch: enough to fill any current GPU many times over; grid-stride loops do
#: the rest
MAX_BLOCKS = 65535 * 16
#: flags of the portable (host C++) build: -ffp-contract=off keeps a*b+c two roundings, as numpy
#: and the kernels' __fmul_rn/__fadd_rn intrinsics have it
PORTABLE_FLAGS = (
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-Wall",
    "-Wextra",
    "-Werror",
)

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


class KernelSourceError(UserError):
    """The kernel sources could not be found or built."""


# ---------------------------------------------------------------------------------------- sources
def kernel_dir_candidates() -> list[tuple[str, Path | None]]:
    """Where the kernel sources may be, in search order, each with how it was found."""
    out: list[tuple[str, Path | None]] = []
    env = os.environ.get("TMESIM_KERNELS_DIR")
    if env:
        out.append(("$TMESIM_KERNELS_DIR", Path(env)))
    try:
        from importlib import resources

        res = resources.files("tmesim") / "kernels"  # package data of a regular install
        out.append(("package data tmesim/kernels", res if isinstance(res, Path) else None))
    except Exception:  # an unusual loader: reported as "not on a file system"
        out.append(("package data tmesim/kernels", None))
    out.append(
        (
            "repository kernels/ (editable install)",
            Path(__file__).resolve().parent.parent / "kernels",
        )
    )
    return out


def find_kernel_dir() -> Path:
    """The first folder holding every file of :data:`KERNEL_SOURCES`.

    Raises:
        KernelSourceError: naming every place searched and what was missing there.
    """
    tried = []
    for how, path in kernel_dir_candidates():
        if path is None:
            tried.append(f"  {how}: not on a file system")
            continue
        missing = [f for f in KERNEL_SOURCES if not (path / f).is_file()]
        if not missing:
            return path
        tried.append(f"  {how}: {path} (missing {', '.join(missing)})")
    raise KernelSourceError("CUDA kernel sources not found; searched:\n" + "\n".join(tried))


def _expand(path: Path, seen: set[Path]) -> str:
    """Source of ``path`` with its quoted #includes inlined, each file once."""
    seen.add(path)
    text = path.read_text()

    def sub(m):
        inc = (path.parent / m.group(1)).resolve()
        if inc in seen:
            return f"/* {m.group(1)}: already included */"
        if not inc.is_file():
            raise KernelSourceError(f'{path}: #include "{m.group(1)}" not found at {inc}')
        return f"/* ---- {m.group(1)} ---- */\n" + _expand(inc, seen)

    return _INCLUDE.sub(sub, text)


def kernel_source(defines: dict[str, object] | None = None) -> str:
    """All kernels as one CUDA translation unit: a ``#define`` preamble, then the sources with
    their local includes inlined (so the build needs no include path and works from a wheel)."""
    d = find_kernel_dir()
    pre: dict[str, object] = {"TM_RAWMODULE": 1, "TM_BLOCK": BLOCK}
    pre.update(defines or {})
    lines = [f"#define {k} {v}" for k, v in pre.items()]
    seen: set[Path] = set()
    parts = [
        f"/* ==== {name} ==== */\n" + _expand((d / name).resolve(), seen) for name in KERNEL_SOURCES
    ]
    return "\n".join(lines) + "\n" + "\n".join(parts)


def kernel_defines(name: str, prefix: str) -> dict[str, int]:
    """Integer ``#define PREFIXNAME value`` constants of a kernel source, by NAME (the single
    source of truth for index layouts such as the tumor rules' parameter vector)."""
    text = (find_kernel_dir() / name).read_text()
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(rf"^#define {prefix}(\w+)\s+(\d+)\b", text, re.M)
    }


# ---------------------------------------------------------------------------------------- GPU build
_MODULES: dict[int, object] = {}


def get_module(device_id: int):
    """The ``cupy.RawModule`` of every kernel for CUDA device ``device_id`` (built once per
    device, memoized)."""
    import cupy

    dev = cupy.cuda.Device(device_id)
    if dev.id not in _MODULES:
        code = kernel_source()
        with dev:
            try:
                mod = cupy.RawModule(code=code, options=("--std=c++17",))
                mod.compile()
            except Exception as e:  # re-raised with where the sources came from
                searched = "\n".join(f"  {how}: {p}" for how, p in kernel_dir_candidates())
                raise KernelSourceError(
                    f"building the CUDA kernels from {find_kernel_dir()} "
                    f"failed on device {dev.id}: {e}\nsearched:\n{searched}"
                ) from e
        _MODULES[dev.id] = mod
    return _MODULES[dev.id]


class CupyLauncher:
    """Launches kernels on a CUDA device through cupy.

    Args:
        device_id: CUDA device number.
    """

    def __init__(self, device_id: int):
        import cupy

        self.xp = cupy
        self.device_id = cupy.cuda.Device(device_id).id
        self.module = get_module(self.device_id)

    def __call__(self, name: str, n_work: int, *args):
        for a in args:
            if hasattr(a, "flags") and not a.flags.c_contiguous:
                raise ValueError(f"{name}: array arguments must be C-contiguous")
        blocks = max(1, min((int(n_work) + BLOCK - 1) // BLOCK, MAX_BLOCKS))
        with self.xp.cuda.Device(self.device_id):
            self.module.get_function(name)((blocks,), (BLOCK,), args)


# ---------------------------------------------------------------------------------------- CPU build
def find_cxx() -> str | None:
    """A C++ compiler for the portable build: $CXX, g++ or clang++."""
    for c in (os.environ.get("CXX"), "g++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


def _private_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a folder only this user can write to (None: it is one)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return str(e)
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder (or a symbolic link)"
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is not None and st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not by this user (uid {uid})"
    if uid is not None and stat.S_IMODE(st.st_mode) & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, expected 0700"
    return None


def _private_file_problem(path: Path) -> str | None:
    """Why the file ``path`` may not be loaded as this user's own build (None: it may): not a
    plain file (a symbolic link, say), another user's, or writable by others. A file that fails
    is rebuilt and replaced, never loaded."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return "not a plain file"
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is not None and st.st_uid != uid:
        return f"owned by uid {st.st_uid}"
    if stat.S_IMODE(st.st_mode) & 0o022:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, writable by others"
    return None


def portable_cache_dir() -> Path:
    """The per-user folder of portable builds, created with mode 0700 and checked to be this
    user's and closed to others (a library found there is loaded and run, so nobody else may be
    able to put one there): ``$XDG_CACHE_HOME/tmesim/portable``, else
    ``~/.cache/tmesim/portable``, else (no writable home) ``tmesim-portable-<uid>`` in the
    system's temporary folder.

    Raises:
        KernelSourceError: no candidate is a private folder, naming each and why.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    candidates = []
    if os.path.isabs(xdg):
        candidates.append(Path(xdg) / "tmesim" / "portable")
    else:
        with contextlib.suppress(RuntimeError):  # no home folder known
            candidates.append(Path.home() / ".cache" / "tmesim" / "portable")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    candidates.append(Path(tempfile.gettempdir()) / f"tmesim-portable-{uid}")
    tried = []
    for d in candidates:
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            d.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            tried.append(f"  {d}: {e}")
            continue
        problem = _private_dir_problem(d)
        if problem is None:
            return d
        tried.append(f"  {d}: {problem}")
    raise KernelSourceError(
        "no private folder for the portable kernel build (pass build_dir, "
        "or set $XDG_CACHE_HOME); tried:\n" + "\n".join(tried)
    )


def portable_library_name(cxx: str) -> str:
    """The file name of the portable library: a hash of the kernel sources, the compiler (its
    path and ``--version``) and the flags, so a changed source or compiler never loads a stale
    build. Anyone can compute it, which is why the folder it lives in must be private."""
    d = find_kernel_dir()
    files = sorted(p for p in d.iterdir() if p.suffix in (".cu", ".cuh", ".h"))
    h = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    for part in (cxx, version, " ".join(PORTABLE_FLAGS)):
        h.update(part.encode())
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return f"libtmesim_kernels-{h.hexdigest()[:16]}.so"


def build_portable(build_dir: str | os.PathLike | None = None, cxx: str | None = None) -> Path:
    """Compile every kernel as plain C++ (through ``kernels/portable.h``) into a shared library.

    The library is cached under ``build_dir`` (default: :func:`portable_cache_dir`, private to
    this user) by a hash of the sources, compiler and flags, and written atomically, so parallel
    test workers share it.

    Returns:
        The path of the shared library.
    """
    cxx = cxx or find_cxx()
    if cxx is None:
        raise KernelSourceError(
            "no C++ compiler found for the portable kernel build (set $CXX, or install g++)"
        )
    d = find_kernel_dir()
    if build_dir:
        out_dir = Path(build_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        out_dir = portable_cache_dir()
    lib = out_dir / portable_library_name(cxx)
    if lib.exists() and _private_file_problem(lib) is None:
        return lib
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        unit = Path(tmp) / "all_kernels.cpp"
        unit.write_text("".join(f'#include "{name}"\n' for name in KERNEL_SOURCES))
        tmp_lib = Path(tmp) / lib.name
        cmd = [cxx, *PORTABLE_FLAGS, "-I", str(d), "-x", "c++", str(unit), "-o", str(tmp_lib)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise KernelSourceError(f"portable kernel build failed:\n{' '.join(cmd)}\n{r.stderr}")
        os.replace(tmp_lib, lib)
    return lib


_C_SCALARS = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


class PortableLauncher:
    """Runs the kernels' C++ build (see :func:`build_portable`) on numpy arrays, one call per
    launch: the grid-stride loop visits every work item in the order set by :meth:`set_order`.

    Args:
        lib: path of the shared library (default: build it).
    """

    xp = np

    def __init__(self, lib: str | os.PathLike | None = None):
        self.path = Path(lib) if lib else build_portable()
        self.lib = ctypes.CDLL(str(self.path))

    def set_order(self, mode: int) -> None:
        """Order of work items in every launch: 0 forward, 1 reverse, 2 a fixed permutation."""
        self.lib.tm_portable_set_order(ctypes.c_int(mode))

    def __call__(self, name: str, n_work: int, *args):
        cargs: list = []
        for a in args:
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"{name}: array arguments must be C-contiguous")
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.generic) and a.dtype in _C_SCALARS:
                cargs.append(_C_SCALARS[a.dtype](a.item()))
            else:
                raise TypeError(
                    f"{name}: pass scalars as numpy scalars of an explicit type, "
                    f"got {type(a).__name__}"
                )
        fn = getattr(self.lib, name)
        fn.restype = None
        fn(*cargs)


# ---------------------------------------------------------------------------------------- arguments
def flat_f32(xp, a, n=None):
    """``a`` as a flat C-contiguous float32 ``xp`` array (of ``n`` values when given)."""
    out = xp.ascontiguousarray(xp.asarray(a, dtype=xp.float32).reshape(-1))
    if n is not None and out.size != n:
        raise ValueError(f"expected {n} values, got {out.size}")
    return out


def grid3(shape) -> tuple[np.int32, np.int32, np.int32, np.int32]:
    """(nz, ny, nx, ndim) of a 2D or 3D grid shape; a 2D grid has nz = 1."""
    if len(shape) == 2:
        return np.int32(1), np.int32(shape[0]), np.int32(shape[1]), np.int32(2)
    if len(shape) == 3:
        return np.int32(shape[0]), np.int32(shape[1]), np.int32(shape[2]), np.int32(3)
    raise ValueError(f"grid shape must be 2D or 3D, got {shape}")


def check_arrays(*arrays, dtype):
    """Raise ValueError unless every array is C-contiguous of ``dtype`` (as the kernels read it)."""
    for a in arrays:
        if a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(
                f"expected C-contiguous {np.dtype(dtype).name} arrays, got "
                f"{a.dtype} contiguous={a.flags.c_contiguous}"
            )


def offsets3(offsets) -> np.ndarray:
    """(n, 3) int32 (dz, dy, dx) neighbour offsets, as ``kernels/lattice.cuh`` reads them, from
    (n, ndim) offsets of a 2D or 3D grid (a 2D grid's dz is 0)."""
    offsets = np.asarray(offsets)
    out = np.zeros((len(offsets), 3), dtype=np.int32)
    out[:, 3 - offsets.shape[1] :] = offsets
    return out


def param_vector(
    values: dict[str, float], source: str, prefix: str, count: str, driver: str
) -> np.ndarray:
    """The float64 parameter vector of a kernel source: ``values[NAME]`` at the index that
    ``#define PREFIXNAME i`` gives in ``kernels/<source>``, of length ``TM_N_<count>``.

    Raises:
        KernelSourceError: the source's names and those of ``values`` (from ``driver``) differ,
            or its indices are not 0 .. TM_N_<count> - 1.
    """
    layout = kernel_defines(source, prefix)
    n = kernel_defines(source, "TM_N_")[count]
    if set(layout) != set(values) or sorted(layout.values()) != list(range(n)):
        raise KernelSourceError(
            f"kernels/{source} parameters {sorted(layout)} and "
            f"{driver} {sorted(values)} are out of sync"
        )
    vec = np.zeros(n)
    for name, i in layout.items():
        vec[i] = values[name]
    return vec
