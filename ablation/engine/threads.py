"""How the harness's processes use CPU threads when they share cores with other work.

PyTorch's CPU kernels run on OpenMP threads. By default GNU OpenMP (which PyTorch's Linux wheels use) lets a
thread that waits for work spin on its core for a while before it sleeps. Alone on a machine that is fast; with
another busy process on the same cores (a second sweep, a test run, a notebook) the spinning threads take the
cores the working ones need, and a training step can take many times as long. ``OMP_WAIT_POLICY=PASSIVE`` makes
waiting threads sleep at once. It must be in the environment before the OpenMP runtime starts, that is before
torch is imported, and worker processes inherit it.

A user's own ``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS`` is never overridden; what was chosen, and by whom, is
recorded in each run's ``environment.json`` (``threads``).
"""

from __future__ import annotations

import os

_SET_BY_HARNESS = "ABLATION_SET_OMP_WAIT_POLICY"  # marks, for worker processes too, that the value is ours


def configure_threads() -> None:
    """Call first thing in a command, before anything imports torch."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ[_SET_BY_HARNESS] = "1"


def thread_state() -> dict[str, object]:
    """What this process runs with: the OpenMP settings (and whether the user or the harness chose them) and
    torch's intra-op thread count."""
    import torch

    policy = os.environ.get("OMP_WAIT_POLICY")
    return {
        "omp_wait_policy": policy,
        "omp_wait_policy_set_by": None if policy is None else "harness" if os.environ.get(_SET_BY_HARNESS) else "user",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_num_threads": torch.get_num_threads(),
    }
