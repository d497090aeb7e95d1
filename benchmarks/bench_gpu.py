#!/usr/bin/env python
"""GPU benchmark of tmesim's kernels: the field solver (both methods) and the tumor rules (without
and with the push rule) per agent step, against the device's measured copy bandwidth, and a whole
3D run.

    python benchmarks/bench_gpu.py                              # all sizes, whole run (GPU)
    python benchmarks/bench_gpu.py --sizes 3d-128 3d-256        # some sizes only
    python benchmarks/bench_gpu.py --skip-run --out FILE.md     # no whole run; write the table
    python benchmarks/bench_gpu.py --backend portable --sizes tiny   # the script itself, on a
                                                                # CPU, through the C++ kernels

What is measured (benchmarks/README.md has the details):

* copy bandwidth: ``dst[...] = src`` of a large float32 array (1 GiB on a GPU), best of N, timed
  with CUDA events, counting bytes read plus bytes written. The reference of "% of copy BW";
* per part (field solver ADI, field solver LOD, tumor rules, tumor rules + push) and size (2D
  4096^2, 3D 128^3, 256^3, 512^3), over ``--repeats`` timed agent steps after ``--warm`` model
  steps: per step the mean time, the launches and the bytes those very steps moved (every
  launch of a timed step recorded, :func:`launch_bytes` summed over them), and from them GB/s
  (their bytes over their time) and the fraction of the copy bandwidth. "tumor rules" is the
  step with the push rule off (push_reach_um = 0: contact inhibition, 3 launches), "tumor rules +
  push" with it on (:data:`PUSH_REACH_UM`): the tumor launches plus the distance passes (in place
  in one uint16 buffer) and the claim, apply and finish launches of kernels/mechanics.cu;
* a whole run of ``scenarios/bench_3d_256.toml`` (256^3, five fields, 14 days) with
  ``Simulation.run``: wall time (snapshots included), time and kernel launches per agent step.

The workload of the per-part rows is the bench scenario's own: its initial state at that grid
size (tumor sphere/disk scaled to the grid, vessels, CAFs, TAMs, five fields), fields and rules
stepped together for a few warm-up steps first, so that the CG starts from warm fields as in a
run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "bench_3d_256.toml"

#: grid sizes by name: (shape, tumor radius in voxels)
SIZES: dict[str, Any] = {
    "2d-4096": ((4096, 4096), 1200),
    "3d-128": ((128, 128, 128), 40),
    "3d-256": ((256, 256, 256), 80),
    "3d-512": ((512, 512, 512), 160),
    "tiny": (((32, 32), 8), ((16, 16, 16), 5)),  # two grids: the script's own check
}
DEFAULT_SIZES = ("2d-4096", "3d-128", "3d-256", "3d-512")
#: push reach of the "tumor rules + push" rows (um): 3 voxel edges at the bench's 20 um, 3 passes
PUSH_REACH_UM = 60.0
COLUMNS = (
    "part",
    "grid",
    "steps",
    "time/step (ms)",
    "launches/step",
    "bytes/step (MB)",
    "GB/s",
    "% of copy BW",
)


# ------------------------------------------------------------------------------- byte counting
_KERNEL = re.compile(r"TM_KERNEL\s+void\s+(\w+)\s*\(([^)]*)\)", re.S)

#: non-const pointer parameters that a kernel only writes (pure outputs): counted once. Every
#: other non-const pointer is updated in place (read and written back): counted twice, as the
#: push rule's distance field D in tm_push_distance (its first pass, tm_push_distance_first, only
#: writes it)
WRITE_ONLY = {
    "tm_rng_raw_at": {"out"},
    "tm_rng_raw_at_lane": {"out"},
    "tm_rng_uniform_at": {"out"},
    "tm_laplacian": {"out"},
    "tm_apply_operator": {"out"},
    "tm_rates": {"U", "S"},
    "tm_cg_setup": {"diag", "b"},
    "tm_factor_diag": {"out"},
    "tm_thomas_factor_diag": {"inv", "cp"},
    "tm_tumor_decide": {"action", "target"},
    "tm_push_distance_first": {"D"},
    "tm_push_apply": {"target"},
    "tm_mg_diag": {"d"},
    "tm_mg_coarsen": {"w_c", "e_c", "free_c"},
    "tm_mg_smooth0": {"x"},
    "tm_mg_jacobi": {"out"},
    "tm_mg_residual": {"res"},
    "tm_mg_restrict": {"rc"},
    "tm_mg0_coarsen": {"w_c", "e_c", "free_c"},
    "tm_mg0_smooth0": {"x"},
    "tm_mg0_jacobi": {"out"},
    "tm_mg0_jacobi_dot": {"out", "cols"},
    "tm_mg0_residual_restrict": {"rc"},
    "tm_apply_pinned_dot": {"out", "cols"},
    "tm_dots_columns": {"cols"},
    "tm_cg_update_absmax": {"colmax"},
    "tm_rates_diag": {"diag", "S"},
    "tm_cg_start": {"r", "colmax_r", "colmax_b"},
    "tm_cg_rhs": {"b"},
    "tm_observe_columns": {"cols"},
    "tm_reduce_columns": {"cols"},
    "tm_reduce_tree": {"out"},
}


def kernel_signatures() -> dict[str, list[tuple[str, str]]]:
    """{kernel: [(parameter name, role)]} from kernels/*.cu and *.cuh, role "r" (a const
    pointer: read),
    "w" (an output, :data:`WRITE_ONLY`), "rw" (any other pointer: updated in place) or "scalar".
    """
    from tmesim.launch import find_kernel_dir

    out = {}
    d = find_kernel_dir()
    for src in sorted([*d.glob("*.cu"), *d.glob("*.cuh")]):
        text = re.sub(r"/\*.*?\*/", "", src.read_text(), flags=re.S)
        for name, params in _KERNEL.findall(text):
            sig = []
            for p in params.split(","):
                p = " ".join(p.split())
                if not p:
                    continue
                pname = re.findall(r"\w+", p)[-1]
                if "*" not in p:
                    role = "scalar"
                elif re.match(r"const\b", p):
                    role = "r"
                else:
                    role = "w" if pname in WRITE_ONLY.get(name, ()) else "rw"
                sig.append((pname, role))
            out[name] = sig
    return out


