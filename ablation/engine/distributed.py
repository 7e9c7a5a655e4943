"""Data-parallel training across processes: the little that ``train_job`` needs from ``torch.distributed``.

One cell is trained by K processes launched torchrun-style (``python -m torch.distributed.run --standalone
--nproc-per-node K ...``), which sets RANK, WORLD_SIZE and LOCAL_RANK in each process's environment. Each
process calls ``init_from_env`` once and passes the ``DistContext`` to ``train_job``. Every helper here is a
no-op for a single-process context, so training code calls them unconditionally and the single-process path
touches no ``torch.distributed`` state at all (no process group, no rendezvous, nothing to tear down).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

__all__ = [
    "SINGLE",
    "DistContext",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "destroy",
    "init_from_env",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the K that train one job together."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the GPU index on this node (torchrun's LOCAL_RANK)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs metrics, writes checkpoints and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()


def init_from_env(device_type: str | torch.device = "cuda") -> DistContext:
    """The context torchrun describes in the environment, with the process group joined.

    WORLD_SIZE absent or 1: a single-process context and nothing initialised, so the same entry point runs
    with or without torchrun. Otherwise the backend is NCCL for CUDA and gloo for the CPU, and a CUDA process
    first binds to ``cuda:LOCAL_RANK``: without that every rank would allocate on GPU 0.
    """
    device_type = torch.device(device_type).type
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not torch_dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
            # device_id binds the NCCL communicator to this GPU eagerly, so barriers need not guess the device.
            torch_dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            torch_dist.init_process_group("gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returned for chaining."""
    if ctx.distributed:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not ctx.distributed:
        return obj
    holder = [obj]
    torch_dist.broadcast_object_list(holder, src=src)
    return holder[0]


def broadcast_buffers(module: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) into every rank's ``module``.

    Where BatchNorm statistics are per rank (plain BN on the CPU), each rank's running statistics drift apart
    during an epoch; this makes every rank evaluate exactly the model rank 0 checkpoints.
    """
    if ctx.distributed:
        for buffer in module.buffers():
            torch_dist.broadcast(buffer, src=src)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        torch_dist.barrier()


def destroy(ctx: DistContext) -> None:
    """Leave the process group (call once, at the end of the process)."""
    if ctx.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
