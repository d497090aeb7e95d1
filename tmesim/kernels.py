"""The CUDA kernels (``kernels/*.cu``): finding their sources, building them, launching them.

The sources live in the repository's ``kernels/`` folder and ship inside the installed package as
package data (setup.cfg maps ``tmesim.kernels = kernels``, so a wheel holds them in
``tmesim/kernels/``; an editable install reads the repository's folder). :func:`kernel_source`
joins them into one translation unit behind a ``#define`` preamble; :func:`get_module` builds it
with ``cupy.RawModule`` once per device.

Every kernel runs through a *launcher*: :class:`CupyLauncher` on a GPU, or
:class:`PortableLauncher`, which calls the same sources compiled as plain C++
(``kernels/portable.h``, :func:`build_portable`) through ctypes on numpy arrays -- how CI
checks the kernels' logic against numpy without a GPU. The launch functions below take the
same arguments as the numpy functions they mirror (``tmesim.rng``, ``tmesim.steps.fields``,
``tmesim.steps.tumor``), plus a keyword-only ``launcher`` (default: the current CUDA device).

Only this module and :mod:`tmesim.backend` import cupy, and only inside functions, so
``import tmesim`` works without it.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import codes
from .errors import UserError
from .grid import Grid
from .steps.tumor import RuleCounts, TumorRules, probability

#: translation units, in build order; headers are pulled in by their #include lines
KERNEL_SOURCES = ("rng.cu", "fields.cu", "tumor.cu", "stroma.cu")
#: threads per block of every launch (the kernels use grid-stride loops, so any size is correct)
BLOCK = 256
#: most blocks per launch: enough to fill any current GPU many times over; grid-stride loops do
#: the rest
MAX_BLOCKS = 65535 * 16
#: flags of the portable (host C++) build: -ffp-contract=off keeps a*b+c two roundings, as numpy
#: and the kernels' __fmul_rn/__fadd_rn intrinsics have it
PORTABLE_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
                  "-Wall", "-Wextra", "-Werror")

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
        res = resources.files("tmesim") / "kernels"      # package data of a regular install
        out.append(("package data tmesim/kernels", res if isinstance(res, Path) else None))
    except Exception:  # noqa: BLE001 - an unusual loader: reported as "not on a file system"
        out.append(("package data tmesim/kernels", None))
    out.append(("repository kernels/ (editable install)",
                Path(__file__).resolve().parent.parent / "kernels"))
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
            raise KernelSourceError(f"{path}: #include \"{m.group(1)}\" not found at {inc}")
        return f"/* ---- {m.group(1)} ---- */\n" + _expand(inc, seen)

    return _INCLUDE.sub(sub, text)


def kernel_source(defines: dict[str, object] | None = None) -> str:
    """All kernels as one CUDA translation unit: a ``#define`` preamble, then the sources with
    their local includes inlined (so the build needs no include path and works from a wheel)."""
    d = find_kernel_dir()
    pre = {"TM_RAWMODULE": 1, "TM_BLOCK": BLOCK}
    pre.update(defines or {})
    lines = [f"#define {k} {v}" for k, v in pre.items()]
    seen: set[Path] = set()
    parts = [f"/* ==== {name} ==== */\n" + _expand((d / name).resolve(), seen)
             for name in KERNEL_SOURCES]
    return "\n".join(lines) + "\n" + "\n".join(parts)


def kernel_defines(name: str, prefix: str) -> dict[str, int]:
    """Integer ``#define PREFIXNAME value`` constants of a kernel source, by NAME (the single
    source of truth for index layouts such as the tumor rules' parameter vector)."""
    text = (find_kernel_dir() / name).read_text()
    return {m.group(1): int(m.group(2))
            for m in re.finditer(rf"^#define {prefix}(\w+)\s+(\d+)\b", text, re.M)}


# ---------------------------------------------------------------------------------------- GPU build
_MODULES: dict[int, object] = {}


def get_module(device_id: int | None = None):
    """The ``cupy.RawModule`` of every kernel for a device (built once per device, memoized)."""
    import cupy
    dev = cupy.cuda.Device(device_id) if device_id is not None else cupy.cuda.Device()
    if dev.id not in _MODULES:
        code = kernel_source()
        with dev:
            try:
                mod = cupy.RawModule(code=code, options=("--std=c++17",))
                mod.compile()
            except Exception as e:  # noqa: BLE001 - re-raised with where the sources came from
                searched = "\n".join(f"  {how}: {p}" for how, p in kernel_dir_candidates())
                raise KernelSourceError(f"building the CUDA kernels from {find_kernel_dir()} "
                                        f"failed on device {dev.id}: {e}\nsearched:\n{searched}"
                                        ) from e
        _MODULES[dev.id] = mod
    return _MODULES[dev.id]


