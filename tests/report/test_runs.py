"""The long format (ablation/report/runs.py, runs.csv): one row per cell of the sweep, every status, read from a real
MLflow store by each cell's key, and the file a spreadsheet reads."""

from __future__ import annotations

import csv

from ablation.experiment.grid import expand_arms, expand_cells, sweep_key
from ablation.experiment.schema import load_experiment
from ablation.report import columns as C
from ablation.report.runs import runs_frame, write_runs
from ablation.tracking.mlflow_store import SweepStore
from ablation.tracking.names import FINAL_PARAMS, FINAL_TOP1_ERR_LAST, FINAL_TOP5_ERR_LAST
from tests.support.folders import in_folder
from tests.support.tiny import tiny_experiment

GRID = "  - model.attention: [{type: none}, {type: se, reduction: 4}]\n  - model.attention.order: [parallel]\n"


def test_one_row_per_cell_with_its_status_axes_and_final_metrics(tmp_path, tiny_npz, write_experiment):
    experiment = load_experiment(write_experiment(tiny_experiment(tiny_npz, GRID, "[0, 1]")))
    cells = expand_cells(experiment, expand_arms(experiment))  # 3 arms x 2 seeds
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dataset = {"name": "npz", "source": str(tiny_npz), "digest": "d"}
    with in_folder(tmp_path):
        store = SweepStore(uri, experiment, create=True)
        parent = store.parent_run(sweep_key(cells), len(cells))
        ends = {0: "FINISHED", 1: "FAILED", 2: "KILLED", 3: "RUNNING"}  # cells 4 and 5 never started
        for index, status in ends.items():
            run_id = store.start_cell(cells[index], parent, dataset)
            if status == "FINISHED":
                for key, value in ((FINAL_TOP1_ERR_LAST, 41.5), (FINAL_TOP5_ERR_LAST, 9.25), (FINAL_PARAMS, 1234.0)):
                    store.client.log_metric(run_id, key, value)
            if status != "RUNNING":
                store.finish(run_id, status, "ValueError: shapes" if status == "FAILED" else "")
        frame = runs_frame(cells, store.cell_runs())

    assert len(frame) == 6 and list(frame[C.CELL]) == [cell.name for cell in cells]
    assert list(frame[C.STATUS]) == ["done", "failed", "interrupted", "running", "pending", "pending"]
    assert list(frame[C.CELL_KEY]) == [cell.hash for cell in cells]
    # One column per grid axis, by dotted key, filled from each arm's config where the arm does not vary it.
    assert list(frame["model.attention.type"]) == ["none", "none", "se", "se", "cbam", "cbam"]
    assert list(frame["model.attention.order"][4:]) == ["parallel", "parallel"]
    assert frame["model.attention.order"][:2].isna().all()  # the plain network has no order
    done = frame.iloc[0]
    assert (done[C.TOP1], done[C.TOP5], done[C.PARAMS]) == (41.5, 9.25, 1234)
    assert frame[C.TOP1][1:].isna().all() and frame[C.PARAMS][1:].isna().all()
    assert frame[C.FAILURE][1].startswith("ValueError: shapes") and frame[C.RUN_ID][4] == ""

    path = tmp_path / "runs.csv"
    write_runs(frame, path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(frame.columns)
    assert [row[C.STATUS] for row in rows] == list(frame[C.STATUS])
    assert rows[0][C.PARAMS] == "1234" and rows[1][C.PARAMS] == ""  # a count, not 1234.0; empty, not "nan"
    assert [row["model.attention.reduction"] for row in rows[2:4]] == ["4", "4"]  # as given, not 4.0
    assert rows[0][C.TOP1] == "41.5"
