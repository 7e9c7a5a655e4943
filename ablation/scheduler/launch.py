"""The options of whatever runs cells, and their command line, both ways, in one place.

``runner.py sweep`` starts ``runner.py worker`` processes, and a worker with ``--gpus-per-job`` > 1 starts a
torchrun launch of ``runner.py run-cell`` per cell: each must receive exactly the options it was given. The flags
are defined here (``add_worker_args``, ``add_run_cell_args``), read back into options here
(``WorkerOptions.from_args``, ``CellLaunch.from_args``) and spelled for a child process here
(``worker_command``, ``run_cell_command``). Torch-free: ``runner.py`` builds its parser before any config is read.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ablation.core.errors import ConfigError
from ablation.experiment.bundled import experiment_path
from ablation.tracking.stores import mark_set_up

# A child process runs the command line as a module, never a file of a checkout: installed or not, it is the same
# command (``ablation.cli``).
MODULE = "ablation"
# What a sweep writes on the stdin of the worker processes it started once its stores and state are set up.
SWEEP_READY = b"ready\n"
# How often a worker the sweep started looks for work while other cells run: at the end of a sweep, the sweep
# waits for each of its workers to notice that every cell is done (a remote worker keeps the default, 2 s: many of
# them poll a database every machine shares).
LOCAL_POLL_S = 0.5


@dataclass
class CellOptions:
    device: str = "auto"
    checkpoint_dir: Path = Path("checkpoints")
    log_checkpoints: bool = False  # also log the final checkpoint as an MLflow artifact
    progress: bool = True  # per-epoch progress bars
    workers: int = 4  # DataLoader workers (ImageNet only; small datasets live on the device)
    stop_after_epochs: int | None = None  # end the cell after this many epochs (an interruption, for tests)


@dataclass
class WorkerOptions:
    tracking_uri: str
    storage_url: str
    cell: CellOptions = field(default_factory=CellOptions)
    heartbeat_interval: int = 15
    grace_period: int = 60
    poll_s: float = 2.0
    name: str = "worker"
    gpus_per_job: int = 1  # > 1: each cell runs as a torchrun-style launch of that many processes (DDP)
    epoch_lines: bool = False  # one line per epoch (for workers whose progress bars nobody sees)
    # A worker process started by ``runner.py sweep`` on this machine: it imports while the sweep sets the stores
    # up, joins when told (``wait_for_sweep``), trusts the schemas the sweep has just made or checked, and polls
    # every LOCAL_POLL_S.
    started_by_sweep: bool = False
    # --store-wait: how long a store that went away is waited for (None: $ABLATION_STORE_WAIT, else the default).
    # Passed on explicitly, not only through the environment: a written sbatch script runs later, elsewhere.
    store_wait_s: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, progress: bool, name: str = "worker") -> WorkerOptions:
        """The options of ``add_worker_args``'s flags; ``progress``: bars (else a line per epoch)."""
        # Optuna, MLflow: only where a worker runs (this module is read by the parser, before any input is checked)
        from ablation.scheduler.queue import DEFAULT_STORAGE
        from ablation.tracking.mlflow_store import resolve_tracking_uri

        started_by_sweep = getattr(args, "started_by_sweep", False)  # only ``runner.py worker`` has the flag
        if args.grace_period <= args.heartbeat_interval:
            raise ConfigError(
                "--grace-period",
                args.grace_period,
                f"a live worker would look dead between two heartbeats; allowed: more than --heartbeat-interval "
                f"({args.heartbeat_interval})",
            )
        return cls(
            tracking_uri=resolve_tracking_uri(args.tracking_uri),
            storage_url=args.storage or DEFAULT_STORAGE,
            cell=CellOptions(
                device=args.device,
                checkpoint_dir=Path(args.checkpoint_dir),
                log_checkpoints=args.log_checkpoints,
                progress=progress,
                workers=args.loader_workers,
            ),
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
            gpus_per_job=args.gpus_per_job,
            name=name,
            epoch_lines=not progress,
            started_by_sweep=started_by_sweep,
            poll_s=LOCAL_POLL_S if started_by_sweep else cls.poll_s,
            store_wait_s=getattr(args, "store_wait", None),
        )

    def to_argv(self, name: str) -> list[str]:
        """The flags that give a ``runner.py worker`` process named ``name`` these options. The device is left to
        the process's environment (a slot's ``CUDA_VISIBLE_DEVICES``, ``ablation.scheduler.slots``)."""
        argv = [
            *("--storage", self.storage_url),
            *("--tracking-uri", self.tracking_uri),
            *("--checkpoint-dir", str(self.cell.checkpoint_dir)),
            *("--heartbeat-interval", str(self.heartbeat_interval)),
            *("--grace-period", str(self.grace_period)),
            *("--gpus-per-job", str(self.gpus_per_job)),
            *("--name", name),
            *("--loader-workers", str(self.cell.workers)),
        ]
        argv += ["--log-checkpoints"] if self.cell.log_checkpoints else []
        argv += ["--store-wait", f"{self.store_wait_s:g}"] if self.store_wait_s is not None else []
        return argv + (["--started-by-sweep"] if self.started_by_sweep else [])