def launch_bytes(name: str, args, signatures) -> int:
    """Bytes a launch moves, counted from its array arguments: every element of an array it
    reads once (const pointer), of an array it only writes once, of an array it updates in
    place twice (read, then written back).

    This is the dense count: a kernel that touches every element of its arrays once, with
    neighbours of a stencil served from cache, moves exactly this; one that touches only some
    (claims at targets, a drug concentration only at tumor cells) moves less, so the GB/s
    derived from it overstates what that kernel achieves. Reductions and compactions done by
    the array library (CG dot products, the rules' bincount of ``action``) are not launches of
    ours and are not counted, which understates a step's traffic."""
    sig = signatures[name]
    if len(sig) != len(args):
        raise ValueError(f"{name}: {len(args)} arguments for {len(sig)} parameters")
    total = 0
    for (_name, role), a in zip(sig, args):
        if role == "scalar":
            continue
        nbytes = int(a.nbytes)
        total += 2 * nbytes if role == "rw" else nbytes
    return total


class CountingLauncher:
    """Wraps a launcher: counts every launch (:attr:`total`, since it was made) and, inside
    :meth:`record`, keeps each launch's name and arguments, whose bytes :meth:`tally` counts
    afterwards (so that a timed call pays one list append per launch, not the byte count)."""

    def __init__(self, inner):
        self.inner = inner
        self.xp = inner.xp
        self.signatures = kernel_signatures()
        self.total = 0
        self.recording = False
        self.calls: list[tuple[str, tuple]] = []

    def __call__(self, name, n_work, *args):
        self.total += 1
        if self.recording:
            self.calls.append((name, args))
        return self.inner(name, n_work, *args)

    @contextlib.contextmanager
    def record(self):
        """Record the launches made inside the block (forgetting earlier ones)."""
        self.calls = []
        self.recording = True
        try:
            yield self
        finally:
            self.recording = False

    def tally(self) -> tuple[int, int]:
        """(launches, bytes) of the launches recorded by the last :meth:`record` block; then lets
        go of their arguments."""
        n = len(self.calls)
        nbytes = sum(launch_bytes(name, args, self.signatures) for name, args in self.calls)
        self.calls = []
        return n, nbytes

    def count(self, fn):
        """Run fn() once, returning (launches, bytes) of that call."""
        with self.record():
            fn()
        return self.tally()


class CountingBackend:
    """A backend whose kernels launch through ``counter``, everything else being ``inner``'s:
    every step object of a Model or Simulation built on it (field solver, tumor rules and their
    push rule, stroma rules) launches through the counter."""

    def __init__(self, inner, counter):
        self.inner = inner
        self.counter = counter

    def launcher(self):
        return self.counter

    def __getattr__(self, name):
        return getattr(self.inner, name)


def counting_backend(backend) -> CountingBackend:
    """``backend`` with a fresh :class:`CountingLauncher` around its launcher."""
    return CountingBackend(backend, CountingLauncher(backend.launcher()))


# ------------------------------------------------------------------------------- timing
class Clock:
    """Elapsed seconds of fn(): CUDA events on a GPU (the device's own time), perf_counter on
    the host."""

    def __init__(self, backend):
        self.backend = backend
        self.gpu = backend.name == "gpu"

    def __call__(self, fn) -> float:
        if not self.gpu:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        cp = self.backend.xp
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        return cp.cuda.get_elapsed_time(a, b) / 1e3


