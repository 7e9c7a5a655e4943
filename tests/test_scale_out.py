"""Scale-out: slot planning, SIGKILL recovery of a worker, the Slurm script (cold starts: tests/test_stores.py)."""

import os
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

import runner
from ablation.errors import ConfigError
from ablation.queue import OWNER, open_storage
from ablation.slots import parse_workers, plan_slots
from tests import processes
from tests.conftest import tiny_experiment

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
    # A user's OMP_NUM_THREADS caps each worker's threads (a shared machine), not the number of workers.
    assert [s.threads for s in plan_slots(2, num_gpus=0, cpu_count=8, thread_cap=1)] == [1, 1]
    assert [s.threads for s in plan_slots(2, num_gpus=0, cpu_count=8, thread_cap=16)] == [4, 4]


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


@pytest.mark.slow
def test_a_cell_of_a_worker_on_another_machine_is_taken_up_after_the_grace_period(
    tmp_path, tiny_npz, write_experiment, capsys, monkeypatch
):
    """Local default storage (sweeps.db) and MLflow store (mlflow.db) in the working folder. The sweep is SIGKILLed
    mid-cell and its claim made to look like another machine's, whose process nobody here can see: the rerun says
    what it waits for, takes the cell up once its heartbeat is older than the grace period, and resumes it."""
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", "[0]", epochs=5))
    argv = ["sweep", str(path), "--heartbeat-interval", "1", "--grace-period", "3", "--no-progress"]
    one = {"OMP_NUM_THREADS": "1"}
    first = processes.start(argv, tmp_path, tmp_path / "first.txt", one)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "checkpoints" / "tiny").glob("*/last.pt")):
        assert first.is_alive(), "the sweep ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.join()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (killed,) = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'cell'")
    assert killed.info.status == "RUNNING"  # nobody closed it: the process died
    storage = open_storage(f"sqlite:///{tmp_path / 'sweeps.db'}")
    (running,) = [
        t for t in storage.get_all_trials(storage.get_all_studies()[0]._study_id) if t.state.name == "RUNNING"
    ]
    storage.set_trial_user_attr(running._trial_id, OWNER, "gpu-node-7|other-boot|4026531836|4242|99")

    second = processes.run(argv, tmp_path, tmp_path / "second.txt", one)
    assert second.exitcode == 0, second.log[-3000:]
    # It says what it waits for and why, then why it takes the cell up.
    assert "waiting for 1 running elsewhere: ResNet18" in second.log and "is silent for 3s" in second.log
    assert "was left running by a worker on gpu-node-7 that has been silent for" in second.log
    (resumed,) = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'cell'")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "val/top1_err")]
    assert steps == [1, 2, 3, 4, 5]  # each epoch once, the one in flight at the kill included

    monkeypatch.chdir(tmp_path)  # status and sweep read the default stores of the working folder
    capsys.readouterr()
    assert runner.main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 cells: 0 pending, 0 running, 1 done, 0 failed" in out
    assert " 2 " in out.splitlines()[1]  # two attempts: the killed one and the resumed one
    # A finished sweep starts nothing when run again.
    assert runner.main(["sweep", str(path), "--no-progress"]) == 0
    assert "0 to run" in capsys.readouterr().err


def test_slurm_writes_a_worker_array_and_refuses_a_local_storage(tmp_path, tiny_npz, write_experiment, capsys):
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first, parallel]", "[0, 1]"))
    url = "postgresql+psycopg2://user@db/sweeps"
    out = tmp_path / "array.sh"
    args = ["slurm", str(path), "--storage", url, "--tracking-uri", "http://mlflow:5000", "--out", str(out)]
    assert runner.main([*args, "--gpus-per-job", "2"]) == 0
    script = out.read_text()
    assert "#SBATCH --array=0-3" in script  # one worker per cell by default: 2 arms x 2 seeds
    assert "#SBATCH --gpus-per-task=2" in script and "--gpus-per-job 2" in script
    assert f"--storage {url}" in script and "runner.py worker" in script
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    capsys.readouterr()
    assert runner.main(["slurm", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: --storage")
