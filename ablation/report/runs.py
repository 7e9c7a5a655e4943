"""The long format of a sweep: one row per cell (``runs.csv``, ``SweepResult.runs()``), for pandas, R or a spreadsheet.

Where the table has one row per arm, this has one per cell: which arm (its index, its description and one column
per grid axis, named by its dotted key), the seed, how the cell stands, its final metrics and the MLflow run that
holds them. Read from the tracking store alone, like every table (``ablation.tracking.results``): a cell's run is
found by the cell's key (config, seed, data identity), so a run of other data or of another sweep is never
reported as this one's.

A cell's status: ``done`` (a FINISHED run), ``failed`` (FAILED: its own error, kept in ``failure``), ``running``
(RUNNING: a worker has it now, or one whose tracking store went away left it so), ``interrupted`` (KILLED: stopped,
a rerun resumes it) or ``pending`` (no run yet). Metrics are those of the cell's representative run: its finished
run if any, else its newest attempt (whose metrics are partial or missing: NaN).

The grid's axes are columns named by the leaf keys the grid sets (``model.attention.order``; a whole section set at
once, ``model.attention: {type: se}``, gives its leaves), each filled from every arm's config, so an arm that keeps
a key at its base value still shows it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from ablation.experiment.grid import Cell
from ablation.experiment.schema import flatten
from ablation.report import columns as C
from ablation.report.table import RUN_METRICS
from ablation.tracking.names import FAILURE

# MLflow's run status -> the cell's status in the long format.
STATUS = {"FINISHED": "done", "FAILED": "failed", "RUNNING": "running", "KILLED": "interrupted"}
PENDING = "pending"
# The metrics of a cell's row, by the runs frame's names (``ablation.report.table.RUN_METRICS`` is the one map).
_METRIC_COLUMNS = (C.TOP1, C.TOP5, C.PARAMS, C.GMACS, C.TRAIN_TIME, C.IMG_PER_S)


def axis_columns(cells: Iterable[Cell]) -> list[str]:
    """The grid's axes as columns, by dotted key, in the order the arms first name them."""
    columns: dict[str, None] = {}
    for cell in cells:
        for key in flatten(cell.arm.axes):
            columns.setdefault(key, None)
    return list(columns)


def runs_frame(cells: list[Cell], cell_runs: dict[str, Any]) -> pd.DataFrame:
    """One row per cell of ``cells``, in their order (arm, then seed), from ``cell_runs`` (cell key -> its
    representative MLflow run, ``SweepStore.cell_runs``)."""
    axes = axis_columns(cells)
    rows = []
    for cell in sorted(cells, key=lambda c: (c.arm.index, c.seed)):
        run = cell_runs.get(cell.hash)
        metrics = run.data.metrics if run is not None else {}
        # Every axis column filled from the arm's whole config: an arm that does not vary a key still has its value
        # (the CBAM arms' model.attention.type beside the plain arm's "none"); None where the key does not exist.
        values = flatten(cell.config.model_dump(mode="json"))
        rows.append(
            {
                C.CELL: cell.name,
                C.ARM: cell.arm.index,
                C.DESCRIPTION: cell.arm.description,
                **{axis: _axis_value(values.get(axis)) for axis in axes},
                C.SEED: cell.seed,
                C.STATUS: STATUS.get(run.info.status, run.info.status.lower()) if run is not None else PENDING,
                **{column: metrics.get(RUN_METRICS[column], math.nan) for column in _METRIC_COLUMNS},
                C.FAILURE: (run.data.tags.get(FAILURE, "") if run is not None else "") or "",
                C.RUN_ID: run.info.run_id if run is not None else "",
                C.CELL_KEY: cell.hash,
            }
        )
    columns = [C.CELL, C.ARM, C.DESCRIPTION, *axes, C.SEED, C.STATUS, *_METRIC_COLUMNS, C.FAILURE, C.RUN_ID, C.CELL_KEY]
    frame = pd.DataFrame(rows, columns=columns)
    for axis in axes:  # as given: 4 stays 4 (a float column would print 4.0000), a missing value stays empty
        frame[axis] = pd.Series([row[axis] for row in rows], dtype=object, index=frame.index)
    frame[C.PARAMS] = frame[C.PARAMS].astype("Int64")  # a count; <NA> where the cell has not run
    return frame


def _axis_value(value: Any) -> Any:
    """A grid value as one cell of a CSV: scalars as they are, lists and mappings as their compact text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    return str(value)


def write_runs(frame: pd.DataFrame, path) -> None:
    frame.to_csv(path, index=False, float_format="%.6g")
