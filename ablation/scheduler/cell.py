"""One cell (an arm with one seed) as a self-contained job: any worker, on any machine, can run it.

``run_cell`` creates the cell's MLflow child run (or reopens the one an interrupted attempt left), trains it,
resuming from its last epoch checkpoint if there is one, and closes the run as FINISHED (with final metrics and
artifacts), FAILED (with the reason) or KILLED (interrupted; the next attempt resumes it).
``run_distributed_cell`` is the same cell trained by the K processes of a torchrun launch, rank 0 running it.
"""

from __future__ import annotations

import functools
import json
import tempfile
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from ablation.attention.accel import kernel_state
from ablation.core.console import say
from ablation.core.errors import ConfigError
from ablation.core.faults import kill_point
from ablation.core.outages import Outage, outage_of
from ablation.data.registry import dataset_entry
from ablation.data.sources import load_arrays
from ablation.engine.checkpoint import cell_checkpoint, discard_previous
from ablation.engine.distributed import init_from_env
from ablation.engine.environment import source_tags
from ablation.engine.host_memory import host_memory_state
from ablation.engine.threads import thread_state
from ablation.engine.train import NonFiniteLossError, resolve_device, seed_everything, train_job
from ablation.experiment.grid import Cell, build_network
from ablation.experiment.prepared import PreparedSweep
from ablation.scheduler.launch import CellLaunch, CellOptions
from ablation.scheduler.queue import ClaimLost
from ablation.tracking.mlflow_store import MlflowTracker, SweepStore
from ablation.tracking.names import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CURVE_FILE,
    DEVICE,
    ENVIRONMENT_FILE,
    FINAL_GMACS,
    FINAL_PARAMS,
    FINAL_TRAIN_TIME,
    PHASE_TUNE,
    TUNE_PRUNED_AT,
    TUNE_STATE,
    VAL_TOP1_ERR,
)
from ablation.tracking.system_metrics import SystemMetrics
from ablation.tracking.tracker import MemoryTracker, Tracker


@dataclass
class CellOutcome:
    status: str  # "finished", "interrupted" or "failed"
    run_id: str
    train_s: float = 0.0  # pure training + evaluation time spent by this attempt's epochs and earlier ones
    top1_err: float = float("nan")  # last epoch's validation top-1 error
    reason: str = ""  # why it failed
    finalizing: Future | None = None  # final metrics + artifacts + run closed, when run on a background thread
    pruned: bool = False  # a tuning trial its pruner stopped (finished: its record is the epochs it ran)


def checkpoint_path(options: CellOptions, experiment: str, cell: Cell) -> Path:
    return cell_checkpoint(options.checkpoint_dir, experiment, cell.hash)


def dataset_input(cell: Cell) -> dict[str, str]:
    arm = cell.arm
    arrays = load_arrays(arm.config.data) if dataset_entry(arm.config.data.dataset).kind == "arrays" else None
    holdout = cell.config.data.holdout
    return {
        "name": arm.data.name,
        "source": arrays.source if arrays else str(arm.data.path),
        "digest": arrays.digest if arrays else "imagenet-folder",
        # A tuning trial trains and is scored inside the training set: the test set is not read.
        "context": f"train minus a {holdout.fraction:g} holdout + that holdout" if holdout else "train+validation",
    }


