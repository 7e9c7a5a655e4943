"""``runner.py slurm --submit`` against the session's real Slurm cluster (tests/slurm/cluster/conftest.py).

A tiny sweep goes in as a job array of real worker tasks that share a real PostgreSQL storage; a task is
requeued mid-cell as a preemption would, another runs into its time limit, and every cell must finish exactly once
in MLflow, each epoch logged once, the interrupted cell resumed from its checkpoint in its first MLflow run.

No test here hopes that a signal falls inside a window of time. Where a signal must land mid-cell, the cell's worker
is held still (SIGSTOP) from the moment it is seen mid-cell until the signal is pending in it, then continued: the
signal is handled exactly where the worker was, on a fast machine or a loaded one.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import signal
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

import runner
from ablation.scheduler.queue import CELL, RUN_ID, WORKER
from ablation.tracking.names import CONFIG_HASH, ROLE_CELL, VAL_TOP1_ERR, role_filter
from tests.support import processes
from tests.support.tiny import tiny_experiment

GRID = "  - model.attention: [{type: none}, {type: cbam, reduction: 4}]\n"


def _submit(folder: Path, experiment: Path, storage: str, tasks: int, *extra: str) -> str:
    argv = [
        *("slurm", str(experiment), "--submit", "--storage", storage),
        *("--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--checkpoint-dir", str(folder / "ckpt")),
        *("--tasks", str(tasks), "--gpus-per-task", "0", "--cpus-per-task", "1", "--device", "cpu"),
        # A grace period well above any stall of a loaded machine (and of a worker held still by a test), so no live
        # worker's cell is ever taken back as an orphan's.
        *("--heartbeat-interval", "1", "--grace-period", "20", "--log-dir", str(folder / "logs")),
        # One thread per task (two tasks share the two cores); --setup is where a cluster user activates an env.
        *("--setup", "export OMP_NUM_THREADS=1", "--python", sys.executable),
        *extra,
    ]
    assert runner.main(argv) == 0
    return argv


def _job_id(out: str) -> str:
    found = re.search(r"submitted Slurm job array (\d+)", out)
    assert found, out
    return found.group(1)


@functools.cache
def _storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url)  # one engine per database: the polling must not open a pool per call


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    rdb = _storage(storage)
    (study,) = rdb.get_all_studies()
    return rdb.get_all_trials(study._study_id, deepcopy=False)


def _cell_runs(folder: Path) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL)):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, VAL_TOP1_ERR)]
        runs.setdefault(run.data.tags[CONFIG_HASH], []).append((run.info.run_id, run.info.status, steps))
    return runs


def _logs(folder: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted((folder / "logs").rglob("*.out")))


def _assert_each_cell_once(folder: Path, storage: str, cells: int, epochs: int) -> dict[str, list]:
    runs = _cell_runs(folder)
    assert len(runs) == cells, runs
    for key, found in runs.items():
        assert len(found) == 1, f"cell {key} has {len(found)} runs: {found}"
        ((_, status, steps),) = found
        assert status == "FINISHED" and sorted(steps) == list(range(1, epochs + 1)), (key, status, steps)
    latest = {}
    for trial in _trials(storage):
        latest[trial.user_attrs[CELL]] = trial
    assert {t.state for t in latest.values()} == {optuna.trial.TrialState.COMPLETE}
    return runs


def _running(storage: str) -> optuna.trial.FrozenTrial | None:
    """A cell a worker has claimed and runs."""
    for trial in _trials(storage):
        if trial.state == optuna.trial.TrialState.RUNNING and WORKER in trial.user_attrs:
            return trial
    return None


def _running_with_checkpoint(storage: str, folder: Path) -> optuna.trial.FrozenTrial | None:
    for trial in _trials(storage):
        running = trial.state == optuna.trial.TrialState.RUNNING and WORKER in trial.user_attrs
        if running and (folder / "ckpt" / "tiny" / trial.user_attrs[CELL] / "last.pt").exists():
            return trial
    return None


# A worker stops on either: SIGTERM (preemption, requeue, scancel; the task wrapper forwards every stop as one) or
# SIGUSR2 (the time limit is near), which Slurm sends to every process of the task's step.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR2}


def _worker_pid(trial: optuna.trial.FrozenTrial) -> int | None:
    """The worker process that runs ``trial``'s cell (the task wrapper starts it with ``--name slurm-<task>``);
    None once it has ended."""
    return processes.pid_with_args("--name", trial.user_attrs[WORKER])


def _task(trial: optuna.trial.FrozenTrial) -> str:
    return trial.user_attrs[WORKER].removeprefix("slurm-")


def _hold_until_signalled(pid: int | None, send=None, until: float | None = None) -> None:
    """Hold worker ``pid`` still (SIGSTOP) while ``send()`` (if given) signals its task, and let it go (SIGCONT)
    once a stop signal is pending in it: the stop is then handled where the worker was held, mid-cell. Slurm's
    requeue and scancel send SIGCONT themselves just before their SIGTERM, which lets it go as well. With ``until``
    (a time.time() value: waiting for slurmctld's own time-limit signal), the hold ends then at the latest, and a
    worker continued before any stop signal is pending is held again: something else can continue it early (seen
    in CI-like runs: a SIGCONT to the task's processes 10 s in, long before the limit's SIGUSR2), and the cell
    would then finish before the signal it is there to receive."""
    if pid is None:  # the worker has ended already: whatever stopped it came first
        assert send is None, "the worker to signal has ended"
        return
    try:
        with processes.frozen(pid):
            if send is not None:
                send()
            deadline = until if until is not None else time.time() + 60
            while not processes.pending_signals(pid) & STOP_SIGNALS:
                if processes.process_state(pid) in (None, "Z"):
                    return  # it ended: whatever stopped it came first
                if not processes.is_stopped(pid):
                    if until is None:
                        return  # continued by Slurm's own SIGCONT, its stop signal right behind it
                    os.kill(pid, signal.SIGSTOP)  # continued early, no stop pending: hold it again
                if time.time() > deadline:
                    assert until is not None, f"no stop signal reached the held worker {pid} in 60 s"
                    return
                time.sleep(0.05)
    except ProcessLookupError:  # it ended before the hold: whatever stopped it came first
        if send is not None:
            raise


def _end_time(cluster, task: str) -> float:
    """When Slurm ends ``task`` at its time limit (EndTime of ``scontrol show job``), as a time.time() value."""
    shown = cluster.run("scontrol", "show", "job", "-o", task)
    found = re.search(r"\bEndTime=(\S+)", shown)
    assert found, shown
    return datetime.datetime.fromisoformat(found.group(1)).timestamp()


def _wait_for_checkpointed_cell(cluster, storage: str, folder: Path) -> optuna.trial.FrozenTrial:
    found: dict = {}

    def a_cell_is_checkpointed() -> bool:
        found["trial"] = _running_with_checkpoint(storage, folder)
        return found["trial"] is not None

    cluster.wait_for(a_cell_is_checkpointed, 300, "a running cell with an epoch checkpoint")
    return found["trial"]


# The states of a task that has ended for good. Listed, not inferred from "not running": on its way from RUNNING
# back to PENDING a requeued task passes through others (REQUEUED, COMPLETING, ...), and none of those is an end.
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def _release_while_requeued(cluster, job: str) -> bool:
    """Skip Slurm's hold-off of a requeued task (``SlurmCluster.release``); True when every task has ended."""
    states = cluster.task_states(job)
    for task, state in states.items():
        if state == "PENDING" and "BeginTime" in cluster.run("squeue", "-h", "-j", task, "-o", "%r", check=False):
            cluster.release(task)
    return bool(states) and all(state in ENDED for state in states.values())


def test_an_array_runs_every_cell_once_and_a_preempted_task_resumes_its_cell(
    slurm_cluster, postgres_url, tiny_npz, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # sbatch runs the tasks where it was called: nothing lands in the checkout
    epochs = 12
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, GRID, "[0]", epochs=epochs))
    storage = postgres_url()
    argv = _submit(tmp_path, experiment, storage, 2)
    job = _job_id(capsys.readouterr().out)

    # Preemption: the task whose cell has a checkpoint is requeued mid-cell (SIGTERM to its processes), its worker
    # held still until the SIGTERM is pending in it, so the cell cannot finish first.
    trial = _wait_for_checkpointed_cell(slurm_cluster, storage, tmp_path)
    task = _task(trial)
    _hold_until_signalled(_worker_pid(trial), send=lambda: slurm_cluster.run("scontrol", "requeue", task))

    # While it runs, runner.py status shows each array task's Slurm state beside the cells.
    status = ["status", *argv[1:2], "--storage", storage, "--tracking-uri", argv[argv.index("--tracking-uri") + 1]]
    assert runner.main(status) == 0
    shown = capsys.readouterr().out
    assert f"Slurm array {job} (2 tasks" in shown and f"{job}_0" in shown and f"{job}_1" in shown, shown

    slurm_cluster.wait_for(lambda: _release_while_requeued(slurm_cluster, job), 300, "the array to finish")
    assert set(slurm_cluster.task_states(job).values()) == {"COMPLETED"}, slurm_cluster.task_states(job)

    runs = _assert_each_cell_once(tmp_path, storage, cells=2, epochs=epochs)
    # The preempted cell was given back, claimed again and resumed from its checkpoint in its first MLflow run.
    attempts = [t for t in _trials(storage) if t.user_attrs[CELL] == trial.user_attrs[CELL]]
    assert len(attempts) == 2 and {t.user_attrs.get(RUN_ID) for t in attempts} == {trial.user_attrs[RUN_ID]}
    assert trial.user_attrs[RUN_ID] in {run_id for ((run_id, _, _),) in runs.values()}
    logs = _logs(tmp_path)
    assert "resuming after epoch" in logs, logs[-3000:]

    assert runner.main(status) == 0
    shown = capsys.readouterr().out
    assert "COMPLETED" in shown and "2 cells: 0 pending, 0 running, 2 done, 0 failed" in shown, shown
    restarts = re.search(rf"{job}_{task.split('_')[1]}\s+COMPLETED\s+\S+\s+\S+\s+(\d+)", shown)
    assert restarts and restarts.group(1) == "1", shown


