"""Command line of the CBAM ablation harness: argument parsing and dispatch only; the work is in the subpackages.

Run as ``ablation`` (installed), ``python -m ablation`` or, in a checkout, ``python runner.py``:

ablation sweep demo                                  # a bundled experiment by name, or an experiment file
ablation table experiments/demo.yaml                 # the paper-style table, from MLflow
ablation profile table4_backbones --format md

The top of the package: it may import every subpackage (each in the command that needs it, after the config is
checked, so a mistake is one line before torch, MLflow or Optuna is imported).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ablation.core.errors import ConfigError, StoreError, UsageError
from ablation.core.outages import OUTAGE_EXIT, Outage
from ablation.core.patience import ENV as STORE_WAIT_ENV
from ablation.core.stopping import request_stop, reset_stop
from ablation.data.custom import forget as forget_custom_data
from ablation.data.sources import forget_arrays
from ablation.engine.threads import configure_threads
from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.prepared import prepare_sweep, read_only_sweep
from ablation.experiment.schema import load_experiment
from ablation.report.formats import PROFILE_FORMATS, TABLE_FORMATS
from ablation.scheduler.launch import (
    CellLaunch,
    WorkerOptions,
    add_experiment_args,
    add_run_cell_args,
    add_storage_arg,
    add_tracking_arg,
    add_worker_args,
    at_least,
    experiment_argv,
    worker_command,
)
from ablation.scheduler.slots import parse_workers, plan_slots, user_thread_cap
from ablation.slurm.submit import SlurmOptions, submit_sweep, time_minutes, write_script
from ablation.tracking.stores import probe_storage, probe_tracking

# ---- one line for every mistake


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line like every other input error: flag, value, what is allowed; raised as
    a ``UsageError`` (printed by ``main``, raised to a caller of the Python API)."""

    def error(self, message: str) -> None:
        choice = re.match(r"argument (\S+): invalid choice: '?([^']*)'? \(choose from (.*)\)", message)
        number = re.match(r"argument (\S+): invalid (\w+) value: '?([^']*)'?", message)
        if choice:
            flag, value, allowed = choice.groups()
            message = f"{flag}: {value!r} is not allowed; allowed: {allowed.replace(chr(39), '')}"
        elif number:
            flag, kind, value = number.groups()
            message = f"{flag}: {value!r} is not allowed; allowed: {'an integer' if kind == 'int' else 'a number'}"
        elif message.startswith("argument "):
            message = message.removeprefix("argument ")
        else:
            message = f"{message} (see {self.prog} --help)"
        raise UsageError(message)


def _slurm_time(text: str) -> str:
    try:
        time_minutes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# ---- shared arguments (the flags that pass between processes are in ablation.scheduler.launch)


def _experiment_args(args: argparse.Namespace) -> tuple[str, ...]:
    return experiment_argv(args.experiment, args.overrides)


def experiment_arms(args: argparse.Namespace, check_paths: bool = True):
    """The experiment and its arms, every config value and the data checked, before anything imports torch: a
    mistake in an experiment file or a --set is reported in well under a second."""

    experiment = load_experiment(args.experiment, args.overrides)
    return experiment, expand_arms(experiment, check_paths=check_paths)


def _prepare(args: argparse.Namespace, validated=None):
    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.engine.train import resolve_device

    experiment, arms = validated or experiment_arms(args)
    resolve_device(args.device)  # a device that does not exist here is an input error, like a bad config value
    return prepare_sweep(experiment, _experiment_args(args), arms)


def _read_only(args: argparse.Namespace):

    return read_only_sweep(*experiment_arms(args))


# ---- commands


def cmd_profile(args: argparse.Namespace) -> None:
    _, arms = experiment_arms(args, check_paths=False)
    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.report.profile import profile_arms, render

    sys.stdout.write(render(profile_arms(arms), args.format))


def run_sweep_command(args: argparse.Namespace):
    """``sweep``'s work, without its printing: check everything, plan the device slots, run every cell (resuming
    what an earlier run left). Returns (report, prepared). What ``ablation.sweep`` calls too: same checks, same
    one-line errors, same resumption."""
    workers = parse_workers(args.workers)
    validated = experiment_arms(args)
    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    import torch

    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.scheduler.local import run_sweep

    num_gpus = torch.cuda.device_count() if args.device in ("auto", "cuda") else 0
    slots = plan_slots(
        workers, num_gpus, jobs_per_gpu=args.jobs_per_gpu, gpus_per_job=args.gpus_per_job, thread_cap=user_thread_cap()
    )
    prepared = _prepare(args, validated)
    # Progress bars only when this process is the only worker (several would garble one terminal).
    only_here = len(slots) == 1 and args.gpus_per_job == 1
    options = WorkerOptions.from_args(args, progress=only_here and not args.no_progress)
    return run_sweep(prepared, options, slots, retry_failed=args.retry_failed), prepared


