"""Worker processes a sweep starts: they import while the sweep sets its stores up, join only when it says so,
and need not create the stores' tables; a worker started alone still creates them, and every cell runs once."""

import io
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

import runner
from ablation import cli
from ablation.experiment.prepared import prepare_sweep
from ablation.experiment.schema import load_experiment
from ablation.scheduler import queue
from ablation.scheduler.launch import (
    LOCAL_POLL_S,
    SWEEP_READY,
    CellOptions,
    WorkerOptions,
    child_environment,
    wait_for_sweep,
)
from ablation.scheduler.queue import open_storage
from ablation.scheduler.state import join_sweep
from ablation.scheduler.worker import run_worker
from ablation.tracking import stores
from ablation.tracking.names import CONFIG_HASH, ROLE_CELL, role_filter
from tests.support import processes
from tests.support.folders import in_folder
from tests.support.tiny import tiny_experiment

GRID = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"


@pytest.fixture
def fresh_marks(monkeypatch):
    """No store of this test process counts as set up by a sweep, before or after the test."""
    monkeypatch.setattr(stores, "_SET_UP", set())


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def _options(folder: Path, **fields) -> WorkerOptions:
    return WorkerOptions(
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        storage_url=f"sqlite:///{folder / 'sweeps.db'}",
        cell=CellOptions(checkpoint_dir=folder / "checkpoints", progress=False),
        **fields,
    )


def test_a_storage_its_sweep_set_up_is_opened_without_creating_or_checking_tables(tmp_path, fresh_marks, monkeypatch):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    opened, locks = [], []
    real_storage, real_lock = queue._ProtectedStorage, queue.exclusive

    def storage(*args, **kwargs):
        opened.append({k: kwargs[k] for k in ("skip_table_creation", "skip_compatibility_check")})
        return real_storage(*args, **kwargs)

    monkeypatch.setattr(queue, "_ProtectedStorage", storage)
    monkeypatch.setattr(queue, "exclusive", lambda *args: locks.append(args[1]) or real_lock(*args))
    open_storage(url).get_all_studies()  # a process on its own creates the tables, under the schema lock
    assert opened.pop() == {"skip_table_creation": False, "skip_compatibility_check": False}
    assert locks == ["optuna-schema"]
    stores.mark_set_up(url)
    open_storage(url).get_all_studies()  # one whose sweep has made them trusts them: no lock, no DDL, no check
    assert opened.pop() == {"skip_table_creation": True, "skip_compatibility_check": True}
    assert locks == ["optuna-schema"]


def test_a_worker_process_joins_only_once_its_sweep_says_so(tmp_path, fresh_marks, monkeypatch):
    options = _options(tmp_path, started_by_sweep=True)
    at_exit = []
    monkeypatch.setattr("atexit.register", at_exit.append)
    _stdin(monkeypatch, b"")  # the sweep ended (failed, stopped, killed) before its set-up was done
    assert not wait_for_sweep(options)
    assert not stores.is_set_up(options.storage_url) and at_exit == []
    _stdin(monkeypatch, SWEEP_READY)
    assert wait_for_sweep(options)
    assert stores.is_set_up(options.storage_url)
    assert len(at_exit) == 1  # its exit skips the last walks over every object (the sweep waits for it)


def test_a_worker_whose_sweep_ended_before_its_set_up_touches_no_store(
    tmp_path, tiny_npz, write_experiment, fresh_marks, monkeypatch
):
    prepared = prepare_sweep(load_experiment(write_experiment(tiny_experiment(tiny_npz, GRID, epochs=1))))
    _stdin(monkeypatch, b"")
    with in_folder(tmp_path):
        report = run_worker(prepared, _options(tmp_path, started_by_sweep=True))
    assert report.finished == 0 and not report.failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # no store, no checkpoint, no mlruns


def test_the_worker_flag_and_its_polling_survive_the_command_line(tmp_path):
    options = _options(tmp_path, started_by_sweep=True, poll_s=LOCAL_POLL_S, name="w1", epoch_lines=True)
    args = cli.build_parser().parse_args(["worker", "exp.yaml", *options.to_argv("w1")])
    assert WorkerOptions.from_args(args, progress=False, name="w1") == options
    alone = cli.build_parser().parse_args(["worker", "exp.yaml"])
    assert WorkerOptions.from_args(alone, progress=False).started_by_sweep is False


# ---- real processes


