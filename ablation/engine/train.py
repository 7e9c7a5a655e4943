"""Training one job (an arm with one seed), the unit a sweep hands to any worker: on one device, or on K together.

``train_job`` builds the network and data from a ``RunConfig``, trains with the configured recipe, evaluates
top-1 / top-5 error after every epoch, checkpoints after every epoch and resumes exactly from the last
checkpoint: a job interrupted after epoch k and started again ends with the same metrics as one that ran
straight through (same seed, same device). Metrics leave only through a ``Tracker``.

Data parallelism: called in each of K processes with ``dist=init_from_env(...)`` (``ablation.engine.distributed``), it
trains one job with DistributedDataParallel. ``train.batch_size`` stays the global batch, so a recipe means the
same for any K; each rank trains on its 1/K of every global batch, and metrics are sums all-reduced over ranks,
so every rank sees the global numbers. Rank 0 alone logs, checkpoints and shows progress. Checkpoints hold the
unwrapped network's state dict, so a job checkpointed by K processes resumes on 1 and vice versa.

BatchNorm under DDP: on CUDA it becomes SyncBatchNorm (statistics over the global batch, as one process would
compute them). On the CPU it stays plain BatchNorm because ``SyncBatchNorm.forward`` refuses CPU tensors in
training mode ("expected input tensor to be on GPU"): the CPU path normalises with per-rank statistics of
``batch_size // K`` images, so it matches single-process training exactly only for networks without BN in
training mode. Running statistics are then rank 0's (DDP broadcasts rank 0's buffers before every forward,
and ``train_job`` again before evaluating).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ablation.attention.accel import accelerate
from ablation.core.console import say
from ablation.core.errors import ConfigError
from ablation.core.faults import kill_point
from ablation.data.catalog import DatasetInfo
from ablation.data.loaders import FolderLoader, make_loaders
from ablation.data.memory import InMemoryLoader
from ablation.engine.checkpoint import load_checkpoint, load_resumable, restore_rng_state, rng_state, save_checkpoint
from ablation.engine.distributed import (
    SINGLE,
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    broadcast_object,
)
from ablation.engine.host_memory import keep_freed_memory
from ablation.engine.metrics import topk_correct
from ablation.experiment.schema import RunConfig, TrainConfig, config_hash
from ablation.tracking.names import (
    EPOCH,
    EPOCH_METRICS,
    EPOCH_TIME,
    FINAL_EPOCHS,
    FINAL_TOP1_ERR_BEST,
    FINAL_TOP1_ERR_LAST,
    FINAL_TOP5_ERR_BEST,
    FINAL_TOP5_ERR_LAST,
    FINAL_VAL_LOSS_LAST,
    LR,
    THROUGHPUT,
    TRAIN_LOSS,
    TRAIN_TOP1_ERR,
    VAL_LOSS,
    VAL_TOP1_ERR,
    VAL_TOP5_ERR,
)
from ablation.tracking.tracker import Tracker


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the job has failed and says when."""


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    completed: bool  # False when stopped early: on request (stop_after_epochs) or pruned
    train_time_s: float  # pure training + evaluation time over all epochs, resumed ones included
    resumed_from_epoch: int = 0
    final: dict[str, float] = field(default_factory=dict)
    pruned: bool = False  # stopped because ``on_epoch`` said so (a tuning trial its pruner stopped)


def resolve_device(spec: str = "auto") -> torch.device:
    """The device ``--device`` names, or a one-line ConfigError when it does not exist here (checked before any
    store is touched: a sweep must not create runs that no device can train)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    allowed = "auto, cpu" + (f", cuda, cuda:0..cuda:{gpus - 1}" if gpus else "")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError("--device", spec, f"is not a device name; allowed here: {allowed}") from None
    if device.type == "cuda" and not gpus:
        raise ConfigError("--device", spec, f"CUDA is not available here; allowed: {allowed}")
    if device.type == "cuda" and device.index is not None and device.index >= gpus:
        raise ConfigError("--device", spec, f"this machine has {gpus} GPU(s); allowed: {allowed}")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("--device", spec, f"the harness trains on CPU or CUDA devices; allowed here: {allowed}")
    return device


def amp_dtype(train: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: "auto" is bf16 on GPUs that support it, fp16 on older GPUs, off on the CPU."""
    if train.amp == "off" or (train.amp == "auto" and device.type != "cuda"):
        return None
    if train.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if train.amp == "bf16" else torch.float16


