"""``runner.py sweep``: validate an experiment, then run its cells on every local device slot.

Everything that can be wrong with the input is checked before the sweep's state or any MLflow run is created:
the config of every arm, that every network builds (on the meta device, which also counts its params and MACs),
that the data is there. The sweep's state lives in an Optuna storage (``ablation.scheduler.queue``): one worker runs
in this process, or one worker process per slot (``ablation.scheduler.slots``) pulls cells from it, and workers on other
machines can join with ``runner.py worker``. A rerun starts nothing for finished cells, resumes interrupted ones
and leaves failed ones alone unless asked to retry them.

The worker processes start before this process sets the stores and the sweep up, so that their imports (torch,
MLflow, Optuna: seconds) overlap it instead of following it; each waits for one line on its stdin before it
joins (``launch.wait_for_sweep``), and then opens the stores without creating or checking their tables. A
set-up that fails kills them, untold: they have touched nothing.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field, replace

import torch
from optuna.trial import TrialState

from ablation.core.console import say
from ablation.core.outages import OUTAGE_EXIT, Outage
from ablation.experiment.prepared import PreparedSweep, prepare_sweep
from ablation.scheduler.launch import LOCAL_POLL_S, SWEEP_READY, WorkerOptions, child_environment, worker_command
from ablation.scheduler.state import join_sweep
from ablation.scheduler.worker import refuse_unsupported, run_worker

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
    stopped_workers: int = 0  # worker processes an outage of the machine or a store stopped (each said which)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_sweep(prepared: PreparedSweep, options: WorkerOptions, slots=None, retry_failed: bool = False) -> SweepReport:
    """Run the sweep with ``options`` on ``slots`` (default: one in-process worker)."""
    began = time.perf_counter()
    refuse_unsupported(prepared, options)
    slots = slots or []
    # With --gpus-per-job > 1 every cell is a torchrun launch confined to its slot's GPUs: all workers are
    # processes. Otherwise this process, already warm (imports, validation), is the first slot's worker.
    here = options.gpus_per_job == 1
    # The worker processes start first: their imports (seconds) overlap this process's set-up of the stores and
    # the sweep, and they join when it is done.
    processes = _start_workers(prepared, options, slots[1:] if here else slots)
    try:
        queue, store = join_sweep(prepared, options)
        if retry_failed:
            _retry_failed(prepared, queue)
        counts = _counts(queue)
        total = _total(prepared, queue)
        cells = total()
        say(
            f"[sweep] {prepared.experiment.name}: {_shape(prepared, cells)}: {counts['done']} done, "
            f"{counts['failed']} failed (--retry-failed reruns them), {counts['pending']} to run; state "
            f"{options.storage_url}, tracking {options.tracking_uri}"
        )
        report = SweepReport(total=cells, parent_run_id=queue.get_attr("parent_run_id"))
    except BaseException:
        _abandon(processes)  # told nothing yet, they have touched no store
        raise
    try:
        _release(processes, slots[1:] if here else slots)
        if here:
            worker = _run_here(
                prepared, options, slots[0] if slots else None, queue, store, counts, began, len(slots), total
            )
            report.trained_now, report.train_s = worker.finished, worker.train_s
        _wait_for(processes, prepared, queue, began, total)
        report.stopped_workers = sum(process.returncode == OUTAGE_EXIT for process in processes)
    except (KeyboardInterrupt, Outage) as exc:
        # Ctrl-C (or SIGTERM), or an outage of the machine or a store: the cells in flight were marked KILLED and
        # given back; so is the sweep's parent run. A SIGTERM reaches this process alone: its worker processes are
        # stopped here, in whatever it was doing.
        _stop(processes)
        why = f"stopped: {exc}" if isinstance(exc, Outage) else "interrupted"
        try:
            store.finish(report.parent_run_id, "KILLED", f"{why}; run the same command to resume")
        except Outage as down:
            say(f"[sweep] its parent run {report.parent_run_id} stays RUNNING: {down}")
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


def _retry_failed(prepared: PreparedSweep, queue) -> None:
    failed = queue.failed_cells()
    if prepared.experiment.planned:
        # SciPy, which a plain sweep does not need: only for a planned one
        from ablation.scheduler.plan import SweepPlan

        failed = SweepPlan(prepared).retryable(queue, failed)
    retried = queue.retry(failed)
    if retried:
        say(f"[sweep] {retried} failed cells enqueued again (--retry-failed)")


def _total(prepared: PreparedSweep, queue):
    """The sweep's number of cells, read when needed: a planned sweep's grows as its plan adds cells."""
    if not prepared.experiment.planned:
        return lambda: len(prepared.cells)
    # SciPy, which a plain sweep does not need: only for a planned one
    from ablation.scheduler.plan import SweepPlan

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
    options = replace(options, poll_s=LOCAL_POLL_S)  # the sweep's end waits for it to see every cell done
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


def _stop(processes: list[subprocess.Popen]) -> None:
    """Each worker marks its cell KILLED and gives it back when terminated; wait for that (a worker that Ctrl-C
    reached already ignores the SIGTERM)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _start_workers(prepared, options, slots) -> list[subprocess.Popen]:
    """One ``python -m ablation worker`` process per slot, confined to it by environment variables; each waits, its
    imports done, for ``_release`` (a line on its stdin) before it joins the sweep."""
    options = replace(options, started_by_sweep=True)  # the flag on its command line; it polls LOCAL_POLL_S
    processes = []
    for slot in slots:
        env = {**child_environment(), **slot.environment()}
        name = f"w{slot.index}" + (f"-gpu{','.join(map(str, slot.gpus))}" if slot.gpus else "")
        command = worker_command(prepared.command_args, options, name)
        processes.append(subprocess.Popen(command, env=env, stdin=subprocess.PIPE))
    return processes


