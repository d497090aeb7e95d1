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
KERNEL_SOURCES = ("rng.cu", "fields.cu", "tumor.cu")
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


# ---------------------------------------------------------------------------------------- tumor
ACTIONS = {"none": 0, "clear": 1, "necrosis": 2, "claim": 3, "blocked": 4, "born": 5}


def unsupported_tumor_rules(params) -> list[str]:
    """Parts of the numpy tumor rules that are switched on in ``params`` but have no kernel yet
    (the persister biology is landing in tmesim/steps/tumor.py; drugs and signalling fields are
    not arguments of the kernels). Empty when the kernels reproduce the numpy step exactly."""
    out = []
    tr = getattr(params, "transitions", None)
    if tr is not None:
        if getattr(tr, "pre_existing", False) and getattr(tr, "entry_basal_per_h", 0) > 0:
            out.append("S -> P basal entry (transitions.entry_basal_per_h)")
        if getattr(tr, "exit_per_h", 0) > 0:
            out.append("P -> S exit (transitions.exit_per_h)")
        if getattr(tr, "resistance_per_h", 0) > 0:
            out.append("P -> R (transitions.resistance_per_h)")
    return out


class KernelTumorRules:
    """Tumor rules on the kernels: twin of :class:`tmesim.steps.tumor.TumorRules`, same
    constructor and ``apply`` signature, same result bit for bit (tests/test_kernels_cpu.py).

    The numbers that configure the kernels come from a numpy ``TumorRules`` built from the same
    arguments (its ``r_max`` and per-state factors), so the two cannot drift apart silently; the
    parameter vector's layout is read from ``kernels/tumor.cu``'s ``TM_TP_*`` defines.

    Args:
        params, grid, seed, dt_min: as TumorRules.
        launcher: where to run (default: the current CUDA device).
    """

    def __init__(self, params, grid: Grid, seed: int, dt_min: float, *, launcher=None):
        self.L = L = launcher or default_launcher()
        xp = L.xp
        self.ref = ref = TumorRules(params, grid, seed, dt_min)
        self.p, self.grid, self.seed, self.dt = params, grid, seed, dt_min
        missing = unsupported_tumor_rules(params)
        if missing:
            raise NotImplementedError("the tumor kernels do not implement yet: "
                                      + "; ".join(missing))
        if grid.n_sites >= 2 ** 32 - 1:
            raise ValueError("the claim keys hold a site in 32 bits: at most 2**32 - 2 sites")
        p = params
        values = {
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
        }
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
        self.params = xp.asarray(vec)
        self.state_table = xp.asarray(st.reshape(-1))
        self.offsets = xp.asarray(offs.reshape(-1))
        self.n_offsets = np.int32(len(offs))
        n_sites = grid.n_sites
        self._claims = xp.zeros(n_sites, dtype=xp.uint64)
        self.action = xp.zeros(n_sites, dtype=xp.uint8)
        self.target = xp.zeros(n_sites, dtype=xp.uint32)
        self.last_division = (np.empty(0, np.int64), np.empty(0, np.int64))

    def apply(self, kind, tumor_state, oxygen, step: int) -> RuleCounts:
        """One agent step of the rules, in place. ``oxygen`` (n_sites,) float32 mmHg."""
        L, xp = self.L, self.L.xp
        n = self.grid.n_sites
        _check(kind, tumor_state, dtype=np.uint8)
        oxygen = xp.ascontiguousarray(xp.asarray(oxygen, dtype=xp.float32))
        nz, ny, nx, _ = _grid3(self.grid.shape)
        L("tm_tumor_decide", n, np.int64(n), nz, ny, nx, kind, tumor_state, oxygen,
          self.offsets, self.n_offsets, self.params, self.state_table, np.uint64(self.seed),
          np.uint64(step), self.action, self.target, self._claims)
        L("tm_tumor_apply", n, np.int64(n), kind, tumor_state, self.action, self.target,
          self._claims)
        L("tm_tumor_finish", n, np.int64(n), self.action, self.target, self._claims)
        counts = xp.bincount(self.action, minlength=len(ACTIONS))
        c = [int(v) for v in (counts.get() if hasattr(counts, "get") else counts)]
        targets = xp.flatnonzero(self.action == ACTIONS["born"])
        sources = self.target[targets].astype(xp.int64)
        order = xp.argsort(sources)            # numpy lists divisions by mother, ascending
        self.last_division = (sources[order], targets[order].astype(xp.int64))
        return RuleCounts(divisions=c[ACTIONS["born"]], necroses=c[ACTIONS["necrosis"]],
                          cleared=c[ACTIONS["clear"]], blocked=c[ACTIONS["blocked"]],
                          lost_conflicts=c[ACTIONS["claim"]] - c[ACTIONS["born"]])
