#!/usr/bin/env python
"""Where the time of a tmesim agent step goes on a GPU: the device check's probe stage
(benchmarks/device_check.sh), usable alone.

    python benchmarks/gpu_probe.py OUT_DIR [--size 256] [--budget SECONDS]
    python benchmarks/gpu_probe.py OUT_DIR --portable --size 24   # the script itself on a CPU,
                                                                 # through the C++ kernels

Writes OUT_DIR/probe.md (markdown, appended after every section, so a timeout keeps what was
done) and OUT_DIR/probe.json. Every section is guarded: a failure is written down with its
traceback and the next section runs; a section the budget cannot hold is skipped, saying so.

Sections:

1. device and build: the device, cupy's accelerators, the NVRTC build time of the kernel module
   and, per kernel, registers, local memory (spills) and the most threads per block as built;
2. GPU-only sanity: 64-bit grid-stride indexing past 2^32 work items through the real drivers
   (tm_axpy, tm_set_pinned), cupy.bincount of an empty array (an extinct tumor's observables);
3. micro-benchmarks: copy bandwidth, the CG's per-field reductions (cupy) against a two-pass
   multi-block prototype, max/min, bincount, masks, the distance transform, host cost of a
   launch, of one CG scalar expression and of one device-to-host sync;
4. one agent step of ``scenarios/bench_3d_256.toml`` at SIZE^3 (host wall of its parts, then a
   launch timeline: a CUDA event before and after every kernel launch (the CG's reductions
   included: they are launches of ours),
   summed per kernel name into a table of calls, ms, share, bytes and GB/s; the rest of the
   step's device time is the array library's own work, host gaps and syncs);
5. the LOD field step on the same state, with its timeline;
6. a CUDA graph of the CG preconditioner (multigrid V-cycle by default): captured, replayed,
   compared bit for bit;
7. run-file I/O at SIZE^3: a two-step ``Simulation.run`` writing a snapshot and a checkpoint
   every step, less the steps' time of section 4.

Times are CUDA events on the device's own clock (host perf_counter in the portable run). An event
pair around a launch also holds the host's launch latency when the device is idle waiting for it,
so small kernels read slower than they run: the table tells where a step's time goes, not the
kernels' own speed (bench_gpu.py measures that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import bench_gpu  # noqa: E402 - the scenario, kernel signatures and byte counts of the benchmark


class Probe:
    """The report being written, the budget, and the backend's clock."""

    def __init__(self, out: Path, size: int, budget_s: float, portable: bool):
        self.out, self.size, self.budget, self.portable = out, size, budget_s, portable
        self.t0 = time.monotonic()
        self.results: dict = {"size": size, "portable": portable, "failures": []}
        self.state: dict = {}
        out.mkdir(parents=True, exist_ok=True)
        self.md_path = out / "probe.md"
        what = "portable CPU dry run" if portable else "GPU"
        self.backend: Any
        self.xp: Any
        self.md_path.write_text(
            f"# tmesim GPU probe ({what}, {size}^3), {time.strftime('%Y-%m-%d %H:%M')}\n"
        )
        if portable:
            from tmesim.backend import Portable

            self.backend = Portable()
            self.xp = np
        else:
            import cupy

            from tmesim.backend import GPU

            self.backend = GPU(0)  # not get_backend("gpu"): no warning while unverified
            self.xp = cupy

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def md(self, *lines: str) -> None:
        with self.md_path.open("a") as f:
            for ln in lines:
                f.write(ln + "\n")
        for ln in lines:
            print(ln, flush=True)

    def save(self) -> None:
        (self.out / "probe.json").write_text(json.dumps(self.results, indent=1, default=str))

    def section(self, title: str, fn, need_s: float) -> None:
        self.md("", f"## {title}", "")
        if self.left() < need_s:
            self.md(f"SKIPPED: {self.left():.0f} s of the budget left, needs ~{need_s:.0f} s")
            self.results.setdefault("skipped", []).append(title)
            self.save()
            return
        t = time.monotonic()
        try:
            fn(self)
        except Exception:  # a probe reports a failure and goes on
            self.md("FAILED:", "```", traceback.format_exc()[-4000:], "```")
            self.results["failures"].append(title)
        self.md(f"_(section took {time.monotonic() - t:.1f} s)_")
        self.save()

    # ------------------------------------------------------------------------------ clocks
    def sync(self) -> None:
        if not self.portable:
            self.xp.cuda.Device().synchronize()

    def event(self):
        """A point on the device's timeline (a recorded CUDA event), or the host clock."""
        if self.portable:
            return time.perf_counter()
        e = self.xp.cuda.Event()
        e.record()
        return e

    def ms(self, a, b) -> float:
        if self.portable:
            return (b - a) * 1e3
        b.synchronize()
        return self.xp.cuda.get_elapsed_time(a, b)

    def time_ms(self, fn, reps: int = 5, warm: int = 1) -> float:
        """Median device time of fn() in ms (events around each call)."""
        for _ in range(warm):
            fn()
        out = []
        for _ in range(reps):
            a = self.event()
            fn()
            out.append(self.ms(a, self.event()))
        return statistics.median(out)

    def host_ms(self, fn) -> float:
        """Host wall time of fn() in ms, the device synchronized before and after."""
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t) * 1e3


