"""``runner.py slurm``: a sweep's workers as a Slurm job array, submitted through submitit or written as a script.

Each array task runs one ``runner.py worker`` (``ablation.slurm.task``); the workers pull cells from the shared
storage (PostgreSQL) and log to one MLflow tracking server, so the array can be any size, tasks can be preempted,
requeued or run out of time, and a second array can join later. Checkpoints must be on a filesystem every node
sees: a requeued or replacement task resumes a cell from its last epoch checkpoint, in the same MLflow run.

Submission goes through submitit (``SlurmExecutor.submit_array``): it writes the sbatch file, keeps one log per
array task and pickles the task, so a requeued task runs exactly what was submitted even if the checkout changed
since. Its own preemption handling (checkpoint-and-requeue on SIGUSR2, SIGTERM ignored) assumes the job is a
Python function it can checkpoint; our unit of recovery is the cell, so ``WorkerTask`` replaces those handlers.
Both paths ask Slurm for the same things (``sbatch_parameters``): ``--requeue``, one task per array element, and
SIGUSR2 ``signal_grace_s`` before the time limit so the worker stops cleanly and the task requeues itself.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ablation.core.errors import ConfigError
from ablation.experiment.prepared import prepare_sweep
from ablation.slurm.task import WorkerTask

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_EXTRA = re.compile(r"^(?:#SBATCH\s+)?--([a-z][a-z0-9-]*)(?:=(.+))?$")
# What runner.py slurm sets itself: a flag of its own, or something the tasks' recovery depends on.
_OWNED = {
    "array": "--tasks",
    "time": "--time",
    "partition": "--partition",
    "cpus-per-task": "--cpus-per-task",
    "gpus-per-task": "--gpus-per-task",
    "signal": "--signal-grace",
    "requeue": "(always set: a preempted task must come back)",
    "no-requeue": "(a preempted task must come back)",
    "output": "--log-dir",
    "error": "--log-dir",
    "open-mode": "(always append: a requeued task adds to its log)",
    "ntasks": "(one worker per array task)",
    "ntasks-per-node": "(one worker per array task)",
    "job-name": "(ablation-<experiment>)",
}


def time_minutes(text: str) -> int:
    """A Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes, rounded up."""
    found = _TIME.match(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not allowed; allowed: a Slurm time limit, D-HH:MM:SS, HH:MM:SS or minutes")
    days, first, second, third = found.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # MM:SS
        seconds = int(first) * 60 + int(second)
    else:  # minutes
        seconds = int(first) * 60
    if seconds <= 0:
        raise ValueError(f"{text!r} is not allowed; allowed: a time limit above zero")
    return math.ceil(seconds / 60)


def parse_extra(lines: tuple[str, ...]) -> dict[str, str | bool]:
    """``--key=value`` / ``--flag`` (with or without ``#SBATCH``) as sbatch parameters; one-line errors."""
    parameters: dict[str, str | bool] = {}
    for line in lines:
        found = _EXTRA.match(line.strip())
        if not found:
            raise ConfigError("--sbatch", line, "allowed: an sbatch option such as --qos=high or '#SBATCH --mem=32G'")
        key, value = found.groups()
        if key in _OWNED:
            raise ConfigError("--sbatch", line, f"allowed: options runner.py slurm leaves alone; use {_OWNED[key]}")
        parameters[key] = value if value is not None else True
    return parameters


@dataclass(frozen=True)
class SlurmOptions:
    tasks: int
    time: str = "24:00:00"
    partition: str | None = None
    gpus_per_task: int = 1  # 0: no GPU asked for (CPU workers)
    cpus_per_task: int = 8
    extra: tuple[str, ...] = ()  # more sbatch options, as the user wrote them
    setup: tuple[str, ...] = ()  # shell lines run before the worker (environment activation, module load)
    python: str = field(default_factory=lambda: sys.executable)
    signal_grace_s: int = 120  # SIGUSR2 this long before the time limit: time to give the cell back
    max_requeues: int = 3  # a task requeues itself this often after nearing its limit (SLURM_RESTART_COUNT)
    log_dir: Path = Path("slurm-logs")

    @classmethod
    def from_args(cls, args, experiment: str, cells: int) -> SlurmOptions:
        """``runner.py slurm``'s flags for ``experiment`` of ``cells`` cells, checked (one-line errors) before
        anything is written or submitted."""
        if not args.storage or args.storage.startswith("sqlite"):
            raise ConfigError(
                "--storage", args.storage, "allowed: a database every node reaches (postgresql+psycopg2://...)"
            )
        if args.submit and not args.tracking_uri:
            raise ConfigError("--tracking-uri", None, "allowed: the MLflow server every task logs to (http://...)")
        gpus = args.gpus_per_job if args.gpus_per_task is None else args.gpus_per_task
        if gpus and gpus < args.gpus_per_job:
            raise ConfigError("--gpus-per-task", gpus, f"allowed: 0 or at least --gpus-per-job ({args.gpus_per_job})")
        return cls(
            tasks=args.tasks or cells,
            time=args.time,
            partition=args.partition,
            gpus_per_task=gpus,
            cpus_per_task=args.cpus_per_task,
            extra=tuple(args.sbatch),
            setup=tuple(args.setup),
            python=args.python or ("python" if args.setup else sys.executable),
            signal_grace_s=args.signal_grace,
            max_requeues=args.max_requeues,
            log_dir=Path(args.log_dir or f"slurm-logs/{experiment}").resolve(),
        )

    def __post_init__(self) -> None:
        limit_s = time_minutes(self.time) * 60
        if self.signal_grace_s >= limit_s:
            raise ConfigError(
                "--signal-grace", self.signal_grace_s, f"allowed: fewer seconds than the time limit --time {self.time}"
            )
        parse_extra(self.extra)


def sbatch_parameters(options: SlurmOptions, job_name: str) -> dict[str, str | int | bool]:
    """The sbatch options both paths ask for (submitit's names: underscores)."""
    parameters: dict[str, str | int | bool] = {
        "job_name": job_name,
        "time": time_minutes(options.time),
        "ntasks_per_node": 1,
        "cpus_per_task": options.cpus_per_task,
        "requeue": True,
    }
    if options.partition:
        parameters["partition"] = options.partition
    if options.gpus_per_task:
        parameters["gpus_per_task"] = options.gpus_per_task
    return parameters


def requested(options: SlurmOptions, experiment: str) -> dict[str, str | int | bool]:
    """What the array asks of Slurm, the user's ``--sbatch`` options included (the script and ``--test-only``;
    submitit takes the same two parts apart, its own names and ``additional_parameters``)."""
    return {**sbatch_parameters(options, job_name(experiment)), **parse_extra(options.extra)}


def worker_task_command(worker_command: list[str], options: SlurmOptions) -> list[str]:
    """The worker's command line as a task runs it: the task's Python (after ``setup`` activated an environment,
    ``python`` on its PATH), no ``--name`` (each task names its worker after itself)."""
    command = [options.python, *worker_command[1:]]
    if "--name" in command:
        at = command.index("--name")
        del command[at : at + 2]
    return command


SCRIPT = """#!/bin/bash
# Sweep workers for {experiment}: {cells} cells. Written by ablation slurm; submit with: sbatch {path}
{sbatch}
set -euo pipefail
# The tasks run where sbatch was called, as with --submit; {python} must import ablation (installed, or
# made importable by the setup lines).
{setup}
# Every task's worker pulls cells from the same storage. On SIGTERM (preemption, scontrol requeue, scancel) or
# SIGUSR2 (the time limit is near) it gives its cell back; the last epoch checkpoint is on the shared filesystem,
# and whoever claims the cell next resumes it in the same MLflow run. Near the time limit the task requeues itself.
# A time-limit signal that came before the task could handle it ended the step; nothing was claimed: requeue.
srun --unbuffered {task} -m ablation.slurm.task --max-requeues {max_requeues} -- {command} || {after_step}
"""


def slurm_script(*, experiment: str, cells: int, worker_command: list[str], options: SlurmOptions, path: Path) -> str:
    """An sbatch script asking for what ``submit`` asks for, for users who submit by hand."""
    parameters = {
        **requested(options, experiment),
        "array": f"0-{options.tasks - 1}",
        "signal": f"USR2@{options.signal_grace_s}",
        "output": f"{options.log_dir}/%A_%a.out",
        "open_mode": "append",
    }
    lines = [_sbatch_line(key, value) for key, value in parameters.items()]
    command = worker_task_command(worker_command, options)
    return SCRIPT.format(
        experiment=experiment,
        cells=cells,
        path=path,
        sbatch="\n".join(lines),
        python=options.python,
        setup="\n".join(options.setup),
        task=shlex.quote(options.python),
        max_requeues=options.max_requeues,
        command=" ".join(shlex.quote(part) for part in command),
        after_step=after_step_line(options),
    )


def after_step_line(options: SlurmOptions) -> str:
    """The batch script's line right after srun (ablation.slurm.task.after_step): ``$?`` is srun's exit code."""
    return f"{shlex.quote(options.python)} -m ablation.slurm.task --max-requeues {options.max_requeues} --after-step $?"


def write_script(experiment: str, cells: int, worker_command: list[str], options: SlurmOptions, out: Path) -> None:
    """``runner.py slurm`` without ``--submit``: the script, for ``sbatch`` by hand; no store is touched."""
    options.log_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not make it: a task without it fails unseen
    out.write_text(
        slurm_script(experiment=experiment, cells=cells, worker_command=worker_command, options=options, path=out)
    )
    out.chmod(0o755)
    print(f"wrote {out}: sbatch {out}   ({cells} cells, array of {options.tasks} workers)")


def submit_sweep(experiment, arms, experiment_args, worker_options, worker_command, options: SlurmOptions) -> None:
    """``runner.py slurm --submit``: Slurm asked whether it takes the array, the sweep set up in its stores (both
    reached from here first), the array submitted and recorded in the storage for ``runner.py status``."""
    from ablation.scheduler.state import join_sweep  # Optuna, MLflow: only to set the sweep up for a submission

    check_submittable(options, experiment.name)
    # The device is resolved where a task runs (a login node has no GPU, its nodes do).
    prepared = prepare_sweep(experiment, experiment_args, arms)
    queue, _ = join_sweep(prepared, worker_options)
    unfinished = queue.unfinished()
    if unfinished == 0 and not experiment.planned:
        print(f"{experiment.name}: every cell is done in {worker_options.tracking_uri}; nothing submitted")
        return
    submitted = submit(experiment=experiment.name, worker_command=worker_command, options=options)
    record(queue, submitted)
    stores = f"--storage {worker_options.storage_url} --tracking-uri {worker_options.tracking_uri}"
    print(
        f"submitted Slurm job array {submitted.job_id}: {submitted.tasks} worker tasks for {unfinished} cells "
        f"not yet done; logs in {submitted.log_dir}/{submitted.job_id}{'_<task>' if submitted.tasks > 1 else ''}/\n"
        f"watch: python runner.py status {' '.join(experiment_args)} {stores}"
    )


def job_name(experiment: str) -> str:
    return f"ablation-{experiment}"[:64]


def _sbatch_line(key: str, value) -> str:
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def check_submittable(options: SlurmOptions, experiment: str) -> None:
    """Ask Slurm whether it would take the array (``sbatch --test-only``: a bad partition, account, QOS or limit is
    refused, nothing is queued), before any store is touched; one-line errors."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--submit", "sbatch", "allowed: a machine with Slurm's commands on PATH (sbatch, squeue)")
    flags = [_sbatch_line(key, value).removeprefix("#SBATCH ") for key, value in requested(options, experiment).items()]
    argv = ["sbatch", "--test-only", f"--array=0-{options.tasks - 1}", *flags, "--output=/dev/null", "--wrap=true"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower()] or [done.stderr.strip()]
        raise ConfigError("--submit", "sbatch", f"allowed: a job Slurm accepts; sbatch said: {errors[0]}")


@dataclass(frozen=True)
class Submitted:
    job_id: str  # the array's job id
    task_ids: tuple[str, ...]  # <job>_<index> each; a one-task array is submitted as a plain job: its id
    log_dir: Path

    @property
    def tasks(self) -> int:
        return len(self.task_ids)


def submit(*, experiment: str, worker_command: list[str], options: SlurmOptions) -> Submitted:
    """Submit ``options.tasks`` worker tasks as one job array through submitit (``check_submittable`` first)."""
    import submitit

    # submitit's process on the node unpickles WorkerTask, and the worker runs ``python -m ablation``: the task's
    # Python (``--python``, after ``--setup``) must import ablation, as any installed tool must be there.
    setup = list(options.setup)
    log_dir = options.log_dir.resolve()
    executor = submitit.SlurmExecutor(folder=log_dir / "%j", python=options.python)
    parameters = sbatch_parameters(options, job_name(experiment))
    extra = {**{"requeue": parameters.pop("requeue")}, **parse_extra(options.extra)}
    executor.update_parameters(
        **parameters,
        array_parallelism=options.tasks,
        signal_delay_s=options.signal_grace_s,
        stderr_to_stdout=True,
        setup=setup,
        # submitit's teardown lines follow its srun line: the first one reads srun's exit code.
        teardown=[after_step_line(options)],
        additional_parameters=extra,
    )
    task = WorkerTask(tuple(worker_task_command(worker_command, options)), options.max_requeues)
    try:
        jobs = executor.submit_array([task] * options.tasks)
    except Exception as exc:  # sbatch's refusal (a bad partition, a limit), as submitit reports it
        reason = str(exc).strip().splitlines()
        raise ConfigError(
            "--submit", "sbatch", f"allowed: a job Slurm accepts; sbatch said: {reason[-1] if reason else exc}"
        ) from None
    return Submitted(jobs[0].job_id.partition("_")[0], tuple(job.job_id for job in jobs), log_dir)


def record(queue, submitted: Submitted) -> None:
    """Remember the array in the sweep's storage, where ``runner.py status`` finds it."""
    from ablation.scheduler.queue import JOBS  # Optuna: only where an array is recorded, never for the parser

    jobs = list(queue.get_attr(JOBS) or [])
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    jobs.append({"job_id": submitted.job_id, "task_ids": list(submitted.task_ids), "submitted": when})
    queue.set_attr(JOBS, jobs)
