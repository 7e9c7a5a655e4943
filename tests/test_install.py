"""The package as a user installs it: ``pip install .`` (not editable) into a fresh virtual environment, then the
``ablation`` command from an empty folder. The command line, the worker processes it starts and the bundled
experiments must all come from the installed copy: nothing may reach back into a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.folders import ROOT
from tests.support.tiny import tiny_experiment


def _tracked_copy(folder: Path) -> Path:
    """The checkout's tracked files, copied: pip builds there and writes nothing into the checkout."""
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listing.decode().split("\0")):
        source, target = ROOT / name, folder / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return folder


def _clean_env(venv: Path) -> dict[str, str]:
    """The virtual environment's own, with nothing that would point back at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_an_installed_copy_sweeps_with_worker_processes_from_an_empty_folder(tmp_path, tiny_npz):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the tracked files to install are unknown")
    source = _tracked_copy(tmp_path / "source")
    venv = tmp_path / "venv"
    # The machine's torch, MLflow and the rest are reused (--system-site-packages); the package itself is installed
    # into the new environment, from a wheel built of the tracked files.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = _clean_env(venv)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(source)]
    installed = subprocess.run(pip, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ablation; print(ablation.__file__)"],
        capture_output=True, text=True, env=env, cwd=empty, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    # A bundled experiment by name.
    profile = subprocess.run(
        ["ablation", "profile", "demo", "--format", "csv"], capture_output=True, text=True, env=env, cwd=empty
    )
    assert profile.returncode == 0 and profile.stdout.startswith("description,"), profile.stderr[-3000:]
    assert profile.stdout.count("ResNet18 (width=0.25)") == 5

    # A sweep of the user's own experiment file with a worker process beside the sweep's own.
    experiment = tmp_path / "mine.yaml"
    experiment.write_text(tiny_experiment(tiny_npz, "  - model.attention: [{type: none}]\n", "[0, 1]", epochs=1))
    sweep = subprocess.run(
        ["ablation", "sweep", str(experiment), "--workers", "2", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=empty, timeout=900,
    )  # fmt: skip
    out = sweep.stdout + sweep.stderr
    assert sweep.returncode == 0, out[-3000:]
    assert "[sweep] started 1 worker processes: w1" in out and "[w1] finished " in out, out[-3000:]
    assert "sweep tiny: 2/2 cells done, 0 failed, 0 pending" in out, out[-3000:]
    assert sorted(p.name for p in empty.iterdir()) == ["checkpoints", "mlflow.db", "mlruns", "results", "sweeps.db"]