def _release(processes: list[subprocess.Popen], slots) -> None:
    """The sweep is set up: its worker processes may join it (and need not create the stores' tables)."""
    for process in processes:
        with contextlib.suppress(OSError):  # one that has died already: _wait_for sees it
            process.stdin.write(SWEEP_READY)
            process.stdin.close()
    if slots:
        say(
            f"[sweep] started {len(slots)} worker processes: "
            + ", ".join(
                f"w{s.index} (pid {p.pid}, GPUs {','.join(map(str, s.gpus)) or 'none'}, {s.threads} threads)"
                for s, p in zip(slots, processes, strict=True)
            )
        )


def _abandon(processes: list[subprocess.Popen]) -> None:
    """Stop worker processes that were never released: waiting on their stdin (or still importing), they have
    not touched either store, so nothing is left half-done."""
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def _wait_for(processes: list[subprocess.Popen], prepared, queue, began: float, total) -> None:
    """Wait for worker processes, with a status line every 10 seconds. A worker that an outage stopped (exit code
    OUTAGE_EXIT: a full disk, a store that stayed away) stops the others: they would meet the same fault cell after
    cell; each gives its cell back, and a rerun resumes the sweep once the cause is gone."""
    start_done, last = _counts(queue)["done"], time.perf_counter()
    while True:
        alive = [p for p in processes if p.poll() is None]
        if not alive:
            return
        if any(p.returncode == OUTAGE_EXIT for p in processes if p not in alive):
            say(f"[sweep] a worker process stopped on an outage; stopping the other {len(alive)}")
            _stop(alive)
            return
        try:  # returns within ~50 ms of the first live process's end: the sweep's own end is not held up
            alive[0].wait(timeout=max(0.0, min(0.5, last + 10 - time.perf_counter())))
            continue
        except subprocess.TimeoutExpired:
            pass
        if time.perf_counter() < last + 10:
            continue
        last = time.perf_counter()
        counts = _counts(queue)
        elapsed = time.perf_counter() - began
        rate = (counts["done"] - start_done) / elapsed
        eta = duration(counts["pending"] / rate) if rate > 0 else "?"
        say(
            f"[sweep] {counts['done']}/{total()} done, {counts['running']} running, "
            f"{counts['failed']} failed | elapsed {duration(elapsed)} | ETA {eta}"
        )