class CupyLauncher:
    """Launches kernels on a CUDA device through cupy.

    Args:
        device_id: CUDA device (default: cupy's current device).
    """

    def __init__(self, device_id: int | None = None):
        import cupy
        self.xp = cupy
        self.device_id = cupy.cuda.Device(device_id).id if device_id is not None \
            else cupy.cuda.Device().id
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


def build_portable(build_dir: str | os.PathLike | None = None, cxx: str | None = None) -> Path:
    """Compile every kernel as plain C++ (through ``kernels/portable.h``) into a shared library.

    The library is cached under ``build_dir`` (default: the system temporary folder) by a hash of
    the sources, compiler and flags, and written atomically, so parallel test workers share it.

    Returns:
        The path of the shared library.
    """
    cxx = cxx or find_cxx()
    if cxx is None:
        raise KernelSourceError("no C++ compiler found for the portable kernel build "
                                "(set $CXX, or install g++)")
    d = find_kernel_dir()
    files = sorted(p for p in d.iterdir() if p.suffix in (".cu", ".cuh", ".h"))
    h = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    for part in (cxx, version, " ".join(PORTABLE_FLAGS)):
        h.update(part.encode())
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    out_dir = Path(build_dir) if build_dir else Path(tempfile.gettempdir()) / "tmesim-portable"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"libtmesim_kernels-{h.hexdigest()[:16]}.so"
    if lib.exists():
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


_C_SCALARS = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
              np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float,
              np.dtype(np.float64): ctypes.c_double}


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
        cargs = []
        for a in args:
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"{name}: array arguments must be C-contiguous")
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.generic) and a.dtype in _C_SCALARS:
                cargs.append(_C_SCALARS[a.dtype](a.item()))
            else:
                raise TypeError(f"{name}: pass scalars as numpy scalars of an explicit type, "
                                f"got {type(a).__name__}")
        fn = getattr(self.lib, name)
        fn.restype = None
        fn(*cargs)


_DEFAULT_LAUNCHERS: dict[int, CupyLauncher] = {}


def default_launcher():
    """The CUDA launcher of cupy's current device (one per device)."""
    import cupy
    dev = cupy.cuda.Device().id
    if dev not in _DEFAULT_LAUNCHERS:
        _DEFAULT_LAUNCHERS[dev] = CupyLauncher(dev)
    return _DEFAULT_LAUNCHERS[dev]


def _flat_f32(xp, a, n=None):
    out = xp.ascontiguousarray(xp.asarray(a, dtype=xp.float32).reshape(-1))
    if n is not None and out.size != n:
        raise ValueError(f"expected {n} values, got {out.size}")
    return out


def _grid3(shape) -> tuple[np.int32, np.int32, np.int32, np.int32]:
    """(nz, ny, nx, ndim) of a 2D or 3D grid shape; a 2D grid has nz = 1."""
    if len(shape) == 2:
        return np.int32(1), np.int32(shape[0]), np.int32(shape[1]), np.int32(2)
    if len(shape) == 3:
        return np.int32(shape[0]), np.int32(shape[1]), np.int32(shape[2]), np.int32(3)
    raise ValueError(f"grid shape must be 2D or 3D, got {shape}")


def _check(*arrays, dtype):
    for a in arrays:
        if a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(f"expected C-contiguous {np.dtype(dtype).name} arrays, got "
                             f"{a.dtype} contiguous={a.flags.c_contiguous}")


# ---------------------------------------------------------------------------------------- rng
def raw_at(seed: int, step: int, stream: int, sites, *, launcher=None):
    """Philox words (uint64) at ``sites``: twin of :func:`tmesim.rng.raw_at`."""
    L = launcher or default_launcher()
    sites = L.xp.ascontiguousarray(L.xp.asarray(sites, dtype=L.xp.int64).reshape(-1))
    out = L.xp.empty(sites.size, dtype=L.xp.uint64)
    if sites.size:
        L("tm_rng_raw_at", sites.size, np.int64(sites.size), np.uint64(seed), np.uint64(step),
          np.uint64(stream), sites, out)
    return out