def _requeued_itself(cluster, job: str, folder: Path) -> bool:
    return cluster.task_states(job).get(job) == "PENDING" and "requeueing this task" in _logs(folder)


def test_the_time_limit_signal_mid_cell_gives_the_cell_back_and_the_requeued_task_resumes_it(
    slurm_cluster, postgres_url, tiny_npz, tmp_path, monkeypatch, capsys
):
    """The time-limit path at a moment the test chooses: once the cell has an epoch checkpoint, the task gets the
    SIGUSR2 that slurmctld sends before a time limit, sent the same way (to every process of the task's steps:
    ``scancel --signal=USR2``) while its worker is held still. The worker gives the cell back, the task requeues
    itself, and the requeued task resumes the cell from its checkpoint in the same MLflow run."""
    monkeypatch.chdir(tmp_path)
    epochs = 20
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, "  - model.attention: [{type: none}]\n", "[0]", epochs=epochs))
    storage = postgres_url()
    # A 10-minute limit: slurmctld's own SIGUSR2 (120 s before it, or up to a minute earlier) is minutes away.
    _submit(tmp_path, experiment, storage, 1, "--time", "10")
    job = _job_id(capsys.readouterr().out)

    trial = _wait_for_checkpointed_cell(slurm_cluster, storage, tmp_path)
    task = _task(trial)
    _hold_until_signalled(_worker_pid(trial), send=lambda: slurm_cluster.run("scancel", "--signal=USR2", task))

    slurm_cluster.wait_for(lambda: _requeued_itself(slurm_cluster, job, tmp_path), 120, "the task to requeue itself")
    slurm_cluster.wait_for(lambda: _release_while_requeued(slurm_cluster, job), 300, "the task to finish")
    logs = _logs(tmp_path)
    assert "time limit near, cell given back; requeueing this task (1/3)" in logs, logs[-3000:]
    assert re.search(r"resuming after epoch [1-9]", logs), logs[-3000:]
    assert set(slurm_cluster.task_states(job).values()) == {"COMPLETED"}, logs[-3000:]
    runs = _assert_each_cell_once(tmp_path, storage, cells=1, epochs=epochs)
    ((run_id, _, _),) = next(iter(runs.values()))
    assert {t.user_attrs.get(RUN_ID) for t in _trials(storage)} == {trial.user_attrs[RUN_ID]} == {run_id}


