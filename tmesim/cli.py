"""The ``tmesim`` command line. User mistakes print one line and exit 2; bugs keep a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError, shown_path


def _memory_estimate(sc) -> str:
    """The memory a run needs on each backend, by part (tmesim.memory), a snapshot's size, and
    the host memory this machine has available for a CPU run."""
    from .memory import _gib, bytes_needed, describe, host_available_bytes
    from .state import State

    est = {b: bytes_needed(sc, b) for b in ("cpu", "gpu")}
    snap = est["cpu"]["state"]
    avail = host_available_bytes()
    host = ""
    if avail is not None:
        fits = "fits" if est["cpu"]["total"] <= avail else "does NOT fit: tmesim run refuses it"
        host = f"\n  this machine: {_gib(avail)} of host memory available; a cpu run {fits}."
    return (
        f"Memory ({State.bytes_per_voxel(len(sc.fields))} bytes/voxel of state):\n"
        f"  cpu: {describe(est['cpu'])}\n"
        f"  gpu (device memory; the portable backend's host memory alike): "
        f"{describe(est['gpu'])}\n"
        f"  snapshot {snap / 2**20:.1f} MiB each before compression.{host}"
    )


#: the first bytes of every HDF5 file without a user block (h5py writes none)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_output_path(out: Path, scenario: Path) -> None:
    """Refuse a run file path that would destroy something that is not a run file: the
    scenario itself (``tmesim run x.toml -o x.toml``), the scenario as the run's ParaView
    sidecar (``<out>.xdmf``), a folder, or any other existing file that is not HDF5 (a run file
    is written beside the path and then replaces it). An existing run file is the writer's to
    judge: a finished one is replaced, one another process is writing is refused
    (tmesim.io.hdf5.RunWriter).

    Raises:
        UserError: naming the path and why.
    """
    shown = shown_path(str(out))
    try:
        _check_output_path(out, scenario, shown)
    except OSError as exc:  # a name too long for the file system, a loop of links, ...
        raise UserError(f"output {shown}: {exc.strerror or exc}") from None


def _check_output_path(out: Path, scenario: Path, shown: str) -> None:
    if out.name in ("", ".", "..") or out.is_dir():
        raise UserError(f"output {shown}: a folder; expected the path of a run file (.h5)")
    if out.suffix == ".xdmf":
        raise UserError(
            f"output {shown}: the run's ParaView sidecar is <run>.xdmf beside the run file, so "
            "the run file cannot end in .xdmf; use .h5"
        )
    for path, what in ((out, "the run file"), (out.with_suffix(".xdmf"), "its ParaView sidecar")):
        if _same_file(path, scenario):
            raise UserError(
                f"output {shown}: {what} would overwrite the scenario {shown_path(str(scenario))}"
                "; give -o another path (the default is <run.name>.h5)"
            )
    if out.exists() and not out.is_file():  # a device (/dev/null), a pipe (opening it waits)
        raise UserError(f"output {shown}: not a regular file; expected the path of a run file")
    if out.exists():
        with open(out, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
        if head and head != HDF5_SIGNATURE:
            raise UserError(
                f"output {shown}: an existing file that is not a run file (not HDF5); tmesim run "
                "replaces the file it writes, so choose another path or remove this one first"
            )


def check_resumable_kept(out: Path, overwrite: bool) -> None:
    """Refuse to replace a run that can still be resumed (status "running": killed, or
    "interrupted") unless ``--overwrite`` was given: ``tmesim resume`` continues it, and a new
    run on its path would lose it. A file that cannot be read as a run is the writer's to judge.

    Raises:
        UserError: naming the path, its status and the two ways on.
    """
    from .errors import RunFileError
    from .io.runfile import attr_str, open_run_file

    if overwrite or not out.is_file() or _held_by_another(out):
        return  # a live writer (or reader) holds it: the writer's own refusal says so
    try:
        with open_run_file(out) as f:
            status = attr_str(f, "status").strip()
    except RunFileError:
        return
    if status in ("running", "interrupted"):
        shown = shown_path(str(out))
        raise UserError(
            f"output {shown}: a run that can be resumed (status {status!r}); continue it with "
            f"tmesim resume {shown}, or pass --overwrite to replace it"
        )


def _held_by_another(path: Path) -> bool:
    """Whether another process holds a lock on ``path`` (a live run's writer holds one shared)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the lock taken
    return False


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


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
    # run.name is validated to a plain file name, so the default stays in the working folder
    out = Path(args.output) if args.output else Path(f"{sc.run.name}.h5")
    check_output_path(out, Path(args.scenario))
    check_resumable_kept(out, args.overwrite)
    # the model checks that its memory fits (the GPU's, or the host's for cpu and portable:
    # tmesim.memory.check_fits) before it allocates anything
    sim = Simulation(sc, backend=args.backend)
    if not args.quiet:
        print(
            f"tmesim: {sc.run.name}: {sc.ndim}D {'x'.join(map(str, sc.grid.shape))}, "
            f"{sc.n_steps} steps on {sim.backend.name} -> {out}",
            file=sys.stderr,
        )
    try:
        sim.run(out, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted; the run file {out} holds everything up to now", file=sys.stderr)
        return 130
    code = _finished(sim, out)
    if code == 0 and args.report:
        return cmd_report(argparse.Namespace(run=str(out), out_dir=None, times_h=None))
    return code


def _finished(sim, out) -> int:
    """Print how a run ended; exit code 0, or 3 when it was interrupted with a checkpoint."""
    if sim.status == "interrupted":
        print(
            f"interrupted ({sim.interrupt_reason}) at step {sim.state.step} "
            f"({sim.state.time_min / 1440:.2f} days); checkpoint written, continue with: "
            f"tmesim resume {out}",
            file=sys.stderr,
        )
        return 3
    row = sim.last_row
    print(
        f"wrote {out}: {sim.state.step} steps ({sim.state.time_min / 1440:.2f} days) in "
        f"{sim.wall_seconds:.1f} s; burden {row['burden']}, necrotic {row['n_necrotic']}, "
        f"hypoxic fraction {row['hypoxic_fraction']:.3f}"
        + (f"; stopped: {sim.stop_reason}" if sim.stop_reason else "")
    )
    return 0


def cmd_resume(args) -> int:
    from .simulation import Simulation

    try:
        sim = Simulation.resume(args.run, backend=args.backend, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted; resume {args.run} again to continue", file=sys.stderr)
        return 130
    if sim.resumed_from is None:
        print(f"{args.run}: already {sim.status}; nothing to do")
        return 0
    if not args.quiet:
        print(f"resumed {args.run} from step {sim.resumed_from}", file=sys.stderr)
    return _finished(sim, args.run)


def cmd_compare(args) -> int:
    from . import compare

    c = compare.load_comparison(args.file, overrides=args.set)
    if args.arms:
        c = compare.restrict(c, [a.strip() for a in args.arms.split(",") if a.strip()])
    if args.replicates:
        c.replicates = args.replicates
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected an integer >= 1")
    out = Path(args.figure) if args.figure else Path(args.file).with_suffix(".png")
    runs = None
    if not args.no_keep_runs:
        runs = Path(args.keep_runs) if args.keep_runs else out.with_name(f"{out.stem}_runs")
        if runs.exists() and not runs.is_dir():
            raise UserError(f"--keep-runs {shown_path(str(runs))}: exists and is not a folder")
    if not args.quiet:
        print(
            f"tmesim compare: {len(c.arms)} arms x {c.replicates} replicates of "
            f"{c.scenario.name}" + (f"; run files in {runs}" if runs else ""),
            file=sys.stderr,
        )
    results = compare.run_comparison(c, jobs=args.jobs, runs_dir=runs, progress=not args.quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    compare.figure(c, results, out)
    p_csv, p_json = compare.write_tables(c, results, out, runs)
    print(f"figure: {out}")
    print(f"table: {p_csv}, {p_json}")
    if runs:
        print(f"run files: {runs}")
    return 0


def cmd_validate_model(args) -> int:
    from . import validation

    ok = validation.run(args.only or None, quick=args.quick, jobs=args.jobs)
    return 0 if ok else 1


def cmd_sweep(args) -> int:
    import json

    from . import sweep as sw

    spec = sw.load_sweep(args.sweep, args.out_dir)
    for opt in ("queue", "account", "memory", "walltime", "jobs"):
        v = getattr(args, opt)
        if v is not None:
            setattr(spec.slurm, opt, v)
    if args.walltime is not None:
        try:
            _ = spec.slurm.walltime_s  # parsing it checks the format
        except ValueError:
            raise UserError(f"--walltime {args.walltime!r}: expected [D-]HH:MM:SS") from None
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected an integer >= 1")
    if args.collect:
        print(f"wrote {sw.write_summary(spec)}")
        return 0
    if args.slurm_array is not None:
        out = Path(args.slurm_array) if args.slurm_array else spec.out_dir / "slurm_array.sh"
        out.parent.mkdir(parents=True, exist_ok=True)
        (spec.out_dir / "slurm_logs").mkdir(parents=True, exist_ok=True)
        out.write_text(sw.slurm_array_script(spec))
        out.chmod(0o755)
        print(f"wrote {out} ({len(spec.runs())} array tasks); submit it with: sbatch {out}")
        return 0
    if args.task is not None:
        rec = sw.run_task(spec, args.task)
        st = rec.get("status")
        print(f"run {rec['run']}: {st}" + (f": {rec['error']}" if rec.get("error") else ""))
        return 0 if st in sw.DONE else sw.EXIT_INTERRUPTED if st == "interrupted" else 1
    if args.dry_run:
        p = sw.plan(spec, args.retry_failed, record=False)
        for r in p.runs:
            state = (
                "done"
                if r in p.done
                else "failed"
                if r in p.failed
                else "invalid"
                if any(r is x for x, _ in p.invalid)
                else "to do"
            )
            print(f"{r.id}  {state:7s}  {json.dumps(r.params)}")
        print(
            f"{len(p.runs)} runs: {len(p.todo)} to do, {len(p.done)} done, "
            f"{len(p.failed) + len(p.invalid)} failed"
        )
        return 0
    res = sw.run_sweep(
        spec,
        cluster=args.cluster,
        workers=args.workers,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    print(f"{res.done} done, {res.failed} failed of {res.total} runs; summary: {res.summary}")
    return 0 if res.failed == 0 else 1


def cmd_movie(args) -> int:
    from .movie import run_args

    return run_args(args)


def cmd_report(args) -> int:
    from .report import make_report

    times = [float(t) for t in args.times_h.split(",")] if args.times_h else None
    written, table = make_report(args.run, args.out_dir, times)
    print(table)
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_view(args) -> int:
    if args.run is None and args.scenario is None:
        raise UserError("give a run file to view, or --scenario FILE for an interactive run")
    try:
        from tmesim_napari import read_info, view_run
    except ImportError as exc:
        raise UserError(
            f"the viewer is not installed ({exc}); install it with pip install 'tmesim[viewer]'"
        ) from None
    if args.run is not None:
        read_info(args.run)  # a bad file is one line here, before any window opens
    try:
        import napari  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"the viewer needs napari and Qt ({exc}); install them with "
            "pip install 'tmesim[viewer]'"
        ) from None
    view_run(args.run, scenario=args.scenario, follow=args.follow, refresh_s=args.refresh_s)
    return 0


#: --backend values; "portable" (the CUDA kernels' C++ build on the CPU: the GPU's code path,
#: slowly, to reproduce a kernel problem without a GPU) is accepted but left out of the help,
#: being a developer's tool rather than a way to run
BACKEND_CHOICES = ("auto", "cpu", "gpu", "portable")
BACKEND_METAVAR = "{auto,cpu,gpu}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tmesim",
        description="Spatial simulation of drug-tolerant "
        "persister cells in the tumor microenvironment.",
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"tmesim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="run a scenario and write its run file",
        description="Run a scenario and write one HDF5 run file.",
    )
    r.add_argument("scenario", help="scenario TOML file")
    r.add_argument("-o", "--output", help="run file to write (default: <run.name>.h5)")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run at the output path that could still be resumed",
    )
    r.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_CHOICES,
        metavar=BACKEND_METAVAR,
        help="where to compute (default: auto)",
    )
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a scenario value, e.g. --set grid.dx_um=10 (repeatable)",
    )
    r.add_argument("--report", action="store_true", help="also write the report when done")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    rs = sub.add_parser(
        "resume",
        help="continue a run from its last checkpoint",
        description="Continue an interrupted run (killed, SIGTERM, wall time) "
        "from the last checkpoint in its run file; the result is the file an "
        "uninterrupted run writes. Exit code 3: interrupted again, resume again.",
    )
    rs.add_argument("run", help="run file (.h5)")
    rs.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, metavar=BACKEND_METAVAR)
    rs.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rs.set_defaults(func=cmd_resume)

    s = sub.add_parser(
        "sweep",
        help="run a parameter sweep on Dask (local or Slurm)",
        description="Run every combination of a sweep file's parameters and seeds, each into "
        "its own run file, and write a summary table. Finished runs are skipped and interrupted "
        "ones resumed, so running the command again continues the sweep.",
    )
    s.add_argument("sweep", help="sweep TOML file")
    s.add_argument(
        "--cluster",
        default="local",
        choices=("local", "slurm"),
        help="where runs go: local worker processes (default) or Slurm jobs through dask-jobqueue",
    )
    s.add_argument(
        "--workers",
        type=int,
        help="local worker processes (default: one per GPU, else one per CPU core)",
    )
    s.add_argument("--out-dir", help="override [sweep] out_dir")
    s.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    s.add_argument("--dry-run", action="store_true", help="list the runs and what is left to do")
    s.add_argument(
        "--slurm-array",
        nargs="?",
        const="",
        metavar="SCRIPT",
        help="write a Slurm job-array script (default: OUT_DIR/slurm_array.sh) instead of running",
    )
    s.add_argument(
        "--task",
        type=int,
        metavar="I",
        help="run only run I here (what an array "
        "task does); exit 3 when interrupted with a checkpoint",
    )
    s.add_argument("--collect", action="store_true", help="only (re)write the summary table")
    for opt in ("queue", "account", "memory", "walltime"):
        s.add_argument(f"--{opt}", help=f"override [slurm] {opt}")
    s.add_argument("--jobs", type=int, help="override [slurm] jobs")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sweep)

    v = sub.add_parser(
        "validate",
        help="check a scenario and print its summary",
        description="Check a scenario, print what it will simulate and the memory it needs.",
    )
    v.add_argument("scenario")
    v.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.set_defaults(func=cmd_validate)

    cp = sub.add_parser(
        "compare",
        help="run a scenario under several treatment arms with replicate seeds and compare them",
        description="Runs every arm of a comparison file with replicate seeds, "
        "prints time to progression, cumulative dose and persister/resistant "
        "counts per arm, writes the table as CSV and JSON and a figure (burden against the "
        "progression threshold, Kaplan-Meier curves of time to progression, dosing), and "
        "keeps each run's file.",
    )
    cp.add_argument(
        "file", help="comparison file (TOML), e.g. scenarios/therapy/adaptive_vs_continuous.toml"
    )
    cp.add_argument("--replicates", type=int, default=0, help="override the file's replicates")
    cp.add_argument(
        "--arms",
        metavar="A,B,...",
        help="run only these arms (and the capacity arms they name); pairs and contrasts "
        "among them are kept",
    )
    cp.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel")
    cp.add_argument(
        "--figure",
        help="PNG to write (default: beside the file); the table goes beside it as .csv and .json",
    )
    cp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a scenario value in every arm, after the arm's own set, "
        "e.g. --set grid.shape=[50,50] (repeatable)",
    )
    cp.add_argument(
        "--keep-runs",
        metavar="DIR",
        help="folder for the run files, ARM_seedSEED.h5 (default: FIGURE_runs beside the figure)",
    )
    cp.add_argument(
        "--no-keep-runs", action="store_true", help="run in memory and keep no run files"
    )
    cp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cp.set_defaults(func=cmd_compare)

    vm = sub.add_parser(
        "validate-model",
        help="run the published-behaviour experiments "
        "(scenarios/validation) and compare with the literature",
        description="Runs the experiments of scenarios/validation and prints, "
        "for each, the published expectation beside what tmesim produced. "
        "Exit code 1 if a behaviour does not hold.",
    )
    vm.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    vm.add_argument("--quick", action="store_true", help="smaller dishes (about 4x faster)")
    vm.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="runs in parallel (default: one per CPU core)",
    )
    vm.set_defaults(func=cmd_validate_model)

    rep = sub.add_parser(
        "report",
        help="figures and a summary table of a run",
        description="Write population and map figures (PNG) beside the run "
        "file and print a summary table.",
    )
    rep.add_argument("run", help="run file (.h5)")
    rep.add_argument("--out-dir", help="folder for the figures (default: beside the run)")
    rep.add_argument("--times-h", help="snapshot times for the maps, e.g. 0,48,96")
    rep.set_defaults(func=cmd_report)
    from .movie import add_arguments as movie_arguments

    mv = sub.add_parser(
        "movie",
        help="a movie of a run, one frame per snapshot",
        description="Write a movie of one layer of a run (kind, tumor_state, memory or a "
        "field), one frame per snapshot: .mp4 where ffmpeg is found, else an animated GIF.",
    )
    movie_arguments(mv)
    mv.set_defaults(func=cmd_movie)

    vw = sub.add_parser(
        "view",
        help="open a run in napari",
        description="Open a run in napari: kind, tumor state and field layers, "
        "the time series, and (for a run still being written) refresh.",
    )
    vw.add_argument("run", nargs="?", help="run file (.h5)")
    vw.add_argument("--scenario", help="also open the interactive runner with this scenario")
    vw.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-read the file while the run is running (default: when it is)",
    )
    vw.add_argument("--refresh-s", type=float, default=2.0, help="seconds between re-reads")
    vw.set_defaults(func=cmd_view)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"tmesim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`tmesim validate x.toml | head`): not an error of ours; point
        # stdout at /dev/null so that the interpreter's final flush does not fail as well
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
