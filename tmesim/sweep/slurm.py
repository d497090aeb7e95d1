"""Slurm job arrays, for clusters without Dask: one array task per run of the sweep."""

from __future__ import annotations

import shlex
import sys

from .execute import EXIT_INTERRUPTED
from .spec import SweepSpec


def slurm_array_script(spec: SweepSpec, sweep_arg: str | None = None) -> str:
    """A Slurm job-array script for clusters without Dask: task i runs run i of the sweep.

    Slurm signals USR1 ``checkpoint_margin_minutes`` before the wall time (``--signal``); the
    script passes it on to tmesim, which checkpoints and exits with code 3, and the script then
    requeues its own array task, which continues from the checkpoint. Finished runs are skipped,
    so submitting the script again only does what is left. When all tasks have ended,
    ``tmesim sweep SWEEP.toml --collect`` writes the summary table."""
    sl = spec.slurm
    n = len(spec.runs())
    margin = int(sl.checkpoint_margin_minutes * 60)
    sweep_arg = sweep_arg or str(spec.path)
    logs = spec.out_dir / "slurm_logs"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=tmesim-{spec.name}",
        f"#SBATCH --array=0-{n - 1}%{max(1, sl.jobs)}",
        f"#SBATCH --time={sl.walltime}",
        f"#SBATCH --mem={sl.memory}",
        f"#SBATCH --cpus-per-task={sl.cores}",
        f"#SBATCH --output={logs}/%A_%a.out",
        f"#SBATCH --signal=B:USR1@{margin}",
        "#SBATCH --requeue",
    ]
    if sl.gpus:
        lines.append(f"#SBATCH --gres=gpu:{sl.gpus}")
    if sl.queue:
        lines.append(f"#SBATCH --partition={sl.queue}")
    if sl.account:
        lines.append(f"#SBATCH --account={sl.account}")
    lines += [f"#SBATCH {x}" for x in sl.job_extra]
    lines += [
        "",
        f"# {n} runs of sweep {spec.name}; submit with: sbatch {logs.parent}/slurm_array.sh",
        "# afterwards: tmesim sweep <sweep file> --collect   (writes the summary table)",
        "set -u",
    ]
    lines += list(sl.prologue)
    lines += [
        f"export TMESIM_DEADLINE=$(( $(date +%s) + {sl.walltime_s - margin} ))",
        f"{shlex.quote(sys.executable)} -m tmesim sweep {shlex.quote(sweep_arg)} "
        '--task "$SLURM_ARRAY_TASK_ID" &',
        "child=$!",
        "# Slurm's warning goes to this shell (B:): pass it on, tmesim checkpoints and exits 3",
        "trap 'kill -USR1 \"$child\" 2>/dev/null' USR1 TERM",
        "while true; do",
        '  wait "$child"; rc=$?',
        '  kill -0 "$child" 2>/dev/null || break   # a trapped signal ends wait early',
        "done",
        f'if [ "$rc" -eq {EXIT_INTERRUPTED} ]; then',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" && exit 0',
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)