def cmd_sweep(args: argparse.Namespace) -> None:
    report, prepared = run_sweep_command(args)
    print(
        f"sweep {prepared.experiment.name}: {report.done}/{report.total} cells done, {len(report.failed)} failed, "
        f"{report.pending} pending; wall {report.wall_s:.1f}s"
    )
    for name, reason in report.failed.items():
        print(f"  failed: {name}: {reason.splitlines()[0] if reason else ''}")
    if report.done:
        args.format, args.out = TABLE_FORMATS[0], None
        cmd_table(args, prepared)
    if report.stopped_workers and report.pending:
        print(
            f"error: {report.stopped_workers} worker process(es) stopped on an outage of the machine or a store (the "
            "line above says which); once it is fixed, run the same command to resume",
            file=sys.stderr,
        )
        raise SystemExit(OUTAGE_EXIT)
    if report.failed:
        raise SystemExit(1)


def cmd_worker(args: argparse.Namespace) -> None:
    import os

    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.scheduler.worker import run_worker

    prepared = _prepare(args)
    name = args.name or f"worker-{os.getpid()}"
    report = run_worker(prepared, WorkerOptions.from_args(args, progress=False, name=name))
    lost = f", {report.lost} taken over by other workers while it was cut off" if report.lost else ""
    print(
        f"[{name}] finished {report.finished} cells, {len(report.failed)} failed, {report.already_done} already "
        f"done{lost}",
        flush=True,
    )


def cmd_status(args: argparse.Namespace) -> None:
    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.scheduler.queue import DEFAULT_STORAGE
    from ablation.scheduler.status import render_status, sweep_status
    from ablation.slurm.status import render_arrays
    from ablation.tracking.mlflow_store import resolve_tracking_uri

    prepared = _read_only(args)
    storage, uri = args.storage or DEFAULT_STORAGE, resolve_tracking_uri(args.tracking_uri)
    probe_storage(storage, write=False)
    probe_tracking(uri, write=False)
    frame = sweep_status(prepared, storage, uri)
    if frame is None:
        print(f"{prepared.experiment.name}: not started in {storage} for {uri} ({len(prepared.cells)} cells)")
        return
    sys.stdout.write(render_status(frame) + render_arrays(frame))


def cmd_slurm(args: argparse.Namespace) -> None:

    # Every path the tasks see must mean the same on every node: absolute, on the shared filesystem.
    args.experiment = str(Path(args.experiment).resolve())
    args.checkpoint_dir = str(Path(args.checkpoint_dir).resolve())
    # Without --submit the data may be on the cluster only.
    experiment, arms = experiment_arms(args, check_paths=args.submit)

    cells = len(expand_cells(experiment, arms))
    options = SlurmOptions.from_args(args, experiment.name, cells)
    if not args.tracking_uri and not args.submit:
        args.tracking_uri = "http://MLFLOW-SERVER:5000"  # a placeholder the user edits in the written script
    worker_options = WorkerOptions.from_args(args, progress=False, name="slurm")
    command = [*worker_command(_experiment_args(args), worker_options, "slurm"), "--device", args.device]
    if args.submit:
        submit_sweep(experiment, arms, _experiment_args(args), worker_options, command, options)
    else:
        write_script(experiment.name, cells, command, options, Path(args.out or f"slurm-{experiment.name}.sh"))


def cmd_run_cell(args: argparse.Namespace) -> None:
    """One cell inside a torchrun launch (every rank runs this; rank 0 tracks)."""
    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.scheduler.cell import run_distributed_cell

    run_distributed_cell(_prepare(args), CellLaunch.from_args(args))


def cmd_table(args: argparse.Namespace, prepared=None) -> None:
    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.report.table import render

    if prepared is None:
        prepared = _read_only(args)
    out_dir = Path(args.out) if args.out else Path("results") / prepared.experiment.name
    found = write_table(prepared, args.tracking_uri, out_dir)
    if isinstance(found, str):
        print(found)
        return
    results, written, parent, hint = found
    sys.stdout.write(render(results.summary, results.prepared, args.format))
    print(f"written: {', '.join(str(p) for p in written)}", file=sys.stderr)
    if parent:
        print(f"logged to the sweep's parent run {parent} (artifacts: results/)", file=sys.stderr)
        print(hint, file=sys.stderr)