def wait_for_sweep(options: WorkerOptions) -> bool:
    """In a worker process the sweep started: wait until the sweep has set its stores and state up (its line on
    stdin), then mark the storage as set up (``ablation.tracking.stores.mark_set_up``: its tables are not created or
    checked again). False when the sweep ended first (stdin closed without the line: it failed, was stopped or killed):
    this worker has nothing to join."""
    if sys.stdin.buffer.readline() != SWEEP_READY:
        return False
    mark_set_up(options.storage_url)
    # The sweep's end waits for this process's exit, whose last garbage collections would walk every object that
    # torch, MLflow and the cells left: frozen, they are not walked (exiting frees the memory all the same).
    atexit.register(gc.freeze)
    return True


@dataclass(frozen=True)
class CellLaunch:
    """What every process of a ``run-cell`` launch is told: the cell, its sweep's parent run, the run to reopen
    (None: a new one), the stores and the device type."""

    cell_hash: str
    parent_run: str
    run_id: str | None
    tracking_uri: str
    checkpoint_dir: Path
    device: str

    @classmethod
    def for_worker(cls, options: WorkerOptions, cell_hash: str, parent_run: str, run_id: str | None) -> CellLaunch:
        # A multi-GPU cell runs on GPUs: "auto" means "cuda" here; a named device is passed on as it is.
        device = "cuda" if options.cell.device in ("auto", "cuda") else options.cell.device
        return cls(cell_hash, parent_run, run_id, options.tracking_uri, Path(options.cell.checkpoint_dir), device)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CellLaunch:
        """The launch of ``add_run_cell_args``'s flags."""
        # MLflow: only where a cell runs (this module is read by the parser, before any input is checked)
        from ablation.tracking.mlflow_store import resolve_tracking_uri

        return cls(
            cell_hash=args.cell,
            parent_run=args.parent_run,
            run_id=args.run_id,
            tracking_uri=resolve_tracking_uri(args.tracking_uri),
            checkpoint_dir=Path(args.checkpoint_dir),
            device=args.device,
        )

    def to_argv(self) -> list[str]:
        argv = [
            *("--cell", self.cell_hash),
            *("--parent-run", self.parent_run),
            *("--tracking-uri", self.tracking_uri),
            *("--checkpoint-dir", str(self.checkpoint_dir)),
            *("--device", self.device),
        ]
        return argv + (["--run-id", self.run_id] if self.run_id else [])


def experiment_argv(experiment: str, overrides: list[str]) -> tuple[str, ...]:
    """The experiment file (a bundled experiment's name resolved to its file) and its --set overrides, as the
    processes a command starts must receive them: whatever their working folder, they read the very same file."""
    return (str(experiment_path(experiment).resolve()), *(x for o in overrides for x in ("--set", o)))


