"""The tiny setting most tests train in: 100 bundled CIFAR-10 images, an eighth-width ResNet-18, seconds per cell
on a CPU; and a sweep run in this process on SQLite stores."""

from __future__ import annotations

from pathlib import Path

from tests.support.folders import in_folder


def write_tiny_npz(path: Path) -> Path:
    """100 train / 40 test real CIFAR-10 images (10 / 4 per class) from the bundled set, as an .npz."""
    import numpy as np

    from ablation.data.registry import dataset_entry

    with np.load(dataset_entry("cifar10-micro").file) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
    pick_train = np.concatenate([np.flatnonzero(arrays["y_train"] == c)[:10] for c in range(10)])
    pick_test = np.concatenate([np.flatnonzero(arrays["y_test"] == c)[:4] for c in range(10)])
    np.savez(
        path,
        x_train=arrays["x_train"][pick_train],
        y_train=arrays["y_train"][pick_train],
        x_test=arrays["x_test"][pick_test],
        y_test=arrays["y_test"][pick_test],
        classes=arrays["classes"],
    )
    return path


def tiny_config(npz: Path, epochs: int, batch_size: int = 25, seed: int = 0):
    """One job's RunConfig on the tiny set: the CBAM eighth-width ResNet-18 of ``tiny_experiment``."""
    from ablation.experiment.schema import parse_run_config

    return parse_run_config(
        {
            "model": {
                "arch": "resnet18",
                "width": 0.125,
                "stem": "cifar",
                "attention": {"type": "cbam", "reduction": 4},
            },
            "data": {"dataset": "npz", "root": str(npz)},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": 0.05, "schedule": "cosine"},
            "seed": seed,
        }
    )


def sweep_in(folder: Path, prepared, tracking="mlflow.db", storage="sweeps.db", retry_failed=False, **cell_options):
    """Run a sweep in this process on SQLite stores and a checkpoint folder inside ``folder``, working there;
    returns (report, options)."""
    from ablation.scheduler.cell import CellOptions
    from ablation.scheduler.local import run_sweep
    from ablation.scheduler.worker import WorkerOptions

    options = WorkerOptions(
        tracking_uri=f"sqlite:///{folder / tracking}",
        storage_url=f"sqlite:///{folder / storage}",
        cell=CellOptions(checkpoint_dir=folder / "checkpoints", progress=False, **cell_options),
    )
    folder.mkdir(parents=True, exist_ok=True)
    with in_folder(folder):
        return run_sweep(prepared, options, retry_failed=retry_failed), options


def tiny_experiment(root: Path, grid: str, seeds: str = "[0, 1]", epochs: int = 2, extra_train: str = "") -> str:
    """An experiment on the tiny set with an eighth-width ResNet-18: seconds per cell on a CPU."""
    return f"""
name: tiny
title: Tiny sweep
base:
  model: {{arch: resnet18, width: 0.125, stem: cifar, attention: {{type: cbam, reduction: 4}}}}
  data: {{dataset: npz, root: {root}}}
  train: {{epochs: {epochs}, batch_size: 25, lr: 0.05, schedule: cosine{extra_train}}}
grid:
{grid}
seeds: {seeds}
"""
