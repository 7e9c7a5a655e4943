"""Joining a sweep: its state in the Optuna storage, bound to the tracking store and checked against it.

The two stores have one job each. The tracking store (MLflow) holds the results: a cell is done when it has a
FINISHED run there. The storage (Optuna) schedules: which cell waits, runs, is done or failed. Its state is
keyed by the tracking store it was made for (``ablation.scheduler.queue.study_name``), and whenever a process joins a
sweep it is checked against the tracking store under the sweep's lock. Where they disagree the tracking store wins,
and one line says what was found and what happens now:

- the storage has no state for this sweep and this store (a new or deleted ``sweeps.db``, another ``--storage``,
  another ``--tracking-uri``): the state is made afresh, and cells whose finished runs the store already holds
  count as done;
- the storage marks cells done whose finished runs the store no longer has (deleted there): they run again;
- the sweep's parent run is gone from the store: a new one takes its place;
- finished runs logged before data identities were part of cell keys, whose dataset digest matches this data:
  re-keyed and counted (``SweepStore.adopt_legacy_runs``).

Both stores are probed first (``ablation.tracking.stores``): an unreachable or read-only one is a one-line error before
anything is created in either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from optuna.trial import TrialState

from ablation.core.console import say
from ablation.core.faults import kill_point
from ablation.data.registry import dataset_entry
from ablation.engine.environment import source_tags
from ablation.experiment.grid import Cell
from ablation.experiment.prepared import PreparedSweep
from ablation.scheduler.queue import CELL, SweepQueue, open_storage, study_name
from ablation.tracking.mlflow_store import SweepStore
from ablation.tracking.names import PARENT_RUN
from ablation.tracking.results import objective
from ablation.tracking.stores import probe_storage, probe_tracking, sqlite_path


def initial_cells(prepared: PreparedSweep) -> list[Cell]:
    """The cells a sweep's state is created with: all of them, or those a planned sweep starts from."""
    if not prepared.experiment.planned:
        return prepared.cells
    # SciPy, which a plain sweep does not need: only for a planned one
    from ablation.scheduler.plan import SweepPlan

    return SweepPlan(prepared).initial_cells()


def find_sweep(prepared: PreparedSweep, storage_url: str, tracking_uri: str) -> tuple[SweepQueue, SweepStore] | None:
    """The sweep's state and tracking store, opened for reading (``status``, ``table``), or None when the storage
    holds no state of this sweep for this tracking store (its state is bound to that store). Creates nothing: a
    SQLite store that is not there is not made, empty, by reading it."""
    if any(path is not None and not path.exists() for path in map(sqlite_path, (storage_url, tracking_uri))):
        return None
    store = SweepStore(tracking_uri, prepared.experiment)
    if store.fingerprint is None:
        return None
    name = study_name(prepared.experiment.name, prepared.key, store.fingerprint)
    try:
        return SweepQueue(open_storage(storage_url), name, url=storage_url), store
    except KeyError:
        return None


def join_sweep(prepared: PreparedSweep, options, say: Callable[[str], None] = say) -> tuple[SweepQueue, SweepStore]:
    """Probe both stores, open them, and create, finish setting up, or join (and check) the sweep."""
    probe_storage(options.storage_url)
    probe_tracking(options.tracking_uri)
    storage = open_storage(options.storage_url, options.heartbeat_interval, options.grace_period)
    store = SweepStore(options.tracking_uri, prepared.experiment, create=True)
    store.run_tags = source_tags(prepared.experiment.source)
    name = study_name(prepared.experiment.name, prepared.key, store.fingerprint)
    checkpoint_dir = Path(options.cell.checkpoint_dir)

    def setup(queue: SweepQueue, new: bool) -> None:
        if new:
            _set_up(queue, store, prepared, options, checkpoint_dir, say)
        else:
            _check(queue, store, prepared, options, say)

    queue = SweepQueue.create_or_join(storage, options.storage_url, name, initial_cells(prepared), setup, say)
    return queue, store


