"""A sweep worker: claims cells from the sweep's Optuna storage and runs them until none is left.

``runner.py worker`` runs one on any machine that can reach the storage and the MLflow tracking server;
``runner.py sweep`` runs one in-process or starts one per device slot. Every worker runs the same loop:
claim a waiting cell (atomic), keep its heartbeat while it runs, record the outcome; wait while other workers
still run cells (one of them may die, and its cell comes back); stop when every cell is done or failed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import TrialState

from ablation.core.console import say
from ablation.core.errors import ConfigError
from ablation.core.outages import Outage, outage_of
from ablation.experiment.grid import build_network
from ablation.experiment.prepared import PreparedSweep
from ablation.experiment.spec import CellSpec
from ablation.scheduler.cell import CellOutcome, run_cell
from ablation.scheduler.launch import CellLaunch, WorkerOptions, child_environment, run_cell_command, wait_for_sweep
from ablation.scheduler.queue import NAME, WORKER, Claim, ClaimLost, Heartbeat, SweepQueue
from ablation.scheduler.state import join_sweep
from ablation.scheduler.tuning import pruning_callback
from ablation.tracking.mlflow_store import SweepStore
from ablation.tracking.names import EPOCH_TIME, PHASE_TUNE, TRAIN_LOSS, VAL_TOP1_ERR
from ablation.tracking.results import objective
from ablation.tracking.tracker import Tracker

__all__ = ["EpochLines", "WorkerOptions", "WorkerReport", "run_worker"]


@dataclass
class WorkerReport:
    finished: int = 0
    already_done: int = 0  # claimed cells that MLflow already had finished (e.g. from an earlier sweep)
    lost: int = 0  # claims taken back while this worker was cut off, and given to another worker (fencing)
    interrupted: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    train_s: float = 0.0
    outage: Outage | None = None  # what stopped it, when the machine or a store did (ablation.core.outages)


class EpochLines:
    """Any Tracker, with one line printed per epoch beside what it passes on: a worker process's visible progress.

    A resumed cell replays its checkpoint's epochs into the tracker, which keeps what it has: no line for those.
    """

    def __init__(self, inner: Tracker, prefix: str, print_line: Callable[[str], None] | None = None) -> None:
        self.inner, self.prefix = inner, prefix
        self.print_line = print_line or (lambda line: print(line, flush=True))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def has(self, metric: str, step: int | None = None) -> bool:
        return self.inner.has(metric, step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        fresh = step is not None and VAL_TOP1_ERR in metrics and not self.inner.has(VAL_TOP1_ERR, step)
        self.inner.log_metrics(metrics, step)
        if fresh:
            self.print_line(
                f"{self.prefix} epoch {step}: train loss {metrics[TRAIN_LOSS]:.3f}, val top-1 err "
                f"{metrics[VAL_TOP1_ERR]:.2f}% ({metrics[EPOCH_TIME]:.1f}s)"
            )


def run_worker(
    prepared: PreparedSweep,
    options: WorkerOptions,
    queue: SweepQueue | None = None,
    store: SweepStore | None = None,
    on_cell: Callable[[str, str, set[int]], None] | None = None,
) -> WorkerReport:
    """Claim and run cells until none is waiting or running; ``on_cell(name, outcome, logging)`` after each one,
    ``logging`` being the trial ids of this worker's finished cells whose results are still being logged."""
    refuse_unsupported(prepared, options)
    if queue is None or store is None:
        if options.started_by_sweep and not wait_for_sweep(options):
            return WorkerReport()  # the sweep that started it ended before it was set up: nothing to join
        queue, store = join_sweep(prepared, options)
    parent_id = queue.get_attr("parent_run_id")
    cells = {cell.hash: cell for cell in prepared.cells}
    plan = None
    if prepared.experiment.planned:
        from ablation.scheduler.plan import SweepPlan  # and SciPy, which a plain sweep's worker does not need

        plan = SweepPlan(prepared, say)
    report = WorkerReport()
    waiting, finalizing = "", set()  # what it last said it waits for; trials of ours whose results are being logged
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-finalize") as finalizer:
        while report.outage is None:
            claim = queue.claim()
            if claim is None:
                # Read before the plan is asked: once nothing is in flight, the refill sees every cell's final
                # state. Read after it, a cell completing in between (its results logged on the finalizer thread)
                # would end the worker with a seed round or an arm's final runs never queued.
                idle = queue.unfinished() == 0
                if plan is not None and plan.refill(queue, store):
                    continue  # the plan added cells (a tuning trial, final runs, a seed round): claim one
                if idle and plan is not None and queue.unfinished():
                    continue  # another worker's refill queued them after ours looked: claim them too
                if idle:
                    break
                reason = _waiting_for(queue, options.grace_period, finalizing)
                if reason and reason.partition(":")[0] != waiting:  # a line when what it waits for changes
                    say(f"[{options.name}] {reason}")
                    waiting = reason.partition(":")[0]
                # Others still run cells (one may die and its cell come back); or only this worker's own results
                # are being logged, after which a planned sweep may have its next cell at once.
                time.sleep(options.poll_s if reason else min(options.poll_s, 0.2))
                continue
            waiting = ""
            queue.storage.set_trial_user_attr(claim.trial_id, WORKER, options.name)  # runner.py status shows it
            cell = plan.cell(CellSpec.from_json(claim.spec)) if plan and claim.spec else cells[claim.cell_hash]
            beat = Heartbeat(queue.storage, claim.trial_id, options.heartbeat_interval).start()
            try:
                outcome = _run_claimed(cell, claim, prepared, queue, store, parent_id, options, finalizer, plan)
            except ClaimLost as exc:  # the cell is another worker's now: nothing to give back, nothing written
                beat.stop()
                report.lost += 1
                say(f"[{options.name}] {exc}")
                continue
            except BaseException as exc:
                beat.stop()
                stopped = f"the worker stopped: {exc}" if isinstance(exc, Outage) else "the worker was stopped"
                give_back(queue, claim, stopped, options.name)
                raise
            if outcome is None:  # MLflow already had it finished
                beat.stop()
                report.already_done += 1
                continue
            report.train_s += outcome.train_s
            if outcome.status == "finished":
                report.finished += 1
                finalizing.add(claim.trial_id)
                _complete_when_logged(queue, claim, beat, outcome, report, cell.name, finalizing)
            else:
                beat.stop()
                if outcome.status == "interrupted":
                    report.interrupted += 1
                    queue.release(claim, "interrupted on request")
                else:
                    report.failed[cell.name] = outcome.reason
                    queue.fail(claim, outcome.reason)
            if on_cell is not None:
                on_cell(cell.name, outcome.reason or outcome.status, set(finalizing))
            if outcome.status == "interrupted":
                break  # a stop was asked for: do not pick up more work
    if report.outage is not None:  # logging a finished cell's results met an outage: the cell was given back
        raise report.outage
    return report