def use_channels_last(train: TrainConfig, device: torch.device) -> bool:
    """NHWC pays on GPUs with tensor cores (cuDNN's fast convolutions are NHWC); on the CPU it does not."""
    return train.channels_last == "on" or (train.channels_last == "auto" and device.type == "cuda")


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
        # Same seed, same GPU -> same numbers: no autotuned (nondeterministic) kernels.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on every parameter, BN and biases included, as the official train_imagenet.py.
    return torch.optim.SGD(
        model.parameters(),
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
    )


def lr_factor(train: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based), applied per step."""
    epoch = step / steps_per_epoch  # fractional epoch
    warmup = train.warmup_epochs
    if warmup and epoch < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if train.schedule == "step":
        return train.gamma ** int(epoch // train.step_size)
    if train.schedule == "cosine":
        progress = (epoch - warmup) / max(train.epochs - warmup, 1e-9)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def _evaluate(model: nn.Module, loader, criterion, autocast, dist: DistContext = SINGLE) -> dict[str, float]:
    """Validation loss and top-1 / top-5 error over the whole set: each rank evaluates its shard, and the
    sums and counts (not the per-rank means, whose shards may differ in size) are added over ranks."""
    model.eval()
    # [loss sum, top-1 correct, top-5 correct, images]: one all-reduce for all of them. float64 counts are
    # exact up to 2**53 images.
    totals = torch.zeros(4, dtype=torch.float64, device=next(model.parameters()).device)
    with torch.no_grad():
        for images, labels in loader:
            with autocast():
                logits = model(images)
            totals[0] += criterion(logits.float(), labels).double() * len(labels)
            totals[1:3] += topk_correct(logits.float(), labels, (1, 5)).double()
            totals[3] += len(labels)
    loss_sum, correct1, correct5, seen = all_reduce_sum(totals, dist).tolist()
    return {
        VAL_LOSS: loss_sum / seen,
        VAL_TOP1_ERR: 100.0 * (1.0 - correct1 / seen),
        VAL_TOP5_ERR: 100.0 * (1.0 - correct5 / seen),
    }


def final_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Last and best top-1 / top-5 error. Tables use the last epoch: the best epoch is picked on the
    validation set itself and so is optimistically biased."""
    last = history[-1]
    return {
        FINAL_TOP1_ERR_LAST: last[VAL_TOP1_ERR],
        FINAL_TOP5_ERR_LAST: last[VAL_TOP5_ERR],
        FINAL_TOP1_ERR_BEST: min(h[VAL_TOP1_ERR] for h in history),
        FINAL_TOP5_ERR_BEST: min(h[VAL_TOP5_ERR] for h in history),
        FINAL_VAL_LOSS_LAST: last[VAL_LOSS],
        FINAL_EPOCHS: float(last[EPOCH]),
    }


