"""Data-parallel training on real processes (gloo on the CPU, no mocks).

- The in-memory loader's K shards partition every global batch, in order, augmentation included.
- 2-process DDP's first optimizer step (gradients, then weights) equals one process's on the same global batch,
  for the harness's CBAM ResNet with frozen BatchNorm statistics and for a BN-free network in training mode.
- ``train_job`` launched by torchrun on 2 processes: metrics from rank 0 only, the same history on both ranks,
  validation metrics equal to a single-process evaluation of the saved network, and a checkpoint that a single
  process resumes. A BN-free network trains to the same numbers on 2 processes as on 1.

Tolerances: DDP averages per-rank mean gradients, (mean of 8 + mean of 8) / 2, where one process takes the mean
of 16; float32 sums in another order and convolutions on another batch size (other kernels' blocking) differ in
the last bits. Gradients must agree per tensor within max |diff| <= 1e-5 * (the largest gradient entry of the
network). Measured here: 2e-7 (CBAM ResNet) and 1.3e-6 (BN-free net: a conv bias summed over 2,048 positions
per rank, with cancellation) of that scale in float32, and ~3e-16 when both sides run in float64, so the math is
the same and the float32 gap is rounding. Real mistakes exceed the tolerance ~1e4-fold: plain BatchNorm in training mode
(per-rank statistics) gives 0.2 of the scale, and a wrong shard or a missing average is of the order of the
gradients themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ablation.attention import build_attention
from ablation.data.catalog import dataset_info
from ablation.data.loaders import make_loaders
from ablation.data.memory import InMemoryLoader
from ablation.data.registry import dataset_entry
from ablation.engine.distributed import DistContext, destroy, init_from_env
from ablation.engine.train import TrainResult, _evaluate, seed_everything, train_job
from ablation.experiment.schema import RunConfig
from ablation.models import build_model
from ablation.tracking.names import (
    EPOCH_METRICS,
    EPOCH_TIME,
    FINAL_TOP1_ERR_LAST,
    THROUGHPUT,
    VAL_LOSS,
    VAL_TOP1_ERR,
    VAL_TOP5_ERR,
)
from ablation.tracking.tracker import MemoryTracker
from tests.support.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
GRAD_TOL = 1e-5  # relative to the largest gradient entry of the network; see the module docstring


# --- networks ------------------------------------------------------------------------------------------------


def _cbam_resnet() -> nn.Module:
    """The harness's real network, its BN statistics frozen (and made non-trivial) so that a shard of the batch
    normalises exactly as the whole batch does."""
    model = build_model(
        "resnet18", width=0.125, stem="cifar", num_classes=10, attention={"type": "cbam", "reduction": 4}
    )
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            # Random statistics and affine parameters: fresh BN is the identity, and some of its weights are
            # zero-initialised (CBAM's spatial BN), which would leave whole branches without gradient.
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
    return model


def _freeze_bn(model: nn.Module) -> nn.Module:
    """Training mode everywhere but in BatchNorm, which then normalises with its running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()
    return model


