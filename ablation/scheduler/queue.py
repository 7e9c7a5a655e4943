"""The sweep's state in an Optuna storage: which cells wait, run, are done or failed, shared by all workers.

Each cell is an Optuna trial enqueued in WAITING state with the cell's config hash as a user attribute. A worker
claims a cell by moving the first waiting trial to RUNNING in one transaction that locks its row (``FOR UPDATE
SKIP LOCKED`` where the database has it, the sweep's own lock on SQLite): of several workers racing for one trial
exactly one wins, on one machine or many, and the others take the next one instead of queueing behind it. A claim
reads only that row and the running ones, never the whole queue (``ablation.scheduler.trial_rows``). (Optuna's
GridSampler alone can hand the same grid point to two workers; a queue of enqueued trials cannot.)

A running worker records a heartbeat for its trial and which process it is (host, boot, pid). When a worker dies
(SIGKILL, preemption, a rebooted node) its heartbeat stops; after the grace period any worker marks the trial
failed and enqueues a copy (``take_back_orphans``), which the next free worker claims and
resumes from the cell's last epoch checkpoint, in the same MLflow run. A worker on the same machine need not wait
for the grace period: it sees that the process is gone and takes the cell up at once. A cell that fails by itself
(an exception, a NaN loss) is told FAIL with its reason and is not retried unless ``--retry-failed`` asks.

A sweep's state is bound to the tracking store its results go to: the study's name holds the sweep's key (its set
of cells, data identities included) and the store's fingerprint (``SweepStore.fingerprint``), so another or a
recreated store starts its own state instead of trusting one that describes runs it does not have. Setting a
sweep up (the study, its cells, the parent run) happens under a lock in the storage (``ablation.tracking.stores``)
and is idempotent: whoever finds it unfinished, because its creator died half-way, finishes it.

Storage: a URL Optuna's RDBStorage accepts. The local default is a SQLite file (``sweeps.db``), which needs no
server; several machines share PostgreSQL (``postgresql+psycopg2://user@host/db``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from ablation.core.errors import StoreError
from ablation.core.faults import kill_point
from ablation.core.patience import StoreWaiter
from ablation.core.stopping import protect
from ablation.experiment.grid import Cell
from ablation.scheduler.trial_rows import (
    count_unfinished,
    index_the_queue,
    running_trials,
    take_first_waiting,
    trial_state,
)
from ablation.tracking.stores import exclusive, is_set_up, sqlite_path, with_busy_timeout

DEFAULT_STORAGE = "sqlite:///sweeps.db"
HEARTBEAT_INTERVAL_S = 15
GRACE_PERIOD_S = 60
STOP_JOIN_S = 5.0
# A connection whose packets go unacknowledged for TCP_USER_TIMEOUT_MS is dropped (libpq's tcp_user_timeout) instead of
# hanging in the kernel's retransmissions for up to ~15 minutes: a worker cut off from the database finds out, says
# so and waits (--store-wait), and reconnects as soon as the link is back rather than after the retransmissions'
# back-off. It also bounds how late a write can land: one sent just before a cut arrives within this time or never.
# With the default heartbeat (15 s) and grace period (60 s) a cell is taken back 45 s after its worker's last write
# at the earliest, so what passed the fence (SweepQueue.ensure_claimed) has landed by then.
TCP_USER_TIMEOUT_MS = 20_000
POSTGRESQL_CONNECT_ARGS = {"connect_timeout": 10, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
CELL, NAME, RUN_ID, FAILURE, OWNER = "cell_hash", "cell_name", "mlflow_run_id", "failure", "owner"
JOBS = "slurm_jobs"  # the sweep's attribute: the Slurm arrays submitted for it (ablation.slurm.submit)
WORKER = "worker"  # the name of the worker that claimed the cell (a Slurm task's is slurm-<array>_<index>)
SPEC = "cell_spec"  # a planned sweep's cell: the CellSpec it was made from (JSON), which any worker rebuilds it from

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and their retry callback are marked experimental (stable since Optuna 2.9); the warning is noise here.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S):
    """An RDBStorage with heartbeats (its schema created under a lock, unless this process's sweep has just done
    it: ``ablation.tracking.stores.mark_set_up``), or a one-line StoreError."""
    engine_kwargs: dict[str, Any] = {}
    if (path := sqlite_path(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if not url.startswith("sqlite"):
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["connect_args"] = POSTGRESQL_CONNECT_ARGS if url.startswith("postgresql") else {}
    # A worker its sweep started opens tables that the sweep has just created or checked, with this same Optuna:
    # no lock, no table creation, no version check.
    known = is_set_up(url)
    schema = (
        contextlib.nullcontext() if known else exclusive(url, "optuna-schema", "creating the sweep storage's tables")
    )
    try:
        # Several worker processes write one SQLite file: they wait for its lock instead of failing at once.
        with schema:
            storage = _ProtectedStorage(
                with_busy_timeout(url),
                engine_kwargs=engine_kwargs,
                skip_compatibility_check=known,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=None),
                skip_table_creation=known,
            )
            if not known:
                index_the_queue(storage.engine)
        storage._waiter = StoreWaiter("the sweep storage", url)
        return storage
    except StoreError:
        raise
    except Exception as exc:  # sqlalchemy.exc.OperationalError, ArgumentError, ImportError of a driver...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreError("--storage", url, f"cannot be used as the sweep's storage ({reason[:300]})") from None


class _ProtectedStorage(RDBStorage):
    """Optuna's RDBStorage whose every public call runs protected from a stop signal (``ablation.core.stopping``):
    a Ctrl-C inside SQLite's driver would leave a claim or a heartbeat half-written and the file locked against
    the clean-up that gives the cell back. And made through the storage's ``StoreWaiter`` (``open_storage`` sets
    it): a database that is down or locked is waited for, bounded and said aloud (``ablation.core.patience``)."""

    _waiter: StoreWaiter | None = None


# Calls that add a row: sent again after a failure that may have reached the database, they could add it twice.
_NOT_IDEMPOTENT = {"create_new_study", "create_new_trial"}


def _patient(method):
    protected_method = protect(method)
    idempotent = method.__name__ not in _NOT_IDEMPOTENT

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self._waiter is None:  # still being set up (RDBStorage.__init__): open_storage reports its errors
            return protected_method(self, *args, **kwargs)
        return self._waiter.call(protected_method, self, *args, idempotent=idempotent, **kwargs)

    return call


for _name, _method in vars(RDBStorage).items():
    if isinstance(_method, types.FunctionType) and not _name.startswith("_"):
        setattr(_ProtectedStorage, _name, _patient(_method))


class ClaimLost(RuntimeError):
    """This worker's claim on a cell was taken back while it was silent (cut off from the sweep storage, paused)
    for longer than the grace period, and the cell was given to another worker: it must write nothing more for the
    cell, neither checkpoint nor results (``SweepQueue.ensure_claimed``)."""


@dataclass(frozen=True)
class Claim:
    trial_id: int
    number: int
    cell_hash: str
    spec: str | None = None  # a planned sweep's cell: its CellSpec as JSON


def study_name(experiment_name: str, key: str, store_fingerprint: str) -> str:
    """The sweep's study: its experiment, its key (``PreparedSweep.key``: its set of cells, or its plan), and the
    tracking store its results go to."""
    return f"{experiment_name}:{key}:{store_fingerprint}"


class SweepQueue:
    """The Optuna study of one sweep (experiment x set of cells x tracking store)."""

    def __init__(self, storage: RDBStorage, study_name: str, say: Callable[[str], None] = print, url: str = "") -> None:
        self.storage, self.study_name, self.say, self.url = storage, study_name, say, url
        self.study = optuna.load_study(study_name=study_name, storage=storage)
        self.study_id = storage.get_study_id_from_name(study_name)
        self._next_orphan_scan = 0.0  # time.monotonic() after which a claim looks for cells to take back

    @classmethod
    def create_or_join(
        cls,
        storage: RDBStorage,
        storage_url: str,
        name: str,
        cells: list[Cell],
        setup: Callable[[SweepQueue, bool], None] | None = None,
        say: Callable[[str], None] = print,
    ) -> SweepQueue:
        """Join the sweep ``name`` of these cells, creating it or finishing an interrupted creation.

        Under the storage's lock for this sweep: the study is created if missing; if it is not marked ready
        (new, or its creator died half-way) every cell without a trial is enqueued once and ``setup(queue,
        True)`` runs (the MLflow side: parent run, what the store already holds); then it is marked ready. A
        ready sweep runs ``setup(queue, False)``, which checks that the state still agrees with the store.
        """
        with exclusive(storage_url, f"sweep:{name}", "setting up this sweep"):
            with contextlib.suppress(optuna.exceptions.DuplicatedStudyError):
                optuna.create_study(study_name=name, storage=storage, direction="minimize")
            queue = cls(storage, name, say, storage_url)
            ready = queue.get_attr("ready") is not None
            if not ready:
                kill_point("setup.created")
                queued = {t.user_attrs.get(CELL) for t in queue.trials()}
                for cell in cells:
                    if cell.hash not in queued:
                        queue.enqueue(cell)
                kill_point("setup.enqueued")
            if setup is not None:
                setup(queue, not ready)
            if not ready:
                queue.set_attr("ready", len(cells))
        return queue

    # ---- attributes shared by the sweep

    def get_attr(self, key: str) -> Any:
        return self.storage.get_study_user_attrs(self.study_id).get(key)

    def set_attr(self, key: str, value: Any) -> None:
        self.storage.set_study_user_attr(self.study_id, key, value)

    # ---- claiming and finishing cells

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def _changing_state(self):
        """Held while a trial's state is read and changed. Optuna checks the state and sets the new one in one
        transaction, reading the row FOR UPDATE: on PostgreSQL that locks the row, but SQLite ignores FOR UPDATE, so
        two workers could both read WAITING and both claim the cell (seen: one cell trained by two workers at once).
        On SQLite the check-and-set therefore runs under a lock of the sweep's own."""
        if sqlite_path(self.url) is None:
            return contextlib.nullcontext()
        return exclusive(self.url, f"state:{self.study_name}")

    def claim(self) -> Claim | None:
        """Atomically take the first waiting cell, or None.

        Cells whose worker died are taken back first (``take_back_orphans``), at most once per heartbeat interval,
        and always before this says there is nothing to claim: a heartbeat changes only that often, and a scan on
        every claim reads every running cell, which with hundreds of workers was most of what a claim read
        (``benchmarks/queue_scale.py``)."""
        scanned = time.monotonic() >= self._next_orphan_scan
        if scanned:
            self.take_back_orphans()
        taken = self._take_first_waiting()
        if taken is None and not scanned and self.take_back_orphans():
            taken = self._take_first_waiting()
        if taken is None:
            return None
        trial_id, number, attrs = taken
        kill_point("claim.won")
        self.storage.record_heartbeat(trial_id)
        self.storage.set_trial_user_attr(trial_id, OWNER, this_process())
        return Claim(trial_id, number, attrs[CELL], attrs.get(SPEC))

    def _take_first_waiting(self) -> tuple[int, int, dict[str, Any]] | None:
        with self._changing_state():
            return self._in_storage(take_first_waiting, self.study_id)

    def take_back_orphans(self) -> int:
        """Running cells that nobody runs any more, taken back (failed and enqueued again, once, whichever worker
        gets there first) with a line saying why: those whose worker was a process on this machine that is gone
        (at once), those whose heartbeat is older than the grace period (a worker elsewhere that died), and those
        claimed by a worker that died before it could beat or say who it was, longer than the grace period ago.

        A worker on this machine whose process lives keeps its cell however late its heartbeat: a loaded machine,
        a stalled disk or a stopped process (Ctrl-Z) delays a beat, and taking a live worker's cell would train it
        twice. The heartbeat is the evidence only where the process cannot be seen.

        Read by index (the running trials, their owner and heartbeat, by the database's clock as Optuna's own
        staleness check): claims make it once per heartbeat interval each, so it reads no more than the cells
        running."""
        me, grace = this_process(), self._grace()
        self._next_orphan_scan = time.monotonic() + (self.storage.heartbeat_interval or HEARTBEAT_INTERVAL_S)
        taken = 0
        for running in self._in_storage(running_trials, self.study_id, OWNER):
            owner, age = running.owner, running.heartbeat_age
            here = owner is not None and same_machine(owner, me)
            if here and not process_alive(owner):
                why = f"process {owner.split('|')[3]} on this machine, which is gone"
            elif here:
                continue
            elif age is not None and age > grace:
                host = owner.split("|")[0] if owner else "an unknown host"
                why = f"a worker on {host} that has been silent for {age:.0f}s (grace period {grace}s)"
            elif owner is None and age is None:
                if running.started_age is not None and running.started_age <= grace:
                    continue
                why = "a worker that died while claiming it"
            else:
                continue
            if (trial := self._fail_and_requeue(running.trial_id)) is not None:
                taken += 1
                name = trial.user_attrs.get(NAME) or trial.user_attrs.get(CELL)
                self.say(f"[sweep] {name} was left running by {why}; taken up again")
        return taken

    def _in_storage(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(session, *args)`` in one transaction of the storage, as its own calls run: protected from a
        stop signal, and waited for while the database is down (``_ProtectedStorage``)."""

        def transaction():
            with _create_scoped_session(self.storage.scoped_session) as session:
                return function(session, *args)

        transaction = protect(transaction)
        waiter = getattr(self.storage, "_waiter", None)
        return transaction() if waiter is None else waiter.call(transaction)

    def heartbeat_age(self, trial: optuna.trial.FrozenTrial) -> tuple[bool, float | None]:
        """(whether it could be told, seconds since the trial's last heartbeat or None if it never had one), by
        the database's clock as Optuna's own staleness check. Optuna has no public reader for heartbeats."""
        try:
            import sqlalchemy
            from optuna.storages._rdb.models import TrialHeartbeatModel

            with self.storage.scoped_session() as session:
                beat = TrialHeartbeatModel.where_trial_id(trial._trial_id, session)
                if beat is None:
                    return True, None
                now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)  # as Optuna does
                return True, (now - beat.heartbeat).total_seconds()
        except Exception:
            return False, None

    def _grace(self) -> int:
        return self.storage.grace_period or GRACE_PERIOD_S

    def _fail_and_requeue(self, trial_id: int) -> optuna.trial.FrozenTrial | None:
        """Fail a running trial and enqueue its cell again; None when another worker took it back first."""
        try:
            with self._changing_state():
                trial = self.storage.get_trial(trial_id)
                if trial.state != TrialState.RUNNING:
                    return None  # another worker took it back first
                self.storage.set_trial_user_attr(trial_id, FAILURE, "released: its worker is gone")
                won = self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return None  # another worker took it back first
        if not won:
            return None
        self.study.enqueue_trial({}, user_attrs=_copied_attrs(trial))
        return trial

    def unfinished(self) -> int:
        """Cells waiting or running anywhere: a worker with nothing to claim waits while this is > 0, because
        a running cell whose worker dies comes back as a waiting one."""
        return self._in_storage(count_unfinished, self.study_id)

    def set_run_id(self, claim: Claim, run_id: str) -> None:
        self.storage.set_trial_user_attr(claim.trial_id, RUN_ID, run_id)

    def ensure_claimed(self, claim: Claim, name: str = "") -> None:
        """The fence a worker passes before each write for its cell (a checkpoint, an epoch's or the final
        results, the run's end): raises ``ClaimLost`` unless the claim's trial is still RUNNING.

        Why this fences: a cell is taken back only by failing its trial (``take_back_orphans``) before a copy is
        queued, and the copy is a new trial, so a worker whose trial is no longer RUNNING has been replaced. A
        worker cut off from the storage cannot pass the fence until it reaches the storage again (the read waits,
        as every call does, ``--store-wait``), and then it reads that it lost the cell; a write to the sweep storage
        sent just before a cut lands within ``TCP_USER_TIMEOUT_MS`` or never. What it cannot cover: a process frozen
        between this read and its write (milliseconds) for longer than the grace period, and writes to other stores
        (MLflow over HTTP retries a request on its own) delivered late after such a freeze."""
        if self._in_storage(trial_state, claim.trial_id) != TrialState.RUNNING:
            raise ClaimLost(
                f"{name or claim.cell_hash}: this worker's claim (trial {claim.number}) was taken back while it was "
                "silent for longer than the grace period and the cell given to another worker; it stops the cell "
                "without writing its checkpoint or results"
            )

    def complete(self, claim: Claim, top1_err: float) -> None:
        try:
            self.storage.set_trial_state_values(claim.trial_id, TrialState.COMPLETE, values=[top1_err])
        except optuna.exceptions.UpdateFinishedTrialError:
            self.ensure_claimed(claim)  # taken back after the last fence: say so as a lost claim
            raise

    def mark_done(self, trial: optuna.trial.FrozenTrial, top1_err: float, run_id: str) -> bool:
        """Record a waiting cell as done without running it (the tracking store holds its finished run)."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        with self._changing_state():
            if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return False
        claim = Claim(trial_id, trial.number, trial.user_attrs[CELL])
        self.set_run_id(claim, run_id)
        self.complete(claim, top1_err)
        return True

    def fail(self, claim: Claim, reason: str) -> None:
        self.storage.set_trial_user_attr(claim.trial_id, FAILURE, reason[:2000])
        self.storage.set_trial_state_values(claim.trial_id, TrialState.FAIL)

    def release(self, claim: Claim, reason: str) -> None:
        """Give a claimed cell back (the worker stops on request): it waits again as a fresh trial."""
        self.fail(claim, f"released: {reason}")
        self.retry([claim.cell_hash])

    def enqueue(self, cell: Cell) -> None:
        """Add ``cell`` to the queue, waiting (with the spec a planned sweep's workers rebuild it from)."""
        attrs = {CELL: cell.hash, NAME: cell.name}
        if cell.spec is not None:
            attrs[SPEC] = cell.spec.to_json()
        self.study.enqueue_trial({}, user_attrs=attrs)

    def retry(self, cell_hashes: Iterable[str]) -> int:
        """Enqueue failed cells again (``--retry-failed``); returns how many."""
        attrs = {}
        for trial in self.trials():  # the newest trial of each cell: its name and spec
            attrs[trial.user_attrs[CELL]] = _copied_attrs(trial)
        count = 0
        for cell_hash in cell_hashes:
            self.study.enqueue_trial({}, user_attrs=attrs.get(cell_hash, {CELL: cell_hash, NAME: ""}))
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


def _copied_attrs(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """What a cell's queued copy carries over from ``trial``: the cell's hash, name and spec."""
    return {k: trial.user_attrs[k] for k in (CELL, NAME, SPEC) if k in trial.user_attrs}


# ---- which process runs a cell


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None when it is gone or a
    zombie: together with the pid it names one process, never a later one that reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def this_process() -> str:
    """host|boot id|pid namespace|pid|start ticks: enough for another process on the same machine (same boot, same
    pid namespace: not another container) to tell whether this one still lives."""
    pid = os.getpid()
    return f"{socket.gethostname()}|{_boot_id()}|{_pid_namespace()}|{pid}|{_start_ticks(pid) or ''}"


def same_machine(owner: str, me: str) -> bool:
    mine, theirs = me.split("|"), owner.split("|")
    return len(theirs) == 5 and all(theirs[:3]) and theirs[:3] == mine[:3]


def process_alive(owner: str) -> bool:
    pid, ticks = owner.split("|")[3:5]
    return pid.isdigit() and _start_ticks(int(pid)) == ticks


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
            # A beat waiting on a storage that is down gives up on a stop request; a daemon thread still writing
            # past this bound is left behind rather than holding up the worker's end.
            self._thread.join(timeout=STOP_JOIN_S)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            # A transient database error must not kill training; the next beat retries.
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