def test_a_task_at_its_real_time_limit_gives_its_cell_back_and_requeues_itself(
    slurm_cluster, postgres_url, tiny_npz, tmp_path, monkeypatch, capsys
):
    """The real thing: a 1-minute limit and slurmctld's own SIGUSR2, 30 s before it, at its periodic limit check
    (Slurm may send it up to a minute early: here anywhere in the task's first 30 s). Whenever the signal comes, the
    cell must be given back, the task must requeue itself, and (given a longer limit, as a user would) finish the
    cell once, resumed or restarted: the signal may come before the first checkpoint, even before the worker has
    claimed the cell or installed its handlers. So that the cell cannot end before the signal on a fast machine, its
    worker is held still from when it runs the cell until the signal is pending in it (or, had the signal come
    before the hold, until shortly before the limit)."""
    monkeypatch.chdir(tmp_path)
    epochs = 20
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, "  - model.attention: [{type: none}]\n", "[0]", epochs=epochs))
    storage = postgres_url()
    _submit(tmp_path, experiment, storage, 1, "--time", "1", "--signal-grace", "30")
    job = _job_id(capsys.readouterr().out)

    found: dict = {}

    def running_or_requeued() -> bool:
        found["trial"] = _running(storage)
        return found["trial"] is not None or "requeueing this task" in _logs(tmp_path)

    slurm_cluster.wait_for(running_or_requeued, 120, "the task to run its cell or requeue itself")
    if found["trial"] is not None:
        until = _end_time(slurm_cluster, _task(found["trial"])) - 10
        _hold_until_signalled(_worker_pid(found["trial"]), until=until)

    slurm_cluster.wait_for(lambda: _requeued_itself(slurm_cluster, job, tmp_path), 180, "the task to requeue itself")
    slurm_cluster.run("scontrol", "update", f"jobid={job}", "TimeLimit=10")
    slurm_cluster.wait_for(lambda: _release_while_requeued(slurm_cluster, job), 300, "the task to finish")
    logs = _logs(tmp_path)
    # (Or, had the signal come before the task's Python had a handler: "... before the task had started, ...".)
    assert "requeueing this task (1/3)" in logs, logs[-3000:]
    assert set(slurm_cluster.task_states(job).values()) == {"COMPLETED"}, logs[-3000:]
    _assert_each_cell_once(tmp_path, storage, cells=1, epochs=epochs)


