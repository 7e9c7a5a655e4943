import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
sys.path.insert(0, str(ROOT))  # runner.py lives at the top level, beside the package

# Data identities are cached (ablation.data.identity); tests keep that cache in a folder of their own, which every
# process they start inherits, and which goes when they end.
_CACHE = tempfile.mkdtemp(prefix="ablation-test-cache-")
os.environ["ABLATION_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


# ---- tests write only into temporary folders: the checkout is the same after the session as before it

_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache")


def _checkout_files() -> dict[str, tuple[int, int] | None] | None:
    """Every file git reports in the checkout (changed, untracked or ignored, caches aside) with its size and
    mtime; None outside a git checkout."""
    command = ["git", "status", "--porcelain", "-z", "--ignored=matching", "--untracked-files=all", "--no-renames"]
    try:
        listing = subprocess.run(command, cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files: dict[str, tuple[int, int] | None] = {}
    for entry in filter(None, listing.decode(errors="replace").split("\0")):
        path = entry[3:]
        if any(part in _CACHES or part.endswith(".egg-info") for part in Path(path).parts):
            continue
        stat = (ROOT / path).stat() if (ROOT / path).exists() else None
        files[path] = (stat.st_size, stat.st_mtime_ns) if stat else None
    return files


def pytest_sessionstart(session):
    session.config._checkout_before = _checkout_files()


def pytest_sessionfinish(session, exitstatus):
    """A test that wrote into the checkout (a result, a store, a screenshot) fails the session, by name of file."""
    before = getattr(session.config, "_checkout_before", None)
    after = _checkout_files()
    if before is None or after is None:
        return
    # A maintainer refreshing the committed screenshot names it (tests/test_mlflow_ui.py): that write is asked for.
    asked = os.environ.get("ABLATION_SCREENSHOT_TO")
    asked = (
        str(Path(asked).resolve().relative_to(ROOT)) if asked and Path(asked).resolve().is_relative_to(ROOT) else None
    )
    written = sorted(path for path, stamp in after.items() if before.get(path, "absent") != stamp and path != asked)
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", f"the tests wrote into the checkout: {', '.join(written[:20])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@contextlib.contextmanager
def in_folder(folder: Path):
    """Work in ``folder`` for a while: MLflow puts a new store's artifacts under ``./mlruns`` of the working folder,
    and tests write only into temporary folders."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


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


def tiny_config(npz: Path, epochs: int, batch_size: int = 25, seed: int = 0):
    """One job's RunConfig on the tiny set: the CBAM eighth-width ResNet-18 of ``tiny_experiment``."""
    from ablation.config import parse_run_config

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
    from ablation.cell import CellOptions
    from ablation.sweep import run_sweep
    from ablation.worker import WorkerOptions

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


# Session-scoped throwaway PostgreSQL server: `postgres_url` yields make_db(name) -> SQLAlchemy URL.
from tests.postgres import postgres_url  # noqa: E402, F401