class TimelineLauncher:
    """Wraps a launcher: while :attr:`on`, an event before and after every launch, kept with the
    kernel's name and the bytes its arguments span (bench_gpu.launch_bytes)."""

    def __init__(self, probe: Probe, inner):
        self.probe, self.inner, self.xp = probe, inner, inner.xp
        self.signatures = bench_gpu.kernel_signatures()
        self.on = False
        self.launches = 0
        self.rec: list[tuple] = []

    def __call__(self, name, n_work, *args):
        self.launches += 1
        if not self.on:
            return self.inner(name, n_work, *args)
        a = self.probe.event()
        r = self.inner(name, n_work, *args)
        b = self.probe.event()
        self.rec.append((name, a, b, bench_gpu.launch_bytes(name, args, self.signatures)))
        return r


def timeline_table(probe: Probe, rec: list, total_ms: float) -> tuple[list[str], dict]:
    """Per-name sums of a timeline, and the rest of the total as 'other'."""
    agg: dict[str, list] = {}
    for name, a, b, nb in rec:
        s = agg.setdefault(name, [0, 0.0, 0])
        s[0] += 1
        s[1] += probe.ms(a, b)
        s[2] += nb
    total_ms = max(total_ms, 1e-9)
    lines = ["| what | calls | ms | % | MB | GB/s |", "|---|---|---|---|---|---|"]
    acc = 0.0
    for name, (n, ms, nb) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        acc += ms
        gbs = f"{nb / ms / 1e6:.0f}" if ms > 0 and nb else "-"
        lines.append(
            f"| {name} | {n} | {ms:.3f} | {100 * ms / total_ms:.1f} | {nb / 1e6:.1f} | {gbs} |"
        )
    rest = total_ms - acc
    lines.append(
        f"| other (array library, host gaps, syncs) | - | {rest:.3f} | "
        f"{100 * rest / total_ms:.1f} | - | - |"
    )
    mb = sum(r[3] for r in rec) / 1e6
    lines.append(f"| **total** | {len(rec)} | {total_ms:.3f} | 100 | {mb:.1f} | - |")
    parts = {k: {"calls": v[0], "ms": v[1], "bytes": v[2]} for k, v in agg.items()}
    return lines, parts