# The task's Python, as --python: the first process of each attempt's step sleeps before Python starts, so a signal
# sent then meets no handler at all (as a time-limit signal that comes while the interpreter starts does). It makes
# ``held.<restart>`` first, so the test knows when. The batch script's check after srun is not in a step: not held.
SLOW_START = """#!/bin/sh
if [ -n "${{SLURM_STEP_ID:-}}" ] && mkdir "{folder}/held.${{SLURM_RESTART_COUNT:-0}}" 2>/dev/null; then sleep 8; fi
exec {python} "$@"
"""


def test_a_time_limit_signal_before_the_tasks_python_starts_requeues_the_task(
    slurm_cluster, postgres_url, tiny_npz, tmp_path, monkeypatch, capsys
):
    """Slurm may send the time limit's SIGUSR2 up to a minute early: to a task that starts that close to its
    limit, before its Python has any handler, so the signal's default action ends the step. Nothing was claimed:
    the batch script's line after srun requeues the task, which then runs the cell to the end, once."""
    monkeypatch.chdir(tmp_path)
    python = tmp_path / "slow-python"
    python.write_text(SLOW_START.format(folder=tmp_path, python=sys.executable))
    python.chmod(0o755)
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, "  - model.attention: [{type: none}]\n", "[0]", epochs=2))
    storage = postgres_url()
    _submit(tmp_path, experiment, storage, 1, "--time", "10", "--python", str(python))
    job = _job_id(capsys.readouterr().out)

    held = tmp_path / "held.0"
    slurm_cluster.wait_for(held.exists, 120, "the task's first step to start")
    slurm_cluster.run("scancel", "--signal=USR2", job)  # as slurmctld sends it: to every process of the steps
    slurm_cluster.wait_for(lambda: _requeued_itself(slurm_cluster, job, tmp_path), 120, "the task to requeue itself")
    slurm_cluster.wait_for(lambda: _release_while_requeued(slurm_cluster, job), 300, "the task to finish")
    logs = _logs(tmp_path)
    assert "time limit near before the task had started, no cell claimed; requeueing this task (1/3)" in logs, logs
    assert set(slurm_cluster.task_states(job).values()) == {"COMPLETED"}, logs[-3000:]
    _assert_each_cell_once(tmp_path, storage, cells=1, epochs=2)
    assert len({t.number for t in _trials(storage)}) == 1  # nothing was claimed, so nothing was given back


