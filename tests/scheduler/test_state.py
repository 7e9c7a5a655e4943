"""One truth for a sweep's state: whatever happened to the stores between two runs (deleted, swapped, edited in the
dashboard), the next sweep says in one line what it found and ends with exactly one FINISHED run per cell, each
epoch logged once, in the tracking store it writes to. All on real stores (SQLite files, MLflow), in-process."""

import shutil

import pytest
from mlflow import MlflowClient

from ablation.experiment.schema import load_experiment
from ablation.scheduler.local import prepare_sweep
from ablation.tracking.names import (
    CONFIG_HASH,
    LR,
    PARENT_RUN,
    ROLE_CELL,
    ROLE_SWEEP,
    TRAIN_LOSS,
    VAL_TOP1_ERR,
    VAL_TOP5_ERR,
    role_filter,
)
from tests.support.tiny import sweep_in, tiny_experiment

pytestmark = pytest.mark.slow

GRID = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"
EPOCH_KEYS = (TRAIN_LOSS, VAL_TOP1_ERR, VAL_TOP5_ERR, LR)


@pytest.fixture(scope="module")
def trained(tiny_npz, tmp_path_factory):
    """One finished tiny sweep (2 cells, 2 epochs): its stores and checkpoints are copied by every case."""
    folder = tmp_path_factory.mktemp("trained")
    path = folder / "exp.yaml"
    path.write_text(tiny_experiment(tiny_npz, GRID, "[0]", epochs=2))
    report = _sweep(path, folder)
    assert report.done == 2
    return path, folder


def _sweep(path, folder, tracking="mlflow.db", storage="sweeps.db"):
    return sweep_in(folder, prepare_sweep(load_experiment(path)), tracking, storage)[0]


def _copy(trained, tmp_path, *drop):
    path, folder = trained
    case = tmp_path / "case"
    shutil.copytree(folder, case)
    for name in drop:
        (case / name).unlink()
    return path, case


def _assert_one_finished_run_per_cell(uri, cells=2):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL))
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len({r.data.tags[CONFIG_HASH] for r in finished}) == len(finished) == cells
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for run in finished:
        for key in EPOCH_KEYS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    (parent,) = client.search_runs([experiment.experiment_id], role_filter(ROLE_SWEEP))
    assert parent.info.status == "FINISHED"
    assert {r.data.tags[PARENT_RUN] for r in finished} <= {parent.info.run_id}


def _lines(err):
    return [line for line in err.splitlines() if line.startswith("[sweep]") or line.startswith("[checkpoint]")]


def test_deleted_tracking_store(trained, tmp_path, capsys):
    path, case = _copy(trained, tmp_path, "mlflow.db")
    capsys.readouterr()
    report = _sweep(path, case)
    err = capsys.readouterr().err
    assert "holds this sweep's state for another tracking store" in err, err
    # The old checkpoints belong to runs of the deleted store: set aside, not resumed into the new runs.
    assert sum("belongs to MLflow run" in line for line in _lines(err)) == 2, err
    assert (report.trained_now, report.done) == (2, 2)
    _assert_one_finished_run_per_cell(f"sqlite:///{case / 'mlflow.db'}")
    assert "Traceback" not in err


def test_deleted_sweep_state(trained, tmp_path, capsys):
    path, case = _copy(trained, tmp_path, "sweeps.db")
    capsys.readouterr()
    report = _sweep(path, case)
    err = capsys.readouterr().err
    assert "already holds finished runs of 2 of these 2 cells; they count as done" in err, err
    assert (report.trained_now, report.done) == (0, 2)
    _assert_one_finished_run_per_cell(f"sqlite:///{case / 'mlflow.db'}")


def test_both_stores_deleted(trained, tmp_path, capsys):
    path, case = _copy(trained, tmp_path, "sweeps.db", "mlflow.db")
    capsys.readouterr()
    report = _sweep(path, case)
    err = capsys.readouterr().err
    assert (report.trained_now, report.done) == (2, 2)
    assert sum("belongs to MLflow run" in line for line in _lines(err)) == 2, err
    _assert_one_finished_run_per_cell(f"sqlite:///{case / 'mlflow.db'}")
    assert len(list((case / "checkpoints").rglob("set-aside/last.pt.*"))) == 2  # kept, not deleted


