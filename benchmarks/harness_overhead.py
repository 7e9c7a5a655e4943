#!/usr/bin/env python
"""What the harness costs around training: a sweep's wall time against the sum of its cells' pure training time.

Runs an experiment (default: the offline demo, fewer epochs) as ``runner.py sweep`` would, into a fresh MLflow
store in a temporary folder, and prints wall / sum(train) as a ratio (target: <= 1.03). "Pure training time"
is what ``train_job`` measures per epoch (training steps plus evaluation); everything else — validating the
grid, building networks, counting MACs, creating MLflow runs, logging metrics and artifacts, checkpoints,
plots — is harness overhead.

    python benchmarks/harness_overhead.py [--experiment experiments/demo.yaml] [--epochs 3] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "demo.yaml"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from mlflow import MlflowClient

    from ablation.experiment.schema import load_experiment
    from ablation.scheduler.cell import CellOptions
    from ablation.scheduler.local import prepare_sweep, run_sweep
    from ablation.scheduler.worker import WorkerOptions

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        experiment = load_experiment(args.experiment, [f"train.epochs={args.epochs}", *args.overrides])
        prepared = prepare_sweep(experiment)
        validated = time.perf_counter()
        uri = f"sqlite:///{tmp}/mlflow.db"
        # A new SQLite store runs MLflow's schema migrations once (seconds); a user's store exists already.
        MlflowClient(uri).search_experiments()
        store_ready = time.perf_counter()
        options = WorkerOptions(
            tracking_uri=uri,
            storage_url=f"sqlite:///{tmp}/sweeps.db",
            cell=CellOptions(checkpoint_dir=Path(tmp) / "checkpoints", progress=False),
        )
        report = run_sweep(prepared, options)
        swept = time.perf_counter()
    sweep_wall, train = swept - store_ready, report.train_s
    everything = swept - began
    print(f"experiment {experiment.name}: {report.trained_now} cells x {args.epochs} epochs")
    print(f"validation before any job (once per command):   {validated - began:8.2f} s")
    print(f"creating the MLflow store (once per new store): {store_ready - validated:8.2f} s")
    print(f"sweep wall time:                                 {sweep_wall:8.2f} s")
    print(f"sum of the cells' pure training time:            {train:8.2f} s")
    print(
        f"harness overhead per cell:                       {(sweep_wall - train) / max(report.trained_now, 1):8.2f} s"
    )
    print(f"ratio sweep wall / training:                     {sweep_wall / train:8.3f}  (target <= 1.03)")
    print(f"ratio including validation and a new store:      {everything / train:8.3f}")


if __name__ == "__main__":
    main()
