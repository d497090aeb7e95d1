"""Slurm job arrays (tmesim.sweep.slurm): the generated script, run by bash as Slurm would run one
array task, checkpoints on USR1 and requeues its task once."""

import csv
import os
import signal
import subprocess

import h5py

from tmesim import sweep as sw
from tmesim.cli import main

from ..helpers import signal_after_rows, status_in, write_sweep


def test_slurm_array_script_requeues_after_usr1(tmp_path):
    """The generated array script, run by bash as Slurm would run one array task: USR1 (Slurm's
    warning before the wall time) makes tmesim checkpoint and exit 3, and the script requeues its
    task (a stand-in scontrol records the call); the requeued task finishes the run."""
    p = write_sweep(
        tmp_path,
        extra='\n[slurm]\nqueue = "short"\naccount = "lab"\ngpus = 1\n'
        'walltime = "00:30:00"\njobs = 3\nprologue = ["echo prologue ran"]\n',
    )
    spec = sw.load_sweep(p)
    assert main(["sweep", str(p), "--slurm-array"]) == 0
    script = spec.out_dir / "slurm_array.sh"
    text = script.read_text()
    for line in (
        "#SBATCH --array=0-3%3",
        "#SBATCH --time=00:30:00",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --partition=short",
        "#SBATCH --account=lab",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@600",
        "echo prologue ran",
        '--task "$SLURM_ARRAY_TASK_ID"',
    ):
        assert line in text, line
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    (bindir / "scontrol").chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bindir}:{os.environ['PATH']}",
        SLURM_ARRAY_TASK_ID="1",
        SLURM_ARRAY_JOB_ID="77",
    )
    proc = subprocess.Popen(
        ["bash", str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    h5 = spec.out_dir / "runs" / "r0001.h5"
    signal_after_rows(proc, h5, 50, signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"prologue ran" in out and b"run r0001: interrupted" in out
    assert (tmp_path / "scontrol.log").read_text() == "requeue 77_1\n"
    with h5py.File(h5, "r") as f:
        assert status_in(f) == "interrupted"
    # the requeued task
    proc = subprocess.run(
        ["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, timeout=120
    )
    assert proc.returncode == 0 and b"run r0001: finished" in proc.stdout
    assert (tmp_path / "scontrol.log").read_text() == "requeue 77_1\n"  # no second requeue
    assert main(["sweep", str(p), "--collect"]) == 0
    with open(spec.summary) as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["run"], r["status"]) for r in rows] == [("r0001", "finished")]