def _bn_free_net() -> nn.Module:
    """A small CNN with GroupNorm (per-sample, so sharding cannot change it) and a BN-free CBAM, in train mode."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        build_attention({"type": "cbam", "reduction": 4, "spatial_bn": False}, 16),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


NETWORKS: dict[str, Callable[[], nn.Module]] = {"cbam_resnet_frozen_bn": _cbam_resnet, "bn_free": _bn_free_net}


# --- data ----------------------------------------------------------------------------------------------------


def _micro_loader(rank: int = 0, world_size: int = 1, n: int = 64, batch_size: int = 16) -> InMemoryLoader:
    with np.load(dataset_entry("cifar10-micro").file) as f:
        x, y = f["x_train"][:n], f["y_train"][:n]
    return InMemoryLoader(
        torch.from_numpy(x),
        torch.from_numpy(y.astype(np.int64)),
        batch_size=batch_size,
        train=True,
        mean=MEAN,
        std=STD,
        seed=7,
        rank=rank,
        world_size=world_size,
    )


def test_loader_shards_partition_every_global_batch_in_order():
    single = _micro_loader(n=100, batch_size=16)  # 6 full batches, a tail of 4 dropped
    shards = [_micro_loader(rank, 2, n=100, batch_size=16) for rank in range(2)]
    for epoch in (0, 3):  # the partition holds in any epoch, not just the first
        for loader in (single, *shards):
            loader.set_epoch(epoch)
        batches = list(zip(single, *shards, strict=True))
        assert len(batches) == len(single) == 6
        for (x, y), (x0, y0), (x1, y1) in batches:
            assert len(y0) == len(y1) == 8
            # Images (crops and flips included) and labels: rank 0's slice, then rank 1's, is the whole batch.
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert shards[0].num_samples == shards[1].num_samples == single.num_samples // 2


def test_eval_shards_cover_the_set_once_and_bad_splits_are_refused():
    with np.load(dataset_entry("cifar10-micro").file) as f:
        x, y = torch.from_numpy(f["x_test"][:37]), torch.from_numpy(f["y_test"][:37].astype(np.int64))
    kw = {"batch_size": 16, "train": False, "mean": MEAN, "std": STD}
    whole = torch.cat([labels for _, labels in InMemoryLoader(x, y, **kw)])
    shards = [list(InMemoryLoader(x, y, rank=r, world_size=3, **kw)) for r in range(3)]
    # Batch i of the three ranks, concatenated in rank order, is batch i of one process: uneven slices are fine.
    merged = torch.cat([torch.cat([shard[i][1] for shard in shards]) for i in range(3)])
    assert torch.equal(merged, whole)
    with pytest.raises(ValueError, match="divisible"):
        InMemoryLoader(x, y, batch_size=15, train=True, mean=MEAN, std=STD, world_size=2)
    with pytest.raises(ValueError, match="equal slices"):
        InMemoryLoader(x, y, batch_size=16, train=True, mean=MEAN, std=STD, world_size=2, drop_last=False)


# --- real processes ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world_size: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    """One spawned rank: the environment torchrun would set, then ``init_from_env`` as in production."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)  # two processes on two cores: no oversubscription
    ctx = init_from_env("cpu")
    try:
        fn(ctx, *args)
    finally:
        destroy(ctx)


def _spawn(fn: Callable[..., None], *args: object, world_size: int = 2) -> None:
    mp.spawn(_process, args=(world_size, _free_port(), fn, args), nprocs=world_size, join=True)


def _first_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Gradients of one forward/backward, and the weights after one SGD step (momentum, weight decay)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    params = dict(getattr(model, "module", model).named_parameters())
    grads = {name: p.grad.detach().clone() for name, p in params.items()}
    optimizer.step()
    return {"grads": grads, "weights": {name: p.detach().clone() for name, p in params.items()}}


