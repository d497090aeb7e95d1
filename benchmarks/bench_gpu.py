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
  4096^2, 3D 128^3, 256^3, 512^3): the time of one agent step (median of the repeats after a
  warm-up step), the bytes that step moves (:func:`launch_bytes`, summed over the launches of one
  step), and from them GB/s and the fraction of the copy bandwidth. "tumor rules + push" is the
  same step with the push rule on (``[tumor.mechanics]`` push_reach_um = :data:`PUSH_REACH_UM`;
  off in the bench scenario): the tumor launches plus the distance passes (in place in one
  uint16 buffer) and the claim, apply and finish launches of kernels/mechanics.cu;
* a whole run of ``scenarios/bench_3d_256.toml`` (256^3, five fields, 14 days) with
  ``Simulation.run``: wall time (snapshots included) and time per agent step.

The workload of the per-part rows is the bench scenario's own: its initial state at that grid
size (tumor sphere/disk scaled to the grid, vessels, CAFs, TAMs, five fields), fields and rules
stepped together for a few warm-up steps first, so that the CG starts from warm fields as in a
run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "bench_3d_256.toml"

#: grid sizes by name: (shape, tumor radius in voxels)
SIZES = {
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
}


def kernel_signatures() -> dict[str, list[tuple[str, str]]]:
    """{kernel: [(parameter name, role)]} from kernels/*.cu, role "r" (a const pointer: read),
    "w" (an output, :data:`WRITE_ONLY`), "rw" (any other pointer: updated in place) or "scalar".
    """
    from tmesim.launch import find_kernel_dir

    out = {}
    d = find_kernel_dir()
    for src in sorted(d.glob("*.cu")):
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
    """Wraps a launcher; while :attr:`counting`, records every launch's name and bytes."""

    def __init__(self, inner):
        self.inner = inner
        self.xp = inner.xp
        self.signatures = kernel_signatures()
        self.counting = False
        self.launches: list[tuple[str, int]] = []

    def __call__(self, name, n_work, *args):
        if self.counting:
            self.launches.append((name, launch_bytes(name, args, self.signatures)))
        return self.inner(name, n_work, *args)

    def count(self, fn):
        """Run fn() once, returning (launches, bytes) of that call."""
        self.launches = []
        self.counting = True
        try:
            fn()
        finally:
            self.counting = False
        return len(self.launches), sum(b for _, b in self.launches)


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
    at one grid size."""
    from tmesim.simulation import Model

    rows = []
    grid_name = "x".join(map(str, shape))
    clock = Clock(backend)
    for method in ("adi", "lod"):
        sc = bench_scenario(shape, radius_vox, f"solver.method={method}")
        m = Model(sc, backend)
        counter = CountingLauncher(m.classes.launcher)
        # every step class holds its launcher as .L: route them through the counter (the field
        # solver behind the wrapper that skips well-mixed drug fields)
        for obj in (m.field_solver.inner, m.tumor_rules, m.stroma_rules):
            obj.L = counter
        log(f"  {grid_name} {method}: {warm} warm-up steps")
        for _ in range(warm):
            m.step()
        st, fs = m.state, m.field_solver

        # the closures are timed within this iteration; the defaults bind its model
        def fields_step(fs=fs, st=st):
            fs.step(st.fields, st.kind, st.tumor_state)

        n_l, nbytes = counter.count(fields_step)
        times = [clock(fields_step) for _ in range(repeats)]
        rows.append(
            _row(
                f"field solver {method} ({fs.last_sweeps} sweeps)",
                grid_name,
                statistics.median(times),
                n_l,
                nbytes,
            )
        )
        if method == "adi":
            tr = m.tumor_rules
            drugs = m.therapy.tissue_levels(st) if sc.drugs else None
            step = [st.step]

            def rules_step(tr=tr, st=st, m=m, drugs=drugs, step=step):
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

            n_l, nbytes = counter.count(rules_step)
            times = [clock(rules_step) for _ in range(repeats)]
            rows.append(_row("tumor rules", grid_name, statistics.median(times), n_l, nbytes))
            # the same step with the push rule on, by rules of the model's class built with it
            mech = dataclasses.replace(sc.tumor.mechanics, push_reach_um=PUSH_REACH_UM)
            pushing = type(tr)(
                dataclasses.replace(sc.tumor, mechanics=mech),
                m.grid,
                sc.run.seed,
                sc.run.dt_min,
                sc.drugs,
                launcher=counter,
            )
            push_step = functools.partial(rules_step, tr=pushing)
            n_l, nbytes = counter.count(push_step)
            times = [clock(push_step) for _ in range(repeats)]
            label = f"tumor rules + push ({PUSH_REACH_UM:g} um, {pushing.pushing.passes} passes)"
            rows.append(_row(label, grid_name, statistics.median(times), n_l, nbytes))
    return rows


def _row(part, grid, seconds, launches, nbytes) -> dict:
    return {
        "part": part,
        "grid": grid,
        "seconds": seconds,
        "launches": launches,
        "bytes": nbytes,
        "bandwidth": nbytes / seconds if seconds > 0 else float("nan"),
    }


def whole_run(backend, tiny: bool, out_dir: Path, log) -> dict:
    """Simulation.run of the bench scenario (a 16^3, 0.02-day stand-in with --sizes tiny)."""
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
    sim = Simulation(sc, backend=backend)
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
        "status": sim.status,
        "burden": sim.last_row["burden"],
    }


# ------------------------------------------------------------------------------- table
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
            f"| {r['part']} | {r['grid']} | {r['seconds'] * 1e3:.3f} | "
            f"{r['launches']} | {r['bytes'] / 1e6:.3f} | {bw / 1e9:.2f} | "
            f"{100 * bw / copy_bw:.1f} |"
        )
    if run is not None:
        lines += [
            "",
            "| whole run | grid | fields | days | steps | wall (s) | ms/step | "
            "status | final burden |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {run['scenario']} | {run['grid']} | {run['fields']} | {run['days']:g} | "
            f"{run['steps']} | {run['wall_s']:.1f} | "
            f"{1e3 * run['wall_s'] / max(run['steps'], 1):.2f} | {run['status']} | "
            f"{run['burden']} |",
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
