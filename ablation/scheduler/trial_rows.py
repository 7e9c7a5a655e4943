"""The queries the sweep queue makes on every claim, written against Optuna's RDB tables.

Optuna's storage API reads a study's trials whole (every trial with its attributes, as Python objects), so a
claim made through it reads the whole queue: claiming N cells costs O(N^2) rows, which at thousands of cells
and hundreds of workers is where a sweep's time goes (``benchmarks/queue_scale.py``). These read only what a
claim needs, in one transaction each:

- the first waiting trial, locked and moved to RUNNING in the same transaction. On PostgreSQL (and MySQL 8)
  ``FOR UPDATE SKIP LOCKED`` lets concurrent claims pass over a row another claim holds instead of queueing
  behind it and then finding it taken; the row is re-checked under its lock, so two claims never take one trial.
  SQLite ignores the clause; there the caller holds the sweep's own lock (``SweepQueue._changing_state``).
- the running trials with their owner and heartbeat (what ``take_back_orphans`` decides from);
- how many trials wait or run, counted by the database;
- one trial's state: the fence a worker reads before it writes anything for its cell (``SweepQueue.ensure_claimed``).

Each of them finds its rows through an index of ours on Optuna's trials table, (study, state, number), which
``index_the_queue`` adds where it is missing (Optuna indexes a trial by its study only, so without it each query
reads every trial of the sweep). An index is no change to the schema Optuna checks: its migrations and queries
neither need nor mind it.

They use Optuna's own ORM models (``optuna.storages._rdb.models``), as Optuna's ``RDBStorage`` does, and change a
trial exactly as its ``set_trial_state_values`` does (state, start time); ``tests/scheduler/test_queue.py``
holds them to Optuna's view of the same rows.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy import orm

QUEUE_INDEX = "ix_ablation_trials_queue"


def index_the_queue(engine: sqlalchemy.engine.Engine) -> None:
    """Add the queue's index to Optuna's trials table unless it is there. Without it the queue still works, only
    its queries read the whole sweep: an account that may not create it (in PostgreSQL only the table's owner
    may) gets one line saying so, not an error. (Plain SQL rather than an ``Index`` on Optuna's model, which
    would add it to Optuna's metadata for every study this process creates.)"""
    if _has_queue_index(engine):
        return
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE INDEX {QUEUE_INDEX} ON trials (study_id, state, number)"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        if not _has_queue_index(engine):  # not another process adding it at the same moment
            reason = (str(exc.orig if hasattr(exc, "orig") else exc).strip().splitlines() or ["?"])[0]
            print(
                f"[store] could not add an index to the sweep storage ({reason[:200]}); claims will read every "
                "trial of the sweep, which is slower with thousands of cells",
                file=sys.stderr,
                flush=True,
            )


def _has_queue_index(engine: sqlalchemy.engine.Engine) -> bool:
    return any(index["name"] == QUEUE_INDEX for index in sqlalchemy.inspect(engine).get_indexes("trials"))


# A trial's start as stored: naive UTC in the Optuna this was written against (``_datetime_start_utc`` behind a
# local-time property), naive local time in older ones.
_START_IN_UTC = hasattr(models.TrialModel, "_datetime_start_utc")
_START = models.TrialModel._datetime_start_utc if _START_IN_UTC else models.TrialModel.datetime_start


@dataclass(frozen=True)
class RunningTrial:
    trial_id: int
    number: int
    owner: str | None  # this_process() of the worker that claimed it, if it said
    heartbeat_age: float | None  # seconds since its last heartbeat by the database's clock; None: never beat
    started_age: float | None  # seconds since it was claimed, by this machine's clock (Optuna's start time)


def take_first_waiting(session: orm.Session, study_id: int) -> tuple[int, int, dict[str, Any]] | None:
    """Move the study's first waiting trial (by number: the order cells were queued in) to RUNNING; returns
    (trial id, number, its user attributes), or None when none waits."""
    trial = first_waiting(session, study_id)  # looked up at call time: the tests hold two claims here
    if trial is None:
        return None
    trial.state = TrialState.RUNNING
    trial.datetime_start = datetime.now()  # as Optuna's set_trial_state_values: local time, stored as UTC
    attrs = {
        row.key: json.loads(row.value_json)
        for row in session.query(models.TrialUserAttributeModel).filter(
            models.TrialUserAttributeModel.trial_id == trial.trial_id
        )
    }
    return trial.trial_id, trial.number, attrs


def first_waiting(session: orm.Session, study_id: int) -> models.TrialModel | None:
    """The study's first waiting trial, its row locked until the transaction ends; one locked by another claim's
    transaction is skipped."""
    return (
        session.query(models.TrialModel)
        .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.WAITING)
        .order_by(models.TrialModel.number)
        .limit(1)
        .with_for_update(skip_locked=True)
        .one_or_none()
    )


def running_trials(session: orm.Session, study_id: int, owner_key: str) -> list[RunningTrial]:
    """The study's running trials with their owner (the user attribute ``owner_key``) and heartbeat.

    Three queries, each through an index (the queue's; heartbeats' and attributes' unique ones on the trial):
    joined in one, PostgreSQL's planner hashed the whole heartbeat table, which holds a row for every cell that
    ever ran, on every claim."""
    trials = (
        session.query(models.TrialModel.trial_id, models.TrialModel.number, _START)
        .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
        .all()
    )
    if not trials:
        return []
    ids = [trial_id for trial_id, _, _ in trials]
    beats = dict(
        session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat).filter(
            models.TrialHeartbeatModel.trial_id.in_(ids)
        )
    )
    attribute = models.TrialUserAttributeModel
    owners = dict(
        session.query(attribute.trial_id, attribute.value_json).filter(
            attribute.trial_id.in_(ids), attribute.key == owner_key
        )
    )
    # The database's clock for heartbeats, which the database stamps (as Optuna's own staleness check reads them).
    now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one().replace(tzinfo=None)
    here_now = datetime.now(timezone.utc).replace(tzinfo=None) if _START_IN_UTC else datetime.now()
    return [
        RunningTrial(
            trial_id,
            number,
            json.loads(owners[trial_id]) if owners.get(trial_id) is not None else None,
            (now - beats[trial_id]).total_seconds() if trial_id in beats else None,
            (here_now - started).total_seconds() if started is not None else None,
        )
        for trial_id, number, started in trials
    ]


def trial_state(session: orm.Session, trial_id: int) -> TrialState | None:
    """The trial's state as the database holds it now (None: no such trial)."""
    return session.query(models.TrialModel.state).filter(models.TrialModel.trial_id == trial_id).scalar()


def count_unfinished(session: orm.Session, study_id: int) -> int:
    """How many of the study's trials wait or run."""
    return (
        session.query(sqlalchemy.func.count(models.TrialModel.trial_id))
        .filter(
            models.TrialModel.study_id == study_id,
            models.TrialModel.state.in_([TrialState.WAITING, TrialState.RUNNING]),
        )
        .scalar()
    )
