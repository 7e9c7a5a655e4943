"""The queue's own queries on Optuna's tables (ablation/scheduler/trial_rows.py), on SQLite and on a real PostgreSQL:
they agree with Optuna's view of the same rows, a claim takes each cell once however many claim together, and the
index they rely on is added where it can be (and its absence is said, not fatal)."""

import contextlib
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from ablation.scheduler import trial_rows
from ablation.scheduler.queue import CELL, NAME, OWNER, SweepQueue, open_storage, this_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweeps.db'}"
    return request.getfixturevalue("postgres_url")()


def _queue(url: str, cells: int) -> SweepQueue:
    storage = open_storage(url)
    optuna.create_study(study_name="s", storage=storage)
    queue = SweepQueue(storage, "s", say=lambda line: None, url=url)
    for i in range(cells):
        queue.study.enqueue_trial({}, user_attrs={CELL: f"cell{i}", NAME: f"name{i}"})
    return queue


def test_the_queries_agree_with_optunas_view_of_the_same_rows(url):
    queue = _queue(url, 5)
    first, second = queue.claim(), queue.claim()
    # Claimed in the order the cells were queued, each with its own attributes.
    assert (first.number, first.cell_hash) == (0, "cell0") and (second.number, second.cell_hash) == (1, "cell1")
    for claim in (first, second):
        trial = queue.storage.get_trial(claim.trial_id)
        assert trial.state == TrialState.RUNNING
        assert abs((datetime.now() - trial.datetime_start).total_seconds()) < 60  # Optuna reads back local time
        assert trial.user_attrs[OWNER] == this_process()

    with queue.storage.scoped_session() as session:
        running = {r.trial_id: r for r in trial_rows.running_trials(session, queue.study_id, OWNER)}
        unfinished = trial_rows.count_unfinished(session, queue.study_id)
    assert (
        set(running)
        == {t._trial_id for t in queue.trials((TrialState.RUNNING,))}
        == {
            first.trial_id,
            second.trial_id,
        }
    )
    for frozen in queue.trials((TrialState.RUNNING,)):
        row = running[frozen._trial_id]
        known, age = queue.heartbeat_age(frozen)  # Optuna's heartbeat table read the way Optuna reads it
        assert known and row.heartbeat_age is not None and abs(row.heartbeat_age - age) < 5
        assert row.owner == this_process() and 0 <= row.started_age < 60
    assert unfinished == queue.unfinished() == len(queue.trials((TrialState.WAITING, TrialState.RUNNING))) == 5

    queue.complete(first, 12.5)
    assert queue.unfinished() == 4
    assert queue.storage.get_trial(first.trial_id).values == [12.5]


def test_a_trial_that_never_beat_nor_said_its_owner_reads_as_such(url):
    queue = _queue(url, 1)
    queue.storage.set_trial_state_values(queue.trials()[0]._trial_id, TrialState.RUNNING)  # a claim cut short
    with queue.storage.scoped_session() as session:
        (row,) = trial_rows.running_trials(session, queue.study_id, OWNER)
    assert row.owner is None and row.heartbeat_age is None and row.started_age is not None
    assert queue.take_back_orphans() == 0  # claimed a moment ago: within the grace period


def test_claims_made_together_take_each_cell_once(url):
    """Eight workers, each with a storage of its own, drain 60 cells at once: every cell is claimed exactly once."""
    _queue(url, 60)
    start, claimed, lock = threading.Barrier(8), [], threading.Lock()

    def worker() -> None:
        queue = SweepQueue(open_storage(url), "s", say=lambda line: None, url=url)
        mine = []
        start.wait()
        while (claim := queue.claim()) is not None:
            mine.append(claim.cell_hash)
            queue.complete(claim, 0.0)
        with lock:
            claimed.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(f"cell{i}" for i in range(60))


def test_two_claims_that_read_together_never_take_one_cell(url, monkeypatch):
    """Both claims' reads are held together whenever the database lets them (a barrier right after the read of the
    first waiting trial). PostgreSQL locks the row the first read returns and the second skips it; SQLite ignores
    FOR UPDATE, where the sweep's own lock keeps the second read until the first claim is written. Without the row
    lock or the sweep's lock, both would read the one waiting cell and both would win."""
    queue = _queue(url, 1)
    other = SweepQueue(open_storage(url), "s", say=lambda line: None, url=url)
    together = threading.Barrier(2)
    read = trial_rows.first_waiting

    def read_together(session, study_id):
        trial = read(session, study_id)
        with contextlib.suppress(threading.BrokenBarrierError):
            together.wait(timeout=2)  # breaks after a moment where the other claim cannot read yet
        return trial

    monkeypatch.setattr(trial_rows, "first_waiting", read_together)
    claims: list = []
    workers = [threading.Thread(target=lambda q=q: claims.append(q.claim())) for q in (queue, other)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(claim is not None for claim in claims) == [False, True], claims
    assert [t.state for t in queue.trials()] == [TrialState.RUNNING]


def test_the_index_is_added_once_and_its_absence_is_said_in_one_line(url, capfd):
    storage = open_storage(url)
    inspector = sqlalchemy.inspect(storage.engine)
    (index,) = [i for i in inspector.get_indexes("trials") if i["name"] == trial_rows.QUEUE_INDEX]
    assert index["column_names"] == ["study_id", "state", "number"]
    open_storage(url)  # a second opening finds it
    assert "could not add an index" not in capfd.readouterr().err

    # Something else holds the index's name: it cannot be added, which is said, and the queue still works.
    with storage.engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"DROP INDEX {trial_rows.QUEUE_INDEX}"))
        connection.execute(sqlalchemy.text(f"CREATE TABLE {trial_rows.QUEUE_INDEX} (x integer)"))
    queue = _queue(url, 2)
    err = capfd.readouterr().err
    assert err.count("[store] could not add an index to the sweep storage") == 1, err
    assert queue.claim().cell_hash == "cell0" and queue.unfinished() == 2


@pytest.mark.slow
def test_the_scale_benchmark_drains_its_queue_without_duplicates():
    """benchmarks/queue_scale.py, small: its own PostgreSQL server, two worker counts, every cell claimed once."""
    result = subprocess.run(
        [sys.executable, "benchmarks/queue_scale.py", "--workers", "2", "6", "--cells", "40", "--processes", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "duplicates: 0", result.stdout
    rows = [line.split() for line in lines[1:-1]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("2", "40", "40"), ("6", "40", "40")], result.stdout
