"""Kill the sweep anywhere: a rerun finishes with nothing lost, duplicated or reused.

The sweep is SIGKILLed (``ABLATION_KILL_AT``, ``ablation.core.faults``) at points spread over its whole run, one point
per scenario, each on fresh stores: inside the sweep's set-up, while claiming a cell, mid-epoch, inside a checkpoint
write and between its renames, between an epoch's checkpoint and its logging, during a cell's finalisation. After each
kill the same command is run again to the end, and the stores must hold what an uninterrupted sweep's hold: one FINISHED
run per cell, the same per-epoch metrics (same seed, CPU), each step once, no RUNNING run, and no checkpoint that had to
be set aside (a partial one was never read). Also: Ctrl-C ends the sweep in one line with exit code 130 and its runs
KILLED; a device that does not exist stops it before anything is created.
"""

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from ablation.tracking.names import (
    DESCRIPTION,
    FINAL_PARAMS,
    FINAL_TOP1_ERR_BEST,
    FINAL_TOP1_ERR_LAST,
    FINAL_TOP5_ERR_LAST,
    FINAL_VAL_LOSS_LAST,
    LR,
    ROLE,
    ROLE_CELL,
    ROLE_SWEEP,
    TRAIN_LOSS,
    TRAIN_TOP1_ERR,
    VAL_LOSS,
    VAL_TOP1_ERR,
    VAL_TOP5_ERR,
    role_filter,
)
from tests.support import processes
from tests.support.folders import ROOT
from tests.support.tiny import tiny_experiment

pytestmark = pytest.mark.slow

GRID = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"
COMPARED = (TRAIN_LOSS, TRAIN_TOP1_ERR, VAL_LOSS, VAL_TOP1_ERR, VAL_TOP5_ERR, LR)
FINAL = (FINAL_TOP1_ERR_LAST, FINAL_TOP5_ERR_LAST, FINAL_TOP1_ERR_BEST, FINAL_VAL_LOSS_LAST, FINAL_PARAMS)
EPOCHS, BATCHES = 2, 4  # 100 training images, batch 25

# name@n is the n-th time the point is reached (two cells x 2 epochs).
KILL_POINTS = [
    "setup.created",  # study created, no cell enqueued: the sweep was "created but never made ready"
    "setup.enqueued",  # cells enqueued, no parent run
    "setup.parent",  # parent run made, the sweep not marked ready
    "claim.won",  # a cell claimed, its owner and heartbeat not yet recorded
    "cell.run_open",  # the cell's MLflow run created, the storage not told its id
    f"train.batch@{BATCHES + 2}",  # mid-epoch 2 of the first cell
    "checkpoint.write@3",  # inside the first checkpoint's write: a partial temporary file
    "checkpoint.written@2",  # epoch 2's checkpoint on disk under its temporary name
    "checkpoint.rotated@2",  # last.pt renamed to last.previous.pt, the new one not yet in place
    "epoch.checkpointed@2",  # epoch 2 checkpointed but not logged
    "epoch.checkpointed@3",  # the same in the second cell's first epoch, while the first cell's results are logged
    "epoch.logged@2",  # every epoch logged, the final metrics not
    "final.metrics",  # finalisation: final metrics logged, no artifacts
    "final.artifacts",  # finalisation: artifacts logged, the run not closed
    "final.finished",  # the run FINISHED in MLflow, the storage not told
]


@pytest.fixture(scope="module")
def setting(tiny_npz, tmp_path_factory):
    """The experiment, an empty MLflow store to copy (its schema made once), and an uninterrupted sweep's runs."""
    folder = tmp_path_factory.mktemp("faults")
    experiment = folder / "exp.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, GRID, "[0]", epochs=EPOCHS))
    template, reference = processes.reference_sweep(experiment, folder)
    return experiment, template, _runs(reference)


