"""``runner.py slurm``: a Slurm job-array script whose tasks are sweep workers.

Each array task starts ``runner.py worker`` on its node; the workers pull cells from the shared storage
(PostgreSQL) and log to one MLflow tracking server, so the array can be any size, tasks can be preempted and
requeued, and a second array can join later. Checkpoints must be on a filesystem every node sees.
"""

from __future__ import annotations

import shlex
from pathlib import Path

TEMPLATE = """#!/bin/bash
# Sweep workers for {experiment}: {cells} cells. Written by runner.py slurm; edit freely.
#SBATCH --job-name={job_name}
#SBATCH --array=0-{last_task}
#SBATCH --gpus-per-task={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --requeue
#SBATCH --output={log_dir}/%x-%A_%a.out
{partition}
set -euo pipefail
cd {workdir}
# Every worker of every array task pulls cells from the same storage; a requeued task resumes its cell from
# the last epoch checkpoint (on a shared filesystem), in the same MLflow run.
srun python runner.py worker {args} \\
    --storage {storage} \\
    --tracking-uri {tracking} \\
    --checkpoint-dir {checkpoints} \\
    --gpus-per-job {gpus} \\
    --name "slurm-$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID"
"""


def slurm_script(
    *,
    experiment: str,
    command_args: list[str],
    cells: int,
    storage: str,
    tracking_uri: str,
    checkpoint_dir: str,
    tasks: int,
    gpus_per_task: int = 1,
    cpus_per_task: int = 8,
    time_limit: str = "24:00:00",
    partition: str | None = None,
    workdir: Path | None = None,
) -> str:
    return TEMPLATE.format(
        experiment=experiment,
        cells=cells,
        job_name=f"ablation-{experiment}"[:64],
        last_task=max(tasks, 1) - 1,
        gpus=gpus_per_task,
        cpus=cpus_per_task,
        time=time_limit,
        log_dir="slurm-logs",
        partition=f"#SBATCH --partition={partition}" if partition else "",
        workdir=shlex.quote(str(workdir or Path.cwd())),
        args=" ".join(shlex.quote(a) for a in command_args),
        storage=shlex.quote(storage),
        tracking=shlex.quote(tracking_uri),
        checkpoints=shlex.quote(checkpoint_dir),
    )
