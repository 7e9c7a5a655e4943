"""Where sweeps live in MLflow (ablation/tracking/mlflow_store.py), on a real SQLite store: reading creates nothing, a
sweep's parent run is found again, a cell's run carries its key, and a run's tracker keeps one value per step."""

import pytest
from mlflow import MlflowClient

from ablation.core.errors import StoreError
from ablation.experiment.grid import expand_arms, expand_cells, sweep_key
from ablation.experiment.schema import load_experiment
from ablation.tracking.mlflow_store import MlflowTracker, SweepStore, dashboard_hint, resolve_tracking_uri
from ablation.tracking.names import CONFIG_HASH, PARENT_RUN, ROLE, ROLE_CELL, SEED, TITLE
from tests.support.folders import in_folder
from tests.support.tiny import tiny_experiment


def test_a_store_is_created_only_for_writing_and_holds_the_sweep_layout(tmp_path, tiny_npz, write_experiment):
    experiment = load_experiment(write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [parallel]")))
    cells = expand_cells(experiment, expand_arms(experiment))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(StoreError, match="no such file"):
        SweepStore(uri, experiment)
    assert not (tmp_path / "mlflow.db").exists()

    with in_folder(tmp_path):
        store = SweepStore(uri, experiment, create=True)
        parent = store.parent_run(sweep_key(cells), len(cells))
        assert store.parent_run(sweep_key(cells), len(cells)) == parent  # the same sweep reopens its parent run
        run_id = store.start_cell(cells[1], parent, {"name": "npz", "source": str(tiny_npz), "digest": "d"})
    reader = SweepStore(uri, experiment)
    assert reader.exists and reader.fingerprint == store.fingerprint
    assert reader.client.get_experiment(reader.experiment_id).tags[TITLE] == "Tiny sweep"
    tags = reader.client.get_run(run_id).data.tags
    assert (tags[ROLE], tags[CONFIG_HASH], tags[PARENT_RUN], tags[SEED]) == (ROLE_CELL, cells[1].hash, parent, "1")
    assert list(reader.cell_runs()) == [cells[1].hash]

    tracker = MlflowTracker(MlflowClient(uri), run_id)
    tracker.log_metrics({"val/top1_err": 40.0}, step=1)
    tracker.log_metrics({"val/top1_err": 99.0}, step=1)
    again = MlflowTracker(MlflowClient(uri), run_id, reopened=True)  # a resumed attempt
    again.log_metrics({"val/top1_err": 98.0}, step=1)
    again.log_metrics({"val/top1_err": 35.0}, step=2)
    history = MlflowClient(uri).get_metric_history(run_id, "val/top1_err")
    assert [(m.step, m.value) for m in history] == [(1, 40.0), (2, 35.0)]
    assert again.has("val/top1_err", 1) and not tracker.has("val/top1_err", 2)


def test_the_tracking_uri_and_the_dashboard_link(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri() == "http://mlflow:5000"
    assert resolve_tracking_uri("sqlite:///other.db") == "sqlite:///other.db"
    assert dashboard_hint("http://mlflow:5000/", None) == ""
    assert dashboard_hint("http://mlflow:5000/", "7").startswith("review the runs: http://mlflow:5000/#/experiments/7/")
    local = dashboard_hint("sqlite:///mlflow.db", "7")
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in local and "/#/experiments/7/" in local


def test_workers_starting_cells_at_once_each_record_the_shared_dataset(
    tmp_path, tiny_npz, write_experiment, postgres_url
):
    """MLflow's SQL store looks a dataset up and inserts it when missing; cells of one experiment started at the same
    moment by several workers race for that insert (seen: a worker crashed on PostgreSQL's duplicate key). Every run
    must end up with the dataset as its input, and the dataset stored once."""
    import threading

    experiment = load_experiment(write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [parallel]")))
    cells = expand_cells(experiment, expand_arms(experiment))
    uri = postgres_url()
    with in_folder(tmp_path):
        store = SweepStore(uri, experiment, create=True)
        parent = store.parent_run(sweep_key(cells), len(cells))
        workers = 6
        runs = [store.client.create_run(store.experiment_id).info.run_id for _ in range(workers)]
        barrier, errors = threading.Barrier(workers), []

        def start(run_id: str) -> None:
            try:
                own = SweepStore(uri, experiment)  # each worker its own client, as each process has
                barrier.wait()
                own._log_dataset(run_id, {"name": "npz", "source": str(tiny_npz), "digest": "same-digest"})
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    client = MlflowClient(uri)
    for run_id in runs:
        (found,) = client.get_run(run_id).inputs.dataset_inputs
        assert found.dataset.digest == "same-digest"
    assert parent
