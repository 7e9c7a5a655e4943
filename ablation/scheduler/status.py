"""``runner.py status``: every cell of a sweep with its state (pending / running / done / failed), the worker that
runs it and its MLflow run. The Slurm arrays submitted for the sweep (the frame's ``attrs[JOBS]``) are shown by
``ablation.slurm.status``."""

from __future__ import annotations

import pandas as pd
from optuna.trial import TrialState

from ablation.experiment.prepared import PreparedSweep
from ablation.scheduler.queue import CELL, FAILURE, JOBS, RUN_ID, WORKER
from ablation.scheduler.state import find_sweep
from ablation.tracking.names import PHASE_TUNE

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
        from ablation.scheduler.plan import SweepPlan

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
    return text


def _phase(cell) -> str:
    spec = cell.spec
    return f"tune #{spec.trial}" if spec.phase == PHASE_TUNE else f"final ({spec.recipe})"