def worker_command(experiment_args: tuple[str, ...], options: WorkerOptions, name: str) -> list[str]:
    """The ``python -m ablation worker`` command line that joins the sweep of ``experiment_args``."""
    return [sys.executable, "-m", MODULE, "worker", *experiment_args, *options.to_argv(name)]


def run_cell_command(experiment_args: tuple[str, ...], launch: CellLaunch, processes: int) -> list[str]:
    """A torchrun launch of ``processes`` ranks of ``python -m ablation run-cell``, on this machine."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*torchrun, "-m", MODULE, "run-cell", *experiment_args, *launch.to_argv()]


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process this one starts on this machine (a worker, a torchrun cell): the folder holding
    the running ``ablation`` package first on PYTHONPATH, so the child runs the very code its parent runs (a
    checkout beside an installed copy, a clone under test) and not whatever ``ablation`` its working folder or
    environment would find first. For an installed package that folder is site-packages: nothing changes."""
    environ = dict(os.environ if environ is None else environ)
    root = str(Path(__file__).resolve().parents[2])
    rest = [part for part in environ.get("PYTHONPATH", "").split(os.pathsep) if part and part != root]
    environ["PYTHONPATH"] = os.pathsep.join([root, *rest])
    return environ


# ---- the flags


def seconds_at_least(minimum: float):
    """An argparse type: a number of seconds >= minimum (not NaN, not infinite)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not minimum <= value < float("inf"):  # NaN (not a number) too
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: a number of seconds >= {minimum:g}")
        return value

    return parse


def at_least(minimum: int):
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: an integer >= {minimum}")
        return value

    return parse


def add_experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="an experiment file, e.g. experiments/demo.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config key (dotted, value read as YAML), e.g. --set train.epochs=2; repeatable",
    )


def add_tracking_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder)",
    )
    parser.add_argument(
        "--store-wait",
        type=seconds_at_least(0),
        default=None,
        metavar="SECONDS",
        help="how long a store that went away is waited for before stopping, resumable "
        "(default: $ABLATION_STORE_WAIT, else 300)",
    )


def add_storage_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=None,
        help="the sweep's state: an Optuna RDB URL (default: sqlite:///sweeps.db in this folder; several machines: "
        "postgresql+psycopg2://user@host/db)",
    )


def add_worker_args(parser: argparse.ArgumentParser, named: bool = False) -> None:
    """The flags of ``WorkerOptions`` (``named``: also ``--name``, which only a worker process takes)."""
    add_tracking_arg(parser)
    add_storage_arg(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1")
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="epoch checkpoints (shared by all machines)")
    parser.add_argument("--log-checkpoints", action="store_true", help="log each cell's final checkpoint to MLflow")
    parser.add_argument(
        "--gpus-per-job", type=at_least(1), default=1, help="GPUs per cell, DistributedDataParallel (1)"
    )
    parser.add_argument(
        "--loader-workers", type=at_least(0), default=4, help="DataLoader workers for ImageNet (default 4)"
    )
    parser.add_argument("--heartbeat-interval", type=at_least(1), default=15, help="seconds between heartbeats (15)")
    parser.add_argument(
        "--grace-period",
        type=at_least(1),
        default=60,
        help="seconds without heartbeat before a cell is taken up again (60)",
    )
    if named:
        parser.add_argument("--name", default=None, help="a name for this worker's log lines")
        # Internal: a sweep's own worker processes (WorkerOptions.started_by_sweep).
        parser.add_argument("--started-by-sweep", action="store_true", help=argparse.SUPPRESS)


def add_run_cell_args(parser: argparse.ArgumentParser) -> None:
    """The flags of ``CellLaunch``."""
    add_tracking_arg(parser)
    parser.add_argument("--cell", required=True, help="the cell's config hash")
    parser.add_argument("--parent-run", required=True)
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument("--device", default="auto")