def train_job(
    config: RunConfig,
    *,
    model: nn.Module,
    info: DatasetInfo,
    device: torch.device,
    checkpoint_path: Path,
    tracker: Tracker,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    workers: int = 4,
    description: str = "",
    dist: DistContext | None = None,
    run_id: str | None = None,
    key: str | None = None,
    on_epoch: Callable[[list[dict[str, float]], bool], bool] | None = None,
    fence: Callable[[], None] | None = None,
    say: Callable[[str], None] = say,
) -> TrainResult:
    """Train ``model`` (freshly built under ``seed_everything(config.seed)``) as ``config`` says.

    Resumes from ``checkpoint_path`` if it holds a checkpoint of this job (its config and data) written for ``run_id``,
    the MLflow run this attempt logs to (None: any); a checkpoint that does not load or is not this job's is moved aside
    with a line to ``say`` (``ablation.engine.checkpoint.load_resumable``). ``key`` is the job's key, which its
    checkpoints carry: a cell's ``Cell.hash`` (so a user's attention module is keyed by the source digest its sweep
    expanded, and its file is not read again); None computes it from the config and the data, as a cell's key is.
    ``stop_after_epochs`` ends the call once that many epochs are done in total (an interruption, for tests and
    time-sliced workers).

    Each epoch is checkpointed, then logged. A resumed job first logs the epochs of its checkpoint's history, so
    an epoch whose logging a kill cut off is logged now; trackers keep one value per (metric, step), so nothing
    that was logged before is logged twice.

    ``dist`` (from ``ablation.engine.distributed.init_from_env``) with world_size K > 1: this process is one of K
    that train the job together; every rank must make the same call (same config, same checkpoint path on a
    shared file system) and returns the same history. ``tracker`` is used on rank 0 only. On CUDA, ``device``
    must be this rank's GPU (``cuda`` alone means the current device, which ``init_from_env`` set).

    The steps, in order: ``_set_up`` (device, network, loaders, optimiser), ``_resume`` (checkpoint and replay),
    ``_Job.wrap_for_training`` (DDP, compilation), then per epoch ``_run_epoch`` (``_train_loop``,
    ``_evaluate``) and, on rank 0, ``_checkpoint`` and logging.

    ``fence()`` is called on rank 0 before each checkpoint and before the final metrics are logged; it raises to
    stop the job without writing (a sweep worker whose claim on the cell was taken back meanwhile:
    ``ablation.scheduler.queue.SweepQueue.ensure_claimed``).

    ``on_epoch(history, last)`` (a tuning trial's pruning, ``ablation.scheduler.tuning``) is called on rank 0 after each
    epoch is checkpointed and logged, and once after a resume; True stops the job there (``TrainResult.pruned``),
    every rank together.
    """
    dist = dist or SINGLE
    key = key or config_hash(config, info.identity)
    job = _set_up(config, model, info, device, dist, workers, checkpoint_path, run_id, key)
    history, start_epoch, train_time = _resume(job, tracker, say)
    epochs = config.train.epochs
    if history and start_epoch < epochs and _stop_here(on_epoch, history, False, dist):  # pruned before a kill
        return TrainResult(history, False, train_time, start_epoch, final_metrics(history), pruned=True)
    job.wrap_for_training()
    for epoch in range(start_epoch, epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            barrier(dist)  # no rank returns before rank 0's last checkpoint is on disk
            return TrainResult(history, False, train_time, start_epoch)
        metrics = _run_epoch(job, epoch, description, progress)
        train_time += metrics[EPOCH_TIME]
        history.append(metrics)
        if dist.is_main:
            if fence is not None:
                fence()
            # Checkpoint first: a kill between the two leaves an epoch that the resumed job logs from the history.
            _checkpoint(job, epoch + 1, history, train_time)
            kill_point("epoch.checkpointed")
            tracker.log_metrics({k: metrics[k] for k in EPOCH_METRICS}, step=epoch + 1)
            kill_point("epoch.logged")
        if _stop_here(on_epoch, history, epoch + 1 == epochs, dist):
            barrier(dist)
            return TrainResult(history, False, train_time, start_epoch, final_metrics(history), pruned=True)
    barrier(dist)  # no rank returns before rank 0's last checkpoint is on disk
    final = final_metrics(history)
    if dist.is_main:
        if fence is not None:
            fence()
        tracker.log_metrics(final)
    return TrainResult(history, True, train_time, start_epoch, final)


def _stop_here(on_epoch, history: list[dict[str, float]], last: bool, dist: DistContext) -> bool:
    """Rank 0 asks ``on_epoch``; every rank gets its answer (so that they stop together)."""
    if on_epoch is None:
        return False
    stop = bool(on_epoch(history, last)) if dist.is_main else False
    return bool(broadcast_object(stop, dist))


@dataclass
class _Job:
    """One training job once set up: what its resume, epoch and checkpoint steps share."""

    train: TrainConfig
    device: torch.device
    dist: DistContext
    net: nn.Module  # the unwrapped network: restored, evaluated and saved, so checkpoints do not depend on K
    train_loader: InMemoryLoader | FolderLoader
    val_loader: InMemoryLoader | FolderLoader
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    dtype: torch.dtype | None  # autocast's, None for full precision
    key: str  # the job's config hash, which a checkpoint must carry to be resumed
    checkpoint_path: Path
    run_id: str | None
    model: nn.Module | None = None  # what the training steps call: ``net``, wrapped by DDP and compiled

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def wrap_for_training(self) -> None:
        """DDP and compilation, after the checkpoint is restored into ``net``."""
        self.model = self.net
        if self.dist.distributed:
            # Wrapping broadcasts rank 0's parameters and buffers, so the ranks start identical.
            index = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=index)
        if self.train.compile == "on":
            # Training steps only (after DDP, as PyTorch recommends); evaluation and checkpoints use ``net``, so
            # saved state_dicts keep their plain keys. The first steps include the compilation time.
            self.model = compile_for_training(self.model)