def uniform_at(seed: int, step: int, stream: int, sites, *, launcher=None):
    """Uniform float64 in [0, 1) at ``sites``: twin of :func:`tmesim.rng.uniform_at`."""
    L = launcher or default_launcher()
    sites = L.xp.ascontiguousarray(L.xp.asarray(sites, dtype=L.xp.int64).reshape(-1))
    out = L.xp.empty(sites.size, dtype=L.xp.float64)
    if sites.size:
        L("tm_rng_uniform_at", sites.size, np.int64(sites.size), np.uint64(seed),
          np.uint64(step), np.uint64(stream), sites, out)
    return out


# ---------------------------------------------------------------------------------------- fields
def pack_ghosts(xp, ghosts, F: int, ndim: int):
    """(F, 3, 2) float32 ghost values per kernel axis (z, y, x) and face (lo, hi) from the numpy
    solver's per-axis pairs (None or (F, 1, ..., 1) arrays); NaN marks a no-flux face."""
    g = xp.full((F, 3, 2), np.nan, dtype=xp.float32)
    for a, pair in enumerate(ghosts):
        for side, v in enumerate(pair):
            if v is not None:
                g[:, a + 3 - ndim, side] = xp.asarray(v, dtype=xp.float32).reshape(F)
    return g


def laplacian(c, D_over_h2, ghosts, out, *, launcher=None):
    """out = D lap(c) with ghost values per face: twin of :func:`tmesim.steps.fields.laplacian`.

    Args: as the numpy function; c and out (F, *grid) float32, C-contiguous.
    """
    L = launcher or default_launcher()
    _check(c, out, dtype=np.float32)
    F = c.shape[0]
    nz, ny, nx, ndim = _grid3(c.shape[1:])
    L("tm_laplacian", c.size, np.int32(F), nz, ny, nx, ndim, c, _flat_f32(L.xp, D_over_h2, F),
      pack_ghosts(L.xp, ghosts, F, int(ndim)), out)
    return out


def apply_operator(p, diag, D_over_h2, ghosts, out, *, launcher=None):
    """out = diag * p - D lap(p): twin of ``FieldSolver._apply(p, diag, out, lap, ghosts)``
    (the fused kernel needs no ``lap`` scratch)."""
    L = launcher or default_launcher()
    _check(p, diag, out, dtype=np.float32)
    F = p.shape[0]
    nz, ny, nx, ndim = _grid3(p.shape[1:])
    L("tm_apply_operator", p.size, np.int32(F), nz, ny, nx, ndim, p, diag,
      _flat_f32(L.xp, D_over_h2, F), pack_ghosts(L.xp, ghosts, F, int(ndim)), out)
    return out


def thomas_solve(x, axis: int, co, tmp=None, *, launcher=None):
    """Precomputed tridiagonal solves along grid ``axis`` of x (F, *grid), in place: twin of
    :func:`tmesim.steps.fields.thomas_solve` (``tmp`` is accepted and unused)."""
    L = launcher or default_launcher()
    _check(x, dtype=np.float32)
    F = x.shape[0]
    nz, ny, nx, ndim = _grid3(x.shape[1:])
    m = x.shape[axis + 1]
    coef = [L.xp.ascontiguousarray(L.xp.asarray(a, dtype=L.xp.float64).reshape(m, F))
            for a in (co.inv, co.kinv, co.cp)]
    L("tm_thomas_solve", F * x[0].size // m, np.int32(F), nz, ny, nx,
      np.int32(axis + 3 - int(ndim)), x, *coef)
    return x


def thomas_solve_diag(x, axis: int, k, base, extra, cp, tmp=None, *, launcher=None):
    """Tridiagonal solves with a per-voxel diagonal along grid ``axis``, in place: twin of
    :func:`tmesim.steps.fields.thomas_solve_diag` (``cp`` is scratch of x's shape; ``tmp`` is
    accepted and unused)."""
    L = launcher or default_launcher()
    _check(x, extra, cp, dtype=np.float32)
    F = x.shape[0]
    nz, ny, nx, ndim = _grid3(x.shape[1:])
    m = x.shape[axis + 1]
    L("tm_thomas_solve_diag", F * x[0].size // m, np.int32(F), nz, ny, nx,
      np.int32(axis + 3 - int(ndim)), x, extra, cp, _flat_f32(L.xp, k, F),
      _flat_f32(L.xp, base, m * F))
    return x


