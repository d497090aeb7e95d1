#!/usr/bin/env python
"""CG iterations per field and time per agent step of ``scenarios/bench_3d_256.toml`` on the CPU
(numpy), for a preconditioner and a grid size: how the field solver's iterations grow with the
grid (issue 16).

    python benchmarks/solver_iterations.py --size 64 --preconditioner multigrid
    python benchmarks/solver_iterations.py --size 128 --preconditioner adi --steps 5

The scenario is built at size^3 (tumor radius scaled with the grid, the drug from day 0 so that
every field is solved) and stepped; per step it prints the CG iterations of the slowest field
(``last_sweeps``), each field's (``last_field_sweeps``), the field step's own time (the solver
run once more on a copy of the state after the model's step: the same work) and the whole agent
step's time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--preconditioner", choices=("multigrid", "adi"), default="multigrid")
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args(argv)
    from tmesim.backend import get_backend
    from tmesim.simulation import Model

    sc = bench_gpu.bench_scenario(
        (a.size,) * 3,
        max(2, a.size * 40 // 128),
        "drugs.erlotinib.schedule.start_day=0",
        f"solver.preconditioner={a.preconditioner}",
    )
    m = Model(sc, get_backend("cpu"))
    fs = m.field_solver
    print(f"{a.size}^3, {a.preconditioner}; fields {', '.join(sc.field_names)}")
    for i in range(a.steps):
        t = time.perf_counter()
        m.step()
        step_s = time.perf_counter() - t
        per = fs.last_field_sweeps.tolist()
        fields = m.state.fields.copy()
        t = time.perf_counter()
        fs.step(fields, m.state.kind, m.state.tumor_state)
        field_s = time.perf_counter() - t
        print(
            f"step {i}: iterations {fs.last_sweeps} (per field {per}), field step "
            f"{field_s:.2f} s, agent step {step_s:.2f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
