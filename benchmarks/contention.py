#!/usr/bin/env python
"""Training while another job shares the cores: the slowdown against training alone, per OpenMP wait policy.

Runs the demo's training step (quarter-width CIFAR-stem ResNet-18 with CBAM, batch 100, the bundled images) in a
fresh process alone, then in two processes at once on the same cores, each with the threads a sweep process would
use, and prints seconds per step and the slowdown ratio shared / alone (target: <= 2.5; two jobs on the cores
each one was using can at best take 2x). The wait policies compared, side by side in one run:

- the harness's (``runner.py`` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose one: ablation/engine/threads.py);
- GNU OpenMP's default (the variable unset: waiting threads spin for a while before they sleep);
- ``ACTIVE`` (waiting threads spin).

    python benchmarks/contention.py [--steps 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {
    "harness (PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GNU default (unset)": {},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
}


def child(steps: int, warmup: int) -> None:
    """One training job: prints the mean seconds per step after ``warmup`` steps."""
    sys.path.insert(0, str(ROOT))
    import torch

    from ablation.data.catalog import dataset_info
    from ablation.data.loaders import make_loaders
    from ablation.experiment.schema import parse_run_config
    from ablation.models import build_model

    config = parse_run_config(
        {
            "model": {"arch": "resnet18", "width": 0.25, "stem": "cifar", "attention": {"type": "cbam"}},
            "data": {"dataset": "cifar10-micro"},
            "train": {"batch_size": 100},
        }
    )
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, attention=config.model.attention, width=0.25, stem="cifar")
    loader, _ = make_loaders(config.data, dataset_info(config.data), batch_size=100, seed=0, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    batches, done, began = iter(()), 0, 0.0
    while done < warmup + steps:
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        if done == warmup:
            began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()
        done += 1
    print(f"{(time.perf_counter() - began) / steps:.6f}", flush=True)


def run(policy: dict[str, str], copies: int, steps: int, warmup: int) -> list[float]:
    cleared = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ABLATION_SET_OMP_WAIT_POLICY")
    env = {k: v for k, v in os.environ.items() if k not in cleared} | policy
    command = [sys.executable, __file__, "--child", "--steps", str(steps), "--warmup", str(warmup)]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.warmup)
        return
    print(f"{os.cpu_count()} CPUs; {args.steps} steps after {args.warmup} warm-up steps; s/step")
    print(f"{'wait policy':22s} {'alone':>8s} {'two at once':>12s} {'slowdown':>9s}")
    for name, policy in POLICIES.items():
        alone = run(policy, 1, args.steps, args.warmup)[0]
        shared = run(policy, 2, args.steps, args.warmup)
        ratio = sum(shared) / len(shared) / alone
        print(f"{name:22s} {alone:8.3f} {max(shared):12.3f} {ratio:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
