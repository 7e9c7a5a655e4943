#!/usr/bin/env python
"""What tuning costs around training: the queue, Optuna and MLflow per trial, against the trials' training time.

Runs a tuned experiment (default: ``experiments/demo_tuned.yaml`` with a smaller budget) in this process into a
fresh MLflow store and sweep storage in a temporary folder, timing what tuning adds to a sweep: each refill of
the plan (the lock, reading the queue and every arm's study, telling finished trials, asking the next one), each
epoch's pruning check (reporting to the trial, asking the pruner), and each trial's whole life outside training
(claim, MLflow run, artifacts, heartbeats). Prints those per trial and as a ratio to the trials' pure training
time ("pure": what ``train_job`` measures per epoch, training steps plus evaluation).

    python benchmarks/tuning_overhead.py [--experiment experiments/demo_tuned.yaml] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULTS = ["tune.trials=4", "tune.epochs=2", "train.epochs=2", "tune.compare_default=false", "seeds=[0]"]


class Timer:
    """Wall time and calls of one function, wrapped in place."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def wrap(self, function):
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began
                self.calls += 1

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "demo_tuned.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from mlflow import MlflowClient

    from ablation.experiment.schema import load_experiment
    from ablation.scheduler import plan, tuning, worker
    from ablation.scheduler.cell import CellOptions
    from ablation.scheduler.local import prepare_sweep, run_sweep
    from ablation.scheduler.worker import WorkerOptions
    from ablation.tracking.names import FINAL_TRAIN_TIME, PHASE, PHASE_TUNE, ROLE_CELL, role_filter

    refill, pruning = Timer(), Timer()
    plan.SweepPlan.refill = refill.wrap(plan.SweepPlan.refill)
    make_callback = tuning.pruning_callback
    worker.pruning_callback = lambda study, number: pruning.wrap(make_callback(study, number))

    experiment = load_experiment(args.experiment, [*DEFAULTS, *args.overrides])
    prepared = prepare_sweep(experiment)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        MlflowClient(uri).search_experiments()  # a new store's schema migrations: not what a sweep pays
        options = WorkerOptions(
            tracking_uri=uri,
            storage_url=f"sqlite:///{tmp}/sweeps.db",
            cell=CellOptions(checkpoint_dir=Path(tmp) / "checkpoints", progress=False),
        )
        began = time.perf_counter()
        report = run_sweep(prepared, options)
        wall = time.perf_counter() - began
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment.name)
        runs = client.search_runs([exp.experiment_id], role_filter(ROLE_CELL), max_results=1000)
    trials = [r for r in runs if r.data.tags.get(PHASE) == PHASE_TUNE]
    trial_train = sum(r.data.metrics.get(FINAL_TRAIN_TIME, 0.0) for r in trials)
    train = report.train_s
    overhead = wall - train
    n = len(trials)
    print(f"experiment {experiment.name}: {len(prepared.arms)} arms, {n} trials, {len(runs) - n} final runs")
    print(f"sweep wall time:                                   {wall:8.2f} s")
    print(f"pure training time, all cells:                     {train:8.2f} s  (trials: {trial_train:.2f} s)")
    print(
        f"plan refills (lock, studies, tell, ask):           {refill.seconds:8.2f} s in {refill.calls} calls, "
        f"{1000 * refill.seconds / max(refill.calls, 1):.0f} ms each"
    )
    print(
        f"pruning checks (report + pruner), per epoch:       {pruning.seconds:8.2f} s in {pruning.calls} calls, "
        f"{1000 * pruning.seconds / max(pruning.calls, 1):.0f} ms each"
    )
    per_cell = overhead / max(len(runs), 1)
    print(f"harness overhead per cell (wall - training):       {per_cell:8.2f} s")
    print(f"tuning machinery per trial (refills + pruning):    {(refill.seconds + pruning.seconds) / max(n, 1):8.2f} s")
    print(f"ratio tuning machinery / trials' training time:    {(refill.seconds + pruning.seconds) / trial_train:8.3f}")
    print(f"ratio sweep wall / training time:                  {wall / train:8.3f}")


if __name__ == "__main__":
    main()