def _runs(folder):
    """description -> (status, {metric: [(step, value)]}) of every cell run, and the parent runs' statuses."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    cells: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL)):
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] for key in COMPARED
        }
        final = {key: run.data.metrics.get(key) for key in FINAL}
        cells.setdefault(run.data.tags[DESCRIPTION], []).append((run.info.status, history, final))
    parents = [r.info.status for r in client.search_runs([experiment.experiment_id], role_filter(ROLE_SWEEP))]
    return cells, parents


def _trials(folder):
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'sweeps.db'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    latest = {}
    for trial in trials:
        latest[trial.user_attrs["cell_hash"]] = trial  # trials come in number order: the newest wins
    return latest


def test_a_sweep_killed_anywhere_recovers_with_nothing_lost_or_duplicated(setting, tmp_path, capsys):
    experiment, template, (reference, _) = setting
    folders = {point: tmp_path / point.replace("@", "-") for point in KILL_POINTS}
    with ThreadPoolExecutor(2) as pool:
        runs = pool.map(lambda p: processes.kill_and_rerun(experiment, template, folders[p], p), KILL_POINTS)
        outcomes = dict(zip(KILL_POINTS, runs, strict=True))
    recovered, lost, duplicated, problems = 0, 0, 0, []
    for point, (killed, rerun) in outcomes.items():
        folder = folders[point]
        assert processes.was_killed(killed), f"{point} was never reached:\n{killed.log[-3000:]}"
        assert rerun.exitcode == 0, f"after {point}:\n{rerun.log[-3000:]}"
        assert "Traceback" not in rerun.log, rerun.log[-3000:]

        cells, parents = _runs(folder)
        finished = {name: [r for r in runs if r[0] == "FINISHED"] for name, runs in cells.items()}
        lost_here = sum(1 for name in reference if len(finished.get(name, [])) == 0)
        dup_here = sum(max(len(runs) - 1, 0) for runs in finished.values())
        for name, ((_, expected, final),) in reference.items():
            if len(finished.get(name, [])) != 1:
                continue
            ((_, history, got_final),) = finished[name]
            for key in COMPARED:
                steps = [step for step, _ in history[key]]
                lost_here += len(set(range(1, EPOCHS + 1)) - set(steps))
                dup_here += len(steps) - len(set(steps))
                if history[key] != expected[key]:
                    problems.append(f"{point}: {name} {key} {history[key]} != {expected[key]}")
            if got_final != final:
                problems.append(f"{point}: {name} final metrics {got_final} != {final}")
        running = [name for name, runs in cells.items() for status, *_ in runs if status == "RUNNING"]
        if running or "RUNNING" in parents:
            problems.append(f"{point}: runs left RUNNING: {running} {parents}")
        if {t.state for t in _trials(folder).values()} != {TrialState.COMPLETE}:
            problems.append(f"{point}: the sweep's state is not complete")
        if list((folder / "checkpoints").rglob("set-aside")) or list((folder / "checkpoints").rglob("*.tmp*")):
            problems.append(f"{point}: a checkpoint had to be set aside, or a temporary file was left")
        lost, duplicated = lost + lost_here, duplicated + dup_here
        recovered += not (lost_here or dup_here)
    with capsys.disabled():
        print(f"\n{len(KILL_POINTS)} kill points, {recovered} recovered, {lost} lost, {duplicated} duplicated")
    assert (recovered, lost, duplicated, problems) == (len(KILL_POINTS), 0, 0, [])


@pytest.mark.parametrize(("stop", "workers"), [(signal.SIGINT, 1), (signal.SIGTERM, 2)], ids=["ctrl-c", "sigterm"])
def test_a_stop_ends_in_one_line_with_exit_130_and_the_runs_killed(stop, workers, tiny_npz, tmp_path, write_experiment):
    """Ctrl-C as a terminal sends it (to the sweep alone here: a terminal would reach its workers too), or a
    SIGTERM to the sweep process alone while it and a worker process each train a cell: the worker process is
    stopped too, every run ends KILLED, nothing keeps running."""
    seeds = "[0]" if workers == 1 else "[0, 1]"
    # Cells far longer than the test: none can end before the stop, so each worker is mid-cell once its cell has an
    # epoch checkpoint, however fast or slow the machine (and however long a worker process takes to start).
    epochs = 100_000
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", seeds, epochs))
    command = [sys.executable, str(ROOT / "runner.py"), "sweep", str(path), "--no-progress", "--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Ctrl-C's SIGINT as a terminal delivers it: a test run started in the background by a shell without job
    # control inherits SIGINT ignored, and Python then leaves it ignored in every child it starts.
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "checkpoints").rglob("last.pt"))) < workers:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(stop)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; run the same command to resume"
    assert "Traceback" not in err
    for pid in re.findall(r"\(pid (\d+),", out + err):  # the sweep's worker processes: stopped with it, not orphaned
        assert not Path(f"/proc/{pid}").exists(), f"worker process {pid} still runs after the sweep ended"
    assert workers == 1 or re.search(r"\(pid \d+,", out + err), err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted((r.data.tags[ROLE], r.info.status) for r in runs) == sorted(
        [(ROLE_SWEEP, "KILLED")] + [(ROLE_CELL, "KILLED")] * workers
    )


@pytest.mark.parametrize("device", ["cuda:9", "foo", "cuda"])
def test_a_device_that_does_not_exist_stops_before_anything_is_created(
    device, tiny_npz, tmp_path, write_experiment, capsys, monkeypatch
):
    import torch

    import runner

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the refusals are for devices that do not exist")
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", "[0]"))
    monkeypatch.chdir(tmp_path)
    assert runner.main(["sweep", str(path), "--device", device]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --device: '{device}'") and "allowed" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # no store, no checkpoint folder
