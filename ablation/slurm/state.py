"""What Slurm says about a sweep's arrays, for ``runner.py status``: each array task's state, node, run time,
restarts, and the cell its worker runs.

``scontrol show job`` knows every task of a job until ``MinJobAge`` after it ends (300 s by default); after that
``sacct`` does, where the cluster keeps accounting. Neither needs anything but Slurm's client commands. A task
Slurm no longer knows reads as such, never as a guessed state.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

# A task that may still take cells; any other state means it is over (or about to be).
LIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"}
UNKNOWN = "unknown to Slurm now"


@dataclass(frozen=True)
class TaskState:
    task: str  # <array job>_<index>
    state: str
    node: str = ""
    run_time: str = ""
    restarts: int = 0
    reason: str = ""


def array_tasks(job_id: str, task_ids: list[str]) -> list[TaskState] | None:
    """The tasks ``task_ids`` of job ``job_id`` (``<job>_<index>``, or the job id itself for a one-task job, which
    submitit submits as a plain job), as Slurm knows them now; None when Slurm cannot be asked from here (no
    ``scontrol``, or the controller does not answer), which says nothing about the tasks."""
    shown = _run(["scontrol", "-o", "show", "job", job_id])
    if shown is None:
        return None
    known = {task.task: task for task in parse_scontrol(job_id, shown)}
    if any(task not in known for task in task_ids):
        known.update({task.task: task for task in _from_sacct(job_id) if task.task not in known})
    return [known.get(task, TaskState(task, UNKNOWN)) for task in task_ids]


def _run(argv: list[str]) -> str | None:
    """The command's output; "" when Slurm answered that it no longer knows the job; None when it did not answer."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode == 0:
        return done.stdout
    return "" if "invalid job id" in done.stderr.lower() else None


def parse_scontrol(job_id: str, text: str) -> list[TaskState]:
    """The array tasks in ``scontrol -o show job`` output (one record per line)."""
    states = []
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("ArrayJobId") == job_id and "ArrayTaskId" in fields:
            tasks = [f"{job_id}_{index}" for index in _indices(fields["ArrayTaskId"])]
        elif fields.get("JobId") == job_id and "ArrayJobId" not in fields:
            tasks = [job_id]
        else:
            continue
        node = fields.get("NodeList", "")
        for task in tasks:
            states.append(
                TaskState(
                    task,
                    fields.get("JobState", "?"),
                    "" if node == "(null)" else node,
                    fields.get("RunTime", ""),
                    int(fields.get("Restarts", "0") or 0),
                    "" if fields.get("Reason") in (None, "None") else fields["Reason"],
                )
            )
    return states


def _from_sacct(job_id: str) -> list[TaskState]:
    out = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,NodeList,Elapsed"])
    states = []
    for line in (out or "").splitlines():
        parts = line.split("|")
        if len(parts) == 4 and re.fullmatch(rf"{job_id}(_\d+)?", parts[0]):
            states.append(TaskState(parts[0], parts[1].split()[0], parts[2], parts[3]))
    return states


def _indices(text: str) -> list[int]:
    """``ArrayTaskId`` of a record: ``3``, or pending tasks folded into one record, ``2-5%2`` / ``1,4-6``."""
    indices = []
    for part in text.split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            indices.extend(range(int(first), int(last or first) + 1))
    return indices
