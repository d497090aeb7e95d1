#!/usr/bin/env python
"""CPU benchmark of tmesim's core: the field solver and the tumor rules, beside the machine's memory
bandwidth.

    python benchmarks/bench_core.py                 # full run (about 6 minutes on 2 cores)
    python benchmarks/bench_core.py --quick         # the smallest grids only (well under a minute)
    python benchmarks/bench_core.py --out FILE.md   # also write the tables as markdown

What is measured (benchmarks/README.md explains every column):

* memory copy bandwidth: ``np.copyto`` of a 512 MB float32 array, best of 5, counting the bytes
  read plus the bytes written;
* field solver, 2D and 3D, 4 fields (oxygen and three extra fields with different diffusion,
  decay, uptake and secretion), on a tumor disk/sphere with a necrotic core (no vessels, as in
  the first recorded runs, so that results stay comparable):
  (c) a realistic agent step: fields warm-started by ``WARM_STEPS`` agent steps, then the sweeps
      the ADI iteration actually takes and the wall time of the step;
  (a) one ADI sweep (one CG iteration): agent steps capped at 8 iterations on the warm fields,
      time / iterations, so the per-step set-up is shared by those iterations;
  (b) one LOD step (BioFVM's scheme, ``[solver] method = "lod"``): agent steps of LOD_SUBSTEPS
      (20) substeps of 0.01 min, time / 20;
  and from (b) and (c) the time per 6-min agent step at comparable accuracy (600 LOD substeps,
  tmesim's and BioFVM's, against one ADI step);
* tumor rules: ``TumorRules.apply`` on a lattice mostly filled with tumor cells under a radial
  oxygen profile (normoxic rim, hypoxic and necrotic core), so every branch runs, with the
  default push reach (about half the dividing cells have no empty neighbour and push);
* bytes: the state per voxel (``State.bytes_per_voxel``) and the bytes the numpy code reads and
  writes per update, counted operation by operation from tmesim/steps/fields.py and
  tmesim/steps/tumor.py (see ``pcg_sweep_bytes``, ``lod_step_bytes``, ``rules_bytes``), and from
  them the achieved GB/s as a fraction of the measured copy bandwidth.

Every timing is the median of repeats after a warm-up. numpy runs each operation on one core; the
field solver runs groups of fields on FieldSolver.threads worker threads (``--threads``), the rules
use one core.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import tmesim
from tmesim import codes
from tmesim.grid import Grid
from tmesim.state import State
from tmesim.steps import fields as fields_mod
from tmesim.steps.fields import FieldSolver
from tmesim.steps.tumor import TumorRules

# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------

FULL_2D = [(256, 256), (1024, 1024), (2048, 2048)]
FULL_3D = [(64, 64, 64), (128, 128, 128), (200, 200, 200)]
QUICK_2D = [(256, 256)]
QUICK_3D = [(64, 64, 64)]
RULES_FULL_2D = FULL_2D
RULES_FULL_3D = FULL_3D
RULES_QUICK_2D = [(256, 256), (1024, 1024)]
RULES_QUICK_3D = [(64, 64, 64)]

N_FIELDS = 4
WARM_STEPS = 2  # agent steps that warm the fields up before (c) is measured
AGENT_BUDGET_S = 150.0  # most seconds (c) may take per grid (a quarter with --quick); a solver
#                         slower than that gets fewer warm-up and measured steps
LOD_SUBSTEPS = 20  # LOD substeps per timed call (solver.dt_min = 0.01 min, BioFVM's default);
#                         the agent step's set-up (rates, float64 copies) is shared by them, as it
#                         is by the 600 substeps of a 6-min agent step in a real run
BIOFVM_DT_MIN = 0.01  # BioFVM's default diffusion step: 600 LOD substeps per 6-min agent step
DX_UM = 20.0
VESSEL_DENSITY = 0.004  # vessels in the rules lattice (the rules leave them alone)
COPY_MB = 512

# references quoted in the tables
BIOFVM_UPD_PER_S = (7e7, 8e7)  # BioFVM LOD, 64^3..200^3, 4 substrates, 2 threads, 2-core machine
SOLVER_TARGET = 1.1e8  # about 1.5x BioFVM
RULES_TARGET_2D = 1e7
HAL_STEPS_PER_S = (4e6, 8e6)
STATE_TARGET_B = 40


def repeats(n_sites: int, quick: bool) -> dict:
    """How many times to repeat each measurement at this grid size (keeps the run under ~10 min)."""
    if quick:
        return dict(adi=3, lod=3, agent=1, rules=3)
    if n_sites <= 300_000:
        return dict(adi=5, lod=5, agent=3, rules=7)
    if n_sites <= 2_200_000:
        return dict(adi=3, lod=3, agent=2, rules=5)
    return dict(adi=2, lod=2, agent=1, rules=3)


# The four fields: oxygen (preset: D 1e5 um^2/min, decay 0.1 /min, tumor uptake 10 /min, 38 mmHg on
# every face and at vessels) and three extra fields with other diffusion, decay, uptake and source
# terms: a small-molecule drug fed by the boundary and the vessels, a secreted cytokine washed out
# at the boundary, and glucose.
EXTRA_FIELDS = """
[fields.oxygen]

[fields.drug]
units = "uM"
diffusion_um2_per_min = 2.4e4
decay_per_min = 0.01
uptake_per_min = { tumor = 0.2 }
initial = 1.0
vessel_value = 1.0
boundary = { faces = "all", kind = "dirichlet", value = 1.0 }

