"""``runner.py status``: every cell of a sweep with its state (pending / running / done / failed), the worker that
runs it and its MLflow run; below, each Slurm array task submitted for the sweep with its state in Slurm."""

from __future__ import annotations

import pandas as pd
from optuna.trial import TrialState

from ablation.prepared import PreparedSweep
from ablation.queue import CELL, FAILURE, RUN_ID, WORKER
from ablation.slurm import JOBS
from ablation.sweep_state import find_sweep
from ablation.tracking_names import PHASE_TUNE

STATE_NAMES = {
    TrialState.WAITING: "pending",
    TrialState.RUNNING: "running",
    TrialState.COMPLETE: "done",
    TrialState.FAIL: "failed",
}


def sweep_status(prepared: PreparedSweep, storage_url: str, tracking_uri: str) -> pd.DataFrame | None:
    """One row per cell: description, seed, state, attempts, MLflow run id, failure reason; None if this sweep
    has no state in ``storage_url`` for the tracking store ``tracking_uri`` (its state is bound to that store)."""
    found = find_sweep(prepared, storage_url, tracking_uri)
    if found is None:
        return None
    queue, _ = found
    attempts: dict[str, int] = {}
    for trial in queue.trials():
        key = trial.user_attrs.get(CELL)
        attempts[key] = attempts.get(key, 0) + (trial.state != TrialState.WAITING)
    latest = queue.latest()
    rows = []
    cells = prepared.cells
    if prepared.experiment.planned:  # its cells are those its plan has queued so far
        from ablation.plan import SweepPlan

        plan = SweepPlan(prepared)
        cells = [plan.cell(entry.spec) for entry in sorted(plan.entries(queue), key=lambda e: e.trial.number)]
    for cell in cells:
        trial = latest.get(cell.hash)
        state = STATE_NAMES.get(trial.state, trial.state.name.lower()) if trial else "not queued"
        # A failed attempt that was retried carries its MLflow run id on the earlier trial.
        run_id = trial.user_attrs.get(RUN_ID, "") if trial else ""
        if not run_id:
            run_id = next(
                (
                    t.user_attrs[RUN_ID]
                    for t in queue.trials()
                    if t.user_attrs.get(CELL) == cell.hash and RUN_ID in t.user_attrs
                ),
                "",
            )
        rows.append(
            {
                "description": cell.arm.description,
                **({"phase": _phase(cell)} if prepared.experiment.planned else {}),
                "seed": cell.seed,
                "state": state,
                "attempts": attempts.get(cell.hash, 0),
                "worker": trial.user_attrs.get(WORKER, "") if trial and trial.state == TrialState.RUNNING else "",
                "mlflow_run_id": run_id,
                "failure": (trial.user_attrs.get(FAILURE, "") if trial and trial.state == TrialState.FAIL else ""),
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs[JOBS] = list(queue.get_attr(JOBS) or [])
    return frame


def render_status(frame: pd.DataFrame) -> str:
    counts = frame["state"].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "running", "done", "failed"))
    text = frame.to_string(index=False) + f"\n\n{len(frame)} cells: {summary}\n"
    jobs = frame.attrs.get(JOBS) or []
    return text + (render_slurm(frame, jobs) if jobs else "")


def render_slurm(frame: pd.DataFrame, jobs: list[dict]) -> str:
    """Each array task of each submitted array: its Slurm state and the cell its worker runs; a line when no task
    is left to take the cells that are not done."""
    from ablation.slurm_state import LIVE, array_tasks
    from ablation.slurm_task import worker_name_of

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


def _phase(cell) -> str:
    spec = cell.spec
    return f"tune #{spec.trial}" if spec.phase == PHASE_TUNE else f"final ({spec.recipe})"
