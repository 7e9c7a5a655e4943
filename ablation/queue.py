"""The sweep's state in an Optuna storage: which cells wait, run, are done or failed, shared by all workers.

Each cell is an Optuna trial enqueued in WAITING state with the cell's config hash as a user attribute. A worker
claims a cell by moving its trial from WAITING to RUNNING, which Optuna's storage does atomically (a database
row update in a transaction): of several workers racing for one trial exactly one wins, on one machine or many.
(Optuna's GridSampler alone can hand the same grid point to two workers; a queue of enqueued trials cannot.)

A running worker records a heartbeat for its trial. When a worker dies (SIGKILL, preemption, a rebooted node)
its heartbeat stops; after the grace period any worker marks the trial failed and Optuna's
``RetryHeartbeatStaleTrialCallback`` enqueues a copy, which the next free worker claims and resumes from the
cell's last epoch checkpoint, in the same MLflow run. A cell that fails by itself (an exception, a NaN loss) is
told FAIL with its reason and is not retried unless ``--retry-failed`` asks.

Storage: a URL Optuna's RDBStorage accepts. The local default is a SQLite file (``sweeps.db``), which needs no
server; several machines share PostgreSQL (``postgresql+psycopg2://user@host/db``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from ablation.errors import ConfigError
from ablation.grid import Cell, sweep_key

DEFAULT_STORAGE = "sqlite:///sweeps.db"
HEARTBEAT_INTERVAL_S = 15
GRACE_PERIOD_S = 60
CELL, NAME, RUN_ID, FAILURE = "cell_hash", "cell_name", "mlflow_run_id", "failure"

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and their retry callback are marked experimental (stable since Optuna 2.9); the warning is noise here.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S):
    """An RDBStorage with heartbeats, or a one-line ConfigError when ``url`` cannot be reached."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        # Several worker processes write one SQLite file: wait for the lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=None),
        )
    except Exception as exc:  # sqlalchemy.exc.OperationalError, ArgumentError, ImportError of a driver...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError("--storage", url, f"cannot be reached or is not a database URL ({reason[:200]})") from None


@dataclass(frozen=True)
class Claim:
    trial_id: int
    number: int
    cell_hash: str


class SweepQueue:
    """The Optuna study of one sweep (experiment x set of cells)."""

    def __init__(self, storage: RDBStorage, study_name: str) -> None:
        self.storage, self.study_name = storage, study_name
        self.study = optuna.load_study(study_name=study_name, storage=storage)
        self.study_id = storage.get_study_id_from_name(study_name)

    @classmethod
    def create_or_join(cls, storage: RDBStorage, experiment_name: str, cells: list[Cell], setup=None) -> SweepQueue:
        """Join the sweep of these cells, creating it (and enqueueing every cell once) if nobody has.

        Exactly one process creates the study (the name is unique in the storage); it enqueues the cells and runs
        ``setup(queue)`` (e.g. creating the MLflow parent run), then marks the study ready. Everyone else waits
        for that mark, so no cell is ever enqueued twice.
        """
        name = f"{experiment_name}:{sweep_key(cells)}"
        try:
            optuna.create_study(study_name=name, storage=storage, direction="minimize")
        except optuna.exceptions.DuplicatedStudyError:
            queue = cls(storage, name)
            queue._wait_ready()
            return queue
        queue = cls(storage, name)
        for cell in cells:
            queue.study.enqueue_trial({}, user_attrs={CELL: cell.hash, NAME: cell.name})
        if setup is not None:
            setup(queue)
        queue.study.set_user_attr("ready", len(cells))
        return queue

    def _wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while "ready" not in self.storage.get_study_user_attrs(self.study_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sweep {self.study_name} was created but never made ready (its creator died?)")
            time.sleep(0.5)

    # ---- attributes shared by the sweep

    def get_attr(self, key: str) -> Any:
        return self.storage.get_study_user_attrs(self.study_id).get(key)

    def set_attr(self, key: str, value: Any) -> None:
        self.storage.set_study_user_attr(self.study_id, key, value)

    # ---- claiming and finishing cells

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def claim(self) -> Claim | None:
        """Atomically take a waiting cell (after re-enqueueing those whose worker died), or None."""
        fail_stale_trials(self.study)
        for trial in self.trials((TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            try:
                won = self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            except optuna.exceptions.UpdateFinishedTrialError:
                won = False
            if won:
                self.storage.record_heartbeat(trial_id)
                return Claim(trial_id, trial.number, trial.user_attrs[CELL])
        return None

    def unfinished(self) -> int:
        """Cells waiting or running anywhere: a worker with nothing to claim waits while this is > 0, because
        a running cell whose worker dies comes back as a waiting one."""
        return len(self.trials((TrialState.WAITING, TrialState.RUNNING)))

    def set_run_id(self, claim: Claim, run_id: str) -> None:
        self.storage.set_trial_user_attr(claim.trial_id, RUN_ID, run_id)

    def complete(self, claim: Claim, top1_err: float) -> None:
        self.storage.set_trial_state_values(claim.trial_id, TrialState.COMPLETE, values=[top1_err])

    def fail(self, claim: Claim, reason: str) -> None:
        self.storage.set_trial_user_attr(claim.trial_id, FAILURE, reason[:2000])
        self.storage.set_trial_state_values(claim.trial_id, TrialState.FAIL)

    def release(self, claim: Claim, reason: str) -> None:
        """Give a claimed cell back (the worker stops on request): it waits again as a fresh trial."""
        self.fail(claim, f"released: {reason}")
        self.retry([claim.cell_hash])

    def retry(self, cell_hashes: Iterable[str]) -> int:
        """Enqueue failed cells again (``--retry-failed``); returns how many."""
        names = {t.user_attrs[CELL]: t.user_attrs.get(NAME, "") for t in self.trials()}
        count = 0
        for cell_hash in cell_hashes:
            self.study.enqueue_trial({}, user_attrs={CELL: cell_hash, NAME: names.get(cell_hash, "")})
            count += 1
        return count

    def latest(self) -> dict[str, optuna.trial.FrozenTrial]:
        """cell hash -> its newest trial (a retried cell's copy supersedes the failed original)."""
        newest: dict[str, optuna.trial.FrozenTrial] = {}
        for trial in self.trials():
            key = trial.user_attrs.get(CELL)
            if key is not None and (key not in newest or trial.number > newest[key].number):
                newest[key] = trial
        return newest

    def failed_cells(self) -> list[str]:
        return [key for key, trial in self.latest().items() if trial.state == TrialState.FAIL]


class Heartbeat:
    """Records the claimed trial's heartbeat every ``interval`` seconds on a daemon thread while a cell runs."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            # A transient database error must not kill training; the next beat retries.
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