[fields.tgfb]
units = "ng/mL"
diffusion_um2_per_min = 6.0e3
decay_per_min = 0.02
secretion_per_min = { tumor = 0.001 }
boundary = { faces = "all", kind = "dirichlet", value = 0.0 }

[fields.glucose]
units = "mM"
diffusion_um2_per_min = 3.6e4
uptake_per_min = { tumor = 0.05 }
initial = 5.0
vessel_value = 5.0
boundary = { faces = "all", kind = "dirichlet", value = 5.0 }
"""


def scenario(shape, method="adi", run_dt_min=6.0, solver_dt_min=0.0, **solver):
    """The benchmark scenario; ``solver`` adds [solver] keys (e.g. max_iterations = 8)."""
    ndim = len(shape)
    extra = "".join(f"{k} = {v!r}\n" for k, v in solver.items())
    text = (
        f"""
[run]
dt_min = {run_dt_min}

[grid]
shape = {list(shape)}
dx_um = {DX_UM}

[init.tumor]
shape = "{"sphere" if ndim == 3 else "disk"}"

[solver]
method = "{method}"
dt_min = {solver_dt_min}
{extra}"""
        + EXTRA_FIELDS
    )
    sc = tmesim.loads_scenario(text)
    assert len(sc.fields) == N_FIELDS
    return sc


# The ADI solver is conjugate gradients preconditioned by a symmetric product of line factors, at
# most solver.max_iterations iterations; one sweep = one iteration, and FieldSolver.last_sweeps
# counts the iterations of the last step.

# [solver] keys that make an ADI step run exactly this many iterations (for timing one)
CAPPED_SOLVER = dict(max_iterations=8, tolerance=1e-9)


def git_state() -> str:
    """Commit of the tmesim package's checkout and whether tmesim/ has uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(tmesim.__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "tmesim"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return f"{root} (not a git checkout)"
    return f"{head}" + (" with uncommitted changes in tmesim/" if dirty.strip() else " (clean)")


def make_grid(sc) -> Grid:
    return Grid(sc.grid.shape, sc.grid.dx_um, sc.grid.neighbourhood)


def radius01(shape) -> np.ndarray:
    """Distance of each site from the domain centre, in units of the half side (flat, float32)."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    r2 = np.zeros(shape, dtype=np.float32)
    for a, x in enumerate(axes):
        s = [1] * len(shape)
        s[a] = len(x)
        r2 += (x * x).reshape(s)
    return np.sqrt(r2).ravel()


def solver_kind(shape) -> np.ndarray:
    """Occupants for the field solver: a tumor disk/sphere of radius 0.6 half-sides (0.3 of the
    side) with a necrotic core (inner 40 % of the radius) in empty tissue, without vessels (the
    workload of the first recorded runs, kept so that results compare)."""
    r = radius01(shape)
    kind = np.zeros(r.size, dtype=np.uint8)
    kind[r <= 0.6] = codes.TUMOR
    kind[r <= 0.24] = codes.NECROTIC
    return kind


def initial_fields(sc, n_sites) -> np.ndarray:
    init = np.array([f.initial for f in sc.fields], dtype=np.float32)
    return np.repeat(init[:, None], n_sites, axis=1)


def median_time(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Bytes moved, counted from the code
# ------------------------------------------------------------------------------------------------
# Counts are bytes read + written per field-voxel (float32 = 4 B) by the numpy operations as
# written, each operand counted once per operation (what the code asks of the memory system; data
# that stays in cache between operations is counted again, so small grids can "exceed" the copy
# bandwidth). Work on faces, pinned voxels and single rows is left out (O(1/m) of the volume).


def laplacian_bytes(ndim: int) -> float:
    # FieldSolver._laplacian (work arrays kept between calls), per axis:
    #   np.subtract(c[1:], c[:-1], out=flux[1:m])            r8 w4
    #   np.subtract(flux[1:], flux[:-1], out=out or tmp)      r8 w4
    #   out += tmp (every axis but the first)                 r8 w4
    # out *= D_over_h2                                        r4 w4
    return 24 + (ndim - 1) * 36 + 8


def step_setup_bytes(F: int) -> float:
    """FieldSolver.step's work once per agent step, per field-voxel."""
    rates = 2 * (9 / F + 12)  # U_table[:, kind], S_table[:, kind]: kind -> intp r1 w8 per voxel,
    #                              gather r8 (index) w4 per field-voxel
    pinned = 4 / F  # kind == VESSEL r1 w1, flatnonzero r2, per voxel
    finite = 6  # np.isfinite(fields) r4 w1, .all() r1
    return rates + pinned + finite


def factored_solve_bytes() -> float:
    """thomas_solve_factored (CG preconditioner, factors precomputed per agent step), per element:
    forward np.multiply(x[i-1], k, out=tmp) r4 w4, x[i] += tmp r8 w4, x[i] *= inv[i] r8 w4 (32);
    back np.multiply(cp[i], x[i+1], out=tmp) r8 w4, x[i] += tmp r8 w4 (24)."""
    return 56.0


def factor_bytes() -> float:
    """thomas_factor_diag, per element: np.add(extra, base) r4 w4; tmp -= k * cp[i-1] (r4 w4, then
    r8 w4); np.reciprocal r4 w4; np.multiply(inv, k, out=cp) r4 w4; plus extra = diag * tau share
    r4 w4 before it."""
    return 8 + 20 + 8 + 8 + 8