def _set_up(
    config: RunConfig,
    model: nn.Module,
    info: DatasetInfo,
    device: torch.device,
    dist: DistContext,
    workers: int,
    checkpoint_path: Path,
    run_id: str | None,
    key: str,
) -> _Job:
    """The network on its device (accelerated), the loaders of this rank's shard, optimiser, schedule, scaler."""
    train_cfg = config.train
    if train_cfg.batch_size % dist.world_size:
        raise ConfigError(
            "train.batch_size", train_cfg.batch_size, f"must be divisible by the {dist.world_size} processes"
        )
    if device.type == "cuda" and device.index is None:
        # DDP's device_ids and map_location need the index; init_from_env made cuda:LOCAL_RANK the current one.
        device = torch.device("cuda", torch.cuda.current_device())
    channels_last = use_channels_last(train_cfg, device)
    dtype = amp_dtype(train_cfg, device)
    if dist.distributed and device.type == "cuda":
        # Before the optimizer is built, so that it holds the parameters of the network actually trained. Not on
        # the CPU, where SyncBatchNorm refuses to run (see the module docstring).
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if getattr(config.model.attention, "impl", "fast") == "fast":
        # Before the clock starts: a first build of accelerated kernels must not count as training time.
        model = accelerate(model, device, compiled=train_cfg.compile == "on")
    keep_freed_memory()  # no page faults for the maps freed and re-allocated every step (host_memory.py)
    train_loader, val_loader = make_loaders(
        config.data,
        info,
        batch_size=train_cfg.batch_size,
        seed=config.seed,
        device=device,
        channels_last=channels_last,
        workers=workers,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError("train.batch_size", train_cfg.batch_size, f"exceeds the {info.name} training set")
    optimizer = build_optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(train_cfg, step, steps_per_epoch))
    return _Job(
        train=train_cfg,
        device=device,
        dist=dist,
        net=model,
        train_loader=train_loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=dtype == torch.float16),
        criterion=nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing),
        dtype=dtype,
        key=key,
        checkpoint_path=checkpoint_path,
        run_id=run_id,
    )


def _resume(job: _Job, tracker: Tracker, say: Callable[[str], None]) -> tuple[list[dict[str, float]], int, float]:
    """The checkpoint's (history, epochs done, training time), restored into every rank; (``[]``, 0, 0.0) for a
    fresh start. Rank 0 logs the history's epochs again (the tracker skips those it has)."""
    dist = job.dist

    def restore(state: dict) -> None:
        job.net.load_state_dict(state["model"])
        job.optimizer.load_state_dict(state["optimizer"])
        job.scheduler.load_state_dict(state["scheduler"])
        job.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])

    # Every rank restores the checkpoint (into the unwrapped network, before DDP copies rank 0's weights): each
    # rank steps its own optimizer, so each needs the momentum buffers, the scheduler and the RNG state. Rank 0
    # alone vets it (and moves a bad one aside) before the others read what it left.
    state = None
    if dist.is_main:
        state = load_resumable(
            job.checkpoint_path, key=job.key, run_id=job.run_id, apply=restore, map_location=job.device, say=say
        )
    barrier(dist)
    if not dist.is_main:
        state = load_checkpoint(job.checkpoint_path, map_location=job.device)
        if state is not None:
            restore(state)
    if state is None:
        return [], 0, 0.0
    history = list(state["history"])
    if dist.is_main:
        say(f"resuming after epoch {state['epoch']} from {job.checkpoint_path}")
        for done in history:  # epochs whose logging a kill cut off; the tracker skips those it has
            tracker.log_metrics({k: done[k] for k in EPOCH_METRICS}, step=int(done[EPOCH]))
    return history, state["epoch"], state["train_time_s"]


