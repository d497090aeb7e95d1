"""The ``tmesim`` command line. User mistakes print one line and exit 2; bugs keep a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError


def _memory_estimate(sc) -> str:
    from .state import State
    n = 1
    for s in sc.grid.shape:
        n *= s
    F = len(sc.fields)
    state = n * State.bytes_per_voxel(F)
    # solver work arrays (rhs, diagonal, laplacian, residual, uptake, source, flux) per field,
    # and the division-claim array (uint64 per site)
    work = n * (7 * 4 * F + 8)
    return (f"Memory: state {state / 2**20:.1f} MiB ({State.bytes_per_voxel(F)} bytes/voxel), "
            f"work arrays about {work / 2**20:.1f} MiB, snapshot {state / 2**20:.1f} MiB each "
            f"before compression.")


def cmd_validate(args) -> int:
    from .scenario import load_scenario, summary
    sc = load_scenario(args.scenario, overrides=args.set)
    print(summary(sc))
    print(_memory_estimate(sc))
    print("OK")
    return 0


def cmd_run(args) -> int:
    from .scenario import load_scenario
    from .simulation import Simulation
    sc = load_scenario(args.scenario, overrides=args.set)
    out = Path(args.output) if args.output else Path(f"{sc.run.name}.h5")
    sim = Simulation(sc, backend=args.backend)
    if not args.quiet:
        print(f"tmesim: {sc.run.name}: {sc.ndim}D {'x'.join(map(str, sc.grid.shape))}, "
              f"{sc.n_steps} steps on {sim.backend.name} -> {out}", file=sys.stderr)
    try:
        sim.run(out, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted; the run file {out} holds everything up to now", file=sys.stderr)
        return 130
    row = sim.last_row
    print(f"wrote {out}: {sim.state.step} steps ({sim.state.time_min / 1440:.2f} days) in "
          f"{sim.wall_seconds:.1f} s; burden {row['burden']}, necrotic {row['n_necrotic']}, "
          f"hypoxic fraction {row['hypoxic_fraction']:.3f}"
          + (f"; stopped: {sim.stop_reason}" if sim.stop_reason else ""))
    if args.report:
        return cmd_report(argparse.Namespace(run=str(out), out_dir=None, times_h=None))
    return 0


def cmd_report(args) -> int:
    from .report import make_report
    times = [float(t) for t in args.times_h.split(",")] if args.times_h else None
    written, table = make_report(args.run, args.out_dir, times)
    print(table)
    for p in written:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tmesim", description="Spatial simulation of drug-tolerant "
                                "persister cells in the tumor microenvironment.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"tmesim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a scenario and write its run file",
                       description="Run a scenario and write one HDF5 run file.")
    r.add_argument("scenario", help="scenario TOML file")
    r.add_argument("-o", "--output", help="run file to write (default: <run.name>.h5)")
    r.add_argument("--backend", default="auto", choices=("auto", "cpu", "gpu"),
                   help="where to compute (default: auto)")
    r.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a scenario value, e.g. --set grid.dx_um=10 (repeatable)")
    r.add_argument("--report", action="store_true", help="also write the report when done")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a scenario and print its summary",
                       description="Check a scenario, print what it will simulate and the "
                       "memory it needs.")
    v.add_argument("scenario")
    v.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.set_defaults(func=cmd_validate)

    rep = sub.add_parser("report", help="figures and a summary table of a run",
                         description="Write population and map figures (PNG) beside the run "
                         "file and print a summary table.")
    rep.add_argument("run", help="run file (.h5)")
    rep.add_argument("--out-dir", help="folder for the figures (default: beside the run)")
    rep.add_argument("--times-h", help="snapshot times for the maps, e.g. 0,48,96")
    rep.set_defaults(func=cmd_report)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"tmesim {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