def pcg_apply_bytes(ndim: int) -> float:
    # _apply: _laplacian(p), np.multiply(diag, p, out=q) r8 w4, q -= lap r8 w4
    return laplacian_bytes(ndim) + 24


def pcg_precondition_bytes(ndim: int) -> float:
    # np.copyto(out, r) r4 w4; 2 ndim - 1 factored line solves; the x factor's two plane
    # transposes (np.copyto to and from the swapped layout) r4 w4 each
    return 8 + (2 * ndim - 1) * factored_solve_bytes() + 16


def pcg_sweep_bytes(ndim: int, F: int, sweeps: float, pinned_frac: float) -> float:
    """One PCG iteration (FieldSolver._adi_step loop body) per field-voxel, with the step's set-up
    shared by ``sweeps`` iterations as measured in (a)."""
    it = (
        8
        + 12  # direction: p *= beta; p += z
        + pcg_apply_bytes(ndim)
        + 8  # dots(p, q)
        + 8
        + 12
        + 8
        + 12  # update: tmp = p a; c += tmp; tmp = q a; r -= tmp
        + 8  # absmax(r): max and min
        + pcg_precondition_bytes(ndim)
        + 8  # dots(r, z)
        + 2 * 64 * pinned_frac * 2
    )  # pinned resets (q, z): one cache line per voxel
    setup = (
        8
        + 12  # b = c * inv_dt; b += S
        + pcg_apply_bytes(ndim)
        + 12
        + pcg_precondition_bytes(ndim)
        + 8  # r, z, p = z
        + 8
        + 8
        + 8  # dots(r, z), absmax(r), absmax(b)
        + 8
        + ndim * factor_bytes()
    )  # _adi_prepare: diag, ndim distinct factors
    return it + (setup + step_setup_bytes(F)) / sweeps


def adi_minimal_bytes(ndim: int) -> float:
    """What a fused, cache-blocked CG iteration must move per field-voxel: read p and write q
    (the operator product), read c, p, q, r and write c, r (the updates), read r and write z,
    then read + write z once per line factor (2 ndim - 1), and read z, p and write p (the next
    direction); the per-voxel line factors (inv, cp) read once per factor. float32 values."""
    return 8 + 24 + 8 + (2 * ndim - 1) * (8 + 8) + 12


def lod_sweep_bytes() -> float:
    """lod_line_solve (thomas_solve's sweep in float64), per element: forward
    np.multiply(x[i-1], kinv, out=tmp) r8 w8, x[i] *= inv r8 w8, x[i] += tmp r16 w8 (56); back
    np.multiply(x[i+1], cp, out=tmp) r8 w8, x[i] -= tmp r16 w8 (40)."""
    return 96.0


def lod_step_bytes(ndim: int, F: int, n_sub: int, pinned_frac: float) -> float:
    """One LOD substep (FieldSolver._lod_run loop body) per field-voxel, the agent step's set-up
    shared by n_sub substeps. float64 work arrays (8 B per value)."""
    lines = ndim * lod_sweep_bytes()
    copies = 16 * 2 * (ndim - 1)  # 3D: y lines in the swapped layout (to and back); x lines in
    #                                the layout with the last two axes swapped (to and back)
    react = 24 + 24  # t *= a; t += b
    pinned = (ndim + 1) * 64 * pinned_frac
    # set-up: c -> float64 r4 w8; a: U swapped r4 w8, -= decay, *= dt, += 1, reciprocal (r8 w8
    # each); b: S swapped r4 w8, *= dt r8 w8, *= a r16 w8
    setup = 12 + 12 + 4 * 16 + 12 + 16 + 24
    return lines + copies + react + pinned + (setup + step_setup_bytes(F)) / n_sub


def lod_minimal_bytes(ndim: int) -> float:
    """A fused LOD substep in float64 (BioFVM's precision): read + write each value once per axis,
    the reaction folded into the last sweep (its per-voxel rates come from the 1-byte kind)."""
    return 16.0 * ndim


def uniform_at_bytes(m: float, span: float) -> float:
    """rng.uniform_at for m sites spread over span sites (bytes in total, not per site)."""
    return (
        16 * m  # sites.min(), sites.max()
        + 8 * span  # Philox words for the whole span (random_raw)
        + 16 * m  # sites - lo
        + 24 * m  # words[...] gather: index r8, word r8, w8
        + 48 * m
    )  # to_uniform: >> 11, astype(float64), * 2**-53 (r8 w8 each)


