"""Parameter sweeps: many runs of one base scenario, on Dask (local processes or Slurm jobs).

A sweep file names a base scenario, the values to vary and the seeds (its format:
:mod:`tmesim.sweep.spec`). Each run writes its own HDF5 file and a small JSON record (status,
parameters, observables, error); the summary table is built from the records. A sweep is
resumable: finished runs are skipped, interrupted ones continue from their checkpoints, and a run
that fails is recorded with its error without stopping the others (re-run with
``--retry-failed`` to try failed runs again).

    spec.py      the sweep file: SweepSpec, RunSpec, SlurmConfig, load_sweep, latin_hypercube
    records.py   run records, a finished run's observables, the summary table
    planning.py  what is left to do: plan, Plan, check_observables
    execute.py   one run on a worker or an array task: execute_run, run_task
    clusters.py  Dask clusters and the driver: local_cluster, slurm_cluster, gpu_count, run_sweep
    slurm.py     Slurm job-array scripts: slurm_array_script

The command line (``tmesim sweep``) is in tmesim.cli.
"""

from .clusters import (
    SweepResult,
    gpu_count,
    import_slurm_cluster,
    local_cluster,
    run_sweep,
    slurm_cluster,
)
from .execute import EXIT_INTERRUPTED, execute_run, run_task
from .planning import Plan, check_observables, plan
from .records import (
    DONE,
    observe_run,
    read_record,
    run_end,
    scenario_key,
    summary_rows,
    write_summary,
)
from .slurm import slurm_array_script
from .spec import (
    RunSpec,
    SlurmConfig,
    SweepError,
    SweepSpec,
    latin_hypercube,
    load_sweep,
    parse_walltime,
)

__all__ = [
    "DONE",
    "EXIT_INTERRUPTED",
    "Plan",
    "RunSpec",
    "SlurmConfig",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "check_observables",
    "execute_run",
    "gpu_count",
    "import_slurm_cluster",
    "latin_hypercube",
    "load_sweep",
    "local_cluster",
    "observe_run",
    "parse_walltime",
    "plan",
    "read_record",
    "run_end",
    "run_sweep",
    "run_task",
    "scenario_key",
    "slurm_array_script",
    "slurm_cluster",
    "summary_rows",
    "write_summary",
]