# ---------------------------------------------------------------------------------- sections
def s_device(p: Probe) -> None:
    import tmesim
    from tmesim import launch

    p.md(f"- python {sys.version.split()[0]}, numpy {np.__version__}, tmesim {tmesim.__version__}")
    names = sorted(bench_gpu.kernel_signatures())
    p.results["kernels"] = len(names)
    if p.portable:
        t = time.perf_counter()
        p.backend.launcher()
        p.md(
            f"- portable dry run: {len(names)} kernels in kernels/*.cu; C++ library ready in "
            f"{time.perf_counter() - t:.2f} s (cached by content hash)"
        )
        return
    import cupy as cp
    from cupy._core import _accelerator as acc
    from cupy_backends.cuda.api import driver as drv

    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    free, total = cp.cuda.runtime.memGetInfo()
    info = {
        "device": name,
        "sm": props["multiProcessorCount"],
        "cc": f"{props['major']}.{props['minor']}",
        "l2_MB": props["l2CacheSize"] / 2**20,
        "mem_GiB": total / 2**30,
        "free_GiB": free / 2**30,
        "cupy": cp.__version__,
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cp.cuda.runtime.driverGetVersion(),
        "routine_accelerators": acc.get_routine_accelerators(),
        "reduction_accelerators": acc.get_reduction_accelerators(),
        "CUPY_ACCELERATORS": os.environ.get("CUPY_ACCELERATORS"),
    }
    p.results["device"] = info
    p.md(*[f"- {k}: {v}" for k, v in info.items()])
    t = time.perf_counter()
    mod = launch.get_module(0)
    p.results["module_build_s"] = build_s = time.perf_counter() - t
    p.md(f"- kernel module built by NVRTC in {build_s:.2f} s (first use in this process)")
    rows = [
        "",
        "| kernel | registers | local B | max threads/block | ptx/sass |",
        "|---|---|---|---|---|",
    ]
    attrs, bad = {}, []
    for kname in names:
        ptr = mod.get_function(kname).ptr
        a = {
            key: drv.funcGetAttribute(attr, ptr)
            for key, attr in (
                ("regs", drv.CU_FUNC_ATTRIBUTE_NUM_REGS),
                ("local", drv.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES),
                ("maxthr", drv.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
                ("ptx", drv.CU_FUNC_ATTRIBUTE_PTX_VERSION),
                ("sass", drv.CU_FUNC_ATTRIBUTE_BINARY_VERSION),
            )
        }
        attrs[kname] = a
        if a["maxthr"] < launch.BLOCK or a["local"] > 0:
            bad.append(kname)
        rows.append(
            f"| {kname} | {a['regs']} | {a['local']} | {a['maxthr']} | {a['ptx']}/{a['sass']} |"
        )
    p.results["kernel_attributes"] = attrs
    p.results["kernels_bad_launch"] = bad
    p.md(
        *rows,
        "",
        f"- kernels that cannot take BLOCK={launch.BLOCK} threads or use local memory: "
        f"{bad or 'none'}",
    )


def s_sanity(p: Probe) -> None:
    if p.portable:
        p.md("- skipped in the portable dry run")
        return
    import cupy as cp

    from tmesim import launch
    from tmesim.steps.fields_kernel import axpy, set_pinned

    out = {}
    try:
        b = cp.bincount(cp.zeros(0, cp.uint8), minlength=4)
        out["bincount_empty"] = f"ok {b.get().tolist()}"
    except Exception as e:
        out["bincount_empty"] = f"RAISES {type(e).__name__}: {e} (observables of an extinct tumor)"
    # F * n > 2^32 work items through the drivers the solver uses
    free, _ = cp.cuda.runtime.memGetInfo()
    F, n = 5, 2**30
    need = 2 * F * n * 4 + n + F * n  # y, x float32, the pin codes, a bool temporary
    if free < need * 1.15:
        out["grid_stride_2^32"] = f"skipped: {free / 2**30:.1f} GiB free, needs {need / 2**30:.1f}"
    else:
        L = launch.CupyLauncher(0)
        y = cp.zeros((F, n), cp.float32)
        x = cp.ones((F, n), cp.float32)
        alpha = cp.arange(1, F + 1, dtype=cp.float32)
        e0 = p.event()
        axpy(y, alpha, x, launcher=L)  # y = alpha[f] everywhere
        ms = p.ms(e0, p.event())
        wrong = int(cp.count_nonzero(y != alpha[:, None]))
        del x
        pin = cp.zeros(n, cp.uint8)
        mid = n // 2 + 12345
        pin[-1] = pin[mid] = 4  # TM_VESSEL: the last site, whose items lie past 2^32
        val = cp.asarray(np.arange(10, 10 + F, dtype=np.float32))
        set_pinned(y, pin, val, cp.zeros(F, cp.float32), launcher=L)
        last, midv = y[:, -1].get().tolist(), y[:, mid].get().tolist()
        ok_pin = last == list(range(10, 10 + F)) and midv == last
        untouched = int(cp.count_nonzero(y[:, :-1] != alpha[:, None])) == F  # only the mid site
        out["grid_stride_2^32"] = (
            f"axpy over {F}x2^30 = {F * n:.3g} items ({ms:.1f} ms, {3 * F * n * 4 / ms / 1e6:.0f} "
            f"GB/s): {wrong} wrong; set_pinned past 2^32: {'ok' if ok_pin else 'WRONG'} {last}, "
            f"others untouched: {untouched}"
        )
        del y, pin
        cp.get_default_memory_pool().free_all_blocks()
    p.md(*[f"- {k}: {v}" for k, v in out.items()])
    p.results["sanity"] = out


DOT_SRC = r"""
extern "C" __global__ void dot_partial(const float* __restrict__ x, const float* __restrict__ y,
                                       long long n, double* __restrict__ part) {
    /* blockIdx.y = field; each block a grid-stride share of that field's n values */
    __shared__ double s[256];
    const long long base = (long long)blockIdx.y * n;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x)
        acc += (double)x[base + i] * (double)y[base + i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = 128; w > 0; w >>= 1) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.y * gridDim.x + blockIdx.x] = s[0];
}
extern "C" __global__ void dot_finish(const double* __restrict__ part, int nb,
                                      double* __restrict__ out) {
    /* one thread per field, a fixed order: deterministic */
    const int f = threadIdx.x;
    double acc = 0.0;
    for (int b = 0; b < nb; ++b) acc += part[f * nb + b];
    out[f] = acc;
}
"""


def s_micro(p: Probe) -> None:
    if p.portable:
        p.md("- skipped in the portable dry run")
        return
    import cupy as cp

    from tmesim import launch
    from tmesim.steps.fields_kernel import _cupy_dot, axpy

    n, F = p.size**3, 5
    res: dict = {}
    src = cp.ones(2**28, cp.float32)
    dst = cp.empty_like(src)
    ms = p.time_ms(lambda: dst.__setitem__(Ellipsis, src), reps=10)
    res["copy_GBps"] = copy_gbs = 2 * src.nbytes / ms / 1e6
    rng = cp.random.default_rng(1)
    x = rng.random((F, n), dtype=cp.float32)
    y = rng.random((F, n), dtype=cp.float32)
    dot = _cupy_dot()
    mod = cp.RawModule(code=DOT_SRC)
    dp, df = mod.get_function("dot_partial"), mod.get_function("dot_finish")
    nb = 4 * cp.cuda.runtime.getDeviceProperties(0)["multiProcessorCount"]
    part = cp.empty(F * nb, cp.float64)
    out = cp.empty(F, cp.float64)

    def two_pass_dot():
        dp((nb, F), (256,), (x, y, np.int64(n), part))
        df((1,), (F,), (part, np.int32(nb), out))

    rows = []

    def row(label, fn, nbytes, reps=5):
        ms = p.time_ms(fn, reps=reps)
        res[label] = ms
        rows.append(
            f"| {label} | {ms:.3f} | {nbytes / 1e6:.0f} | {nbytes / ms / 1e6:.0f} | "
            f"{100 * nbytes / ms / 1e6 / copy_gbs:.0f} |"
        )

    fb = F * n * 4
    row(
        "tm_field_dot (cupy reduction, axis=1: one block per field)",
        lambda: dot(x, y, axis=1),
        2 * fb,
    )
    row("two-pass multi-block dot (RawKernel, deterministic)", two_pass_dot, 2 * fb)
    two_pass_dot()
    ref = dot(x, y, axis=1)
    res["two_pass_rel_diff"] = rel = float(cp.max(cp.abs(out - ref) / cp.abs(ref)))
    row("x.max(axis=1) (one block per field)", lambda: x.max(axis=1), fb)
    row("x.min(axis=1)", lambda: x.min(axis=1), fb)
    row("x.max() (whole array)", lambda: x.max(), fb)
    k = (rng.random(n, dtype=cp.float32) * 6).astype(cp.uint8)
    row("cupy.bincount(uint8 n, minlength=64)", lambda: cp.bincount(k, minlength=64), n)
    mask = k == 1
    row("cupy.flatnonzero(bool n) (1/6 true)", lambda: cp.flatnonzero(mask), n)
    row("x[0][mask] (boolean index, 1/6 true)", lambda: x[0][mask], n * 5)
    row("cupy.count_nonzero(bool n)", lambda: cp.count_nonzero(mask), n)
    try:
        from cupyx.scipy import ndimage as cnd

        caf = (k == 2).reshape((p.size,) * 3)  # a dense CAF mask, about 1/6 of the voxels
        sparse = cp.zeros((p.size,) * 3, bool)
        sparse[::17, ::13, ::11] = True
        row(
            "cupyx distance_transform_edt (dense mask)",
            lambda: cnd.distance_transform_edt(~caf),
            n * 18,
            reps=3,
        )
        row(
            "cupyx distance_transform_edt (sparse mask)",
            lambda: cnd.distance_transform_edt(~sparse),
            n * 18,
            reps=3,
        )
    except Exception as e:
        rows.append(f"| cupyx EDT | FAILED {type(e).__name__}: {str(e)[:80]} | | | |")
    p.md(
        f"- copy bandwidth (1 GiB float32, read + write): {copy_gbs:.0f} GB/s",
        f"- two-pass dot against tm_field_dot: largest relative difference {rel:.2e}",
        "",
        f"| op on ({F}, {p.size}^3) float32 or ({p.size}^3,) | ms | MB | GB/s | % of copy |",
        "|---|---|---|---|---|",
        *rows,
    )
    # host side: a launch, a CG scalar expression, a sync
    L = launch.CupyLauncher(0)
    a = cp.zeros((1, 256), cp.float32)
    b = cp.ones((1, 256), cp.float32)
    al = cp.ones(1, cp.float32)
    N = 2000
    p.sync()
    t = time.perf_counter()
    for _ in range(N):
        axpy(a, al, b, launcher=L)
    p.sync()
    us_driver = (time.perf_counter() - t) / N * 1e6
    t = time.perf_counter()
    for _ in range(N):
        L("tm_axpy", 256, np.int32(1), np.int64(256), a, al, b)
    p.sync()
    us_raw = (time.perf_counter() - t) / N * 1e6
    s5 = cp.ones(5, cp.float64)
    t = time.perf_counter()
    for _ in range(N):
        cp.where(s5 > 0, s5 / cp.where(s5 > 0, s5, 1.0), 0.0).astype(cp.float32)
    p.sync()
    us_expr = (time.perf_counter() - t) / N * 1e6
    t = time.perf_counter()
    for _ in range(500):
        bool((s5 <= 2.0).all())
    us_sync = (time.perf_counter() - t) / 500 * 1e6
    res.update(
        us_per_launch_driver=us_driver,
        us_per_launch_raw=us_raw,
        us_per_cg_expression=us_expr,
        us_per_bool_sync=us_sync,
    )
    p.md(
        "",
        f"- host time per launch through fields_kernel.axpy (checks + launcher): "
        f"{us_driver:.1f} us; through CupyLauncher directly: {us_raw:.1f} us",
        f"- one CG alpha/beta expression (6 cupy operations on 5 values): {us_expr:.1f} us",
        f"- one `bool((rmax <= thresh).all())` (2 operations + a device-to-host sync): "
        f"{us_sync:.1f} us",
    )
    p.results["micro"] = res


class TimelineBackend(bench_gpu.CountingBackend):
    """The probe's backend with every launch through a TimelineLauncher."""


def bench_scenario(p: Probe, *extra):
    shape = (p.size,) * 3
    return bench_gpu.bench_scenario(shape, max(2, round(p.size * 80 / 256)), *extra)


def s_model(p: Probe) -> None:
    from tmesim import observables
    from tmesim.simulation import Model

    sc = bench_scenario(p)
    tl = TimelineLauncher(p, p.backend.launcher())
    t = time.perf_counter()
    m = Model(sc, TimelineBackend(p.backend, tl))
    build = time.perf_counter() - t
    fs = m.field_solver.inner
    st = m.state
    p.md(
        f"- grid {p.size}^3, fields {sc.field_names} (solved: {fs.F}), method {fs.method}, push "
        f"reach {sc.tumor.mechanics.push_reach_um:g} um; Model built in {build:.1f} s (initial "
        f"state on the host, copied to the device)"
    )
    warm = []
    for _ in range(2):
        before = tl.launches
        ms = p.host_ms(m.step)
        warm.append((round(ms, 1), fs.last_sweeps, tl.launches - before))
    p.md(f"- warm-up steps (host wall ms, CG sweeps, launches): {warm}")
    drugs = m.therapy.tissue_levels(st) if sc.drugs else None

    def fields_step():
        m.therapy.before_fields(st)
        m.field_solver.step(st.fields, st.kind, st.tumor_state)

    def tumor_step():
        m.tumor_rules.apply(
            st.kind,
            st.tumor_state,
            st.fields[m.oxygen],
            st.step,
            st.memory,
            st.time_in_P_min,
            m._field("hgf"),
            m._field("igf1"),
            drugs,
        )

    def stroma_step():
        if m.stroma_rules.active(st.kind):
            m.stroma_rules.apply(st.kind, m._field("signal"), st.step)

    parts = {
        "fields": fields_step,
        "tumor": tumor_step,
        "stroma": stroma_step,
        "observe": m.observe,
    }
    plain: dict[str, list] = {k: [] for k in (*parts, "sweeps", "launches")}
    for _ in range(3):
        before = tl.launches
        for k, fn in parts.items():
            plain[k].append(p.host_ms(fn))
        plain["sweeps"].append(fs.last_sweeps)
        plain["launches"].append(tl.launches - before)
        st.step += 1
    med = {k: statistics.median(v) for k, v in plain.items()}
    per_step = sum(med[k] for k in parts)
    p.results["step_ms"] = med
    p.results["projected_3360_steps_s"] = per_step * 3360 / 1e3
    p.md(
        "",
        "| part (host wall, median of 3 steps) | ms |",
        "|---|---|",
        *[f"| {k} | {med[k]:.2f} |" for k in parts],
        f"| **agent step** ({med['sweeps']:.0f} CG sweeps, {med['launches']:.0f} launches) | "
        f"{per_step:.2f} |",
        "",
        f"- projected 3,360 steps (14 days of 6 min, no snapshot or checkpoint I/O): "
        f"**{per_step * 3.36:.0f} s**",
    )
    # the timeline: every launch (the CG's reductions are launches of ours: column sums, tree)
    rec = tl.rec
    for label, fn in (
        ("field solver", fields_step),
        ("tumor rules", tumor_step),
        ("stroma", stroma_step),
    ):
        rec.clear()
        tl.on = True
        p.sync()
        a = p.event()
        fn()
        total = p.ms(a, p.event())
        tl.on = False
        lines, agg = timeline_table(p, rec, total)
        sweeps = fs.last_sweeps if label == "field solver" else None
        p.results[f"timeline_{label}"] = {"total_ms": total, "parts": agg, "sweeps": sweeps}
        p.md(
            "",
            f"### {label}: {total:.2f} ms device time"
            + (f", {sweeps} CG sweeps" if sweeps is not None else ""),
            "",
            *lines,
        )
    rec.clear()
    t_obs = p.host_ms(m.observe)
    t_near = p.host_ms(lambda: observables.near_caf(st.kind, sc.grid.shape, sc.grid.dx_um))
    p.results["observe_ms"] = {"row": t_obs, "near_caf": t_near}
    p.md("", f"- observe(): {t_obs:.2f} ms host wall; near_caf alone (ball): {t_near:.2f} ms")
    p.state.update(m=m, sc=sc, tl=tl, step_ms=per_step)


def s_lod(p: Probe) -> None:
    m = p.state.get("m")
    if m is None:
        p.md("- no model (section 4 did not finish)")
        return
    from tmesim.steps.fields import TransportedFields
    from tmesim.steps.fields_kernel import KernelFieldSolver

    sc = bench_scenario(p, "solver.method=lod")
    tl = TimelineLauncher(p, p.backend.launcher())
    lod = TransportedFields(KernelFieldSolver, sc, m.grid, launcher=tl)
    st = m.state
    f = st.fields.copy()
    ms = [p.host_ms(lambda: lod.step(f, st.kind, st.tumor_state)) for _ in range(3)]
    tl.on = True
    a = p.event()
    lod.step(f, st.kind, st.tumor_state)
    total = p.ms(a, p.event())
    tl.on = False
    lines, agg = timeline_table(p, tl.rec, total)
    p.results["lod"] = {"host_ms": ms, "total_ms": total, "parts": agg}
    p.md(
        f"- host wall per step: {[round(x, 2) for x in ms]} ms (n_sub {lod.inner.n_sub})",
        "",
        *lines,
    )


def s_graph(p: Probe) -> None:
    m = p.state.get("m")
    if m is None or p.portable:
        p.md("- skipped (no model, or the portable dry run)")
        return
    import cupy as cp

    fs = m.field_solver.inner
    if fs.method != "adi" or fs.stirred:
        p.md("- not an ADI solver on plain pins")
        return
    fs.L = p.backend.launcher()  # no timeline events inside a capture
    r, kind = fs._arrays["r"], m.state.kind
    z_eager, z_graph = cp.empty_like(r), cp.empty_like(r)
    r[...] = cp.random.default_rng(3).random(r.shape, dtype=cp.float32)
    eager_ms = p.time_ms(lambda: fs._precondition(r, z_eager, kind), reps=5)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        fs._precondition(r, z_graph, kind)
        g = s.end_capture()
    g.launch(stream=s)
    s.synchronize()
    same = bool(cp.array_equal(z_eager, z_graph))
    times = []
    for _ in range(5):
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(s)
        g.launch(stream=s)
        e1.record(s)
        e1.synchronize()
        times.append(cp.cuda.get_elapsed_time(e0, e1))
    graph_ms = statistics.median(times)
    p.results["graph"] = {"eager_ms": eager_ms, "graph_ms": graph_ms, "bitwise_equal": same}
    what = (
        f"one V-cycle of {len(fs._mg)} levels + pins"
        if fs.multigrid
        else f"copy + {len(fs._plan)} line solves + pins"
    )
    p.md(
        f"- preconditioner ({what}): eager {eager_ms:.3f} ms, "
        f"graph replay {graph_ms:.3f} ms; results bit for bit equal: {same}"
    )


def s_io(p: Probe) -> None:
    """Two agent steps by Simulation.run writing a snapshot and a checkpoint every step: the
    run's wall time less the steps' time measured in section 4 is the writing."""
    import h5py

    from tmesim.simulation import Simulation

    step_h = 0.1  # the bench scenario's 6-minute step
    sc = bench_scenario(
        p,
        f"run.duration_days={2 * step_h / 24!r}",
        f"run.snapshot_every_hours={step_h}",
        f"run.checkpoint_every_hours={step_h}",
    )
    tmp = Path(tempfile.mkdtemp(prefix="tmesim_probe_io_"))
    path = tmp / "io.h5"
    t = time.perf_counter()
    sim = Simulation(sc, backend=p.backend)
    build = time.perf_counter() - t
    t = time.perf_counter()
    sim.run(path)
    p.sync()
    wall = time.perf_counter() - t
    with h5py.File(path, "r") as f:
        n_snap = len(f["snapshots/time"])
    size = sum(q.stat().st_size for q in tmp.iterdir())
    for q in tmp.iterdir():
        q.unlink()
    tmp.rmdir()
    assert sim.status == "finished", sim.status
    steps_s = 2 * p.state.get("step_ms", 0.0) / 1e3
    writing = wall - steps_s
    p.results["io_s"] = {
        "build": build,
        "run": wall,
        "steps": steps_s,
        "writing": writing,
        "snapshots": n_snap,
        "file_MB": size / 1e6,
    }
    p.md(
        f"- Simulation built in {build:.1f} s; run() of 2 steps at {p.size}^3 with a snapshot "
        f"and a checkpoint every step: {wall:.2f} s, of which the steps ~{steps_s:.2f} s "
        f"(section 4): ~{writing:.2f} s writing {n_snap} snapshots and the checkpoints; "
        f"file {size / 1e6:.0f} MB"
    )


SECTIONS = (
    ("1. Device, versions, kernel build (NVRTC through cupy.RawModule)", s_device, 5),
    ("2. GPU-only sanity checks", s_sanity, 20),
    ("3. Micro-benchmarks: copy, reductions, bincount, masks, EDT, launches, syncs", s_micro, 25),
    ("4. One agent step of the bench scenario, launch by launch", s_model, 40),
    ("5. LOD field step on the same state", s_lod, 15),
    ("6. CUDA graph of the CG preconditioner (capture, replay, bitwise check)", s_graph, 10),
    ("7. Run-file I/O (two steps by Simulation.run, a snapshot and checkpoint each)", s_io, 45),
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="probe_out", help="folder for probe.md/.json")
    ap.add_argument("--size", type=int, default=256, help="edge of the 3D grid (default 256)")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds for all sections")
    ap.add_argument("--portable", action="store_true", help="the C++ kernels on the CPU")
    args = ap.parse_args(argv)
    p = Probe(Path(args.out), args.size, args.budget, args.portable)
    for title, fn, need_s in SECTIONS:
        p.section(title, fn, need_s)
    p.md("", f"_(probe total {time.monotonic() - p.t0:.1f} s; failures: {p.results['failures']})_")
    p.save()
    return 1 if p.results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
