"""Which devices each worker of a sweep gets: one worker per GPU slot, or CPU workers sharing the cores.

A slot is the set of GPUs one worker sees (through CUDA_VISIBLE_DEVICES, so inside the worker they are cuda:0..K-1)
and the CPU threads it may use. ``jobs_per_gpu`` M packs M small cells on one GPU (M workers see the same GPU);
``gpus_per_job`` K gives each cell K GPUs for DistributedDataParallel. With no GPU, N CPU workers split the cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ablation.core.errors import ConfigError


@dataclass(frozen=True)
class Slot:
    index: int
    gpus: tuple[int, ...]  # physical GPU ids; empty on the CPU
    threads: int  # CPU threads (torch intra-op, OpenMP) for this worker

    def environment(self) -> dict[str, str]:
        """Environment variables that confine a worker process to this slot."""
        env = {"OMP_NUM_THREADS": str(self.threads), "ABLATION_WORKER": str(self.index)}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpus))  # "" hides every GPU from a CPU worker
        return env


def user_thread_cap() -> int | None:
    """A positive ``OMP_NUM_THREADS`` set by the user, else None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def parse_workers(value: str) -> int | None:
    """--workers: "auto" (None) or a positive integer."""
    if value == "auto":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ConfigError("--workers", value, "allowed: auto or a positive integer")


def plan_slots(
    workers: int | None,
    num_gpus: int,
    cpu_count: int | None = None,
    jobs_per_gpu: int = 1,
    gpus_per_job: int = 1,
    thread_cap: int | None = None,
) -> list[Slot]:
    """The worker slots of a sweep; ``workers=None`` ("auto") fills every GPU slot (one CPU worker without GPUs).

    ``thread_cap`` (a user's own ``OMP_NUM_THREADS``, see ``user_thread_cap``) caps each worker's threads: on a
    machine shared with other jobs, the user decides how many cores a worker may take."""
    cpu_count = cpu_count or os.cpu_count() or 1
    cap = thread_cap or cpu_count
    if jobs_per_gpu < 1:
        raise ConfigError("--jobs-per-gpu", jobs_per_gpu, "allowed: an integer >= 1")
    if gpus_per_job < 1:
        raise ConfigError("--gpus-per-job", gpus_per_job, "allowed: an integer >= 1")
    if num_gpus == 0:
        if gpus_per_job > 1:
            raise ConfigError(
                "--gpus-per-job", gpus_per_job, "is more GPUs than this machine shows (none); allowed here: 1"
            )
        count = workers or 1
        if count > cpu_count:
            raise ConfigError("--workers", count, f"exceeds the {cpu_count} CPU cores; allowed: 1..{cpu_count}")
        return [Slot(i, (), max(1, min(cap, cpu_count // count))) for i in range(count)]
    if gpus_per_job > num_gpus:
        raise ConfigError(
            "--gpus-per-job", gpus_per_job, f"exceeds the {num_gpus} visible GPUs; allowed: 1..{num_gpus}"
        )
    groups = [tuple(range(g * gpus_per_job, (g + 1) * gpus_per_job)) for g in range(num_gpus // gpus_per_job)]
    # Round-robin over GPU groups, so that N < all slots spreads the workers over the GPUs first.
    available = [group for _ in range(jobs_per_gpu) for group in groups]
    count = len(available) if workers is None else workers
    if count > len(available):
        raise ConfigError(
            "--workers",
            count,
            f"exceeds the {len(available)} slots ({num_gpus} GPUs x {jobs_per_gpu} jobs per GPU / {gpus_per_job} GPUs "
            f"per job); allowed: 1..{len(available)} or auto",
        )
    threads = max(1, min(cap, cpu_count // count))
    return [Slot(i, available[i], threads) for i in range(count)]
