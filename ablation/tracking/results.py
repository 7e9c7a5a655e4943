"""The results record: what a sweep writes to the tracking store for tables to read, and the one objective.

A table never asks the scheduler (the Optuna storage, the plan) what ran: everything it needs is in MLflow, written
by the sweep as it goes, and read back here.

- **The objective** (``OBJECTIVE``): the last epoch's top-1 error on the cell's validation split (the test set for a
  final run, the training set's holdout for a tuning trial; ``EPOCH_OBJECTIVE`` per epoch, what pruning sees). The
  queue's trial value, the tuner's score, the seed rule and the tables all read this one metric.
- **A cell's record** (``CellRecord``, one per cell run): its key, status, arm, seed and, in a planned sweep, the
  spec the plan made it from (phase, recipe, values, trial number) and how its tuning trial ended; its metrics.
- **What the plan decided without a run**: a tuning trial ended FAIL untrained (its values had diverged in an
  earlier trial) leaves no run, so the plan records it on the sweep's parent run (``UNTRAINED_TRIALS``: arm index ->
  trial numbers), and a table still counts every trial of the budget.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ablation.experiment.spec import CellSpec
from ablation.tracking.names import (
    ARM,
    CELL_SPEC,
    CONFIG_HASH,
    FINAL_TOP1_ERR_LAST,
    ROLE_CELL,
    SEED,
    TUNE_STATE,
    UNTRAINED_TRIALS,
    VAL_TOP1_ERR,
)

OBJECTIVE = FINAL_TOP1_ERR_LAST
EPOCH_OBJECTIVE = VAL_TOP1_ERR


def objective(run: Any, default: float = math.nan) -> float:
    """A run's objective (``OBJECTIVE``), ``default`` when it logged none (it did not finish)."""
    return run.data.metrics.get(OBJECTIVE, default)


@dataclass(frozen=True)
class CellRecord:
    """One cell run as the sweep recorded it."""

    key: str  # the cell's key (config, seed, data identity)
    run_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    arm: int | None
    seed: int | None
    spec: CellSpec | None  # a planned sweep's cell: what the plan made it from
    tune_state: str | None  # a tuning trial's end as its study records it: COMPLETE, PRUNED or FAIL
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def objective(self) -> float:
        return self.metrics.get(OBJECTIVE, math.nan)


def cell_records(store: Any) -> list[CellRecord]:
    """Every cell run of ``store``'s experiment (a ``SweepStore``), oldest first."""
    records = []
    for run in sorted(store.runs(ROLE_CELL), key=lambda run: run.info.start_time or 0):
        tags = run.data.tags
        spec = tags.get(CELL_SPEC)
        records.append(
            CellRecord(
                key=tags.get(CONFIG_HASH, ""),
                run_id=run.info.run_id,
                status=run.info.status,
                arm=int(tags[ARM]) if tags.get(ARM, "").isdigit() else None,
                seed=int(tags[SEED]) if tags.get(SEED, "").lstrip("-").isdigit() else None,
                spec=CellSpec.from_json(spec) if spec else None,
                tune_state=tags.get(TUNE_STATE) or None,
                metrics=dict(run.data.metrics),
            )
        )
    return records


def untrained_trials(parent: Any | None) -> dict[int, set[int]]:
    """Arm index -> the numbers of its tuning trials that ended FAIL without a run (read from the parent run)."""
    if parent is None:
        return {}
    raw = json.loads(parent.data.tags.get(UNTRAINED_TRIALS) or "{}")
    return {int(arm): set(numbers) for arm, numbers in raw.items()}


def untrained_trials_tag(trials: dict[int, set[int]]) -> str:
    """The parent run's ``UNTRAINED_TRIALS`` tag for ``trials`` (arm index -> trial numbers)."""
    return json.dumps({str(arm): sorted(numbers) for arm, numbers in sorted(trials.items()) if numbers})