def _set_up(queue: SweepQueue, store: SweepStore, prepared: PreparedSweep, options, checkpoint_dir: Path, say) -> None:
    cells, uri = initial_cells(prepared), options.tracking_uri
    prefix = f"{prepared.experiment.name}:{prepared.key}:"
    others = [
        s.study_name
        for s in queue.storage.get_all_studies()
        if s.study_name.startswith(prefix) and s.study_name != queue.study_name
    ]
    if others:
        say(
            f"[sweep] {options.storage_url} holds this sweep's state for another tracking store, not for {uri}; "
            "a state for this store starts here, and this store's own runs decide what is done"
        )
    adopted, unverified = store.adopt_legacy_runs(
        cells, _array_digest, lambda cell: _move_legacy_checkpoint(checkpoint_dir / prepared.experiment.name, cell)
    )
    if adopted or unverified:
        parts = [f"{adopted} hold this data (same image digest) and count as this sweep's results"] if adopted else []
        if unverified:
            parts.append(f"{unverified} cannot be matched to this data and are left out (their cells train again)")
        say(f"[sweep] of the finished runs logged before cell keys held the data's identity, {'; '.join(parts)}")
    done = _mark_finished(queue, store.cell_runs())
    if done:
        say(f"[sweep] {uri} already holds finished runs of {done} of these {len(cells)} cells; they count as done")
    queue.set_attr("parent_run_id", store.parent_run(prepared.key, len(cells)))
    kill_point("setup.parent")


def _check(queue: SweepQueue, store: SweepStore, prepared: PreparedSweep, options, say) -> None:
    uri = options.tracking_uri
    parent = queue.get_attr("parent_run_id")
    # The storage's state is read before the store's runs: a worker marks a cell COMPLETE only after its run is
    # FINISHED, so a cell done in the storage here has its finished run in what is read next. Read the other way
    # round, a cell finishing between the two reads would look done with no finished run, and run again.
    latest = queue.latest()
    runs = store.cell_runs()
    if not store.parent_exists(parent):
        replacement = store.parent_run(prepared.key, len(initial_cells(prepared)))
        queue.set_attr("parent_run_id", replacement)
        for run in runs.values():
            if run.data.tags.get(PARENT_RUN) == parent:
                store.log_tags(run.info.run_id, {PARENT_RUN: replacement})
        say(f"[sweep] the sweep's parent run {parent} is not in {uri} (deleted?); its cells go under {replacement}")
    finished = {key for key, run in runs.items() if run.info.status == "FINISHED"}
    # A planned sweep's cells are those its state holds (added as it went); a plain sweep's, its experiment's.
    ours = set(latest) if prepared.experiment.planned else {cell.hash for cell in prepared.cells}
    lost = [
        key
        for key, trial in latest.items()
        if trial.state == TrialState.COMPLETE and key not in finished and key in ours
    ]
    if lost:
        queue.retry(lost)
        say(
            f"[sweep] {options.storage_url} marks {len(lost)} cells done that have no finished run in {uri} "
            "(deleted there?); they run again"
        )
    _mark_finished(queue, runs)


def _mark_finished(queue: SweepQueue, runs: dict) -> int:
    """Waiting cells whose finished run the tracking store holds (``runs``: key -> run) are recorded done; returns
    how many."""
    runs = {key: run for key, run in runs.items() if run.info.status == "FINISHED"}
    done = 0
    for trial in queue.trials((TrialState.WAITING,)):
        run = runs.get(trial.user_attrs.get(CELL))
        if run is not None:
            top1 = objective(run)
            done += queue.mark_done(trial, top1, run.info.run_id)
    return done


def _array_digest(cell: Cell) -> str | None:
    """What the runs of the old keys logged as their dataset's digest: the arrays' content hash (None for
    image folders, which were logged without one)."""
    if dataset_entry(cell.arm.config.data.dataset).kind != "arrays":
        return None
    # torch: only to adopt runs from before data identities
    from ablation.scheduler.cell import dataset_input

    return dataset_input(cell)["digest"]


def _move_legacy_checkpoint(folder: Path, cell: Cell) -> None:
    old, new = folder / cell.legacy_hash, folder / cell.hash
    if old.is_dir() and not new.exists():
        with contextlib.suppress(OSError):
            os.replace(old, new)