def _ddp_first_step(ctx: DistContext, network: str, out: Path) -> None:
    seed_everything(0, torch.device("cpu"))
    model = NETWORKS[network]()
    if network == "cbam_resnet_frozen_bn":
        _freeze_bn(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    images, labels = next(iter(_micro_loader(ctx.rank, ctx.world_size)))  # this rank's half of global batch 0
    assert len(labels) == 8
    torch.save(_first_step(ddp, images, labels), out / f"rank{ctx.rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("network", list(NETWORKS))
def test_ddp_first_step_equals_single_process_on_the_global_batch(network, tmp_path):
    _spawn(_ddp_first_step, network, tmp_path)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks
    try:
        seed_everything(0, torch.device("cpu"))
        model = NETWORKS[network]()
        if network == "cbam_resnet_frozen_bn":
            _freeze_bn(model)
        images, labels = next(iter(_micro_loader()))  # the global batch of 16
        reference = _first_step(model, images, labels)
    finally:
        torch.set_num_threads(threads)

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for kind in ("grads", "weights"):
        # The all-reduce hands every rank the same averaged gradient, bit for bit.
        for name in reference[kind]:
            assert torch.equal(ranks[0][kind][name], ranks[1][kind][name]), (kind, name)
    scale = max(g.abs().max().item() for g in reference["grads"].values())
    assert scale > 0
    zero_grads = [name for name, g in reference["grads"].items() if not g.any()]
    assert not zero_grads  # every parameter takes part, so the comparison covers all of them
    for name, expected in reference["grads"].items():
        diff = (ranks[0]["grads"][name] - expected).abs().max().item()
        assert diff <= GRAD_TOL * scale, f"{name}: max |diff| {diff:.3g} vs scale {scale:.3g}"
    for name, expected in reference["weights"].items():
        # One SGD step of lr 0.1 carries 0.1 x the gradient's difference, plus a few ulps of the weight itself.
        torch.testing.assert_close(ranks[0]["weights"][name], expected, rtol=1e-6, atol=0.1 * GRAD_TOL * scale)


# --- train_job under torchrun ----------------------------------------------------------------------------------


class _RaisingTracker:
    """Rank 1's tracker: any call is a bug, since only rank 0 reports."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        raise AssertionError(f"rank != 0 logged metrics {sorted(metrics)} at step {step}")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        raise AssertionError(f"rank != 0 logged artifact {path}")


def _job_config(npz: Path, epochs: int) -> RunConfig:
    return tiny_config(npz, epochs, batch_size=20)


def _tiny_cbam_resnet(attention: dict | None = None) -> nn.Module:
    """A CBAM ResNet with one block per stage: every path of ResNet-18's (stem, blocks with and without a projection
    shortcut, CBAM in each block) at half its blocks, for what compiles the network (inductor's time grows with it)."""
    from ablation.models.resnet import BasicBlock, ResNet

    attention = attention or {"type": "cbam", "reduction": 4}
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, attention=attention, width=0.125, stem="cifar")


def _run_job(
    config: RunConfig, network: str, checkpoint: Path, tracker, ctx: DistContext | None = None, **kw
) -> TrainResult:
    seed_everything(config.seed, torch.device("cpu"))
    model = _bn_free_net() if network == "bn_free" else _tiny_cbam_resnet() if network == "tiny_resnet" else None
    if model is None:
        model = build_model(
            "resnet18", width=0.125, stem="cifar", num_classes=10, attention={"type": "cbam", "reduction": 4}
        )
    return train_job(
        config,
        model=model,
        info=dataset_info(config.data),
        device=torch.device("cpu"),
        checkpoint_path=checkpoint,
        tracker=tracker,
        progress=False,
        dist=ctx,
        **kw,
    )


def _torchrun_worker(npz: Path, out: Path) -> None:
    """What each torchrun process runs (``python -m torch.distributed.run ... tests/engine/test_distributed.py``)."""
    torch.set_num_threads(1)
    ctx = init_from_env("cpu")
    assert ctx.world_size == 2
    try:
        tracker = MemoryTracker() if ctx.is_main else _RaisingTracker()
        config = _job_config(npz, epochs=2)
        # The CBAM ResNet: interrupted after epoch 1 (its checkpoint kept), then resumed on the same 2 processes.
        first = _run_job(config, "resnet", out / "resnet" / "last.pt", tracker, ctx, stop_after_epochs=1)
        if ctx.is_main:
            shutil.copy(out / "resnet" / "last.pt", out / "resnet-epoch1.pt")
        second = _run_job(config, "resnet", out / "resnet" / "last.pt", tracker, ctx)
        # A BN-free network: 2 processes must train it as 1 does.
        bn_free = _run_job(_job_config(npz, epochs=1), "bn_free", out / "bn_free" / "last.pt", tracker, ctx)
        report = {
            "first": first.history,
            "second": second.history,
            "completed": [first.completed, second.completed],
            "bn_free": bn_free.history,
            "metrics": tracker.metrics if ctx.is_main else None,
        }
        (out / f"rank{ctx.rank}.json").write_text(json.dumps(report))
    finally:
        destroy(ctx)


def _untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in (EPOCH_TIME, THROUGHPUT)} for h in history]