def run_cell(
    cell: Cell,
    store: SweepStore,
    parent_id: str,
    run_id: str | None,
    options: CellOptions,
    cost: tuple[int, int],
    *,
    finalizer: ThreadPoolExecutor | None = None,
    on_run: Callable[[str], None] | None = None,
    tracker_wrapper: Callable[[MlflowTracker], Tracker] | None = None,
    dist=None,
    on_epoch: Callable[[list[dict], bool], bool] | None = None,
    tune_study: str = "",
    fence: Callable[[], None] | None = None,
    say: Callable[[str], None] = say,
) -> CellOutcome:
    """Train ``cell`` into its MLflow run: a new one, or ``run_id`` (an interrupted attempt's) reopened.

    ``cost`` is the network's (params, MACs); ``dist`` the rank-0 context of a multi-process cell. With a
    ``finalizer`` the final metrics, artifacts and the closing of the run happen on that executor
    (``CellOutcome.finalizing``) while the caller moves on. A tuning trial passes its pruning as ``on_epoch``
    (``ablation.scheduler.tuning.pruning_callback``) and its arm's study as ``tune_study``; a trial its pruner
    stopped ends FINISHED, tagged PRUNED, with the metrics of the epochs it ran.

    ``fence()`` (a sweep worker's ``SweepQueue.ensure_claimed``) is passed before every write to the cell's
    checkpoint and run: each epoch, the final results, the run's end, whatever that end is. It raises
    ``ClaimLost`` where the cell was taken back and given to another worker, which owns the run and checkpoint
    from then on: the exception goes up with nothing written and the run left as it is.
    """
    fence = fence or (lambda: None)
    reopened = run_id is not None
    if run_id is None:
        run_id = store.start_cell(cell, parent_id, dataset_input(cell), tune_study)
    else:
        store.reopen(run_id)
    kill_point("cell.run_open")
    if on_run is not None:
        on_run(run_id)
    device = resolve_device(options.device)
    store.log_tags(run_id, {DEVICE: device.type})
    seed_everything(cell.seed, device)
    model = build_network(cell.arm)
    checkpoint = checkpoint_path(options, store.experiment.name, cell)
    tracker = MlflowTracker(store.client, run_id, reopened=reopened)
    # System metrics while the cell trains (MLflow's monitor, in a thread; off with MLflow's own setting).
    monitor = SystemMetrics(run_id, store.tracking_uri, resume=reopened, tell=say).start()
    try:
        try:
            result = train_job(
                cell.config,
                model=model,
                info=cell.arm.data,
                device=device,
                checkpoint_path=checkpoint,
                tracker=tracker_wrapper(tracker) if tracker_wrapper else tracker,
                stop_after_epochs=options.stop_after_epochs,
                progress=options.progress,
                workers=options.workers,
                description=cell.name,
                run_id=run_id,
                key=cell.hash,
                on_epoch=on_epoch,
                fence=fence,
                say=say,
                **({"dist": dist} if dist is not None else {}),
            )
        except ClaimLost:
            monitor.stop(publish=False)  # its last samples would land in the run another worker owns now
            raise
        finally:
            monitor.stop()
    except KeyboardInterrupt:
        _mark_killed(store, run_id, "interrupted by the user (Ctrl-C); a rerun resumes it", say)
        raise
    except ClaimLost:
        raise  # the run is another worker's now
    except Exception as exc:
        outage = outage_of(exc)
        if outage is not None:  # the machine's or a store's fault, not a result: the cell is left to resume
            _mark_killed(store, run_id, f"stopped: {outage}", say)
            raise outage from exc
        # A failure of the cell's own: the sweep goes on; the reason is kept on the run and in the sweep's state.
        reason = f"{type(exc).__name__}: {exc}"
        fence()
        if cell.spec is not None and cell.spec.phase == PHASE_TUNE and isinstance(exc, NonFiniteLossError):
            store.log_tags(run_id, {TUNE_STATE: "FAIL"})  # a diverged trial ended: its values do not train
        store.finish(run_id, "FAILED", reason + "\n" + traceback.format_exc(limit=8))
        return CellOutcome("failed", run_id, reason=reason)
    if not result.completed and not result.pruned:
        fence()
        store.finish(run_id, "KILLED", f"stopped after epoch {len(result.history)}; a rerun resumes it")
        return CellOutcome("interrupted", run_id, result.train_time_s)
    params, macs = cost
    final = {FINAL_PARAMS: params, FINAL_GMACS: macs / 1e9, FINAL_TRAIN_TIME: result.train_time_s}
    if result.pruned:  # the epochs it ran are its record: the final metrics of those, and where it stopped
        final.update({**result.final, TUNE_PRUNED_AT: float(len(result.history))})
        store.log_tags(run_id, {TUNE_STATE: "PRUNED"})
        store.client.update_run(run_id, name=f"{cell.name} (pruned at epoch {len(result.history)})")
    elif cell.spec is not None and cell.spec.phase == PHASE_TUNE:
        store.log_tags(run_id, {TUNE_STATE: "COMPLETE"})
    kept = checkpoint if options.log_checkpoints else None

    def finalize() -> None:
        fence()
        tracker.log_metrics(final)
        kill_point("final.metrics")
        log_artifacts(cell, store.experiment.name, tracker, result.history, str(device), kept)
        kill_point("final.artifacts")
        store.finish(run_id, "FINISHED")
        kill_point("final.finished")
        discard_previous(checkpoint)  # only the final checkpoint is read from now on (Grad-CAM)

    outcome = CellOutcome(
        "finished", run_id, result.train_time_s, result.history[-1][VAL_TOP1_ERR], pruned=result.pruned
    )
    if finalizer is None:
        finalize()
    else:
        outcome.finalizing = finalizer.submit(finalize)
    return outcome