def test_another_tracking_store_and_back(trained, tmp_path, capsys):
    path, case = _copy(trained, tmp_path)
    capsys.readouterr()
    elsewhere = _sweep(path, case, tracking="other-mlflow.db")
    assert "holds this sweep's state for another tracking store" in capsys.readouterr().err
    assert (elsewhere.trained_now, elsewhere.done) == (2, 2)
    _assert_one_finished_run_per_cell(f"sqlite:///{case / 'other-mlflow.db'}")
    # Back to the first store: its own state and runs are still there, untouched by the other one.
    back = _sweep(path, case)
    assert (back.trained_now, back.done) == (0, 2)
    _assert_one_finished_run_per_cell(f"sqlite:///{case / 'mlflow.db'}")


def test_another_sweep_storage(trained, tmp_path, capsys):
    path, case = _copy(trained, tmp_path)
    capsys.readouterr()
    report = _sweep(path, case, storage="other-sweeps.db")
    assert "already holds finished runs of 2 of these 2 cells" in capsys.readouterr().err
    assert (report.trained_now, report.done) == (0, 2)


def test_runs_deleted_in_the_dashboard(trained, tmp_path, capsys):
    """The storage says done; the tracking store no longer has the parent or one cell's run."""
    path, case = _copy(trained, tmp_path)
    uri = f"sqlite:///{case / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([experiment.experiment_id], role_filter(ROLE_SWEEP))
    first, _ = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL))
    client.delete_run(parent.info.run_id)
    client.delete_run(first.info.run_id)
    capsys.readouterr()
    report = _sweep(path, case)
    err = capsys.readouterr().err
    assert f"the sweep's parent run {parent.info.run_id} is not in" in err, err
    assert "marks 1 cells done that have no finished run" in err, err
    assert (report.trained_now, report.done) == (1, 2)
    _assert_one_finished_run_per_cell(uri)


def test_a_cell_that_finishes_while_a_worker_joins_is_not_taken_for_deleted(trained, tmp_path, capsys, monkeypatch):
    """A worker joining a sweep checks the storage against the store while another worker runs. A cell that finishes
    between the two reads (its run FINISHED, then its trial COMPLETE) must not look done-without-a-run and be queued
    again (seen on a loaded machine: 7 trials for 6 cells, 'marks 1 cells done that have no finished run')."""
    from ablation.scheduler.state import find_sweep
    from ablation.tracking.mlflow_store import SweepStore

    path, case = _copy(trained, tmp_path)
    tracking, storage = f"sqlite:///{case / 'mlflow.db'}", f"sqlite:///{case / 'sweeps.db'}"
    prepared = prepare_sweep(load_experiment(path))
    queue, store = find_sweep(prepared, storage, tracking)
    client = MlflowClient(tracking)
    # One cell in flight, as another worker would have it: its run RUNNING, its trial claimed.
    run = next(iter(store.cell_runs().values()))
    client.update_run(run.info.run_id, status="RUNNING")
    queue.retry([run.data.tags[CONFIG_HASH]])
    claim = queue.claim()
    assert claim is not None and claim.cell_hash == run.data.tags[CONFIG_HASH]

    read_runs = SweepStore.cell_runs
    finished = []

    def runs_then_the_cell_finishes(self):
        runs = read_runs(self)
        if not finished:  # the other worker finishes its cell right after this read, in the order it always does
            client.set_terminated(run.info.run_id, "FINISHED")
            queue.complete(claim, 50.0)
            finished.append(True)
        return runs

    monkeypatch.setattr(SweepStore, "cell_runs", runs_then_the_cell_finishes)
    capsys.readouterr()
    report = _sweep(path, case)
    err = capsys.readouterr().err
    assert finished and "no finished run" not in err, err
    assert (report.trained_now, report.done) == (0, 2)
    assert len(queue.trials()) == 3  # the two cells' first trials and the one retried above: none queued again
    _assert_one_finished_run_per_cell(tracking)
