#!/usr/bin/env python
"""What logging MLflow's system metrics costs a cell: the CPU time of one sample, and training time side by side
with the monitor off, at the harness's 10 s interval, and at 1 s.

1. One sample: MLflow's ``SystemMetricsMonitor`` collects (CPU, memory, disk, network), logs the batch and reads the
   run's status, as its thread does every interval, against a SQLite store in a temporary folder: the mean CPU time
   of ``--samples`` of them.
2. Training: one cell of the demo's CBAM network (``--epochs`` on the bundled images) as ``ablation sweep`` runs it,
   in a fresh process per run, with ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``, with the default interval (10 s)
   and with ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=1``, alternated for ``--rounds`` rounds; the cell's pure
   training time (``final/train_time_s``) of each, and the median ratio to "off".

    python benchmarks/system_metrics.py [--samples 50] [--epochs 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_CELL = """
base:
  model: {arch: resnet18, width: 0.25, stem: cifar, attention: {type: cbam}}
  data: {dataset: cifar10-micro}
  train: {batch_size: 100, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4, schedule: cosine}
seeds: [0]
"""
MODES = {
    "off": {"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"},
    "10 s": {},  # the harness's default interval
    "1 s": {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"},
}


def sample_cost(samples: int) -> float:
    """Mean CPU seconds of one sample: collect, log, read the run's status."""
    from mlflow import MlflowClient
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # MLflow puts a SQLite store's artifacts in ./mlruns
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("cost")).info.run_id
        monitor = SystemMetricsMonitor(run_id, sampling_interval=3600, tracking_uri=uri)
        monitor.collect_metrics()  # the first sample sets the monitors' counters up: not timed
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
        began = time.process_time()
        for _ in range(samples):
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
            client.get_run(run_id)
        cost = (time.process_time() - began) / samples
        os.chdir(home)
        return cost


def train_time(mode: str, epochs: int) -> float:
    """The cell's pure training time, in a fresh process with ``mode``'s environment."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        # One cell: the demo's network with CBAM (channel-first), seed 0, on the bundled images.
        experiment = Path(tmp) / "one.yaml"
        experiment.write_text(ONE_CELL)
        uri = f"sqlite:///{tmp}/mlflow.db"
        command = [sys.executable, "-m", "ablation", "sweep", str(experiment), "--no-progress", "--tracking-uri", uri]
        command += ["--storage", f"sqlite:///{tmp}/sweeps.db", "--checkpoint-dir", f"{tmp}/checkpoints"]
        command += ["--set", f"train.epochs={epochs}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_SYSTEM_METRICS")}
        env.pop("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", None)
        env.update(MODES[mode])
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{mode}: {done.stderr[-2000:]}")
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("one").experiment_id])
        (run,) = [r for r in runs if "final/train_time_s" in r.data.metrics]
        logged = any(k.startswith("system/") for k in run.data.metrics)
        if logged == (mode == "off"):
            raise RuntimeError(f"{mode}: system metrics {'logged' if logged else 'missing'}")
        return run.data.metrics["final/train_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    cost = sample_cost(args.samples)
    print(
        f"one sample (collect, log, read the run): {cost * 1000:.1f} ms of CPU; at a 10 s interval "
        f"{cost / 10 * 100:.2f}% of one core, at 1 s {cost / 1 * 100:.2f}%"
    )
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode in MODES:
            times[mode].append(train_time(mode, args.epochs))
            print(f"round {round_ + 1}, {mode:>4}: training {times[mode][-1]:.2f} s", flush=True)
    off = times["off"]
    for mode in ("10 s", "1 s"):
        ratios = [on / base for on, base in zip(times[mode], off, strict=True)]
        print(
            f"training time with system metrics every {mode} / off: median {statistics.median(ratios):.3f} "
            f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
