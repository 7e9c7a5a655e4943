"""What a run ran on, logged beside its numbers as an MLflow artifact.

A reader who finds a 0.3% gap between two arms needs to know whether both ran on the same code (git commit and
whether the tree was dirty), the same library versions (cuDNN and torch change kernels and therefore results) and
the same hardware. ``environment()`` collects that in one JSON-safe dict. It never raises: a missing git, a
package that is not installed or a broken CUDA driver becomes a ``None`` / "not installed" entry, because losing a
training run to the bookkeeping that describes it would be the worse outcome.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ablation.tracking.names import GIT_COMMIT, GIT_DIRTY, SOURCE_NAME, SOURCE_TYPE, SOURCE_TYPE_LOCAL, USER

DISTRIBUTION = "cbam-ablation"
PACKAGES = ("torch", "torchvision", "numpy", "mlflow", "optuna", "pandas", "pydantic", DISTRIBUTION)
NOT_INSTALLED = "not installed"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the package: a checkout, or site-packages
_GIT_TIMEOUT_S = 10


def package_version(name: str) -> str:
    """The installed distribution's version (what pip resolved), or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED
    except Exception:  # a broken dist-info must not cost a run
        return NOT_INSTALLED


def _git(*args: str, cwd: Path) -> str | None:
    """stdout of a git command in ``cwd``, or None when git is absent, fails, or hangs."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The checkout's HEAD commit and whether its tree differs from it; both None when there is no checkout.

    The commit is only reported when ``root`` is itself a project checkout (it holds a pyproject.toml): an
    installed copy in a virtual environment that happens to sit inside some repository would otherwise report
    that repository's commit, which says nothing about the code that ran.
    """
    state: dict[str, Any] = {"git_commit": None, "git_dirty": None}
    try:
        if not (root / "pyproject.toml").is_file():
            return state
    except OSError:
        return state
    head = _git("rev-parse", "HEAD", cwd=root)
    commit = head.strip() if head else ""
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        return state
    state["git_commit"] = commit
    status = _git("status", "--porcelain", cwd=root)
    state["git_dirty"] = None if status is None else bool(status.strip())
    return state


def source_tags(source: str) -> dict[str, str]:
    """MLflow's standard source tags for a run of the experiment file ``source``: where it came from, who ran it and,
    from a git checkout of the harness, its commit (MLflow's dashboard shows, filters and groups by these)."""
    tags = {SOURCE_NAME: source, SOURCE_TYPE: SOURCE_TYPE_LOCAL, USER: _user()}
    git = git_state()
    if git["git_commit"]:
        tags[GIT_COMMIT] = git["git_commit"]
        if git["git_dirty"] is not None:
            tags[GIT_DIRTY] = str(git["git_dirty"]).lower()
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database (a container's arbitrary uid)
        return f"uid-{os.getuid()}"


def cuda_state() -> dict[str, Any]:
    """CUDA and cuDNN versions and the visible devices, as far as the driver lets us see them."""
    state: dict[str, Any] = {
        "cuda_available": False,
        "cuda_version": None,
        "cudnn_version": None,
        "cuda_devices": [],
    }
    try:
        state["cuda_version"] = torch.version.cuda  # the toolkit torch was built with, even without a GPU
        state["cuda_available"] = bool(torch.cuda.is_available())
        if torch.backends.cudnn.is_available():
            state["cudnn_version"] = torch.backends.cudnn.version()
        if state["cuda_available"]:
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                state["cuda_devices"].append(
                    {
                        "index": index,
                        "name": props.name,
                        "capability": f"{props.major}.{props.minor}",
                        "total_memory_gib": round(props.total_memory / 2**30, 2),
                    }
                )
    except Exception as exc:  # a half-broken driver: record what went wrong instead of failing the run
        state["cuda_error"] = f"{type(exc).__name__}: {exc}"
    return state


def _usable_cpus() -> int | None:
    """CPUs this process may run on (the container or taskset limit), which os.cpu_count() does not see."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def environment(device: str | None = None) -> dict[str, Any]:
    """Everything needed to judge whether two numbers are comparable, as a JSON-serialisable dict.

    ``device`` is the device string the run asked for ("cuda:0", "cpu", ...), recorded verbatim because
    ``cuda_available`` alone does not tell whether the run used the GPU.
    """
    try:
        hostname = socket.gethostname()
    except OSError:
        hostname = None
    try:
        threads: int | None = torch.get_num_threads()
    except Exception:
        threads = None
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": hostname,
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": _usable_cpus(),
        "torch_num_threads": threads,
        # torch.__version__ carries the local build tag (e.g. "+cu130") that the distribution version drops.
        "torch_build": torch.__version__,
        "packages": {name: package_version(name) for name in PACKAGES},
        **cuda_state(),
        "device": device,
        **git_state(),
    }
