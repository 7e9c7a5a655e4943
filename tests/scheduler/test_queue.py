"""The sweep's queue of cells (ablation/scheduler/queue.py) on real processes: a cell left running by a SIGKILLed worker
on another machine is taken up after the grace period and resumed (cold starts: tests/tracking/test_stores.py)."""

import threading
import time

import pytest
from mlflow import MlflowClient

import runner
from ablation.scheduler.queue import OWNER, open_storage
from ablation.tracking.names import ROLE_CELL, VAL_TOP1_ERR, role_filter
from tests.support import processes
from tests.support.tiny import tiny_experiment


@pytest.mark.slow
def test_a_cell_of_a_worker_on_another_machine_is_taken_up_after_the_grace_period(
    tmp_path, tiny_npz, write_experiment, capsys, monkeypatch
):
    """Local default storage (sweeps.db) and MLflow store (mlflow.db) in the working folder. The sweep is SIGKILLed
    mid-cell (right after its second epoch's checkpoint) and its claim made to look like another machine's, whose
    process nobody here can see. While that machine's worker still beats, the rerun says what it waits for; once it
    falls silent, the rerun takes the cell up after the grace period and resumes it."""
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", "[0]", epochs=5))
    argv = ["sweep", str(path), "--heartbeat-interval", "1", "--grace-period", "3", "--no-progress"]
    one = {"OMP_NUM_THREADS": "1"}
    first = processes.run(argv, tmp_path, tmp_path / "first.txt", {**one, "ABLATION_KILL_AT": "epoch.checkpointed@2"})
    assert processes.was_killed(first), first.log[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (killed,) = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL))
    assert killed.info.status == "RUNNING"  # nobody closed it: the process died
    storage = open_storage(f"sqlite:///{tmp_path / 'sweeps.db'}")
    (running,) = [
        t for t in storage.get_all_trials(storage.get_all_studies()[0]._study_id) if t.state.name == "RUNNING"
    ]
    storage.set_trial_user_attr(running._trial_id, OWNER, "gpu-node-7|other-boot|4026531836|4242|99")

    # The other machine's worker lives on (it beats) until the rerun has said that it waits for it.
    alive = threading.Event()
    alive.set()

    def beat() -> None:
        while alive.is_set():
            storage.record_heartbeat(running._trial_id)
            time.sleep(0.2)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    second_log = tmp_path / "second.txt"
    second = processes.start(argv, tmp_path, second_log, one)
    try:
        deadline = time.monotonic() + 600
        while "waiting for 1 running elsewhere" not in (second_log.read_text() if second_log.exists() else ""):
            assert second.is_alive(), second_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the rerun never said what it waits for"
            time.sleep(0.1)
    finally:
        alive.clear()  # the other machine's worker dies
        beating.join()
    second.join(600)
    second = processes.finished(second, second_log)
    assert second.exitcode == 0, second.log[-3000:]
    # It says what it waits for and why, then why it takes the cell up.
    assert "waiting for 1 running elsewhere: ResNet18" in second.log and "is silent for 3s" in second.log
    assert "was left running by a worker on gpu-node-7 that has been silent for" in second.log
    (resumed,) = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL))
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, VAL_TOP1_ERR)]
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


def test_every_call_to_the_sweep_storage_is_protected_from_a_stop(tmp_path):
    """A claim or a heartbeat is never cut in two by Ctrl-C (ablation/core/stopping.py): every public method of the
    storage the sweep opens runs protected, the write finished before the KeyboardInterrupt comes (the mechanism
    itself: tests/core/test_stopping.py)."""
    from optuna.storages import RDBStorage

    storage = open_storage(f"sqlite:///{tmp_path / 'sweeps.db'}")
    public = [name for name in vars(RDBStorage) if not name.startswith("_") and callable(getattr(RDBStorage, name))]
    assert public and all(hasattr(getattr(type(storage), name), "__wrapped__") for name in public)


def test_a_claim_taken_back_fails_its_fence_and_cannot_complete(tmp_path):
    """Taking a cell back fails its trial before queueing a copy: the old claim's fence (read before each write)
    raises from then on, and so does completing it, while the copy's claim passes."""
    import optuna

    from ablation.scheduler.queue import CELL, NAME, ClaimLost, SweepQueue

    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    optuna.create_study(study_name="s", storage=open_storage(url))
    queue = SweepQueue(open_storage(url), "s", say=lambda line: None, url=url)
    queue.study.enqueue_trial({}, user_attrs={CELL: "abc", NAME: "cell"})
    stale = queue.claim()
    queue.ensure_claimed(stale)  # still ours: passes
    assert queue._fail_and_requeue(stale.trial_id) is not None  # what take_back_orphans does to a silent worker's
    with pytest.raises(ClaimLost, match=r"cell: this worker's claim \(trial 0\) was taken back"):
        queue.ensure_claimed(stale, "cell")
    with pytest.raises(ClaimLost):
        queue.complete(stale, 1.0)
    fresh = queue.claim()
    assert fresh.cell_hash == "abc" and fresh.trial_id != stale.trial_id
    queue.ensure_claimed(fresh)
    queue.complete(fresh, 1.0)
    assert [t.state.name for t in queue.trials()] == ["FAIL", "COMPLETE"]
