#!/usr/bin/env python
"""Bytes of one agent step of ``scenarios/bench_3d_256.toml``, kernel by kernel, and the time
they take at a GPU's memory bandwidth: the byte floor of a step (issue 16).

    python benchmarks/byte_table.py                   # count at 64^3, predict 256^3
    python benchmarks/byte_table.py --size 48 --target 256 --bandwidth 3.0e12 --out FILE.md

How. The bench scenario is built at ``--size`` (tumor radius scaled with the grid, the drug
started at day 0 so that every field is solved), stepped ``--warm`` agent steps on the portable
C++ kernels (the very CUDA sources, built for the CPU), then one more agent step (fields, tumor
rules with the push rule, stroma, the observables row) is recorded launch by launch through
``bench_gpu.CountingLauncher``: per kernel its launches and bytes (``bench_gpu.launch_bytes``:
every element of an array read once, written once, updated twice; stencil neighbours from cache).
What the array library still reduces (the finiteness check of the fields, the maximum over the
column maxima of |r|) is added from its count.

Prediction for ``--target``: every per-voxel count scales with the voxels; the CG's per-iteration
kernels (operator, updates, V-cycle) scale further by ``--target-sweeps`` over the iterations
counted here (default 1: the same; the CG's kernels run on the still-active fields only, so what
counts is the sum over fields of their iterations, measured 17-19 at 32^3, 64^3 and 256^3 on
this scenario with a numpy run). The floor is the bytes over ``--bandwidth``
(B/s; 3.0e12 is an H100 SXM's HBM3 at about 90 % of its 3.35 TB/s peak: an assumption, not a
measurement on this machine, which has no GPU).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gpu

#: kernels whose launches repeat every CG iteration (their bytes scale with the iterations)
PER_ITERATION = (
    "tm_apply_pinned_dot",
    "tm_cg_update_absmax",
    "tm_mg0_smooth0",
    "tm_mg0_residual_restrict",
    "tm_mg0_jacobi_dot",
    "tm_reduce_tree",
    "tm_apply_operator",
    "tm_set_pinned",
    "tm_cg_direction",
    "tm_mg_smooth0",
    "tm_mg_jacobi",
    "tm_mg_residual",
    "tm_mg_restrict",
    "tm_mg_prolong_add",
    "tm_thomas_solve_factored",
    "tm_axpy",
    "tm_scale_add",
)


def count_step(size: int, warm: int, extra=()):
    """{kernel: [launches, bytes]} of one recorded agent step at size^3, the solver's sweeps,
    per-field sweeps and the model."""
    from tmesim import backend as B
    from tmesim import observables
    from tmesim.simulation import Model

    sc = bench_gpu.bench_scenario(
        (size,) * 3, max(2, size * 40 // 128), "drugs.erlotinib.schedule.start_day=0", *extra
    )
    counting = bench_gpu.counting_backend(B.get_backend("portable"))
    m = Model(sc, counting)
    for _ in range(warm):
        m.step()
    counter = counting.counter
    with counter.record():
        m.step()
        observables.observe(m.state, sc, m.last_counts, 0, None, None, launcher=counter)
    per = collections.defaultdict(lambda: [0, 0])
    for name, args in counter.calls:
        per[name][0] += 1
        per[name][1] += bench_gpu.launch_bytes(name, args, counter.signatures)
    counter.calls = []
    fs = m.field_solver
    return dict(per), int(fs.last_sweeps), fs.last_field_sweeps.tolist(), m, sc


def reductions(per, n_sites: int, F: int, plane: int) -> int:
    """Bytes of the reductions the array library still does in one field step: the finiteness
    check of the fields (a max and a min over all of them) and the maxima over the column
    maxima of |r| and |b| (two per tm_cg_start, one per tm_cg_update_absmax). The
    CG's dot products are launches of ours (column sums, tree), counted above."""
    n_max = 2 * per.get("tm_cg_start", [0])[0] + per.get("tm_cg_update_absmax", [0])[0]
    return 2 * 4 * F * n_sites + n_max * 4 * F * plane


def table(per, sweeps, field_sweeps, size, target, target_sweeps, bw, n, F, plane):
    scale = (target / size) ** 3
    it_scale = target_sweeps / sweeps if sweeps else 1.0
    rows = []
    for name, (calls, nbytes) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        f = scale * (it_scale if name in PER_ITERATION else 1.0)
        rows.append((name, calls, nbytes, nbytes * f))
    red = reductions(per, n, F, plane)
    red_t = red * scale
    rows.append(("finiteness check, max of column maxima (array library)", 2, red, red_t))
    total = sum(r[3] for r in rows)
    lines = [
        f"Counted at {size}^3 (portable kernels, one agent step after warm-up; CG iterations "
        f"{sweeps}, per field {field_sweeps}); predicted at {target}^3 with {target_sweeps} "
        f"iterations; floor at {bw / 1e12:.2f} TB/s.",
        "",
        f"| kernel | launches at {size}^3 | MB at {size}^3 | GB at {target}^3 | floor ms |",
        "|---|---|---|---|---|",
    ]
    for name, calls, nb, nt in rows:
        ms = nt / bw * 1e3
        lines.append(f"| {name} | {calls} | {nb / 1e6:.2f} | {nt / 1e9:.2f} | {ms:.2f} |")
    lines.append(f"| **total** | | | **{total / 1e9:.2f}** | **{total / bw * 1e3:.2f}** |")
    return "\n".join(lines), total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--target", type=int, default=256)
    ap.add_argument("--target-sweeps", type=float, default=None)
    ap.add_argument("--bandwidth", type=float, default=3.0e12)
    ap.add_argument("--set", action="append", default=[], help="extra scenario overrides")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    per, sweeps, field_sweeps, m, sc = count_step(a.size, a.warm, a.set)
    n = m.grid.n_sites
    text, total = table(
        per,
        sweeps,
        field_sweeps,
        a.size,
        a.target,
        a.target_sweeps or sweeps,
        a.bandwidth,
        n,
        len(sc.fields),
        n // a.size,
    )
    per_step = 14 * 24 * 60 / sc.run.dt_min
    text += (
        f"\n\n{per_step:.0f} agent steps in 14 days: {total / a.bandwidth * per_step:.1f} s at the "
        f"floor (budget 60 s: {60 / per_step * 1e3:.1f} ms a step)."
    )
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
