"""One cell as a job (ablation/scheduler/cell.py): where its checkpoint lives, and the dataset its MLflow run records
(the file it was read from and a digest of its content, the same for a copy, another for other images)."""

import shutil

import numpy as np

from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.schema import load_experiment
from ablation.scheduler.cell import checkpoint_path, dataset_input
from ablation.scheduler.launch import CellOptions
from tests.support.tiny import tiny_experiment


def test_checkpoint_and_dataset_input_of_a_cell(tmp_path, tiny_npz, write_experiment):
    copy, other = tmp_path / "copy.npz", tmp_path / "other.npz"
    shutil.copy(tiny_npz, copy)
    with np.load(tiny_npz) as f:
        arrays = dict(f)
    arrays["x_test"] = 255 - arrays["x_test"]
    np.savez(other, **arrays)
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first, parallel]", "[0]"))

    def cells(root):
        experiment = load_experiment(path, [f"data.root={root}"])
        return experiment, expand_cells(experiment, expand_arms(experiment))

    experiment, (first, second) = cells(tiny_npz)
    options = CellOptions(checkpoint_dir=tmp_path / "checkpoints")
    folder = tmp_path / "checkpoints" / "tiny"
    assert checkpoint_path(options, experiment.name, first) == folder / first.hash / "last.pt"
    assert checkpoint_path(options, experiment.name, second).parent.name == second.hash != first.hash

    record = dataset_input(first)
    assert record["name"] == "npz" and record["source"] == str(tiny_npz.resolve())
    assert dataset_input(second)["digest"] == record["digest"]
    copied, changed = dataset_input(cells(copy)[1][0]), dataset_input(cells(other)[1][0])
    assert copied["source"] == str(copy.resolve()) and copied["digest"] == record["digest"]
    assert changed["digest"] != record["digest"]


def test_a_cell_whose_claim_is_lost_writes_nothing_more_and_leaves_its_run_to_the_new_owner(
    tmp_path, tiny_npz, write_experiment, monkeypatch
):
    """The fence (a sweep worker's SweepQueue.ensure_claimed) is passed before each checkpoint; once it says the
    claim is lost, the job stops there: the checkpoint holds the epochs before, the run has their metrics and nothing
    after, and it stays RUNNING for the worker that took the cell up (not FAILED or KILLED by this one)."""
    import pytest
    from mlflow import MlflowClient

    from ablation.engine.checkpoint import load_checkpoint
    from ablation.experiment.prepared import PreparedSweep
    from ablation.scheduler.cell import run_cell
    from ablation.scheduler.queue import ClaimLost
    from ablation.tracking.mlflow_store import SweepStore
    from ablation.tracking.names import FINAL_TOP1_ERR_LAST, VAL_TOP1_ERR

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", "[0]", epochs=4))
    experiment = load_experiment(path)
    arms = expand_arms(experiment)
    prepared = PreparedSweep(experiment, arms, expand_cells(experiment, arms))
    (cell,) = prepared.cells
    store = SweepStore(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment, create=True)
    parent = store.parent_run(prepared.key, 1)
    passes = []

    def fence() -> None:
        passes.append(1)
        if len(passes) == 3:  # taken back while the third epoch trained
            raise ClaimLost("tiny: this worker's claim was taken back")

    options = CellOptions(checkpoint_dir=tmp_path / "checkpoints", progress=False)
    runs = []
    with pytest.raises(ClaimLost):
        run_cell(cell, store, parent, None, options, (1, 1), on_run=runs.append, fence=fence)
    (run_id,) = runs
    assert load_checkpoint(checkpoint_path(options, experiment.name, cell))["epoch"] == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run_id, VAL_TOP1_ERR)] == [1, 2]
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and FINAL_TOP1_ERR_LAST not in run.data.metrics
