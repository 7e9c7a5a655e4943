"""``runner.py sweep``: run every cell of an experiment on one device, tracked in MLflow, resumable.

Everything that can be wrong with the input is checked before the first MLflow run is created: the config of
every arm, that every network builds, that the data is there. Then each cell is a self-contained job
(``run_cell``): a rerun skips finished cells (same config hash), resumes interrupted ones from their last epoch
checkpoint in the same MLflow run, and leaves failed ones alone unless asked to retry them.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from ablation.config import Experiment
from ablation.data.sources import check_data, load_arrays
from ablation.grid import Arm, Cell, build_network, expand_arms, expand_cells
from ablation.measure import measure
from ablation.mlflow_store import MlflowTracker, SweepStore
from ablation.train import resolve_device, seed_everything, train_job


@dataclass
class SweepOptions:
    tracking_uri: str
    device: str = "auto"
    checkpoint_dir: Path = Path("checkpoints")
    log_checkpoints: bool = False  # also log each cell's final checkpoint as an MLflow artifact
    retry_failed: bool = False
    progress: bool = True
    workers: int = 4  # DataLoader workers (ImageNet only; small datasets live on the device)
    stop_after_epochs: int | None = None  # end each cell after this many epochs (an interruption, for tests)


@dataclass
class SweepReport:
    total: int
    already_done: int = 0
    finished: int = 0
    interrupted: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # cell name -> reason
    skipped_failed: int = 0
    wall_s: float = 0.0
    train_s: float = 0.0  # pure training time of the cells run by this call (what the harness wraps)
    parent_run_id: str = ""


@dataclass(frozen=True)
class PreparedSweep:
    experiment: Experiment
    arms: list[Arm]
    cells: list[Cell]
    costs: dict[int, tuple[int, int]] = field(default_factory=dict)  # arm index -> (params, MACs)


def prepare_sweep(experiment: Experiment) -> PreparedSweep:
    """Validate everything before any job: configs, networks, data.

    Each network is built on the meta device (no memory, no arithmetic), which both proves it builds (e.g. no
    reduction leaves a block without hidden channels) and counts its params and MACs for the table.
    """
    arms = expand_arms(experiment, check_paths=True)
    costs = {arm.index: measure(lambda arm=arm: build_network(arm), arm.data.image_size) for arm in arms}
    for data in {arm.config.data for arm in arms}:
        check_data(data)
    return PreparedSweep(experiment, arms, expand_cells(experiment, arms), costs)


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def run_sweep(prepared: PreparedSweep, options: SweepOptions) -> SweepReport:
    began = time.perf_counter()
    experiment, cells = prepared.experiment, prepared.cells
    store = SweepStore(options.tracking_uri, experiment)
    parent_id = store.parent_run(cells)
    existing = store.cell_runs()
    report = SweepReport(total=len(cells), parent_run_id=parent_id)
    todo: list[tuple[Cell, str | None]] = []
    for cell in cells:
        run = existing.get(cell.hash)
        status = run.info.status if run else None
        if status == "FINISHED":
            report.already_done += 1
        elif status == "FAILED" and not options.retry_failed:
            report.skipped_failed += 1
        else:
            todo.append((cell, run.info.run_id if run else None))
    _say(
        f"[sweep] {experiment.name}: {len(cells)} cells ({len(prepared.arms)} arms x {len(experiment.seeds)} seeds); "
        f"{report.already_done} already done, {report.skipped_failed} failed before (--retry-failed reruns them), "
        f"{len(todo)} to run; tracking {options.tracking_uri}, parent run {parent_id}"
    )
    costs = prepared.costs
    run_times: list[float] = []
    finalizing: dict[str, Future] = {}
    # Logging a finished cell's artifacts and closing its run happen on a background thread, while the next
    # cell trains: tracking I/O stays off the training path. A cell whose finalisation fails stays RUNNING in
    # MLflow, and the next sweep resumes it from its last (complete) checkpoint and finalises it again.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-finalize") as finalizer:
        for position, (cell, run_id) in enumerate(todo, start=1):
            cell_began = time.perf_counter()
            outcome, train_s = run_cell(cell, store, parent_id, run_id, options, costs[cell.arm.index], finalizer)
            report.train_s += train_s
            if isinstance(outcome, Future):
                finalizing[cell.name] = outcome
                outcome = "finished"
                report.finished += 1
            elif outcome == "interrupted":
                report.interrupted += 1
            else:
                report.failed[cell.name] = outcome
            run_times.append(time.perf_counter() - cell_began)
            elapsed = time.perf_counter() - began
            eta = sum(run_times) / len(run_times) * (len(todo) - position)
            done = report.already_done + report.finished
            _say(
                f"[sweep] {done}/{len(cells)} cells done, {len(report.failed)} failed | elapsed {_duration(elapsed)}"
                f" | ETA {_duration(eta)} | last: {cell.name} -> {outcome.splitlines()[0][:80]}"
            )
    for name, future in finalizing.items():
        if future.exception() is not None:
            report.finished -= 1
            report.failed[name] = f"logging its results failed ({future.exception()}); a rerun finishes it"
    complete = report.already_done + report.finished == len(cells)
    store.finish(parent_id, "FINISHED" if complete else "FAILED" if report.failed else "KILLED")
    report.wall_s = time.perf_counter() - began
    return report


def run_cell(
    cell: Cell,
    store: SweepStore,
    parent_id: str,
    run_id: str | None,
    options: SweepOptions,
    cost: tuple[int, int],
    finalizer: ThreadPoolExecutor | None = None,
) -> tuple[str | Future, float]:
    """Train one cell into its MLflow run (new, or the interrupted one resumed).

    Returns (outcome, pure training seconds); the outcome is "interrupted", a failure reason, or, for a trained
    cell, the Future of its finalisation (final metrics, artifacts, run closed) on ``finalizer`` (inline when
    None, then "finished").
    """
    arm = cell.arm
    if run_id is None:
        arrays = load_arrays(arm.config.data) if arm.config.data.dataset != "imagenet" else None
        dataset = {
            "name": arm.data.name,
            "source": arrays.source if arrays else str(arm.data.path),
            "digest": arrays.digest if arrays else "imagenet-folder",
        }
        run_id = store.start_cell(cell, parent_id, dataset)
    else:
        store.reopen(run_id)
    device = resolve_device(options.device)
    seed_everything(cell.seed, device)
    model = build_network(arm)
    checkpoint = options.checkpoint_dir / store.experiment.name / cell.hash / "last.pt"
    tracker = MlflowTracker(store.client, run_id)
    try:
        result = train_job(
            cell.config,
            model=model,
            info=arm.data,
            device=device,
            checkpoint_path=checkpoint,
            tracker=tracker,
            stop_after_epochs=options.stop_after_epochs,
            progress=options.progress,
            workers=options.workers,
            description=cell.name,
        )
    except KeyboardInterrupt:
        store.finish(run_id, "KILLED", "interrupted by the user (Ctrl-C); a rerun resumes it")
        raise
    except Exception as exc:  # the sweep goes on; the reason is kept on the run
        reason = f"{type(exc).__name__}: {exc}"
        store.finish(run_id, "FAILED", reason + "\n" + traceback.format_exc(limit=8))
        return reason, 0.0
    if not result.completed:
        store.finish(run_id, "KILLED", f"stopped after epoch {len(result.history)}; a rerun resumes it")
        return "interrupted", result.train_time_s
    params, macs = cost
    final = {"final/params": params, "final/gmacs": macs / 1e9, "final/train_time_s": result.train_time_s}
    kept = checkpoint if options.log_checkpoints else None

    def finalize() -> None:
        tracker.log_metrics(final)
        _log_artifacts(cell, store.experiment.name, tracker, result.history, str(device), kept)
        store.finish(run_id, "FINISHED")

    if finalizer is None:
        finalize()
        return "finished", result.train_time_s
    return finalizer.submit(finalize), result.train_time_s


@functools.lru_cache(maxsize=8)
def _environment_json(device: str) -> str:
    """The environment does not change during a sweep: read it (git, package versions) once per device."""
    from ablation.environment import environment

    return json.dumps(environment(device), indent=2, default=str)


def _log_artifacts(
    cell: Cell, experiment: str, tracker: MlflowTracker, history: list[dict], device: str, checkpoint: Path | None
) -> None:
    """The resolved config, the environment and the learning curve (and the checkpoint when asked)."""
    from ablation.plots import learning_curve

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
        (folder / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (folder / "environment.json").write_text(_environment_json(device))
        learning_curve(history, folder / "learning_curve.png", title=cell.name)
        for name in ("config.yaml", "environment.json", "learning_curve.png"):
            tracker.log_artifact(folder / name)
    if checkpoint is not None:
        tracker.log_artifact(checkpoint, "checkpoint")