def rules_bytes(n: int, c: dict, ndim: int, k_nbrs: int) -> float:
    """Bytes TumorRules.apply reads and writes in one step (total), from the counts ``c`` of the
    step: T tumor, N necrotic, L tumor below the necrosis threshold, D dying, G growing, S division
    candidates, C cleared, W divisions; spans of the index sets passed to the generator."""
    T, N, L, D, G = c["T"], c["N"], c["L"], c["D"], c["G"]
    S, C, W = c["S"], c["C"], c["W"]
    A = T - D
    b = 0.0
    b += 2 * (1 + 1 + 2) * n + 8 * T + 8 * N  # kind == TUMOR / NECROTIC, flatnonzero (2 passes)
    if N:  # clearance
        b += uniform_at_bytes(N, c["span_N"]) + 9 * N + 9 * N + 8 * C
    if T:
        b += 16 * T  # o2 = oxygen[cells]: index r8, gather r4, w4
        b += 5 * T + 1 * T  # low = o2 < thr; low.any()
        if L:
            b += 9 * T + 8 * L  # cand = cells[low]
            b += 5 * T + 4 * L  # o2[low]
            b += 32 * L  # necrosis_rate_per_min: 4 float32 operations
            b += 76 * L  # probability: float64 cast, -, * dt, expm1, -
            b += uniform_at_bytes(L, c["span_L"]) + 17 * L  # uniform_at(...) < p_nec
            b += 9 * L + 8 * D  # dying = cand[die]
            b += 1 * T + 2 * T + 8 * L + 9 * L + 9 * D  # alive mask and its scatter
            b += (9 * T + 8 * A) + (5 * T + 4 * A)  # cells[alive], o2[alive]
        b += 24 * A + 8 * A  # oxygen_factor (3 float32 ops), r_max * (.)
        b += 10 * A + 9 * A + 20 * A  # tumor_state[cells], state_factor[.], product
        b += 9 * A  # grow = rate > 0
        b += 9 * A + 8 * G  # cand = cells[grow]
        b += 9 * A + 8 * G + 48 * G  # rate[grow]; division_probability
        b += uniform_at_bytes(G, c["span_G"]) + 17 * G + 9 * G + 8 * S  # draw, compare, select
    if S:
        # neighbours (coordinates, offsets, inside mask, flat indices), kind[nbr] == EMPTY,
        # choose_target (cumsum int64, rank == k, argmax): about 50 B per (candidate, neighbour,
        # axis) plus 50 B per (candidate, neighbour); the claims (np.maximum.at) and the final
        # scatters touch one 64 B cache line per voxel
        b += (50 * ndim + 50) * k_nbrs * S + 3 * 64 * S
    b += 64 * (C + 2 * D + 2 * W)
    return b


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    family = mdl = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "model name" and model in ("", platform.machine()):
                    model = val
                elif key == "cpu family" and family is None:
                    family = val
                elif key == "model" and mdl is None:
                    mdl = val
    except OSError:
        pass
    if family is not None:
        model = f"{model} (family {family}, model {mdl})"
    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    return dict(
        host=socket.gethostname(),
        cpu=model,
        cores=cores,
        usable=usable,
        numpy=np.__version__,
        python=platform.python_version(),
        tmesim=tmesim.__version__,
        system=f"{platform.system()} {platform.release()}",
    )