def _every_cell_exactly_once(folder: Path, cells: int) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(f"sqlite:///{folder / 'sweeps.db'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    hashes = [t.user_attrs["cell_hash"] for t in trials]
    assert len(hashes) == len(set(hashes)) == cells  # none enqueued, claimed or retried twice
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], role_filter(ROLE_CELL))
    assert sorted(r.data.tags[CONFIG_HASH] for r in runs) == sorted(hashes)
    assert {r.info.status for r in runs} == {"FINISHED"}
    return trials


def _children() -> list[str]:
    """The command lines of this process's living children."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if entry.name.isdigit() and int(stat.rpartition(")")[2].split()[1]) == os.getpid():
                found.append((entry / "cmdline").read_text().replace("\0", " "))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="--workers 2 needs two cores")
def test_a_sweep_whose_set_up_fails_stops_its_workers_and_says_one_line(tmp_path, tiny_npz, write_experiment, capfd):
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    store = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()
    argv = ["sweep", str(path), "--workers", "2", "--storage", f"sqlite:///{tmp_path / 'sweeps.db'}"]
    capfd.readouterr()
    with in_folder(tmp_path):
        code = runner.main([*argv, "--tracking-uri", f"sqlite:///file:{store}?mode=ro&uri=true"])
    out, err = capfd.readouterr()  # the worker processes' output too: they share these descriptors
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --tracking-uri") and "read-only" in line, line
    assert out == "" and not any("runner.py worker" in child for child in _children())
    assert not (tmp_path / "sweeps.db").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_a_worker_told_its_stores_are_set_up_runs_every_cell_on_them(tmp_path, tiny_npz, write_experiment):
    # The test plays the sweep: it creates both stores and the sweep's state, then releases a worker process.
    path = write_experiment(tiny_experiment(tiny_npz, GRID, epochs=1))
    prepared = prepare_sweep(load_experiment(path), (str(path),))
    options = _options(tmp_path, started_by_sweep=True)
    with in_folder(tmp_path):
        join_sweep(prepared, options, say=lambda line: None)
    command = [sys.executable, "-m", "ablation", "worker", str(path), *options.to_argv("w1")]
    env = {**child_environment(), "OMP_NUM_THREADS": "1"}  # this checkout's package, as the sweep starts it
    pipes = {name: subprocess.PIPE for name in ("stdin", "stdout", "stderr")}
    worker = subprocess.Popen(command, cwd=tmp_path, env=env, text=True, **pipes)
    out, err = worker.communicate(SWEEP_READY.decode(), timeout=600)
    assert worker.returncode == 0, err[-3000:]
    assert "[w1] finished 4 cells" in out and "Traceback" not in err, out + err
    _every_cell_exactly_once(tmp_path, 4)


@pytest.mark.slow
def test_a_worker_started_alone_on_new_stores_creates_them(tmp_path, tiny_npz, write_experiment):
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    new = ["--storage", f"sqlite:///{tmp_path / 'sweeps.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    argv = ["worker", str(path), *new, "--checkpoint-dir", str(tmp_path / "checkpoints"), "--name", "alone"]
    done = processes.run(argv, tmp_path, tmp_path / "worker.txt", processes.ONE_THREAD)
    assert done.exitcode == 0, done.log[-3000:]
    assert "[alone] finished 2 cells" in done.log, done.log[-3000:]
    _every_cell_exactly_once(tmp_path, 2)


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="--workers 2 needs two cores")
def test_a_sweep_with_two_workers_on_new_stores_runs_every_cell_exactly_once(tmp_path, tiny_npz, write_experiment):
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0, 1, 2]", epochs=1))
    argv = ["sweep", str(path), "--workers", "2", "--no-progress", "--checkpoint-dir", str(tmp_path / "checkpoints")]
    done = processes.run(argv, tmp_path, tmp_path / "sweep.txt")
    assert done.exitcode == 0, done.log[-3000:]
    assert "Traceback" not in done.log and "already exists" not in done.log, done.log[-3000:]
    assert "[sweep] started 1 worker processes: w1 (pid " in done.log and "[w1] finished " in done.log, done.log
    # The sweep says so once its state is ready, and only then are its workers told to join.
    assert done.log.index("6 cells (2 arms x 3 seeds)") < done.log.index("[sweep] started 1 worker processes")
    assert "sweep tiny: 6/6 cells done, 0 failed, 0 pending" in done.log
    _every_cell_exactly_once(tmp_path, 6)
