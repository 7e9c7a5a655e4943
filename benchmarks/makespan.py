#!/usr/bin/env python
"""Makespan of a sweep on W workers: wall time against the ideal N x t / W.

Runs N equal cells (one arm of the demo network on the bundled data, N seeds) with ``runner.py sweep --workers W``
(W CPU worker processes, the cores split between them; on a GPU machine pass --workers auto and --device cuda),
into a fresh local storage and MLflow store, and prints wall / ideal, where t is the mean pure training time of
a cell as measured inside the workers. Everything else — worker start-up, claiming, MLflow I/O, idle workers at
the end — counts against the ratio (target <= 1.1).

    python benchmarks/makespan.py [--workers 2] [--cells 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = """
name: makespan
base:
  model: {{arch: resnet18, width: 0.25, stem: cifar, attention: {{type: cbam}}}}
  data: {{dataset: cifar10-micro}}
  train: {{epochs: {epochs}, batch_size: 100, lr: 0.05, schedule: cosine}}
seeds: {seeds}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="2")
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        experiment = folder / "makespan.yaml"
        experiment.write_text(EXPERIMENT.format(epochs=args.epochs, seeds=list(range(args.cells))))
        command = [
            sys.executable,
            str(ROOT / "runner.py"),
            "sweep",
            str(experiment),
            "--workers",
            args.workers,
            "--device",
            args.device,
            "--no-progress",
        ]
        began = time.perf_counter()
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=dict(os.environ))
        wall = time.perf_counter() - began
        if result.returncode != 0:
            sys.exit(result.stderr[-3000:])
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        exp = client.get_experiment_by_name("makespan")
        runs = client.search_runs([exp.experiment_id], "tags.`ablation.role` = 'cell'")
        times = [r.data.metrics["final/train_time_s"] for r in runs]
    workers = int(args.workers) if args.workers.isdigit() else None
    if workers is None:
        sys.exit("--workers auto: pass the number of slots as an integer to compute the ideal")
    t = sum(times) / len(times)
    ideal = len(times) * t / workers
    print(f"{len(times)} cells x {args.epochs} epochs on {workers} workers")
    print(f"mean pure training time per cell t:   {t:8.2f} s  (min {min(times):.2f}, max {max(times):.2f})")
    print(f"ideal N x t / W:                      {ideal:8.2f} s")
    import re

    found = re.search(r"wall ([0-9.]+)s", result.stdout)
    sweep_wall = float(found.group(1)) if found else float("nan")
    print(f"sweep wall time (run_sweep):          {sweep_wall:8.2f} s  (state + MLflow stores created, workers run)")
    print(f"whole command (imports, validation):  {wall:8.2f} s")
    print(f"ratio sweep wall / ideal:             {sweep_wall / ideal:8.3f}  (target <= 1.1)")
    print(f"ratio whole command / ideal:          {wall / ideal:8.3f}")


if __name__ == "__main__":
    main()
