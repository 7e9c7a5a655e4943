"""``status`` for a sweep run as Slurm arrays: below the cells (``ablation.scheduler.status``), each array task
submitted for the sweep with its state in Slurm, its node and the cell its worker runs, and a line when no task is
left for the cells that are not done."""

from __future__ import annotations

import pandas as pd

from ablation.scheduler.queue import JOBS
from ablation.slurm.state import LIVE, array_tasks
from ablation.slurm.task import worker_name_of


def render_arrays(frame: pd.DataFrame) -> str:
    """The Slurm part of ``status`` for a ``sweep_status`` frame; "" when no array was submitted for the sweep."""
    jobs = frame.attrs.get(JOBS) or []
    return render_slurm(frame, jobs) if jobs else ""


def render_slurm(frame: pd.DataFrame, jobs: list[dict]) -> str:
    """Each array task of each submitted array: its Slurm state and the cell its worker runs; a line when no task
    is left to take the cells that are not done."""
    running = {row.worker: row.description for row in frame.itertuples() if row.state == "running" and row.worker}
    text, live, unreachable = "", 0, False
    for job in jobs:
        tasks = array_tasks(str(job["job_id"]), list(job["task_ids"]))
        if tasks is None:
            unreachable = True
            text += f"\nSlurm array {job['job_id']}: Slurm does not answer here (scontrol); task states unknown\n"
            continue
        live += sum(task.state in LIVE for task in tasks)
        rows = [
            {
                "task": task.task,
                "slurm state": task.state + (f" ({task.reason})" if task.reason else ""),
                "node": task.node,
                "run time": task.run_time,
                "restarts": task.restarts,
                "cell": running.get(worker_name_of(task.task), ""),
            }
            for task in tasks
        ]
        text += f"\nSlurm array {job['job_id']} ({len(tasks)} tasks, submitted {job['submitted']}):\n"
        text += pd.DataFrame(rows).to_string(index=False) + "\n"
    open_cells = int((frame["state"].isin(["pending", "running", "not queued"])).sum())
    if open_cells and not live and not unreachable:
        text += (
            f"\nno Slurm task of this sweep is pending or running, and {open_cells} cells are not done: submit again "
            "(runner.py slurm ... --submit) or start a worker; finished cells are kept\n"
        )
    return text
