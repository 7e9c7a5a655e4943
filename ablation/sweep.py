"""``runner.py sweep``: validate an experiment, then run its cells on every local device slot.

Everything that can be wrong with the input is checked before the sweep's state or any MLflow run is created:
the config of every arm, that every network builds (on the meta device, which also counts its params and MACs),
that the data is there. The sweep's state lives in an Optuna storage (``ablation.queue``): one worker runs
in this process, or one worker process per slot (``ablation.slots``) pulls cells from it, and workers on other
machines can join with ``runner.py worker``. A rerun starts nothing for finished cells, resumes interrupted ones
and leaves failed ones alone unless asked to retry them.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field, replace

import torch
from optuna.trial import TrialState

from ablation.console import say
from ablation.prepared import PreparedSweep, prepare_sweep
from ablation.sweep_state import join_sweep
from ablation.worker import refuse_unsupported, run_worker
from ablation.worker_args import WorkerOptions, worker_command

__all__ = ["PreparedSweep", "SweepReport", "prepare_sweep", "run_sweep"]


@dataclass
class SweepReport:
    total: int
    done: int = 0  # cells finished, now or before
    failed: dict[str, str] = field(default_factory=dict)  # cell name -> reason
    pending: int = 0  # cells still waiting or running (e.g. an interrupted sweep)
    trained_now: int = 0
    train_s: float = 0.0  # pure training time of the cells this command's in-process worker ran
    wall_s: float = 0.0
    parent_run_id: str = ""


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_sweep(prepared: PreparedSweep, options: WorkerOptions, slots=None, retry_failed: bool = False) -> SweepReport:
    """Run the sweep with ``options`` on ``slots`` (default: one in-process worker)."""
    began = time.perf_counter()
    refuse_unsupported(prepared, options)
    queue, store = join_sweep(prepared, options)
    if retry_failed:
        failed = queue.failed_cells()
        if prepared.experiment.planned:
            from ablation.plan import SweepPlan

            failed = SweepPlan(prepared).retryable(queue, failed)
        retried = queue.retry(failed)
        if retried:
            say(f"[sweep] {retried} failed cells enqueued again (--retry-failed)")
    counts = _counts(queue)
    total = _total(prepared, queue)
    cells = total()
    say(
        f"[sweep] {prepared.experiment.name}: {_shape(prepared, cells)}: {counts['done']} done, {counts['failed']} "
        f"failed (--retry-failed reruns them), {counts['pending']} to run; state {options.storage_url}, "
        f"tracking {options.tracking_uri}"
    )
    report = SweepReport(total=cells, parent_run_id=queue.get_attr("parent_run_id"))
    slots = slots or []
    try:
        if options.gpus_per_job > 1:
            # Every cell is a torchrun launch confined to its slot's GPUs: all workers are processes.
            _wait_for(_start_workers(prepared, options, slots), prepared, queue, began, total)
        else:
            # This process, already warm (imports, validation), is the first slot's worker; others are processes.
            others = _start_workers(prepared, options, slots[1:])
            worker = _run_here(
                prepared, options, slots[0] if slots else None, queue, store, counts, began, len(slots), total
            )
            report.trained_now, report.train_s = worker.finished, worker.train_s
            _wait_for(others, prepared, queue, began, total)
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM): the cells in flight were marked KILLED and given back; so is the sweep's parent run.
        store.finish(report.parent_run_id, "KILLED", "interrupted; run the same command to resume")
        raise
    counts = _counts(queue)
    report.total = total()
    report.done, report.pending = counts["done"], counts["pending"]
    report.failed = {
        t.user_attrs.get("cell_name", key): t.user_attrs.get("failure", "")
        for key, t in queue.latest().items()
        if t.state == TrialState.FAIL
    }
    finished = report.done == report.total
    store.finish(report.parent_run_id, "FINISHED" if finished else "FAILED" if report.failed else "KILLED")
    report.wall_s = time.perf_counter() - began
    return report


def _total(prepared: PreparedSweep, queue):
    """The sweep's number of cells, read when needed: a planned sweep's grows as its plan adds cells."""
    if not prepared.experiment.planned:
        return lambda: len(prepared.cells)
    from ablation.plan import SweepPlan

    plan = SweepPlan(prepared)
    return lambda: plan.expected_total(queue)


def _shape(prepared: PreparedSweep, total: int) -> str:
    """What the sweep consists of, in words."""
    experiment, arms = prepared.experiment, len(prepared.arms)
    seeds = experiment.seeds
    seeds_text = (
        f"seeds {seeds.min}..{seeds.max} until the CI95 of each difference to the baseline excludes 0"
        if not isinstance(seeds, list)
        else f"{len(seeds)} seeds"
    )
    tune = experiment.tune
    if tune is None and isinstance(seeds, list):
        return f"{total} cells ({arms} arms x {seeds_text})"
    text = f"{total} cells so far ({arms} arms"
    if tune is not None:
        epochs = tune.epochs or prepared.arms[0].config.train.epochs
        text += (
            f"; tuning {tune.trials} trials per arm of {epochs} epochs on a {tune.holdout:g} holdout of the training "
            f"set, then the best values"
        )
        text += " and the default recipe" if tune.compare_default else ""
    return text + f"; {seeds_text})"


def _counts(queue) -> dict[str, int]:
    states = [t.state for t in queue.latest().values()]
    return {
        "done": states.count(TrialState.COMPLETE),
        "failed": states.count(TrialState.FAIL),
        "running": states.count(TrialState.RUNNING),
        "pending": states.count(TrialState.WAITING) + states.count(TrialState.RUNNING),
    }


def _run_here(prepared, options, slot, queue, store, counts, began: float, workers: int, total):
    """The in-process worker, with a sweep line after each of its cells."""
    if slot is not None and slot.gpus:
        options = replace(options, cell=replace(options.cell, device=f"cuda:{slot.gpus[0]}"))
    elif slot is not None:
        torch.set_num_threads(slot.threads)
    to_run, times = counts["pending"], []

    def on_cell(name: str, outcome: str, logging: set[int]) -> None:
        # The sweep's totals, read back from its state: other processes, here or on other machines, finish cells
        # too. A cell of ours whose results are still being logged counts as done already.
        times.append(time.perf_counter())
        latest = queue.latest().values()
        finished = len({t._trial_id for t in latest if t.state == TrialState.COMPLETE} | logging)
        failed = sum(t.state == TrialState.FAIL for t in latest)
        cells = total()  # a planned sweep's reads its queue: once per line
        left = max(cells - finished - failed, 0)
        if workers <= 1:
            # A planned sweep's cells to come are counted by its plan (``left``), not by what was queued at the start.
            queued_left = left if prepared.experiment.planned else min(left, max(to_run - len(times), 0))
            eta = (times[-1] - began) / len(times) * queued_left
        else:
            rate = (finished - counts["done"]) / (times[-1] - began)
            eta = left / rate if rate > 0 else 0.0
        say(
            f"[sweep] {finished}/{cells} cells done, {failed} failed | elapsed "
            f"{duration(times[-1] - began)} | ETA {duration(eta)} | last: {name} -> {outcome.splitlines()[0][:80]}"
        )

    return run_worker(prepared, options, queue, store, on_cell=on_cell)


def _start_workers(prepared, options, slots) -> list[subprocess.Popen]:
    """One ``runner.py worker`` process per slot, confined to it by environment variables."""
    processes = []
    for slot in slots:
        env = {**os.environ, **slot.environment()}
        name = f"w{slot.index}" + (f"-gpu{','.join(map(str, slot.gpus))}" if slot.gpus else "")
        processes.append(subprocess.Popen(worker_command(prepared.command_args, options, name), env=env))
    if slots:
        say(
            f"[sweep] started {len(slots)} worker processes: "
            + ", ".join(f"w{s.index} (GPUs {','.join(map(str, s.gpus)) or 'none'}, {s.threads} threads)" for s in slots)
        )
    return processes


def _wait_for(processes: list[subprocess.Popen], prepared, queue, began: float, total) -> None:
    """Wait for worker processes, with a status line every 10 seconds."""
    start_done, last = _counts(queue)["done"], time.perf_counter()
    try:
        while any(p.poll() is None for p in processes):
            time.sleep(0.5)
            if time.perf_counter() - last >= 10:
                last = time.perf_counter()
                counts = _counts(queue)
                elapsed = time.perf_counter() - began
                rate = (counts["done"] - start_done) / elapsed
                eta = duration(counts["pending"] / rate) if rate > 0 else "?"
                say(
                    f"[sweep] {counts['done']}/{total()} done, {counts['running']} running, "
                    f"{counts['failed']} failed | elapsed {duration(elapsed)} | ETA {eta}"
                )
    except KeyboardInterrupt:
        # Each worker marks its cell KILLED and gives it back when terminated; wait for that before returning.
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