def thomas_factor_diag(axis: int, k, base, extra, inv, cp, tmp=None, *, launcher=None):
    """Per-voxel elimination factors for :func:`thomas_solve_factored`: twin of
    ``tmesim.steps.fields.thomas_factor_diag`` (``tmp`` is accepted and unused)."""
    L = launcher or default_launcher()
    _check(extra, inv, cp, dtype=np.float32)
    F = extra.shape[0]
    nz, ny, nx, ndim = _grid3(extra.shape[1:])
    m = extra.shape[axis + 1]
    L("tm_thomas_factor_diag", F * extra[0].size // m, np.int32(F), nz, ny, nx,
      np.int32(axis + 3 - int(ndim)), extra, _flat_f32(L.xp, k, F),
      _flat_f32(L.xp, base, m * F), inv, cp)


def thomas_solve_factored(x, axis: int, k, inv, cp, tmp=None, *, launcher=None):
    """Line solves with factors from :func:`thomas_factor_diag`, in place: twin of
    ``tmesim.steps.fields.thomas_solve_factored`` (``tmp`` is accepted and unused)."""
    L = launcher or default_launcher()
    _check(x, inv, cp, dtype=np.float32)
    F = x.shape[0]
    nz, ny, nx, ndim = _grid3(x.shape[1:])
    m = x.shape[axis + 1]
    L("tm_thomas_solve_factored", F * x[0].size // m, np.int32(F), nz, ny, nx,
      np.int32(axis + 3 - int(ndim)), x, _flat_f32(L.xp, k, F), inv, cp)
    return x


def rates(kind, tumor_state, U_table, S_table, *, launcher=None):
    """Per-voxel U (1/min) and S (units/min), (F, n) float32, from (F, n_kinds, n_states) tables:
    twin of :meth:`tmesim.steps.fields.FieldSolver.rates` (which takes its tables from self)."""
    L = launcher or default_launcher()
    xp = L.xp
    F, nk, ns = U_table.shape
    n = kind.size
    U = xp.empty((F, n), dtype=xp.float32)
    S = xp.empty((F, n), dtype=xp.float32)
    L("tm_rates", F * n, np.int32(F), np.int64(n), np.int32(nk * ns), np.int32(ns),
      xp.ascontiguousarray(kind), xp.ascontiguousarray(tumor_state),
      _flat_f32(xp, U_table), _flat_f32(xp, S_table), U, S)
    return U, S


def cg_setup(c, U, S, inv_dt, *, launcher=None):
    """diag = U + inv_dt and b = c * inv_dt + S (float32): as FieldSolver._adi_step begins."""
    L = launcher or default_launcher()
    _check(c, U, S, dtype=np.float32)
    diag = L.xp.empty_like(c)
    b = L.xp.empty_like(c)
    L("tm_cg_setup", c.size, np.int64(c.size), np.float32(inv_dt), c, U, S, diag, b)
    return diag, b


def residual(b, r, kind, *, launcher=None):
    """r = b - r, 0 at vessel voxels (in place): ``np.subtract(b, r, out=r); r[:, pinned] = 0``."""
    L = launcher or default_launcher()
    _check(b, r, dtype=np.float32)
    L("tm_residual", r.size, np.int32(r.shape[0]), np.int64(kind.size), b, r, kind)
    return r


def set_pinned(x, kind, value, *, launcher=None):
    """x[:, vessel voxels] = value (F,) in place: ``x[:, pinned] = value``."""
    L = launcher or default_launcher()
    _check(x, dtype=np.float32)
    F = x.shape[0]
    L("tm_set_pinned", x.size, np.int32(F), np.int64(kind.size), x, kind,
      _flat_f32(L.xp, value, F))
    return x


def factor_diag(diag, scale, kind, pin, out, *, launcher=None):
    """out = diag * scale[f], ``pin`` at vessel voxels: ``np.multiply(diag, tau * share,
    out=extra); extra[:, pinned] = _PIN`` (pass scale = the float32 ``tau * np.float32(share)``)."""
    L = launcher or default_launcher()
    _check(diag, out, dtype=np.float32)
    F = diag.shape[0]
    L("tm_factor_diag", diag.size, np.int32(F), np.int64(kind.size), diag,
      _flat_f32(L.xp, scale, F), kind, np.float32(pin), out)
    return out