@pytest.mark.slow
def test_train_job_under_torchrun_reports_from_rank0_and_resumes_on_one_process(tmp_path, tiny_npz):
    out = tmp_path / "run"
    out.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, __file__, str(tiny_npz), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))

    # Rank 0 alone logged (rank 1's tracker raises on any call): epoch 1, then epoch 2 and the final metrics.
    assert rank1["metrics"] is None
    steps = [(step, sorted(m)) for step, m in rank0["metrics"]]
    assert steps[:2] == [(1, sorted(EPOCH_METRICS)), (2, sorted(EPOCH_METRICS))]
    assert steps[2][0] is None and FINAL_TOP1_ERR_LAST in steps[2][1]
    assert rank0["completed"] == rank1["completed"] == [False, True]
    # Every rank returns rank 0's history: the all-reduced, global numbers (and rank 0's timings).
    for key in ("first", "second", "bn_free"):
        assert rank0[key] == rank1[key], key
    epoch1 = rank0["first"][0]
    assert rank0["second"][0] == epoch1 and len(rank0["second"]) == 2
    assert rank0["metrics"][0][1] == {k: epoch1[k] for k in EPOCH_METRICS}

    torch.set_num_threads(1)
    # The sharded, all-reduced validation metrics are those of one process evaluating the saved network.
    config = _job_config(tiny_npz, epochs=2)
    state = torch.load(out / "resnet-epoch1.pt", weights_only=True)
    model = build_model(
        "resnet18", width=0.125, stem="cifar", num_classes=10, attention={"type": "cbam", "reduction": 4}
    )
    model.load_state_dict(state["model"])  # strict: the unwrapped network's keys, no "module." prefix
    _, val = make_loaders(config.data, dataset_info(config.data), batch_size=20, seed=0, device=torch.device("cpu"))
    single = _evaluate(model, val, nn.CrossEntropyLoss(), contextlib.nullcontext)
    assert single[VAL_TOP1_ERR] == epoch1[VAL_TOP1_ERR] and single[VAL_TOP5_ERR] == epoch1[VAL_TOP5_ERR]
    assert single[VAL_LOSS] == pytest.approx(epoch1[VAL_LOSS], rel=1e-5)

    # One process resumes the 2-process checkpoint of epoch 1 and finishes the job.
    resume = tmp_path / "resume" / "last.pt"
    resume.parent.mkdir()
    shutil.copy(out / "resnet-epoch1.pt", resume)
    tracker = MemoryTracker()
    result = _run_job(config, "resnet", resume, tracker)
    assert result.completed and result.resumed_from_epoch == 1
    # The resumed job logs its checkpoint's epoch too (a kill may have cut that logging off), then epoch 2.
    assert result.history[0] == epoch1 and [step for step, _ in tracker.metrics] == [1, 2, None]
    assert tracker.metrics[0][1] == {k: epoch1[k] for k in EPOCH_METRICS}

    # Without BN, 2 processes train exactly what 1 does (up to float32 summation order).
    reference = _run_job(_job_config(tiny_npz, epochs=1), "bn_free", tmp_path / "bn_free1" / "last.pt", MemoryTracker())
    for got, expected in zip(_untimed(rank0["bn_free"]), _untimed(reference.history), strict=True):
        assert got == pytest.approx(expected, rel=1e-4)
    weights = torch.load(out / "bn_free" / "last.pt", weights_only=True)["model"]
    expected_weights = torch.load(tmp_path / "bn_free1" / "last.pt", weights_only=True)["model"]
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6)


if __name__ == "__main__":  # a torchrun process of the test above
    _torchrun_worker(Path(sys.argv[1]), Path(sys.argv[2]))