def write_table(prepared, tracking_uri: str | None, out_dir: Path):
    """The results of ``prepared`` read from the tracking store, written to ``out_dir`` (table, figures, runs.csv)
    and attached to the sweep's parent run: (results, written paths, parent run id or None, the dashboard's link),
    or one line saying why there is nothing to tabulate."""
    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.report.outputs import read_results, write_results
    from ablation.report.table import log_to_parent
    from ablation.tracking.mlflow_store import SweepStore, dashboard_hint, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    probe_tracking(uri, write=False)
    results = read_results(prepared, uri)
    if isinstance(results, str):
        return results
    written = write_results(results, out_dir, uri)
    try:
        parent = log_to_parent(results.prepared, uri, written)
    except Exception as exc:  # a read-only store still gets its table, just not attached to the run
        parent = None
        print(f"not attached to the sweep's parent run ({str(exc).strip().splitlines()[0][:200]})", file=sys.stderr)
    return results, written, parent, dashboard_hint(uri, SweepStore(uri, prepared.experiment).experiment_id)


def cmd_gradcam(args: argparse.Namespace) -> None:
    # torch, MLflow, Optuna or pandas: imported by the command that needs them, once its input is checked
    from ablation.report.gradcam import gradcam_for_experiment, log_gradcam
    from ablation.tracking.mlflow_store import SweepStore, resolve_tracking_uri

    prepared = _read_only(args)
    experiment = prepared.experiment
    probe_tracking(resolve_tracking_uri(args.tracking_uri), write=False)
    out_dir = Path(args.out) if args.out else Path("results") / experiment.name
    paths = gradcam_for_experiment(
        prepared, Path(args.checkpoint_dir), out_dir, images=args.images, seed_index=args.seed_index, device=args.device
    )
    store = SweepStore(resolve_tracking_uri(args.tracking_uri), experiment)
    parent = log_gradcam(store, prepared, paths)
    print(f"written: {', '.join(map(str, paths))}" + (f"; logged to parent run {parent} (gradcam/)" if parent else ""))


# ---- parser


