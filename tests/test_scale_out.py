"""Scale-out: slot planning, exactly-once cells with concurrent workers on PostgreSQL, SIGKILL recovery."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from ablation.errors import ConfigError
from ablation.queue import open_storage
from ablation.slots import parse_workers, plan_slots
from tests.conftest import ROOT, tiny_experiment

# ---- slot planning with simulated devices (no GPU needed)


def test_four_gpus_two_cells_per_gpu_two_gpus_per_cell():
    slots = plan_slots(None, num_gpus=4, cpu_count=16, jobs_per_gpu=2, gpus_per_job=2)
    assert [s.gpus for s in slots] == [(0, 1), (2, 3), (0, 1), (2, 3)]
    assert {s.threads for s in slots} == {4}
    assert slots[1].environment()["CUDA_VISIBLE_DEVICES"] == "2,3"
    # Every GPU carries exactly jobs_per_gpu cells.
    load = {g: sum(g in s.gpus for s in slots) for g in range(4)}
    assert load == {0: 2, 1: 2, 2: 2, 3: 2}


def test_one_worker_per_gpu_and_fewer_workers_spread_first():
    assert [s.gpus for s in plan_slots(None, num_gpus=3, cpu_count=12)] == [(0,), (1,), (2,)]
    assert [s.gpus for s in plan_slots(2, num_gpus=2, cpu_count=8, jobs_per_gpu=3)] == [(0,), (1,)]


def test_cpu_workers_split_the_cores_and_see_no_gpu():
    slots = plan_slots(2, num_gpus=0, cpu_count=8)
    assert [(s.gpus, s.threads) for s in slots] == [((), 4), ((), 4)]
    assert slots[0].environment()["CUDA_VISIBLE_DEVICES"] == ""
    assert plan_slots(None, num_gpus=0, cpu_count=8)[0].threads == 8


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(workers=5, num_gpus=4), "--workers"),
        (dict(workers=None, num_gpus=2, gpus_per_job=4), "--gpus-per-job"),
        (dict(workers=None, num_gpus=0, gpus_per_job=2), "--gpus-per-job"),
        (dict(workers=3, num_gpus=0, cpu_count=2), "--workers"),
        (dict(workers=None, num_gpus=1, jobs_per_gpu=0), "--jobs-per-gpu"),
    ],
)
def test_impossible_slot_requests_are_one_line_errors(kwargs, key):
    kwargs.setdefault("cpu_count", 8)
    with pytest.raises(ConfigError) as info:
        plan_slots(**kwargs)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        parse_workers("many")


# ---- real processes


def runner(*args, cwd, env=None, **popen):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(ROOT / "runner.py"), *args], cwd=cwd, env=full_env, text=True, **popen)


def test_unreachable_storage_is_a_one_line_error(tmp_path, tiny_npz, write_experiment):
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", "[0]", epochs=1))
    process = runner(
        "worker",
        str(path),
        "--storage",
        "postgresql+psycopg2://nobody@127.0.0.1:1/none",
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --storage:")


@pytest.mark.slow
def test_three_workers_on_postgresql_run_every_cell_exactly_once(tmp_path, tiny_npz, write_experiment, postgres_url):
    grid = "  model.attention.order: [channel-first, spatial-first, parallel]"
    path = write_experiment(tiny_experiment(tiny_npz, grid, "[0, 1]", epochs=1))
    storage_url, tracking_uri = postgres_url("optuna_sweep"), postgres_url("mlflow_store")
    # Create both schemas before the race: three processes migrating one empty database at once is not the point.
    open_storage(storage_url)
    MlflowClient(tracking_uri).search_experiments()

    common = ["--storage", storage_url, "--tracking-uri", tracking_uri, "--checkpoint-dir", str(tmp_path / "ckpt")]
    workers = [
        runner(
            "worker",
            str(path),
            *common,
            "--name",
            f"w{i}",
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(3)
    ]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], logs

    # Optuna: one trial per cell, all complete: no cell was handed out twice.
    storage = open_storage(storage_url)
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    hashes = [t.user_attrs["cell_hash"] for t in trials]
    assert len(hashes) == len(set(hashes)) == 6
    assert {t.state for t in trials} == {TrialState.COMPLETE}

    # MLflow: one finished run per cell, and each trial points at its cell's run.
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'cell'")
    assert sorted(r.data.tags["ablation.config_hash"] for r in runs) == sorted(hashes)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in runs}
    # The work was shared: more than one worker trained cells.
    assert sum("finished 0 cells" not in log for log in logs) >= 2, logs

    status = runner("status", str(path), "--storage", storage_url, cwd=tmp_path, stdout=subprocess.PIPE)
    out, _ = status.communicate(timeout=120)
    assert "6 cells: 0 pending, 0 running, 6 done, 0 failed" in out


@pytest.mark.slow
def test_sigkilled_worker_cell_is_taken_up_again_and_resumed(tmp_path, tiny_npz, write_experiment):
    """Local default storage (sweeps.db) and MLflow store (mlflow.db) in the working folder."""
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", "[0]", epochs=5))
    fast = ["--heartbeat-interval", "1", "--grace-period", "3", "--no-progress"]
    first = runner("sweep", str(path), *fast, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "checkpoints" / "tiny"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/last.pt")):
        assert first.poll() is None, "the sweep ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (killed,) = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'cell'")
    assert killed.info.status == "RUNNING"  # nobody closed it: the process died

    second = runner("sweep", str(path), *fast, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = second.communicate(timeout=600)[0]
    assert second.returncode == 0, log
    (resumed,) = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'cell'")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "val/top1_err")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5]
    assert len(steps) <= 6  # at most the epoch in flight at the kill was logged twice

    status = runner("status", str(path), cwd=tmp_path, stdout=subprocess.PIPE)
    out, _ = status.communicate(timeout=120)
    assert "1 cells: 0 pending, 0 running, 1 done, 0 failed" in out
    assert " 2 " in out.splitlines()[1]  # two attempts: the killed one and the resumed one

    # A finished sweep starts nothing when run again.
    third = runner("sweep", str(path), "--no-progress", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = third.communicate(timeout=300)[0]
    assert third.returncode == 0 and "0 to run" in log


def test_slurm_writes_a_worker_array_and_refuses_a_local_storage(tmp_path, tiny_npz, write_experiment):
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first, parallel]", "[0, 1]"))
    url = "postgresql+psycopg2://user@db/sweeps"
    out = tmp_path / "array.sh"
    args = ["slurm", str(path), "--storage", url, "--tracking-uri", "http://mlflow:5000", "--out", str(out)]
    process = runner(*args, "--gpus-per-job", "2", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    script = out.read_text()
    assert "#SBATCH --array=0-3" in script  # one worker per cell by default: 2 arms x 2 seeds
    assert "#SBATCH --gpus-per-task=2" in script and "--gpus-per-job 2" in script
    assert f"--storage {url}" in script and "runner.py worker" in script
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    refused = runner("slurm", str(path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and err.startswith("error: --storage")
