"""Faults of the machine or a store, not of the cell: the sweep stops (or waits, and says so), the cell is left
to resume, and a plain rerun finishes it once. A real ``mlflow server`` that a test stops mid-cell and starts
again; a real tmpfs that fills up during the first epoch; real signals during a store back-off.

Each sweep runs as its own process (``tests/support/processes``). The moment of a fault is chosen by holding the
sweep still (SIGSTOP) once its cell has logged an epoch, breaking the store, and letting it go: whatever the speed
of the machine, the fault lands mid-cell."""

import os
import signal
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ablation.core.outages import OUTAGE_EXIT
from ablation.tracking.names import ROLE_CELL, VAL_TOP1_ERR, role_filter
from tests.support import processes
from tests.support.disks import fill, small_disk
from tests.support.mlflow_server import MlflowServer
from tests.support.tiny import tiny_experiment

pytestmark = pytest.mark.slow

EPOCHS = 12
# Short heartbeats: a rerun takes up a cell whose worker was stopped by an outage at once.
QUICK = ["--no-progress", "--heartbeat-interval", "1", "--grace-period", "2"]
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


def _experiment(folder: Path, npz: Path, name: str, epochs: int = EPOCHS) -> Path:
    path = folder / f"{name}.yaml"
    text = tiny_experiment(npz, "  - model.attention: [{type: none}]\n", "[0]", epochs=epochs)
    path.write_text(text.replace("name: tiny", f"name: {name}"))
    return path