def _prog() -> str:
    """How the command was invoked, for its usage lines."""
    return {"__main__.py": "python -m ablation", "runner.py": "runner.py"}.get(Path(sys.argv[0]).name, "ablation")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=_prog(), description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    profile = commands.add_parser(
        "profile",
        help="params and GMACs of every arm, beside the paper's numbers; no training",
        description="Print one row per arm of the grid: description, arch, attention, layout, params and GMACs "
        "(multiply-accumulates at the experiment's input size, the paper's 'GFLOPs'), and the paper's printed "
        "params / GFLOPs where the arm is one of its rows. Nothing is trained and no data is read.",
    )
    add_experiment_args(profile)
    profile.add_argument("--format", choices=PROFILE_FORMATS, default=PROFILE_FORMATS[0])
    profile.set_defaults(func=cmd_profile)

    sweep = commands.add_parser(
        "sweep",
        help="train every cell (arm x seed) of an experiment on the local devices, tracked in MLflow",
        description="Validate the experiment, then train every cell: one worker per device slot pulls cells from "
        "the sweep's state (an Optuna storage), one MLflow child run per cell under a parent run per sweep. A "
        "rerun starts nothing for finished cells, resumes interrupted ones from their last epoch checkpoint, and "
        "skips failed ones unless --retry-failed. Prints the table at the end.",
    )
    add_experiment_args(sweep)
    add_worker_args(sweep)
    sweep.add_argument(
        "--workers", default="1", help="auto (one per GPU slot) or N (default 1; without GPUs, N CPU workers)"
    )
    sweep.add_argument("--jobs-per-gpu", type=at_least(1), default=1, help="cells packed on one GPU (default 1)")
    sweep.add_argument("--retry-failed", action="store_true", help="run cells that failed before again")
    sweep.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    sweep.set_defaults(func=cmd_sweep)

    worker = commands.add_parser(
        "worker",
        help="join a sweep from any machine: pull cells from --storage until none is left",
        description="Run cells of the sweep until every cell is done or failed. Start one per GPU on as many "
        "machines as you like, all with the same --storage (PostgreSQL) and --tracking-uri.",
    )
    add_experiment_args(worker)
    add_worker_args(worker, named=True)
    worker.set_defaults(func=cmd_worker)

    status = commands.add_parser("status", help="cells pending / running / done / failed, with their MLflow run ids")
    add_experiment_args(status)
    add_tracking_arg(status)
    add_storage_arg(status)
    status.set_defaults(func=cmd_status)

    slurm = commands.add_parser(
        "slurm",
        help="submit the sweep's workers as a Slurm job array (--submit), or write the sbatch script",
        description="An array of worker tasks sharing --storage (PostgreSQL) and --tracking-uri (an MLflow "
        "server); checkpoints in a folder every node sees. With --submit: the sweep is set up, the array submitted "
        "through submitit, and its id printed (runner.py status shows each task's Slurm state). Without: an "
        "sbatch script is written. A preempted or requeued task gives its cell back and resumes it from its last "
        "epoch checkpoint; near its time limit a task stops cleanly and requeues itself.",
    )
    add_experiment_args(slurm)
    add_worker_args(slurm)
    slurm.add_argument("--submit", action="store_true", help="submit the array now (else write the script)")
    slurm.add_argument("--tasks", type=at_least(1), default=None, help="array size (default: one per cell)")
    slurm.add_argument(
        "--gpus-per-task", type=at_least(0), default=None, help="GPUs per task (default --gpus-per-job; 0: none)"
    )
    slurm.add_argument("--cpus-per-task", type=at_least(1), default=8)
    slurm.add_argument("--time", type=_slurm_time, default="24:00:00", help="time limit per task")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument(
        "--sbatch", action="append", default=[], help="another sbatch option, e.g. --sbatch=--qos=high (repeatable)"
    )
    slurm.add_argument(
        "--setup",
        action="append",
        default=[],
        help="a shell line run before the worker, e.g. 'source ~/venv/bin/activate' (repeatable)",
    )
    slurm.add_argument("--python", default=None, help="the tasks' Python (default: this one; with --setup: python)")
    slurm.add_argument(
        "--signal-grace", type=at_least(10), default=120, help="seconds before the time limit to stop (120)"
    )
    slurm.add_argument(
        "--max-requeues", type=at_least(0), default=3, help="times a task requeues itself near its limit (3)"
    )
    slurm.add_argument("--log-dir", default=None, help="per-task logs (default slurm-logs/<experiment>; shared)")
    slurm.add_argument("--out", default=None, help="script path (default: slurm-<experiment>.sh)")
    slurm.set_defaults(func=cmd_slurm)

    run_cell = commands.add_parser(
        "run-cell", help="(internal) one cell inside a torchrun launch; workers start it for --gpus-per-job > 1"
    )
    add_experiment_args(run_cell)
    add_run_cell_args(run_cell)
    run_cell.set_defaults(func=cmd_run_cell)

    gradcam = commands.add_parser(
        "gradcam",
        help="Grad-CAM maps of the last stage for each arm, side by side (the paper's Figure 4)",
        description="For each arm (its first seed's last checkpoint), Grad-CAM (Selvaraju et al.) of the last stage "
        "on a fixed, class-balanced set of validation images, side by side: gradcam.png / .pdf in "
        "results/<experiment>/ (or --out), also logged to the sweep's parent run.",
    )
    add_experiment_args(gradcam)
    add_tracking_arg(gradcam)
    gradcam.add_argument("--checkpoint-dir", default="checkpoints")
    gradcam.add_argument("--images", type=at_least(1), default=8, help="validation images (default 8)")
    gradcam.add_argument(
        "--seed-index", type=at_least(0), default=0, help="which of the experiment's seeds (default: first)"
    )
    gradcam.add_argument("--device", default="auto")
    gradcam.add_argument("--out", default=None, help="output folder (default: results/<experiment>/)")
    gradcam.set_defaults(func=cmd_gradcam)

    table = commands.add_parser(
        "table",
        help="the paper-style table of an experiment's runs, from MLflow",
        description="Description | n | Params | GMACs | Top-1 err | Top-5 err (mean ± std over seeds) | Welch's "
        "t-test against the baseline row, with the paper's printed numbers and our difference to them for the "
        "paper's tables. Writes table.md/.tex/.csv/.html and figures (error bars, learning curves, cost against "
        "error; PNG and PDF) to results/<experiment>/ (or --out), logs them to the sweep's parent run, and prints "
        "the chosen format.",
    )
    add_experiment_args(table)
    add_tracking_arg(table)
    # Accepted, not read: a table reads the tracking store alone (ablation.tracking.results), whatever became of the
    # sweep's state. Kept so that a script written for the table of a tuned sweep, which once read it, still runs.
    table.add_argument("--storage", default=None, help="not needed: the table reads the tracking store alone")
    table.add_argument("--format", choices=TABLE_FORMATS, default=TABLE_FORMATS[0])
    table.add_argument("--out", default=None, help="output folder (default: results/<experiment>/)")
    table.set_defaults(func=cmd_table)
    return parser


