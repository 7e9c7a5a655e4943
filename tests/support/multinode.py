"""What the multi-machine tests (tests/test_multinode*.py) share: the one cell they run, its undisturbed result, and
the check that a disturbed sweep ended exactly as that one did.

Each fault ends with the cell finished exactly once: one COMPLETE trial in the sweep's state, one cell run in MLflow,
FINISHED, each epoch logged once, and the final metrics of the same cell run undisturbed on SQLite stores on this
machine (within float tolerance).
"""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

from ablation.tracking.names import (
    FINAL_TOP1_ERR_LAST,
    FINAL_TOP5_ERR_LAST,
    FINAL_VAL_LOSS_LAST,
    ROLE_CELL,
    VAL_TOP1_ERR,
    role_filter,
)
from tests.support import processes
from tests.support.processes import ONE_THREAD
from tests.support.tiny import tiny_experiment

EPOCHS = 5
FINAL = (FINAL_TOP1_ERR_LAST, FINAL_TOP5_ERR_LAST, FINAL_VAL_LOSS_LAST)
ONE_CELL = "  model.attention.order: [channel-first]"


@pytest.fixture(scope="module")
def undisturbed(tiny_npz, tmp_path_factory):
    """(the experiment file, a process running it undisturbed on SQLite stores, its folder): started at once, so
    that it runs while the module sets its cluster up; ``reference`` waits for its result."""
    folder = tmp_path_factory.mktemp("undisturbed")
    experiment = folder / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, ONE_CELL, "[0]", EPOCHS))
    (folder / "run").mkdir()
    sweep = processes.start(["sweep", str(experiment), "--no-progress"], folder / "run", folder / "log.txt", ONE_THREAD)
    return experiment, sweep, folder


def reference(undisturbed) -> dict[str, float]:
    """The undisturbed run's final metrics."""
    _, sweep, folder = undisturbed
    sweep.join(600)
    done = processes.finished(sweep, folder / "log.txt")
    assert done.exitcode == 0, done.log[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], role_filter(ROLE_CELL))
    return run.data.metrics


def renamed(undisturbed, folder, name: str):
    """The undisturbed experiment under another MLflow experiment name (a test of its own on a shared tracking
    server); the name does not enter the cell's key or its results."""
    path = folder / f"{name}.yaml"
    path.write_text(undisturbed[0].read_text().replace("name: tiny", f"name: {name}"))
    return path


def assert_finished_once_as(tracking: str, storage: str, expected: dict[str, float], name: str = "tiny") -> str:
    """The one cell's run in experiment ``name``: FINISHED, each epoch logged once, the undisturbed run's final
    metrics; the sweep's state holds one COMPLETE trial of it. Returns the run id."""
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], role_filter(ROLE_CELL))
    assert [r.info.status for r in runs] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
    (run,) = runs
    steps = [m.step for m in client.get_metric_history(run.info.run_id, VAL_TOP1_ERR)]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps
    for key in FINAL:
        assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
        assert run.data.metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [t.state.name for t in trials].count("COMPLETE") == 1, trials
    assert "RUNNING" not in [t.state.name for t in trials], trials
    return run.info.run_id