def give_back(queue: SweepQueue, claim: Claim, reason: str, name: str) -> None:
    """Give a claimed cell back to the queue; if the sweep storage is down, say so: the cell comes back by
    itself once its heartbeat is older than the grace period."""
    try:
        queue.release(claim, reason)
    except Outage as exc:
        say(f"[{name}] could not give its cell back ({exc}); it is taken up again once its heartbeat is stale")


def refuse_unsupported(prepared: PreparedSweep, options: WorkerOptions) -> None:
    """What a planned sweep cannot do yet, as a one-line error before any store is touched."""
    if prepared.experiment.planned and options.gpus_per_job > 1:
        raise ConfigError(
            "--gpus-per-job",
            options.gpus_per_job,
            "a tuned or seed-rule sweep trains each cell on one device (its cells are made as it goes, and a "
            "torchrun launch is given a fixed cell); allowed: 1",
        )


def _waiting_for(queue: SweepQueue, grace_period: int, mine: set[int]) -> str:
    """Why a worker with nothing to claim waits: the cells running elsewhere, how long since each one's worker
    last beat, and when such a cell is taken up ("" when it only waits for its own results to be logged)."""
    running = [t for t in queue.trials((TrialState.RUNNING,)) if t._trial_id not in mine]
    if not running:
        return ""

    def beat(trial) -> str:
        known, age = queue.heartbeat_age(trial)
        return f"last heartbeat {age:.0f}s ago" if known and age is not None else "no heartbeat yet"

    shown = "; ".join(f"{t.user_attrs.get(NAME, '?')} ({beat(t)})" for t in running[:3])
    more = f"; and {len(running) - 3} more" if len(running) > 3 else ""
    return (
        f"no cell to claim; waiting for {len(running)} running elsewhere: {shown}{more}. A cell whose worker is "
        f"silent for {grace_period}s is taken up again"
    )


