"""What a sweep's results are as tables, read from the tracking store, and the files they are written to: one
place for the ``table`` command, the end of a ``sweep`` and the Python API (``ablation.results``).

``read_results`` gives the summary (one row per arm: the DataFrame behind the paper-style table), the runs frame (one
row per finished cell, what the summary is computed from) and the long format (one row per cell of the sweep, every
status: ``runs.csv``); for a tuned or seed-rule sweep, its final cells as the plan made them
(``ablation.report.planned``). ``write_results`` writes table.{md,tex,csv,html}, the figures, runs.csv and a planned
sweep's tuning outputs into one folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from ablation.experiment.prepared import PreparedSweep
from ablation.report.planned import PlannedView, planned_outputs, planned_view
from ablation.report.runs import runs_frame, write_runs
from ablation.report.table import collect_curves, collect_runs, summarize, write_outputs
from ablation.tracking.mlflow_store import SweepStore

RUNS_CSV = "runs.csv"


@dataclasses.dataclass
class Results:
    """A sweep's results as the tables show them."""

    prepared: PreparedSweep  # the rows reported: a planned sweep's final cells of its main recipe
    summary: pd.DataFrame  # one row per arm (``ablation.report.table.summarize``, plus a planned sweep's columns)
    finished: pd.DataFrame  # one row per finished cell (``ablation.report.table.collect_runs``)
    cells: pd.DataFrame  # one row per cell, every status (``ablation.report.runs``): runs.csv
    planned: PlannedView | None = None


def read_results(prepared: PreparedSweep, tracking_uri: str) -> Results | str:
    """The results of ``prepared`` in ``tracking_uri``, or one line saying why there are none (never swept there,
    or no run of this sweep)."""
    store = SweepStore(tracking_uri, prepared.experiment)  # read-only: an experiment never swept is not created
    name = prepared.experiment.name
    if not store.exists:
        return f"{name}: never swept in {tracking_uri} (no such MLflow experiment); nothing to tabulate"
    if prepared.experiment.planned:  # which cells it ran is in its runs' specs (ablation.tracking.results)
        view = planned_view(prepared, tracking_uri)
        if view is None:
            return f"{name}: no run of this sweep in {tracking_uri}; nothing to tabulate"
        return Results(view.main, view.summary, view.runs, runs_frame(view.main.cells, store.cell_runs()), view)
    finished = collect_runs(prepared, tracking_uri)
    return Results(prepared, summarize(prepared, finished), finished, runs_frame(prepared.cells, store.cell_runs()))


def write_results(results: Results, out_dir: Path, tracking_uri: str) -> list[Path]:
    """Every file of the results into ``out_dir``: the table in each format, its figures, runs.csv and, for a
    planned sweep, its tuning outputs. Returns the paths written."""
    curves = collect_curves(results.finished, tracking_uri)
    written = write_outputs(results.summary, results.prepared, out_dir, curves)
    path = out_dir / RUNS_CSV
    write_runs(results.cells, path)
    written.append(path)
    if results.planned is not None:
        written += planned_outputs(results.planned, out_dir)
    return written