def _steps(uri: str, name: str) -> list[list[int]]:
    """Each cell run of experiment ``name``: the steps at which its validation error was logged."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL))
    return [sorted(m.step for m in client.get_metric_history(r.info.run_id, VAL_TOP1_ERR)) for r in runs]


def _wait_for(predicate, what: str, process=None, log: Path | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if process is not None and not process.is_alive():
            raise AssertionError(f"the sweep ended while waiting for {what}: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {log.read_text()[-3000:]}" if log else ""))
        time.sleep(0.2)


def _break_mid_cell(sweep, log: Path, uri: str, name: str, after_epoch: int, breaking) -> None:
    """Once the cell has logged ``after_epoch``, hold the sweep still, run ``breaking``, and let it go."""
    _wait_for(lambda: any(s and s[-1] >= after_epoch for s in _steps(uri, name)), f"epoch {after_epoch}", sweep, log)
    with processes.frozen(sweep.pid):
        breaking()


def _assert_each_epoch_once(uri: str, name: str, epochs: int = EPOCHS) -> None:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_id, r.info.status) for r in runs]
    assert _steps(uri, name) == [list(range(1, epochs + 1))]


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error:")]


def test_a_tracking_server_that_stays_away_stops_the_sweep_after_the_wait_and_the_rerun_logs_each_epoch_once(
    server, tiny_npz, tmp_path
):
    experiment = _experiment(tmp_path, tiny_npz, "away")
    argv = ["sweep", str(experiment), *QUICK, "--tracking-uri", server.uri, "--store-wait", "3"]
    log = tmp_path / "first.txt"
    sweep = processes.start(argv, tmp_path, log, processes.ONE_THREAD)
    _break_mid_cell(sweep, log, server.uri, "away", 1, server.stop)
    sweep.join(TIMEOUT_S)
    first = processes.finished(sweep, log)

    assert first.exitcode == OUTAGE_EXIT, first.log[-3000:]
    assert f"[store] the tracking store {server.uri} is unreachable since " in first.log, first.log[-3000:]
    (error,) = _errors(first.log)
    assert error.startswith(f"error: the tracking store {server.uri}: unreachable for "), error
    assert "waited --store-wait 3 s; start it again (or check the network), then rerun the same command" in error
    assert "Traceback" not in first.log, first.log[-3000:]

    server.start()
    rerun = processes.run(argv, tmp_path, tmp_path / "rerun.txt", processes.ONE_THREAD)
    assert rerun.exitcode == 0, rerun.log[-3000:]
    assert "resuming after epoch" in rerun.log and "0 failed" in rerun.log, rerun.log[-3000:]
    _assert_each_epoch_once(server.uri, "away")


def test_a_tracking_server_that_comes_back_within_the_wait_lets_the_sweep_go_on(server, tiny_npz, tmp_path):
    experiment = _experiment(tmp_path, tiny_npz, "back")
    argv = ["sweep", str(experiment), *QUICK, "--tracking-uri", server.uri, "--store-wait", "600"]
    log = tmp_path / "sweep.txt"
    sweep = processes.start(argv, tmp_path, log, processes.ONE_THREAD)
    _break_mid_cell(sweep, log, server.uri, "back", 1, server.stop)
    _wait_for(lambda: "is unreachable since" in log.read_text(), "the line saying it waits", sweep, log)
    server.start()
    sweep.join(TIMEOUT_S)
    done = processes.finished(sweep, log)

    assert done.exitcode == 0, done.log[-3000:]
    assert f"[store] the tracking store {server.uri} answers again after " in done.log, done.log[-3000:]
    _assert_each_epoch_once(server.uri, "back")


def test_a_signal_during_a_store_wait_stops_the_sweep_at_once_and_the_cell_resumes(server, tiny_npz, tmp_path):
    """SIGTERM, as a scheduler sends before a preemption (Ctrl-C's SIGINT goes through the same handler:
    tests/core/test_stopping.py)."""
    stop, name = signal.SIGTERM, "signal"
    experiment = _experiment(tmp_path, tiny_npz, name)
    argv = ["sweep", str(experiment), *QUICK, "--tracking-uri", server.uri, "--store-wait", "600"]
    log = tmp_path / "first.txt"
    sweep = processes.start(argv, tmp_path, log, processes.ONE_THREAD)
    _break_mid_cell(sweep, log, server.uri, name, 1, server.stop)
    _wait_for(lambda: "is unreachable since" in log.read_text(), "the line saying it waits", sweep, log)
    sent = time.monotonic()
    os.kill(sweep.pid, stop)
    sweep.join(TIMEOUT_S)
    took = time.monotonic() - sent
    print(f"the sweep ended {took:.1f} s after {stop.name}")  # the figure in benchmarks/README.md (pytest -s)
    first = processes.finished(sweep, log)

    assert first.exitcode == 130 and "interrupted; run the same command to resume" in first.log, first.log[-3000:]
    # The requirement is 5 s (benchmarks/README.md has the figure); the bound here only tells "stopped at once"
    # from "waited out the store" (600 s) on a loaded machine.
    assert took < 60, took
    assert "Traceback" not in first.log, first.log[-3000:]

    server.start()
    rerun = processes.run(argv, tmp_path, tmp_path / "rerun.txt", processes.ONE_THREAD)
    assert rerun.exitcode == 0 and "resuming after epoch" in rerun.log, rerun.log[-3000:]
    _assert_each_epoch_once(server.uri, name)


def test_a_disk_that_fills_up_during_the_first_epoch_stops_the_sweep_and_the_rerun_resumes(tiny_npz, tmp_path):
    """The checkpoint folder's file system fills up before the first epoch's checkpoint is written: the cell is
    left interrupted (not FAILED), one line names the folder and the cause, and once space is freed a plain rerun
    finishes it, without --retry-failed."""
    experiment = _experiment(tmp_path, tiny_npz, "full", epochs=3)
    with small_disk(tmp_path / "disk", 8192) as disk:  # room for 3 checkpoints of ~1.5 MB
        filler = fill(disk, leave_bytes=64 * 1024)  # a checkpoint of this network is ~1.5 MB
        argv = ["sweep", str(experiment), *QUICK, "--checkpoint-dir", str(disk)]
        first = processes.run(argv, tmp_path, tmp_path / "first.txt", processes.ONE_THREAD)

        assert first.exitcode == OUTAGE_EXIT, first.log[-3000:]
        (error,) = _errors(first.log)
        assert error.startswith(f"error: the folder {disk}/full/") and ": has no space left; free space there" in error
        assert "Traceback" not in first.log and "unexpected pos" not in first.log, first.log[-3000:]
        assert [p.name for p in disk.rglob("*.tmp*")] == []  # no half-written checkpoint left behind
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        (first_run,) = client.search_runs([client.get_experiment_by_name("full").experiment_id], role_filter(ROLE_CELL))
        assert first_run.info.status == "KILLED", first_run.info.status  # interrupted, not FAILED

        filler.unlink()
        rerun = processes.run(argv, tmp_path, tmp_path / "rerun.txt", processes.ONE_THREAD)
        assert rerun.exitcode == 0, rerun.log[-3000:]
        assert "0 failed" in rerun.log and "1/1 cells done" in rerun.log, rerun.log[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("full").experiment_id], role_filter(ROLE_CELL))
    assert run.info.status == "FINISHED" and run.info.run_id == first_run.info.run_id  # resumed in the same run
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, VAL_TOP1_ERR)) == [1, 2, 3]