def loadavg() -> str:
    """The 1-minute load average (other processes compete for the 2 cores: note it)."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "-"


def cpu_probe() -> float:
    """Seconds for 10**7 additions in a Python loop: a check of the CPU's speed at the time of the
    run (shared virtual machines vary by tens of percent from minute to minute)."""
    t0 = time.perf_counter()
    s = 0
    for i in range(10**7):
        s += i
    return time.perf_counter() - t0


def copy_bandwidth(mb: int, reps: int = 5) -> tuple[float, float]:
    """Best-of-reps GB/s (read + write) of np.copyto on a float32 array, 1 thread and 2 threads."""
    n = mb * 2**20 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros_like(src)
    one = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        one.append(time.perf_counter() - t0)
    half = n // 2
    parts = [(dst[:half], src[:half]), (dst[half:], src[half:])]
    two = []
    with ThreadPoolExecutor(2) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(lambda p: np.copyto(*p), parts))
            two.append(time.perf_counter() - t0)
    nbytes = 2 * src.nbytes
    return nbytes / min(one) / 1e9, nbytes / min(two) / 1e9


def bench_solver(shape, quick: bool, threads=None) -> dict:
    reps = repeats(int(np.prod(shape)), quick)
    ndim = len(shape)
    sc = scenario(shape)
    grid = make_grid(sc)
    n = grid.n_sites
    F = len(sc.fields)
    kind = solver_kind(shape)
    pinned_frac = float(np.mean(kind == codes.VESSEL))  # 0 here; kept for the byte counts

    # (c) realistic agent steps: warm start, then the sweeps ADI takes and the step's time
    fs = FieldSolver(sc, grid, threads=threads)
    cap = sc.solver.max_iterations * fs.n_sub
    fields = initial_fields(sc, n)
    times, sweeps = [], []
    budget = AGENT_BUDGET_S / (4 if quick else 1)
    for i in range(WARM_STEPS + reps["agent"]):
        t0 = time.perf_counter()
        fs.step(fields, kind)
        times.append(time.perf_counter() - t0)
        sweeps.append(fs.last_sweeps)
        # a slow solver: stop once the next step would overrun the budget (at least 2 steps:
        # one warm-up, one measured); the table then shows fewer warm-up steps
        if i >= 1 and sum(times) + times[-1] > budget:
            break
    n_warm = min(WARM_STEPS, len(times) - 1)
    warm_sweeps = sweeps[:n_warm]
    agent_t, agent_sweeps = times[n_warm:], sweeps[n_warm:]
    warm = fields.copy()
    # converged: no measured step ran into the sweep cap, and every field stays within the range
    # of its initial, boundary and vessel values (all of them within [0, 38]; tgfb's
    # secretion/decay ratio is 0.05 ng/mL)
    bounded = bool(np.all(warm[0] <= 38.0 * (1 + 1e-4)) and np.all(warm >= -1e-4))
    converged = bounded and max(agent_sweeps) < cap

    # (a) one sweep: steps capped at a fixed number of sweeps, run on the warm fields;
    # time / sweeps taken
    fs1 = FieldSolver(scenario(shape, **CAPPED_SOLVER), grid, threads=threads)
    f1 = warm.copy()
    per_sweep, taken = [], []

    def capped():
        t0 = time.perf_counter()
        fs1.step(f1, kind)
        dt = time.perf_counter() - t0
        return dt / fs1.last_sweeps, fs1.last_sweeps

    capped()  # warm-up
    for _ in range(reps["adi"]):
        t, k = capped()
        per_sweep.append(t)
        taken.append(k)
    t_sweep = statistics.median(per_sweep)
    sweeps_capped = statistics.mean(taken)

    # (b) one LOD step: steps of LOD_SUBSTEPS substeps of 0.01 min
    fsl = FieldSolver(
        scenario(
            shape,
            method="lod",
            run_dt_min=BIOFVM_DT_MIN * LOD_SUBSTEPS,
            solver_dt_min=BIOFVM_DT_MIN,
        ),
        grid,
        threads=threads,
    )
    assert fsl.n_sub == LOD_SUBSTEPS, fsl.n_sub
    fl = warm.copy()
    t_lod = median_time(lambda: fsl.step(fl, kind), reps["lod"]) / LOD_SUBSTEPS

    b_sweep = pcg_sweep_bytes(ndim, F, sweeps_capped, pinned_frac)
    o2 = warm[0]
    tumor = kind == codes.TUMOR
    return dict(
        shape=shape,
        n=n,
        F=F,
        sweeps_capped=sweeps_capped,
        t_sweep=t_sweep,
        upd_sweep=F * n / t_sweep,
        t_lod=t_lod,
        upd_lod=F * n / t_lod,
        warm_sweeps=warm_sweeps,
        sweeps=statistics.mean(agent_sweeps),
        cap=cap,
        converged=converged,
        t_agent=statistics.median(agent_t),
        b_sweep=b_sweep,
        b_lod=lod_step_bytes(ndim, F, LOD_SUBSTEPS, pinned_frac),
        threads=fs.threads,
        groups=len(fs._groups(fields_mod._THREAD_MIN_SITES)),
        tumor_frac=float(tumor.mean()),
        hypoxic_frac=float((o2[tumor] < 15).mean()) if tumor.any() else 0.0,
    )


def rules_lattice(shape, seed=0):
    """A lattice mostly filled with tumor cells: 10 % empty voxels, 0.4 % vessels, oxygen rising
    from 0 at the centre to 38 mmHg at 0.9 half-sides (o2 = 38 (r/0.9)^2), so the core is hypoxic
    and necrotic (70 % of voxels below 2.5 mmHg hold necrotic debris)."""
    r = radius01(shape)
    o2 = (38.0 * np.clip(r / 0.9, 0.0, 1.0) ** 2).astype(np.float32)
    u = np.random.default_rng(seed).random(r.size, dtype=np.float32)
    kind = np.full(r.size, codes.TUMOR, dtype=np.uint8)
    kind[u < 0.10] = codes.EMPTY
    kind[(o2 < 2.5) & (u >= 0.30)] = codes.NECROTIC
    kind[u >= 1.0 - VESSEL_DENSITY] = codes.VESSEL
    tumor_state = np.where(kind == codes.TUMOR, codes.SENSITIVE, codes.NONE).astype(np.uint8)
    return kind, tumor_state, o2


def span(idx: np.ndarray) -> int:
    return int(idx.max() - idx.min() + 1) if idx.size else 0


def bench_rules(shape, quick: bool, reach_um: float | None = None) -> dict:
    reps = repeats(int(np.prod(shape)), quick)["rules"]
    ndim = len(shape)
    sc = tmesim.loads_scenario(
        f"[grid]\nshape = {list(shape)}\ndx_um = {DX_UM}\n"
        f'[init.tumor]\nshape = "{"sphere" if ndim == 3 else "disk"}"\n'
        + ("" if reach_um is None else f"[tumor.mechanics]\npush_reach_um = {reach_um}\n")
    )
    grid = make_grid(sc)
    rules = TumorRules(sc.tumor, grid, seed=1, dt_min=sc.run.dt_min)
    kind0, ts0, o2 = rules_lattice(shape)
    kind, ts = kind0.copy(), ts0.copy()
    times, counts = [], []
    for step in range(reps + 1):
        np.copyto(kind, kind0)
        np.copyto(ts, ts0)
        t0 = time.perf_counter()
        rc = rules.apply(kind, ts, o2, step)
        dt = time.perf_counter() - t0
        if step:  # step 0 is the warm-up
            times.append(dt)
            counts.append(rc)
    t = statistics.median(times)
    n = grid.n_sites
    p = sc.tumor
    cells = np.flatnonzero(kind0 == codes.TUMOR)
    necrotic = np.flatnonzero(kind0 == codes.NECROTIC)
    low = cells[o2[cells] < p.necrosis_threshold_mmHg]
    grow = cells[o2[cells] > p.proliferation_threshold_mmHg]
    mean = lambda attr: statistics.mean(getattr(rc, attr) for rc in counts)  # noqa: E731
    cnt = dict(
        T=cells.size,
        N=necrotic.size,
        L=low.size,
        G=grow.size,
        D=mean("necroses"),
        C=mean("cleared"),
        W=mean("divisions"),
        S=mean("divisions") + mean("blocked") + mean("lost_conflicts"),
        span_N=span(necrotic),
        span_L=span(low),
        span_G=span(grow),
    )
    k_nbrs = len(grid.offsets)
    b_site = rules_bytes(n, cnt, ndim, k_nbrs) / n
    return dict(
        shape=shape,
        n=n,
        t=t,
        rate=n / t,
        b_site=b_site,
        tumor_frac=cells.size / n,
        hypoxic_frac=float((o2[cells] < 15).mean()),
        necrotic_frac=necrotic.size / n,
        low_frac=low.size / n,
        divisions=mean("divisions"),
        pushes=mean("pushes"),
        reach_um=sc.tumor.mechanics.push_reach_um,
        necroses=mean("necroses"),
        cleared=mean("cleared"),
    )


def solver_peak_bytes(shape) -> tuple[float, float, float]:
    """Per voxel: the peak memory numpy allocates inside one ADI agent step beyond what the solver
    keeps (tracemalloc), and the work arrays the solver keeps between steps (FieldSolver._ws), for
    ADI and for LOD."""
    sc = scenario(shape, **CAPPED_SOLVER)
    grid = make_grid(sc)
    fs = FieldSolver(sc, grid)
    kind = solver_kind(shape)
    fields = initial_fields(sc, grid.n_sites)
    fs.step(fields, kind)  # work arrays exist from here on
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fs.step(fields, kind)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    kept = sum(a.nbytes for a in fs._ws.values())
    fsl = FieldSolver(
        scenario(shape, method="lod", run_dt_min=BIOFVM_DT_MIN, solver_dt_min=BIOFVM_DT_MIN), grid
    )
    fsl.step(initial_fields(sc, grid.n_sites), kind)
    kept_lod = sum(a.nbytes for a in fsl._ws.values())
    n = grid.n_sites
    return peak / n, kept / n, kept_lod / n


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def fmt_shape(shape) -> str:
    if len(set(shape)) == 1:
        return f"{shape[0]}^{len(shape)}"
    return "x".join(map(str, shape))


def e(x: float) -> str:
    return f"{x:.2e}"


def md_table(header, rows) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(r) for r in cells[1:]
    ]


def render(info, bw1, bw2, copy_mb, probes, solver, rules, peak, command, elapsed) -> str:
    out = []
    out.append("## Machine")
    out.append("")
    out += md_table(
        ["item", "value"],
        [
            ["CPU", info["cpu"]],
            ["cores", f"{info['cores']} ({info['usable']} usable by this process)"],
            ["host / system", f"{info['host']} / {info['system']}"],
            ["python / numpy / tmesim", f"{info['python']} / {info['numpy']} / {info['tmesim']}"],
            ["tmesim checkout", info.get("git", "-")],
            [
                f"memory copy bandwidth, 1 thread (np.copyto {copy_mb} MB float32, "
                "best of 5, read + write)",
                f"{bw1:.1f} GB/s",
            ],
            ["memory copy bandwidth, 2 threads (same, each thread half)", f"{bw2:.1f} GB/s"],
            [
                "CPU speed probe: 10^7 Python additions, at start / at end",
                f"{probes[0]:.3f} s / {probes[1]:.3f} s",
            ],
            [
                "field solver threads (FieldSolver.threads; groups of fields on the 3D grids)",
                f"{solver[0]['threads']} ({solver[-1]['groups']} groups)" if solver else "-",
            ],
            [
                "load average at start / at end (1 min, from /proc/loadavg)",
                f"{info.get('load0', '-')} / {info.get('load1', '-')}",
            ],
        ],
    )
    out.append("")

    if solver:
        F = solver[0]["F"]
        what = (
            "ADI here is conjugate gradients preconditioned by the ADI line-factor product; "
            "one sweep = one iteration (an operator product and 2 ndim - 1 line solves), "
            f"(a) times steps capped at {solver[0]['sweeps_capped']:.0f} iterations."
        )
        out.append(
            f"## Field solver ({F} fields: oxygen, drug, tgfb, glucose; dx {DX_UM:g} um, "
            "agent step 6 min)"
        )
        out.append("")
        out.append(
            f"One voxel-field update = one field at one voxel advanced by one ADI sweep or "
            f"one LOD step. {what} BioFVM (LOD, 4 substrates, "
            f"2 threads, this kind of machine): {e(BIOFVM_UPD_PER_S[0])}-"
            f"{e(BIOFVM_UPD_PER_S[1])} updates/s; target >= {e(SOLVER_TARGET)} (3D)."
        )
        out.append("")
        rows = []
        for s in solver:
            rows.append(
                [
                    fmt_shape(s["shape"]),
                    e(s["n"]),
                    f"{s['t_sweep'] * 1e3:.1f}",
                    e(s["upd_sweep"]),
                    f"{s['upd_sweep'] / SOLVER_TARGET:.2f}" if len(s["shape"]) == 3 else "-",
                    f"{s['t_lod'] * 1e3:.1f}",
                    e(s["upd_lod"]),
                    f"{s['sweeps']:.0f} (warm-up {','.join(map(str, s['warm_sweeps']))})"
                    + ("" if s["converged"] else f" NOT CONVERGED (cap {s['cap']})"),
                    f"{s['t_agent']:.3g}",
                    f"{100 * s['tumor_frac']:.0f} / {100 * s['hypoxic_frac']:.0f}",
                ]
            )
        out += md_table(
            [
                "grid",
                "voxels",
                "ADI ms/sweep",
                "ADI upd/s",
                "x target",
                "LOD ms/step",
                "LOD upd/s",
                "sweeps/agent step",
                "s/agent step",
                "tumor % / hypoxic % of tumor",
            ],
            rows,
        )
        out.append("")
        out.append(
            "Memory traffic of the solver (bytes per voxel-field update, counted from the "
            "numpy operations in tmesim/steps/fields.py):"
        )
        out.append("")
        rows = []
        for s in solver:
            gb_a = s["b_sweep"] * s["upd_sweep"] / 1e9
            gb_l = s["b_lod"] * s["upd_lod"] / 1e9
            rows.append(
                [
                    fmt_shape(s["shape"]),
                    f"{s['b_sweep']:.0f}",
                    f"{adi_minimal_bytes(len(s['shape'])):.0f}",
                    f"{gb_a:.1f}",
                    f"{100 * gb_a / bw1:.0f}%",
                    f"{s['b_lod']:.0f}",
                    f"{lod_minimal_bytes(len(s['shape'])):.0f}",
                    f"{gb_l:.1f}",
                    f"{100 * gb_l / bw1:.0f}%",
                ]
            )
        out += md_table(
            [
                "grid",
                "ADI B/update",
                "ADI fused minimum",
                "ADI GB/s",
                "ADI % of copy BW",
                "LOD B/update (float64)",
                "LOD fused minimum",
                "LOD GB/s",
                "LOD % of copy BW",
            ],
            rows,
        )
        out.append("")
        n_bio = round(6.0 / BIOFVM_DT_MIN)
        out.append(
            f"Time per 6-min agent step at comparable accuracy: BioFVM's scheme needs "
            f"dt = {BIOFVM_DT_MIN:g} min ({n_bio} LOD substeps) to come within 0.4 mmHg "
            "of the implicit-Euler steady state under tumor uptake (module docstring of "
            "tmesim/steps/fields.py), which tmesim's ADI solver reaches to 1e-5 mmHg in "
            "one implicit step. BioFVM's time is estimated from its quoted rate."
        )
        out.append("")
        rows = []
        mid = sum(BIOFVM_UPD_PER_S) / 2
        for s in solver:
            work = s["F"] * s["n"] * n_bio
            rows.append(
                [
                    fmt_shape(s["shape"]),
                    f"{s['t_agent']:.3g}",
                    f"{s['t_lod'] * n_bio:.3g}",
                    f"{work / BIOFVM_UPD_PER_S[1]:.3g}-{work / BIOFVM_UPD_PER_S[0]:.3g}",
                    f"{work / mid / s['t_agent']:.1f}",
                ]
            )
        out += md_table(
            [
                "grid",
                "ADI s/agent step (c)",
                f"tmesim LOD s/agent step ({n_bio} substeps)",
                f"BioFVM s/agent step ({n_bio} substeps, est.)",
                "BioFVM time / ADI time",
            ],
            rows,
        )
        out.append("")

    if rules:
        out.append("## Tumor rules (TumorRules.apply, every lattice site counted each step)")
        out.append("")
        out.append(
            f"Target (2D) >= {e(RULES_TARGET_2D)} site updates/s; HAL on-lattice model: "
            f"{e(HAL_STEPS_PER_S[0])}-{e(HAL_STEPS_PER_S[1])} agent steps/s. Blocked cells "
            f"push within the default reach ({rules[0]['reach_um']:g} um, "
            "tmesim.steps.mechanics); B/site counts the rules without the push."
        )
        out.append("")
        rows = []
        for r in rules:
            gb = r["b_site"] * r["rate"] / 1e9
            rows.append(
                [
                    fmt_shape(r["shape"]),
                    e(r["n"]),
                    f"{r['t'] * 1e3:.1f}",
                    e(r["rate"]),
                    f"{100 * r['tumor_frac']:.0f} / {100 * r['hypoxic_frac']:.0f} / "
                    f"{100 * r['necrotic_frac']:.1f}",
                    f"{r['divisions']:.0f} ({r['pushes']:.0f}) / {r['necroses']:.0f} / "
                    f"{r['cleared']:.0f}",
                    f"{r['b_site']:.0f}",
                    f"{gb:.1f}",
                    f"{100 * gb / bw1:.0f}%",
                ]
            )
        out += md_table(
            [
                "grid",
                "sites",
                "ms/step",
                "site upd/s",
                "tumor % / hypoxic % of tumor / necrotic %",
                "divisions (by pushing) / necroses / cleared per step",
                "B/site",
                "GB/s",
                "% of copy BW",
            ],
            rows,
        )
        out.append("")

    out.append("## State")
    out.append("")
    F = N_FIELDS
    rows = [
        [
            f"State.bytes_per_voxel({F}) (kind, tumor_state, {F} float32 fields)",
            f"{State.bytes_per_voxel(F)} B",
            f"<= {STATE_TARGET_B} B",
        ]
    ]
    for shape, (b, kept, kept_lod) in peak:
        rows.append(
            [
                f"peak transient memory of one ADI agent step at {fmt_shape(shape)} "
                "(tracemalloc, beyond the state and the solver's work arrays)",
                f"{b:.0f} B",
                "-",
            ]
        )
        rows.append(
            [
                f"work arrays the solver keeps between steps at {fmt_shape(shape)}: ADI / LOD",
                f"{kept:.0f} B / {kept_lod:.0f} B",
                "-",
            ]
        )
    out += md_table(["quantity, per voxel", "bytes", "target"], rows)
    out.append("")

    out.append("## Targets")
    out.append("")
    rows = []
    three = [s for s in solver if len(s["shape"]) == 3]
    for key, what in (
        ("upd_sweep", "ADI (default), per CG iteration"),
        ("upd_lod", "LOD (BioFVM's scheme), per substep"),
    ):
        if not three:
            break
        worst = min(three, key=lambda s: s[key])
        best = max(three, key=lambda s: s[key])
        n_ok = sum(s[key] >= SOLVER_TARGET for s in three)
        rows.append(
            [
                f"field solver >= {e(SOLVER_TARGET)} voxel-field updates/s, 3D, {F} fields: {what}",
                f"{e(worst[key])} ({fmt_shape(worst['shape'])}) .. "
                f"{e(best[key])} ({fmt_shape(best['shape'])})",
                "met"
                if n_ok == len(three)
                else (f"MISSED (met on {n_ok} of {len(three)} grids)" if n_ok else "MISSED"),
            ]
        )
    two = [r for r in rules if len(r["shape"]) == 2]
    if two:
        worst = min(two, key=lambda r: r["rate"])
        rows.append(
            [
                f"2D rules >= {e(RULES_TARGET_2D)} site updates/s",
                f"{e(worst['rate'])} (slowest, {fmt_shape(worst['shape'])})",
                "met" if worst["rate"] >= RULES_TARGET_2D else "MISSED",
            ]
        )
    sb = State.bytes_per_voxel(F)
    rows.append(
        [
            f"state <= {STATE_TARGET_B} B per voxel ({F} fields)",
            f"{sb} B",
            "met" if sb <= STATE_TARGET_B else "MISSED",
        ]
    )
    out += md_table(["target", "measured", "status"], rows)
    out.append("")
    out.append(f"Command: `{command}`; wall time {elapsed:.0f} s.")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="only the smallest grids, fewer repeats")
    ap.add_argument("--out", metavar="FILE", help="also write the tables as markdown to FILE")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="FieldSolver threads (default: TMESIM_THREADS or the usable cores)",
    )
    ap.add_argument("--skip-rules", action="store_true", help="measure the field solver only")
    ap.add_argument("--skip-solver", action="store_true", help="measure the tumor rules only")
    ap.add_argument(
        "--push-reach",
        type=float,
        default=None,
        metavar="UM",
        help="the rules' push reach (default: the scenario default; 0: contact inhibition)",
    )
    args = ap.parse_args(argv)
    command = (
        "python benchmarks/bench_core.py"
        + (" --quick" if args.quick else "")
        + (f" --threads {args.threads}" if args.threads else "")
        + (" --skip-rules" if args.skip_rules else "")
        + (" --skip-solver" if args.skip_solver else "")
        + (f" --push-reach {args.push_reach:g}" if args.push_reach is not None else "")
        + (f" --out {args.out}" if args.out else "")
    )
    t_start = time.perf_counter()
    info = machine_info()
    info["git"] = git_state()
    info["load0"] = loadavg()
    probe0 = cpu_probe()
    log(f"tmesim core benchmark on {info['cpu']}, {info['cores']} cores, numpy {info['numpy']}")
    copy_mb = COPY_MB // 4 if args.quick else COPY_MB
    bw1, bw2 = copy_bandwidth(copy_mb)
    log(f"copy bandwidth {bw1:.1f} GB/s (1 thread), {bw2:.1f} GB/s (2 threads)")

    sizes = (QUICK_2D + QUICK_3D) if args.quick else (FULL_2D + FULL_3D)
    solver = []
    for shape in [] if args.skip_solver else sizes:
        t0 = time.perf_counter()
        s = bench_solver(shape, args.quick, args.threads)
        solver.append(s)
        log(
            f"solver {fmt_shape(shape)}: {s['t_sweep'] * 1e3:.1f} ms/sweep "
            f"({e(s['upd_sweep'])} upd/s), LOD {s['t_lod'] * 1e3:.1f} ms/step, "
            f"{s['sweeps']:.0f} sweeps/agent step, {s['t_agent']:.3g} s/agent step "
            f"[{time.perf_counter() - t0:.0f} s]"
        )

    rsizes = (RULES_QUICK_2D + RULES_QUICK_3D) if args.quick else (RULES_FULL_2D + RULES_FULL_3D)
    rules = []
    for shape in [] if args.skip_rules else rsizes:
        r = bench_rules(shape, args.quick, args.push_reach)
        rules.append(r)
        log(f"rules {fmt_shape(shape)}: {r['t'] * 1e3:.1f} ms/step, {e(r['rate'])} site upd/s")

    peak = [(s, solver_peak_bytes(s)) for s in ((QUICK_2D[0], QUICK_3D[0]))]
    probes = (probe0, cpu_probe())
    info["load1"] = loadavg()
    elapsed = time.perf_counter() - t_start
    table = render(info, bw1, bw2, copy_mb, probes, solver, rules, peak, command, elapsed)
    print()
    print(table)
    if args.out:
        today = datetime.date.today().isoformat()
        header = (
            f"# tmesim CPU benchmark, {today}\n\n"
            f"- date: {today}\n"
            f"- machine: {info['cpu']}, {info['cores']} cores, host {info['host']}, "
            f"{info['system']}\n"
            f"- command: `{command}` (from the repository root)\n\n"
        )
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(header + table + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