def _complete_when_logged(
    queue, claim: Claim, beat: Heartbeat, outcome: CellOutcome, report, name: str, finalizing: set[int]
) -> None:
    """Tell the storage the cell is complete once its results are in MLflow (heartbeat kept until then)."""

    def done(future) -> None:
        try:
            error = future.exception() if future is not None else None
            outage = outage_of(error) if error is not None else None
            if isinstance(error, ClaimLost):
                raise error
            if error is None:
                queue.complete(claim, outcome.top1_err)
            elif outage is not None:  # not the cell's fault: a rerun resumes it at its last epoch and logs again
                report.finished -= 1
                report.outage = outage
                beat.stop()
                give_back(queue, claim, f"logging its results stopped: {outage}", name)
            else:
                report.finished -= 1
                report.failed[name] = f"logging its results failed: {error}"
                queue.fail(claim, report.failed[name])
        except ClaimLost as exc:  # taken back while its results were being logged: they are the new owner's to log
            report.finished -= 1
            report.lost += 1
            say(f"[worker] {exc}")
        except Outage as exc:  # the sweep storage is down: the heartbeat going stale gives the cell back
            report.outage = report.outage or exc
        finally:
            beat.stop()
            finalizing.discard(claim.trial_id)

    if outcome.finalizing is None:
        done(None)
    else:
        outcome.finalizing.add_done_callback(done)


def _run_claimed(cell, claim, prepared, queue, store, parent_id, options, finalizer, plan=None) -> CellOutcome | None:
    if cell.hash != claim.cell_hash:  # a spec that no longer makes the cell it was queued as (the code changed)
        return CellOutcome("failed", "", reason=f"its spec now makes cell {cell.hash}, not {claim.cell_hash}")
    existing = store.find_cell(cell.hash)
    if existing is not None and existing.info.status == "FINISHED":
        queue.set_run_id(claim, existing.info.run_id)
        queue.complete(claim, objective(existing))
        return None
    run_id = existing.info.run_id if existing is not None else None
    if options.gpus_per_job > 1:
        return _run_distributed(cell, claim, prepared, queue, store, parent_id, run_id, options)
    wrapper = (lambda t: EpochLines(t, f"[{options.name}] {cell.name}")) if options.epoch_lines else None
    on_epoch, tune_study = None, ""
    if plan is not None and cell.spec.phase == PHASE_TUNE:
        study = plan.study(queue, prepared.arms[cell.arm.index])
        on_epoch, tune_study = pruning_callback(study, cell.spec.trial), study.name
    return run_cell(
        cell,
        store,
        parent_id,
        run_id,
        options.cell,
        _cost(prepared, cell),
        finalizer=finalizer,
        on_run=lambda rid: queue.set_run_id(claim, rid),
        tracker_wrapper=wrapper,
        on_epoch=on_epoch,
        tune_study=tune_study,
        fence=lambda: queue.ensure_claimed(claim, cell.name),
    )


def _cost(prepared: PreparedSweep, cell) -> tuple[int, int]:
    """The network's (params, MACs): its arm's, measured once, unless tuned values changed the network."""
    arm = prepared.arms[cell.arm.index]
    if cell.config.model == arm.config.model:
        return prepared.costs[arm.index]
    from ablation.models.measure import measure  # torch: only to measure a cell that has no measurement yet

    return measure(lambda: build_network(cell.arm), cell.arm.data.image_size)


def _run_distributed(cell, claim, prepared, queue, store, parent_id, run_id, options) -> CellOutcome:
    """One cell on ``gpus_per_job`` processes, launched as torchrun does (rank 0 tracks and checkpoints)."""
    launch = CellLaunch.for_worker(options, cell.hash, parent_id, run_id)
    command = run_cell_command(prepared.command_args, launch, options.gpus_per_job)
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=child_environment())
    run = store.find_cell(cell.hash)
    if run is not None:
        queue.set_run_id(claim, run.info.run_id)
    if result.returncode == 0 and run is not None and run.info.status == "FINISHED":
        top1 = objective(run)
        return CellOutcome("finished", run.info.run_id, time.perf_counter() - began, top1)
    tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
    return CellOutcome("failed", run.info.run_id if run else "", reason=" | ".join(tail) or f"exit {result.returncode}")