def _interrupt(signum, frame) -> None:
    """Ctrl-C, SIGTERM (a scheduler's stop, ``kill``) or SIGUSR2 (Slurm's warning before a time limit, which
    ``runner.py slurm`` asks for) end a command cleanly, resumable. Only the first: Slurm signals every process of
    a task, a wrapper or a sweep passes the stop on too (a terminal's Ctrl-C reaches a sweep's workers, then the
    sweep's SIGTERM), and a second KeyboardInterrupt would cut short the clean-up that gives the cell back. A
    second Ctrl-C still interrupts: a person at the terminal can force the end."""
    # A handler that does nothing, not SIG_IGN: a signal already pending when the handler changes would otherwise
    # print "Signal 15 ignored due to race condition" with a traceback, which reads like a crash in a task's log.
    signal.signal(signal.SIGTERM, _already_stopping)
    signal.signal(signal.SIGUSR2, _already_stopping)
    if signum == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    request_stop()  # KeyboardInterrupt, now or once a store write in progress has ended


def _already_stopping(signum, frame) -> None:
    pass


def parse_command(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments; a bad flag raises ``UsageError`` (one line)."""
    return build_parser().parse_args(argv)


_HANDLED = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


@contextlib.contextmanager
def command_context(store_wait: float | None = None, *, restore_handlers: bool = True) -> Iterator[None]:
    """What every command runs inside, the command line and the Python API alike: OpenMP threads that sleep when
    idle (before torch is imported, where it is not yet), a stop (Ctrl-C, SIGTERM, Slurm's SIGUSR2, a notebook's
    interrupt) that ends the command cleanly and resumably, no stop pending from an earlier command in this process,
    and ``--store-wait`` for this process and the worker processes it starts. Everything is put back as found on
    the way out (a notebook or a test runs many commands in one process), the signal handlers unless
    ``restore_handlers`` is False: a process about to exit keeps handlers that absorb a late second stop (Slurm
    signals every process of a task, a sweep passes a stop on to its workers), instead of dying of it on the way out
    with another exit code than a clean stop's."""
    configure_threads()  # before anything imports torch (ablation/engine/threads.py)
    # Signal handlers can be set in the main thread only; a command run from another thread stops on its caller's.
    here = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.getsignal(signum) for signum in _HANDLED} if here else {}
    if here:
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGUSR2, _interrupt)
        if previous[signal.SIGINT] is signal.default_int_handler:  # not where it is ignored (a background job)
            signal.signal(signal.SIGINT, _interrupt)
    reset_stop()
    forget_custom_data()  # a user's data function runs again: a notebook may have changed the data since
    forget_arrays()
    saved_wait = os.environ.get(STORE_WAIT_ENV)
    if store_wait is not None:
        os.environ[STORE_WAIT_ENV] = f"{store_wait:g}"
    try:
        yield
    finally:
        for signum, handler in previous.items() if restore_handlers else ():
            signal.signal(signum, handler)
        if store_wait is not None:
            if saved_wait is None:
                os.environ.pop(STORE_WAIT_ENV, None)
            else:
                os.environ[STORE_WAIT_ENV] = saved_wait


def main(argv: list[str] | None = None) -> int:
    configure_threads()  # before anything imports torch (ablation/engine/threads.py)
    try:
        args = parse_command(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with command_context(getattr(args, "store_wait", None), restore_handlers=False):
        try:
            args.func(args)
        except (ConfigError, StoreError, UsageError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Outage as exc:  # the machine's or a store's fault: nothing is lost, a rerun resumes once it is fixed
            print(f"error: {exc}", file=sys.stderr)
            return OUTAGE_EXIT
        except KeyboardInterrupt:
            print("interrupted; run the same command to resume", file=sys.stderr)
            return 130
    return 0