def axpy(y, alpha, x, *, launcher=None):
    """y += alpha[f] * x in place (alpha (F,) float32): ``y += a_b * x``; pass -alpha for
    ``y -= a_b * x`` (identical in IEEE arithmetic)."""
    L = launcher or default_launcher()
    _check(y, x, dtype=np.float32)
    F = y.shape[0]
    L("tm_axpy", y.size, np.int32(F), np.int64(y.size // F), y, _flat_f32(L.xp, alpha, F), x)
    return y


def scale_add(p, beta, z, *, launcher=None):
    """p = p * beta[f] + z in place: ``p *= beta; p += z``."""
    L = launcher or default_launcher()
    _check(p, z, dtype=np.float32)
    F = p.shape[0]
    L("tm_scale_add", p.size, np.int32(F), np.int64(p.size // F), p, _flat_f32(L.xp, beta, F), z)
    return p


def cg_rhs(c, S, inv_dt, b, *, launcher=None):
    """b = c * inv_dt + S (float32) in place: ``np.multiply(c, inv_dt, out=b); b += S`` at the
    start of each field step of ``FieldSolver._adi_step``."""
    L = launcher or default_launcher()
    _check(c, S, b, dtype=np.float32)
    L("tm_cg_rhs", c.size, np.int64(c.size), np.float32(inv_dt), c, S, b)
    return b


def lod_sweep(x, axis: int, f: int, inv, kinv, cp, kg_lo: float, kg_hi: float, kind,
              vessel: float, react: bool, tumor_state, U_table, S_table, decay: float,
              dt: float, *, launcher=None):
    """One LOD line solve of field ``f`` along grid ``axis`` of x (*grid) float64, in place, with
    the vessel reset and (``react``) the reaction update fused in: one ``_lod_sweep`` of
    ``FieldSolver._lod_run`` and the per-voxel lines after it (see ``tm_lod_sweep``).

    Args:
        x: (*grid) float64 work array of one field.
        inv, kinv, cp: (m, F) float64 ThomasCoefficients of that axis (device arrays).
        kg_lo, kg_hi: Dirichlet terms k g of this field (0.0 without a bath on the face; NaN when
            the face is no-flux for every field, i.e. numpy's ghost is None).
        kind, tumor_state: (n_sites,) uint8.
        vessel: the field's vessel value; U_table, S_table: (F, n_codes) float32 rate tables;
        decay: 1/min; dt: the field step, min.
    """
    L = launcher or default_launcher()
    _check(x, inv, kinv, cp, dtype=np.float64)
    _check(kind, tumor_state, dtype=np.uint8)
    _check(U_table, S_table, dtype=np.float32)
    nz, ny, nx, ndim = _grid3(x.shape)
    m = x.shape[axis]
    F = inv.shape[-1]
    L("tm_lod_sweep", x.size // m, nz, ny, nx, np.int32(axis + 3 - int(ndim)), np.int32(F),
      np.int32(f), x, inv, kinv, cp, np.float64(kg_lo), np.float64(kg_hi), kind,
      np.float64(vessel), np.int32(bool(react)), tumor_state, np.int32(U_table.shape[-1]),
      np.int32(len(codes.TUMOR_STATE_NAMES)), U_table, S_table, np.float64(decay),
      np.float64(dt))
    return x


# ---------------------------------------------------------------------------------------- tumor
#: events in the low 4 bits of the tumor kernels' action byte (kernels/tumor.cu TM_ACT_*)
ACTIONS = {"none": 0, "clear": 1, "necrosis": 2, "claim": 3, "blocked": 4, "born": 5,
           "killed_S": 6, "killed_P": 7, "killed_R": 8}
#: phenotype transitions in bits 4-5 of the action byte (TM_TRANSITION_*, shifted by
#: TRANSITION_SHIFT)
TRANSITIONS = {"none": 0, "to_P": 1, "to_S": 2, "to_R": 3}
TRANSITION_SHIFT = 4


def unsupported_tumor_rules(params) -> list[str]:
    """Parts of the numpy tumor rules switched on in ``params`` that the kernels do not implement.

    Always empty now: the kernels reproduce every rule of :meth:`TumorRules.apply` (growth,
    necrosis, clearance, drug kill, persister transitions, memory, signalling). Kept so that
    callers can keep asking before choosing the GPU."""
    return []


def tumor_param_values(params, dt_min: float, ref: TumorRules) -> dict[str, float]:
    """The float64 parameter vector of the tumor kernels by ``TM_TP_*`` name (without the
    prefix), from the scenario's [tumor] table, the agent step (min) and a numpy ``TumorRules``
    built from the same arguments. Constants that numpy computes once for every cell (the
    clearance probability, the no-drug memory decay) come from the same numpy expressions."""
    p, tr, sg = params, params.transitions, params.signalling
    # TumorRules.relax_memory at E = 0.0, as its no-drug path calls it (Python floats)
    a0 = tr.memory_gain_per_h / 60.0 * 0.0
    b0 = tr.memory_decay_per_h / 60.0 * (1.0 - 0.0)
    k0 = a0 + b0
    return {
        "DT_MIN": dt_min,
        "R_MAX_PER_MIN": ref.r_max,
        "DIVISION_CAP": math.log(2.0),
        "PROLIF_LO_MMHG": p.proliferation_threshold_mmHg,
        "PROLIF_SPAN_MMHG": p.proliferation_saturation_mmHg - p.proliferation_threshold_mmHg,
        "NECROSIS_ON": float(p.necrosis_max_rate_per_h > 0),
        "NECROSIS_THRESHOLD_MMHG": p.necrosis_threshold_mmHg,
        "NECROSIS_SPAN_MMHG": p.necrosis_threshold_mmHg - p.necrosis_max_mmHg,
        "NECROSIS_STEP": float(p.necrosis_threshold_mmHg <= p.necrosis_max_mmHg),
        "NECROSIS_TOP_PER_MIN": p.necrosis_max_rate_per_h / 60.0,
        # the same numpy call as TumorRules.apply: identical by construction
        "CLEAR_PROBABILITY": float(probability(p.necrotic_clearance_per_h / 60.0, dt_min))
        if p.necrotic_clearance_per_h > 0 else 0.0,
        "PER_MIN": 1.0 / 60.0,
        "HYPOXIC_MMHG": p.hypoxic_threshold_mmHg,
        "HYPOXIA_SPAN_MMHG": p.hypoxic_threshold_mmHg - p.necrosis_threshold_mmHg,
        "HYPOXIA_STEP": float(p.hypoxic_threshold_mmHg <= p.necrosis_threshold_mmHg),
        "PERSISTER_TOLERANCE": p.persister_tolerance,
        "DEATH_PER_H": p.death_per_h,
        "DRUGS_ON": float(ref.effects is not None),
        "ENTRY_BASAL_ON": float(bool(tr.pre_existing)),
        "ENTRY_BASAL_PER_H": tr.entry_basal_per_h,
        "ENTRY_INDUCED_ON": float(bool(tr.drug_induced)),
        "ENTRY_INDUCED_PER_H": tr.entry_induced_per_h,
        "HYPOXIA_WEIGHT": tr.hypoxia_weight,
        "EXIT_PER_H": tr.exit_per_h,
        "MEMORY_EXIT_SLOWING": tr.memory_exit_slowing,
        "HYPOXIA_EXIT_SLOWING": tr.hypoxia_exit_slowing,
        "RESISTANCE_PER_H": tr.resistance_per_h,
        "ADAPTIVE_MUTABILITY": tr.adaptive_mutability,
        "MUTABILITY_RAMP_MIN": tr.mutability_ramp_h * 60.0,
        "MEMORY_GAIN_PER_MIN": tr.memory_gain_per_h / 60.0,
        "MEMORY_DECAY_PER_MIN": tr.memory_decay_per_h / 60.0,
        "NODRUG_MEMORY_K_PER_MIN": k0,
        "NODRUG_MEMORY_FACTOR": float(np.exp(-k0 * dt_min)),
        "HGF_HALF_MAX": sg.hgf_half_max_ng_per_mL,
        "IGF1_HALF_MAX": sg.igf1_half_max_ng_per_mL,
        "MET_PROTECTION_MAX": sg.met_protection_max,
        "IGF1R_PROTECTION_MAX": sg.igf1r_protection_max,
        "HGF_GROWTH_GAIN": sg.hgf_growth_gain,
        "IGF1_GROWTH_GAIN": sg.igf1_growth_gain,
        "ENTRY_WEIGHT": sg.entry_weight,
    }


def tumor_effect_table(drugs) -> np.ndarray:
    """(n_effects, TM_N_EFFECT_COLUMNS) float64 rows (drug, target, emax, ec50_uM, hill, coef), one
    per (drug, effect) in the order of :meth:`tmesim.drugs.Effects.at` (the order of its sums and
    Bliss products); coef is rate_per_h for kill targets, fold for exit_speedup, else 0."""
    from .drugs import KILL_TARGETS
    from .scenario import EFFECT_TARGETS
    cols = kernel_defines("tumor.cu", "TM_EF_")
    code = {k.lower(): v for k, v in kernel_defines("tumor.cu", "TM_EFFECT_").items()}
    if set(code) != {t.lower() for t in EFFECT_TARGETS}:
        raise KernelSourceError(f"kernels/tumor.cu effect targets {sorted(code)} and "
                                f"tmesim.scenario.EFFECT_TARGETS {sorted(EFFECT_TARGETS)} are "
                                "out of sync")
    n_cols = kernel_defines("tumor.cu", "TM_N_")["EFFECT_COLUMNS"]
    rows = []
    for i, d in enumerate(drugs):
        for tgt, e in d.effects.items():
            row = np.zeros(n_cols)
            row[cols["DRUG"]] = i
            row[cols["TARGET"]] = code[tgt.lower()]
            row[cols["EMAX"]] = e.emax
            row[cols["EC50_UM"]] = e.ec50_uM
            row[cols["HILL"]] = e.hill
            row[cols["COEF"]] = (e.rate_per_h if tgt in KILL_TARGETS else
                                 e.fold if tgt == "exit_speedup" else 0.0)
            rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(len(rows), n_cols)


class KernelTumorRules:
    """Tumor rules on the kernels: twin of :class:`tmesim.steps.tumor.TumorRules`, same
    constructor and ``apply`` signature, same result bit for bit (tests/test_kernels_cpu.py,
    tests/test_kernels_tumor_cpu.py; see kernels/decisions.cuh for the rare last-ulp exceptions of
    per-cell transcendental math).

    The numbers that configure the kernels come from a numpy ``TumorRules`` built from the same
    arguments (its ``r_max``, per-state factors and effects), so the two cannot drift apart
    silently; the parameter vector's layout is read from ``kernels/tumor.cu``'s ``TM_TP_*``
    defines, the effect table's from ``TM_EF_*`` / ``TM_EFFECT_*``.

    Args:
        params, grid, seed, dt_min, drugs: as TumorRules.
        launcher: where to run (default: the current CUDA device).
    """

    def __init__(self, params, grid: Grid, seed: int, dt_min: float, drugs=(), *,
                 launcher=None):
        self.L = L = launcher or default_launcher()
        xp = L.xp
        self.ref = ref = TumorRules(params, grid, seed, dt_min, drugs)
        self.p, self.grid, self.seed, self.dt = params, grid, seed, dt_min
        self.n_drugs = len(drugs)
        if grid.n_sites >= 2 ** 32 - 1:
            raise ValueError("the claim keys hold a site in 32 bits: at most 2**32 - 2 sites")
        values = tumor_param_values(params, dt_min, ref)
        layout = kernel_defines("tumor.cu", "TM_TP_")
        sizes = kernel_defines("tumor.cu", "TM_N_")
        n = sizes["TUMOR_PARAMS"]
        if set(layout) != set(values) or sorted(layout.values()) != list(range(n)):
            raise KernelSourceError(f"kernels/tumor.cu parameters {sorted(layout)} and "
                                    f"tmesim.kernels {sorted(values)} are out of sync")
        vec = np.zeros(n)
        for name, i in layout.items():
            vec[i] = values[name]
        tables = kernel_defines("tumor.cu", "TM_TS_")
        n_tab = sizes["STATE_TABLES"]
        st = np.zeros((n_tab, len(codes.TUMOR_STATE_NAMES)))
        st[tables["DIVISION"]] = ref.state_factor
        offs = np.zeros((len(grid.offsets), 3), dtype=np.int32)
        offs[:, 3 - grid.ndim:] = grid.offsets
        eff = tumor_effect_table(drugs)
        self.params_host, self.state_table_host, self.effects_host = vec, st, eff
        self.params = xp.asarray(vec)
        self.state_table = xp.asarray(st.reshape(-1))
        # a kernel never reads an absent array; a 1-element stand-in keeps the pointer valid
        self.effects = xp.asarray(eff.reshape(-1) if eff.size else np.zeros(1))
        self.n_effects = np.int32(len(eff))
        self.offsets = xp.asarray(offs.reshape(-1))
        self.n_offsets = np.int32(len(offs))
        self._absent = xp.zeros(1, dtype=xp.float32)
        self._has = kernel_defines("tumor.cu", "TM_HAS_")      # bits of the `fields` argument
        n_sites = grid.n_sites
        self._claims = xp.zeros(n_sites, dtype=xp.uint64)
        self.action = xp.zeros(n_sites, dtype=xp.uint8)
        self.target = xp.zeros(n_sites, dtype=xp.uint32)
        self.last_division = (np.empty(0, np.int64), np.empty(0, np.int64))

    def _field(self, a, name: str, shape):
        """A float32 input as the kernels read it, or the stand-in for None. float32 only: a
        cast here would feed the kernels other numbers than numpy's."""
        if a is None:
            return self._absent
        xp = self.L.xp
        a = xp.asarray(a)
        if a.dtype != np.float32 or a.shape != shape:
            raise ValueError(f"{name}: expected float32 of shape {shape}, got {a.dtype} "
                             f"{a.shape}")
        return xp.ascontiguousarray(a)

    def apply(self, kind, tumor_state, oxygen, step: int, memory=None, time_in_P=None,
              hgf=None, igf1=None, drug_conc=None) -> RuleCounts:
        """One agent step of the rules, in place: the arguments of TumorRules.apply, as xp arrays.

        Args:
            kind, tumor_state: (n_sites,) uint8, C-contiguous, updated in place.
            oxygen: (n_sites,) float32 mmHg.
            step: the agent step (a counter of the random numbers).
            memory, time_in_P: (n_sites,) float32 (time in min), updated in place; None: zeros,
                not kept.
            hgf, igf1: (n_sites,) float32 ng/mL, or None without those fields.
            drug_conc: (n_drugs, n_sites) float32 uM (required when the rules have drugs).
        """
        L, xp = self.L, self.L.xp
        n = self.grid.n_sites
        _check(kind, tumor_state, dtype=np.uint8)
        oxygen = xp.ascontiguousarray(xp.asarray(oxygen, dtype=xp.float32))
        if memory is None:
            memory = xp.zeros(n, dtype=xp.float32)
        if time_in_P is None:
            time_in_P = xp.zeros(n, dtype=xp.float32)
        _check(memory, time_in_P, dtype=np.float32)
        fields = (self._has["HGF"] if hgf is not None else 0) | \
            (self._has["IGF1"] if igf1 is not None else 0)
        hgf = self._field(hgf, "hgf", (n,))
        igf1 = self._field(igf1, "igf1", (n,))
        if self.n_drugs:
            if drug_conc is None:
                raise ValueError("drug_conc (n_drugs, n_sites) is required: the rules have drugs")
            conc = self._field(drug_conc, "drug_conc", (self.n_drugs, n))
        else:
            conc = self._absent          # numpy ignores drug_conc without drugs
        nz, ny, nx, _ = _grid3(self.grid.shape)
        L("tm_tumor_decide", n, np.int64(n), nz, ny, nx, kind, tumor_state, memory, time_in_P,
          oxygen, hgf, igf1, np.int32(fields), conc, self.effects, self.n_effects,
          self.offsets, self.n_offsets, self.params, self.state_table, np.uint64(self.seed),
          np.uint64(step), self.action, self.target, self._claims)
        L("tm_tumor_apply", n, np.int64(n), kind, tumor_state, memory, time_in_P, self.action,
          self.target, self._claims)
        L("tm_tumor_finish", n, np.int64(n), self.action, self.target, self._claims)
        counts = xp.bincount(self.action, minlength=len(TRANSITIONS) << TRANSITION_SHIFT)
        c = np.asarray(counts.get() if hasattr(counts, "get") else counts, dtype=np.int64)
        c = c.reshape(len(TRANSITIONS), 1 << TRANSITION_SHIFT)    # [transition, event]
        ev, tr = c.sum(axis=0), c.sum(axis=1)
        targets = xp.flatnonzero(self.action == ACTIONS["born"])
        sources = self.target[targets].astype(xp.int64)
        order = xp.argsort(sources)            # numpy lists divisions by mother, ascending
        self.last_division = (sources[order], targets[order].astype(xp.int64))
        killed_S, killed_P = int(ev[ACTIONS["killed_S"]]), int(ev[ACTIONS["killed_P"]])
        return RuleCounts(divisions=int(ev[ACTIONS["born"]]),
                          necroses=int(ev[ACTIONS["necrosis"]]),
                          cleared=int(ev[ACTIONS["clear"]]), blocked=int(ev[ACTIONS["blocked"]]),
                          lost_conflicts=int(ev[ACTIONS["claim"]] - ev[ACTIONS["born"]]),
                          killed=killed_S + killed_P + int(ev[ACTIONS["killed_R"]]),
                          killed_S=killed_S, killed_P=killed_P,
                          entered_P=int(tr[TRANSITIONS["to_P"]]),
                          exited_P=int(tr[TRANSITIONS["to_S"]]),
                          became_R=int(tr[TRANSITIONS["to_R"]]))

