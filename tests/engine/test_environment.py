"""The environment record (ablation/engine/environment.py): keys present, honest versions, never an exception."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess

import pytest
import torch

from ablation.engine import environment as env_module
from ablation.engine.environment import environment, git_state

KEYS = {
    "python",
    "platform",
    "hostname",
    "cpu_count",
    "torch_num_threads",
    "torch_build",
    "packages",
    "cuda_available",
    "cuda_version",
    "cudnn_version",
    "cuda_devices",
    "device",
    "git_commit",
    "git_dirty",
}


def test_environment_keys_versions_and_json():
    env = environment("cpu")
    assert env.keys() >= KEYS
    assert env["device"] == "cpu"
    assert env["torch_build"] == torch.__version__
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    assert torch.__version__.startswith(env["packages"]["torch"])
    assert set(env["packages"]) >= {"torchvision", "numpy", "mlflow", "optuna", "pandas", "pydantic", "cbam-ablation"}
    assert env["torch_num_threads"] == torch.get_num_threads()
    assert env["cuda_available"] == torch.cuda.is_available()
    assert len(env["cuda_devices"]) == (torch.cuda.device_count() if env["cuda_available"] else 0)
    commit = env["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    assert (env["git_dirty"] is None) == (commit is None)
    json.dumps(env)  # an MLflow artifact: must serialise as is


def test_environment_commit_matches_git_when_available():
    root = env_module.PROJECT_ROOT
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except OSError:
        pytest.skip("git is not installed")
    if done.returncode != 0:
        pytest.skip("the project is not a git checkout")
    assert environment()["git_commit"] == done.stdout.strip()


def test_environment_never_raises_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "")
    env = environment()
    assert env["git_commit"] is None and env["git_dirty"] is None
    assert env["device"] is None


def test_git_state_outside_a_checkout_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even if tmp lies inside a repository
    (tmp_path / "pyproject.toml").write_text("")
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}
    assert git_state(tmp_path / "missing") == {"git_commit": None, "git_dirty": None}


def test_missing_package_reads_not_installed():
    assert env_module.package_version("surely-not-a-real-distribution-xyz") == "not installed"