def copy_bandwidth(backend, nbytes: int, repeats: int) -> float:
    """Bytes per second of dst[...] = src (read + write), best of ``repeats``."""
    xp = backend.xp
    src = xp.ones(nbytes // 4, dtype=xp.float32)
    dst = xp.empty_like(src)
    clock = Clock(backend)
    dst[...] = src
    best = min(clock(lambda: dst.__setitem__(Ellipsis, src)) for _ in range(repeats))
    return 2 * nbytes / best


def timed_steps(clock: Clock, counter: CountingLauncher, fn, repeats: int) -> list[tuple]:
    """Call fn() ``repeats`` times, each timed by ``clock`` with its launches recorded: per call
    (seconds, launches, bytes), the counts being those of the very call that was timed."""
    out = []
    for _ in range(repeats):
        with counter.record():
            seconds = clock(fn)
        out.append((seconds, *counter.tally()))
    return out


# ------------------------------------------------------------------------------- workloads
def bench_scenario(shape, radius_vox, *extra):
    import tmesim

    sc = tmesim.load_scenario(SCENARIO)
    over = [
        f"grid.shape={list(shape)}",
        f"init.tumor.radius_um={radius_vox * sc.grid.dx_um}",
        f"init.tumor.shape={'sphere' if len(shape) == 3 else 'disk'}",
        *extra,
    ]
    return tmesim.load_scenario(SCENARIO, overrides=over)


def measure_parts(backend, shape, radius_vox, repeats: int, warm: int, log) -> list[dict]:
    """Rows for the field solver (adi, lod) and the tumor rules (without and with the push rule)
    at one grid size; each row's time, launches and bytes from the same ``repeats`` steps."""
    from tmesim.simulation import Model

    rows = []
    grid_name = "x".join(map(str, shape))
    clock = Clock(backend)
    for method in ("adi", "lod"):
        sc = bench_scenario(shape, radius_vox, f"solver.method={method}")
        counting = counting_backend(backend)
        counter = counting.counter
        m = Model(sc, counting)
        log(f"  {grid_name} {method}: {warm} warm-up steps")
        for _ in range(warm):
            m.step()
        st, fs = m.state, m.field_solver
        sweeps: list[int] = []

        # the closures are timed within this iteration; the defaults bind its model
        def fields_step(fs=fs, st=st, sweeps=sweeps):
            fs.step(st.fields, st.kind, st.tumor_state)
            sweeps.append(fs.last_sweeps)

        steps = timed_steps(clock, counter, fields_step, repeats)
        lo, hi = min(sweeps), max(sweeps)
        label = f"field solver {method} ({lo}{'' if lo == hi else f'-{hi}'} sweeps)"
        rows.append(_row(label, grid_name, steps))
        if method == "adi":
            drugs = m.therapy.tissue_levels(st) if sc.drugs else None
            step = [st.step]

            def rules_step(tr, st=st, m=m, drugs=drugs, step=step):
                tr.apply(
                    st.kind,
                    st.tumor_state,
                    st.fields[m.oxygen],
                    step[0],
                    st.memory,
                    st.time_in_P_min,
                    m._field("hgf"),
                    m._field("igf1"),
                    drugs,
                )
                step[0] += 1

            # rules of the model's class built with the push rule off (0 um: contact
            # inhibition), then on, whatever the scenario says, on the model's lattice
            for reach in (0.0, PUSH_REACH_UM):
                mech = dataclasses.replace(sc.tumor.mechanics, push_reach_um=reach)
                rules = type(m.tumor_rules)(
                    dataclasses.replace(sc.tumor, mechanics=mech),
                    m.grid,
                    sc.run.seed,
                    sc.run.dt_min,
                    sc.drugs,
                    launcher=counter,
                )
                label = "tumor rules"
                if reach:
                    label += f" + push ({reach:g} um, {rules.pushing.passes} passes)"
                steps = timed_steps(clock, counter, functools.partial(rules_step, rules), repeats)
                rows.append(_row(label, grid_name, steps))
    return rows


def _row(part, grid, steps: list[tuple]) -> dict:
    """A table row from timed steps [(seconds, launches, bytes)]: per step the mean time,
    launches and bytes of those steps, and their bytes over their time."""
    k = len(steps)
    seconds = sum(s[0] for s in steps)
    launches = sum(s[1] for s in steps)
    nbytes = sum(s[2] for s in steps)
    return {
        "part": part,
        "grid": grid,
        "steps": k,
        "seconds": seconds / k,
        "launches": launches / k,
        "bytes": nbytes / k,
        "bandwidth": nbytes / seconds if seconds > 0 else float("nan"),
        "median_seconds": statistics.median(s[0] for s in steps),
    }


def whole_run(backend, tiny: bool, out_dir: Path, log) -> dict:
    """Simulation.run of the bench scenario (a 16^3, 0.02-day stand-in with --sizes tiny): its
    wall time and the kernel launches of that run."""
    import tmesim
    from tmesim.simulation import Simulation

    over = (
        [
            "grid.shape=[16,16,16]",
            "init.tumor.radius_um=100",
            "run.duration_days=0.02",
            "run.snapshot_every_hours=0.2",
        ]
        if tiny
        else []
    )
    sc = tmesim.load_scenario(SCENARIO, overrides=over)
    counting = counting_backend(backend)
    sim = Simulation(sc, backend=counting)
    log(f"  whole run: {sc.n_steps} steps on {'x'.join(map(str, sc.grid.shape))}")
    path = out_dir / f"{sc.run.name}.h5"
    t = time.perf_counter()
    sim.run(path)
    wall = time.perf_counter() - t
    path.unlink(missing_ok=True)
    return {
        "scenario": f"{SCENARIO.name}" + (" (tiny stand-in)" if tiny else ""),
        "grid": "x".join(map(str, sc.grid.shape)),
        "fields": len(sc.fields),
        "days": sc.run.duration_days,
        "steps": sim.state.step,
        "wall_s": wall,
        "launches": counting.counter.total,
        "status": sim.status,
        "burden": sim.last_row["burden"],
    }


# ------------------------------------------------------------------------------- table
def _count(x: float) -> str:
    """A mean count: an integer as one, else to one decimal."""
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def table(copy_bw: float, rows: list[dict], run: dict | None, header: dict) -> str:
    lines = [f"# tmesim GPU benchmark, {header['date']}", ""]
    for k in ("device", "backend", "command", "tmesim"):
        lines.append(f"- {k}: {header[k]}")
    lines += [
        "",
        f"Copy bandwidth (read + write, best of {header['copy_repeats']}): "
        f"{copy_bw / 1e9:.1f} GB/s",
        "",
    ]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for r in rows:
        bw = r["bandwidth"]
        lines.append(
            f"| {r['part']} | {r['grid']} | {r['steps']} | {r['seconds'] * 1e3:.3f} | "
            f"{_count(r['launches'])} | {r['bytes'] / 1e6:.3f} | {bw / 1e9:.2f} | "
            f"{100 * bw / copy_bw:.1f} |"
        )
    if run is not None:
        n = max(run["steps"], 1)
        lines += [
            "",
            "| whole run | grid | fields | days | steps | wall (s) | ms/step | launches/step | "
            "status | final burden |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {run['scenario']} | {run['grid']} | {run['fields']} | {run['days']:g} | "
            f"{run['steps']} | {run['wall_s']:.1f} | {1e3 * run['wall_s'] / n:.2f} | "
            f"{_count(run['launches'] / n)} | {run['status']} | {run['burden']} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--backend",
        choices=("gpu", "portable"),
        default="gpu",
        help="gpu (default), or portable: the kernels' C++ build on the CPU, to "
        "check the script without a GPU (use with --sizes tiny)",
    )
    ap.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(DEFAULT_SIZES))
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per row (median)")
    ap.add_argument("--warm", type=int, default=3, help="model steps before timing")
    ap.add_argument(
        "--copy-mb",
        type=float,
        default=None,
        help="size of the copied array (default 1024 MB on a GPU, 64 MB portable)",
    )
    ap.add_argument("--skip-run", action="store_true", help="no whole run")
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tmesim import __version__
    from tmesim.backend import get_backend

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    backend = get_backend("portable") if args.backend == "portable" else _gpu()
    tiny = args.sizes == ["tiny"]
    copy_mb = args.copy_mb or (1024 if backend.name == "gpu" else 64)
    copy_repeats = 10
    log(f"copy bandwidth ({copy_mb:g} MB)")
    bw = copy_bandwidth(backend, int(copy_mb * 2**20), copy_repeats)
    rows = []
    for name in args.sizes:
        grids = SIZES[name] if name == "tiny" else (SIZES[name],)
        for shape, radius in grids:
            log(f"{name}: {'x'.join(map(str, shape))}")
            rows += measure_parts(backend, shape, radius, args.repeats, args.warm, log)
    run = None
    if not args.skip_run:
        out_dir = Path(args.out).resolve().parent if args.out else Path.cwd()
        run = whole_run(backend, tiny, out_dir, log)
    header = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "device": backend.device,
        "backend": backend.name,
        "command": "python " + " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "tmesim": f"{__version__} ({platform.python_version()}, numpy {np.__version__})",
        "copy_repeats": copy_repeats,
    }
    text = table(bw, rows, run, header)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _gpu():
    from tmesim.backend import GPU

    return GPU(0)  # not get_backend("gpu"): no warning while GPU_VERIFIED is False


if __name__ == "__main__":
    sys.exit(main())