def _run_epoch(job: _Job, epoch: int, description: str, progress: bool) -> dict[str, float]:
    """Train one epoch (0-based ``epoch``), then evaluate: the epoch's metrics, the same on every rank."""
    _sync(job.device)
    began = time.perf_counter()
    lr = job.optimizer.param_groups[0]["lr"]
    loss_sum, correct, seen = _train_loop(job, epoch, description, progress)
    _sync(job.device)
    train_seconds = time.perf_counter() - began
    train_loss = loss_sum / seen
    if not math.isfinite(train_loss):
        raise NonFiniteLossError(f"training loss is {train_loss} in epoch {epoch + 1} (lr {lr:g})")
    # Per-rank BN statistics (CPU) differ between ranks: evaluate, everywhere, the network rank 0 saves.
    broadcast_buffers(job.net, job.dist)
    metrics = {
        EPOCH: float(epoch + 1),
        TRAIN_LOSS: train_loss,
        TRAIN_TOP1_ERR: 100.0 * (1.0 - correct / seen),
        **_evaluate(job.net, job.val_loader, job.criterion, job.autocast, job.dist),
        LR: lr,
        THROUGHPUT: seen / train_seconds,
    }
    _sync(job.device)
    metrics[EPOCH_TIME] = time.perf_counter() - began
    # Timings differ between ranks: every rank takes rank 0's, so all return (and resume) the same history.
    return broadcast_object(metrics, job.dist)


def _train_loop(job: _Job, epoch: int, description: str, progress: bool) -> tuple[float, float, float]:
    """One pass over this rank's shard of the training set: (loss sum, top-1 correct, images), summed over ranks."""
    model = job.model
    model.train()
    job.train_loader.set_epoch(epoch)
    totals = torch.zeros(3, dtype=torch.float64, device=job.device)
    bar = tqdm(
        job.train_loader,
        total=job.steps_per_epoch,
        desc=f"{_shorten(description, 60)} epoch {epoch + 1}/{job.train.epochs}".strip(),
        leave=False,
        disable=not progress or not job.dist.is_main,
        unit="batch",
        dynamic_ncols=True,
    )
    for images, labels in bar:
        with job.autocast():
            logits = model(images)
            loss = job.criterion(logits, labels)
        job.optimizer.zero_grad(set_to_none=True)
        job.scaler.scale(loss).backward()
        job.scaler.step(job.optimizer)
        job.scaler.update()
        job.scheduler.step()
        totals[0] += loss.detach().double() * len(labels)
        totals[1] += topk_correct(logits.detach().float(), labels, (1,))[0].double()
        totals[2] += len(labels)
        kill_point("train.batch")
    bar.close()
    # The sums over all ranks: the global epoch's numbers, and a NaN on any rank raises on every rank (a rank
    # raising alone would leave the others waiting in the next collective).
    loss_sum, correct, seen = all_reduce_sum(totals, job.dist).tolist()
    return loss_sum, correct, seen


def _checkpoint(job: _Job, epochs_done: int, history: list[dict[str, float]], train_time: float) -> None:
    """Everything a resumed job needs to continue exactly: network, optimiser, schedule, scaler, RNG, history."""
    save_checkpoint(
        job.checkpoint_path,
        {
            "config_hash": job.key,
            "run_id": job.run_id,
            "epoch": epochs_done,
            "model": job.net.state_dict(),
            "optimizer": job.optimizer.state_dict(),
            "scheduler": job.scheduler.state_dict(),
            "scaler": job.scaler.state_dict(),
            "rng": rng_state(),
            "history": history,
            "train_time_s": train_time,
        },
    )


def compile_for_training(model: nn.Module, backend: str | Callable = "inductor") -> nn.Module:
    """torch.compile for one cell's training steps.

    A worker runs its cells one after another in one process, all through the same code (torchvision's and our
    forward methods). Dynamo counts each new model structure as a recompilation of that code and, past its
    recompile limit (8), silently runs that code eagerly from then on: a sweep's later cells would train
    uncompiled, and their time and throughput would not compare with the earlier cells'. Dropping the earlier
    cells' compiled code first (nothing else in a worker is compiled) keeps every cell compiled."""
    torch._dynamo.reset()
    return torch.compile(model, backend=backend)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