def test_the_written_script_runs_as_it_is_under_sbatch(slurm_cluster, postgres_url, tiny_npz, tmp_path, monkeypatch):
    """Without --submit: the script, submitted by hand with sbatch, runs the sweep's workers to the end."""
    monkeypatch.chdir(tmp_path)
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, GRID, "[0]", epochs=2))
    storage, script = postgres_url(), tmp_path / "array.sh"
    argv = [
        *("slurm", str(experiment), "--storage", storage, "--out", str(script), "--tasks", "2"),
        *("--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--checkpoint-dir", str(tmp_path / "ckpt")),
        *("--gpus-per-task", "0", "--cpus-per-task", "1", "--device", "cpu", "--time", "10"),
        *("--log-dir", str(tmp_path / "logs"), "--setup", "export OMP_NUM_THREADS=1", "--python", sys.executable),
    ]
    assert runner.main(argv) == 0
    job = slurm_cluster.run("sbatch", "--parsable", str(script)).strip()
    slurm_cluster.wait_for(lambda: _release_while_requeued(slurm_cluster, job), 180, "the script's array")
    assert set(slurm_cluster.task_states(job).values()) == {"COMPLETED"}, _logs(tmp_path)[-3000:]
    _assert_each_cell_once(tmp_path, storage, cells=2, epochs=2)
    assert f"[slurm-{job}_0]" in _logs(tmp_path) and f"[slurm-{job}_1]" in _logs(tmp_path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sbatch=--array=0-3"], "error: --sbatch: '--array=0-3' is not allowed; allowed: options runner.py"),
        (["--sbatch", "qos high"], "error: --sbatch: 'qos high' is not allowed; allowed: an sbatch option"),
        (["--time", "1", "--signal-grace", "90"], "error: --signal-grace: 90 is not allowed"),
        (["--partition", "nonexistent"], "error: --submit: 'sbatch' is not allowed; allowed: a job Slurm accepts"),
    ],
)
def test_bad_submissions_are_one_line_errors_and_submit_nothing(
    slurm_cluster, postgres_url, tiny_npz, tmp_path, monkeypatch, capsys, extra, message
):
    monkeypatch.chdir(tmp_path)
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, GRID, "[0]"))
    before = slurm_cluster.run("squeue", "-h", "-o", "%i")
    argv = [
        *("slurm", str(experiment), "--submit", "--storage", postgres_url()),
        *("--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--gpus-per-task", "0", "--cpus-per-task", "1"),
        *("--log-dir", str(tmp_path / "logs"), *extra),
    ]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert slurm_cluster.run("squeue", "-h", "-o", "%i") == before


def test_a_cancelled_array_loses_nothing_and_a_new_submission_finishes_the_sweep(
    slurm_cluster, postgres_url, tiny_npz, tmp_path, monkeypatch, capsys
):
    """scancel stops the workers cleanly and requeues nothing; status says no task is left for the open cell; the
    same command submitted again finishes it, resumed in its first MLflow run."""
    monkeypatch.chdir(tmp_path)
    epochs = 10
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, "  - model.attention: [{type: none}]\n", "[0]", epochs=epochs))
    storage = postgres_url()
    argv = _submit(tmp_path, experiment, storage, 1)
    job = _job_id(capsys.readouterr().out)
    trial = _wait_for_checkpointed_cell(slurm_cluster, storage, tmp_path)
    _hold_until_signalled(_worker_pid(trial), send=lambda: slurm_cluster.run("scancel", job))
    slurm_cluster.wait_for(lambda: _release_while_requeued(slurm_cluster, job), 60, "the cancelled task to end")
    *_, trial = _trials(storage)  # the newest: the attempt the cell was given back as
    assert trial.state == optuna.trial.TrialState.WAITING  # given back, not left RUNNING for the grace period
    (cancelled_run,) = {t.user_attrs[RUN_ID] for t in _trials(storage) if RUN_ID in t.user_attrs}
    assert "interrupted; run the same command to resume" in _logs(tmp_path)

    status = ["status", str(experiment), "--storage", storage, "--tracking-uri", argv[argv.index("--tracking-uri") + 1]]
    assert runner.main(status) == 0
    shown = capsys.readouterr().out
    assert (
        "CANCELLED" in shown and "no Slurm task of this sweep is pending or running, and 1 cells are not done" in shown
    )

    assert runner.main(argv) == 0
    again = _job_id(out := capsys.readouterr().out)
    assert "1 worker tasks for 1 cells not yet done" in out and again != job
    slurm_cluster.wait_for(lambda: _release_while_requeued(slurm_cluster, again), 180, "the second array")
    runs = _assert_each_cell_once(tmp_path, storage, cells=1, epochs=epochs)
    ((run_id, _, _),) = next(iter(runs.values()))
    assert run_id == cancelled_run  # the cancelled attempt's run, resumed