def _mark_killed(store: SweepStore, run_id: str, reason: str, say: Callable[[str], None]) -> None:
    """Mark the cell's run KILLED (resumable) if the tracking store lets us; one that is down leaves it RUNNING,
    which the next attempt reopens all the same."""
    try:
        store.finish(run_id, "KILLED", reason)
    except Outage as exc:
        say(f"[cell] its MLflow run {run_id} stays RUNNING: {exc}")


def run_distributed_cell(prepared: PreparedSweep, launch: CellLaunch) -> None:
    """One cell inside a torchrun launch (``runner.py run-cell``; every rank calls this): rank 0 runs ``run_cell``
    into the cell's MLflow run, the other ranks train beside it with a tracker nobody reads (rank 0 alone logs
    and checkpoints). Raises SystemExit on rank 0 when the cell did not finish, so the launch fails."""
    cell = next((c for c in prepared.cells if c.hash == launch.cell_hash), None)
    if cell is None:
        raise ConfigError("--cell", launch.cell_hash, "is not a cell of this experiment")
    base = resolve_device(launch.device)
    ctx = init_from_env(base.type)
    device = f"cuda:{ctx.local_rank}" if base.type == "cuda" else "cpu"
    options = CellOptions(device=device, checkpoint_dir=launch.checkpoint_dir, progress=False)
    if ctx.is_main:
        store = SweepStore(launch.tracking_uri, prepared.experiment, create=True)
        store.run_tags = source_tags(prepared.experiment.source)
        cost = prepared.costs[cell.arm.index]
        outcome = run_cell(cell, store, launch.parent_run, launch.run_id, options, cost, dist=ctx)
        if outcome.status != "finished":
            raise SystemExit(f"cell {outcome.status}: {outcome.reason}")
        return
    seed_everything(cell.seed, resolve_device(device))
    train_job(
        cell.config,
        model=build_network(cell.arm),
        info=cell.arm.data,
        device=resolve_device(device),
        checkpoint_path=checkpoint_path(options, prepared.experiment.name, cell),
        tracker=MemoryTracker(),
        progress=False,
        dist=ctx,
        key=cell.hash,
    )


@functools.lru_cache(maxsize=8)
def _environment(device: str) -> dict:
    """The environment does not change during a sweep: read it (git, package versions) once per device."""
    # torch's build details: only when a cell starts
    from ablation.engine.environment import environment

    return environment(device)


def log_artifacts(
    cell: Cell, experiment: str, tracker: MlflowTracker, history: list[dict], device: str, checkpoint: Path | None
) -> None:
    """The resolved config, the environment and the learning curve (and the checkpoint when asked)."""
    # matplotlib: only when a finished cell's curve is drawn
    from ablation.report.plots import learning_curve

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        resolved = {
            "experiment": experiment,
            "description": cell.arm.description,
            "axes": cell.arm.axes,
            "seed": cell.seed,
            "config_hash": cell.hash,
            "config": cell.config.model_dump(mode="json"),
        }
        if cell.arm.module_source:  # a user's own attention module: {target, file, sha256} of its source file
            resolved["attention_source"] = cell.arm.module_source
        (folder / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
        # The kernels' and malloc's states are not cached with the rest: a sweep's first cell may be a plain arm
        # that never needed the kernels, and both are set by the first training job.
        environment = {
            **_environment(device),
            "cbam_cpu_kernels": kernel_state(),
            "host_memory": host_memory_state(),
            "threads": thread_state(),
        }
        (folder / ENVIRONMENT_FILE).write_text(json.dumps(environment, indent=2, default=str))
        learning_curve(history, folder / CURVE_FILE, title=cell.name)
        for name in (CONFIG_FILE, ENVIRONMENT_FILE, CURVE_FILE):
            tracker.log_artifact(folder / name)
    if checkpoint is not None:
        tracker.log_artifact(checkpoint, CHECKPOINT_DIR)
