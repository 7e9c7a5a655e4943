import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
sys.path.insert(0, str(ROOT))  # runner.py lives at the top level, beside the package


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny-tensor tests: a second OpenMP thread only adds sync cost (~6x slower on a busy 2-core
    box). Used with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(module):
    """Random weights (std 1/sqrt(fan_in), so the gates stay off saturation), biases, BN affine and stats: with
    the official init the spatial BN weight is 0 and the spatial branch would be invisible to a comparison."""
    import torch
    from torch import nn

    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.5)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module


@pytest.fixture
def write_experiment(tmp_path):
    """Write an experiment file from YAML text and return its path."""

    def write(text: str, name: str = "exp") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    """100 train / 40 test real CIFAR-10 images (10 / 4 per class) from the bundled set, as an .npz."""
    import numpy as np

    from ablation.data.catalog import BUNDLED

    with np.load(BUNDLED["cifar10-micro"]) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
    pick_train = np.concatenate([np.flatnonzero(arrays["y_train"] == c)[:10] for c in range(10)])
    pick_test = np.concatenate([np.flatnonzero(arrays["y_test"] == c)[:4] for c in range(10)])
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        x_train=arrays["x_train"][pick_train],
        y_train=arrays["y_train"][pick_train],
        x_test=arrays["x_test"][pick_test],
        y_test=arrays["y_test"][pick_test],
        classes=arrays["classes"],
    )
    return path


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


# Session-scoped throwaway PostgreSQL server: `postgres_url` yields make_db(name) -> SQLAlchemy URL.
from tests.postgres import postgres_url  # noqa: E402, F401
