"""Worker options to argv and back: the flags a sweep gives its worker processes, and a worker its run-cell launch,
read back into the very same options."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ablation import cli
from ablation.scheduler.launch import (
    CellLaunch,
    CellOptions,
    WorkerOptions,
    experiment_argv,
    run_cell_command,
    worker_command,
)


def _parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def test_worker_options_survive_the_worker_command_line(tmp_path: Path) -> None:
    options = WorkerOptions(
        tracking_uri="sqlite:///somewhere/mlflow.db",
        storage_url="postgresql+psycopg2://user@db/sweeps",
        cell=CellOptions(checkpoint_dir=tmp_path / "checkpoints", log_checkpoints=True, progress=False, workers=2),
        heartbeat_interval=5,
        grace_period=20,
        gpus_per_job=2,
        name="w1-gpu0,1",
        epoch_lines=True,
        store_wait_s=12.5,  # --store-wait: explicit, a written Slurm script runs without this process's environment
    )
    experiment = experiment_argv("experiments/demo.yaml", ["train.epochs=2", "seeds=[0, 1]"])
    command = worker_command(experiment, options, options.name)
    assert command[:4] == [sys.executable, "-m", "ablation", "worker"]  # the module, never a file of a checkout
    args = _parse(*command[3:])
    assert args.overrides == ["train.epochs=2", "seeds=[0, 1]"] and Path(args.experiment).is_absolute()
    assert WorkerOptions.from_args(args, progress=False, name=args.name) == options


def test_defaults_survive_too() -> None:
    args = _parse("worker", "exp.yaml")
    options = WorkerOptions.from_args(args, progress=True)
    again = WorkerOptions.from_args(_parse("worker", "exp.yaml", *options.to_argv("worker")), progress=True)
    assert again == options and not options.cell.log_checkpoints and options.cell.device == "auto"


def test_a_cell_launch_survives_the_run_cell_command_line(tmp_path: Path) -> None:
    options = WorkerOptions(tracking_uri="http://mlflow:5000", storage_url="sqlite:///s.db")
    options.cell.checkpoint_dir = tmp_path
    for run_id, device, expected in ((None, "auto", "cuda"), ("abc123", "cuda:1", "cuda:1"), (None, "cpu", "cpu")):
        options.cell.device = device
        launch = CellLaunch.for_worker(options, "0123456789ab", "parent9", run_id)
        assert launch.device == expected  # a multi-GPU cell runs on GPUs unless a device is named
        command = run_cell_command(("exp.yaml",), launch, processes=2)
        assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        at = command.index("run-cell")
        assert command[at - 2 : at] == ["-m", "ablation"]
        assert CellLaunch.from_args(_parse(*command[at:])) == launch


def test_a_bundled_experiment_reaches_the_workers_as_its_file(tmp_path, monkeypatch) -> None:
    """``ablation sweep demo`` from any folder: the workers it starts are given the bundled file itself."""
    from ablation.experiment.bundled import bundled_folder

    monkeypatch.chdir(tmp_path)
    (path, *rest) = experiment_argv("demo", ["train.epochs=1"])
    assert Path(path) == (bundled_folder() / "demo.yaml").resolve() and rest == ["--set", "train.epochs=1"]


def test_a_child_process_runs_the_package_its_parent_runs() -> None:
    from ablation.scheduler.launch import child_environment

    root = str(Path(__file__).resolve().parents[2])  # the folder holding this checkout's ablation/
    env = child_environment({"PYTHONPATH": f"/elsewhere{os.pathsep}{root}"})
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere"]
