"""Real processes for kill and race tests, without paying the imports for each.

A test that SIGKILLs a sweep, or starts four workers in the same second, needs separate processes; starting each
with ``python runner.py`` costs ~5 s of imports (torch, MLflow, Optuna) on the 2-core machines. Here they are
forked from a multiprocessing *forkserver* that imported those once: each child is a fresh process that never ran
a thread pool (forking the test process itself, after training, could deadlock OpenMP), runs ``runner.main`` with
its own working folder and environment, and writes its output to a file.

Exit codes: CPython's forkserver reports a child's exit status over a pipe, and under load that report is
sometimes lost; ``Process.exitcode`` is then 255 whatever the child did (python/cpython#140867; it failed CI
once here, after a sweep that printed its table). So each child also writes the code it returns to
``<log>.exit``: that file is the exit code when the forkserver's is lost. A child that never got that far (killed
by a signal) leaves no file, and a lost status then reads as ``Finished.lost``, not as a made-up code.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(
    [
        *(
            "runner",
            "torch",
            "mlflow",
            "optuna",
            "pandas",
            "scipy.stats",
            "matplotlib.pyplot",
            "ablation.scheduler.local",
        ),
        *(
            "ablation.scheduler.worker",
            "ablation.scheduler.cell",
            "ablation.engine.train",
            "ablation.report.table",
            "ablation.report.plots",
        ),
        *("ablation.engine.environment", "ablation.scheduler.status", "mlflow.store.tracking.sqlalchemy_store"),
    ]
)


# popen_forkserver's exit code when the forkserver's report of the child's status never came.
_LOST = 255


@dataclass
class Finished:
    exitcode: int
    log: str
    lost: bool = False  # the forkserver lost the status of a child that died before returning (a signal)


def _main(argv: list[str], cwd: str, env: dict[str, str], log: str) -> None:
    os.chdir(cwd)
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import runner

    code = 1  # an exception other than SystemExit: multiprocessing prints it and exits 1
    try:
        code = runner.main(argv)
    except SystemExit as stop:
        code = stop.code
        raise
    finally:
        code = 0 if code is None else code if isinstance(code, int) else 1  # as sys.exit maps them
        Path(f"{log}.exit").write_text(str(code))
    sys.exit(code)


def finished(process, log: Path) -> Finished:
    """The outcome of a process from ``start`` that has ended, its exit code recovered when the forkserver lost it."""
    code, lost = process.exitcode, False
    record = Path(f"{log}.exit")
    if code == _LOST and record.exists():
        code = int(record.read_text())
    elif code == _LOST:
        lost = True
    return Finished(code, log.read_text() if log.exists() else "", lost)


def start(argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
    """``runner.py <argv>`` in a forked process; returns the multiprocessing Process (already started)."""
    process = _CONTEXT.Process(target=_main, args=(argv, str(cwd), dict(env or {}), str(log)))
    process.start()
    return process


def run(argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None, timeout: float = 600) -> Finished:
    """Run to the end (or to a kill); the exit code is -9 for a SIGKILL."""
    process = start(argv, cwd, log, env)
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"runner.py {' '.join(argv)} ran past {timeout}s; log: {log.read_text()[-3000:]}")
    return finished(process, log)


# ---- kill-and-rerun scenarios (tests/test_fault_injection.py, tests/test_tuned_faults.py)

# Two scenarios run at a time, each process on one thread (the reference too: the same numbers need the same threads).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def sweep_argv(experiment: Path) -> list[str]:
    """``runner.py sweep`` with a heartbeat and grace period short enough for a rerun to take cells up at once."""
    return ["sweep", str(experiment), "--no-progress", "--heartbeat-interval", "1", "--grace-period", "2"]


def reference_sweep(experiment: Path, folder: Path) -> tuple[Path, Path]:
    """(a folder holding an empty MLflow store to copy, its schema made once; a folder where an uninterrupted
    sweep of ``experiment`` ran to the end in a copy of it)."""
    import shutil

    from mlflow import MlflowClient

    template = folder / "template"
    template.mkdir()
    MlflowClient(f"sqlite:///{template / 'mlflow.db'}").search_experiments()
    reference = folder / "reference"
    shutil.copytree(template, reference)
    done = run(sweep_argv(experiment), reference, reference / "log.txt", ONE_THREAD)
    assert done.exitcode == 0, done.log[-3000:]
    return template, reference


def kill_and_rerun(experiment: Path, template: Path, folder: Path, point: str) -> tuple[Finished, Finished]:
    """A copy of ``template`` in ``folder``: the sweep SIGKILLed at ``point`` (``ABLATION_KILL_AT``), then run
    again to the end."""
    import shutil

    shutil.copytree(template, folder)
    killed = run(sweep_argv(experiment), folder, folder / "killed.txt", {**ONE_THREAD, "ABLATION_KILL_AT": point})
    rerun = run(sweep_argv(experiment), folder, folder / "rerun.txt", ONE_THREAD)
    return killed, rerun


def was_killed(killed: Finished) -> bool:
    """Whether a run ended by a signal before returning: SIGKILL, or a status the forkserver lost with no exit
    record left (the child never returned from ``runner.main``)."""
    return killed.exitcode == -signal.SIGKILL or killed.lost


# ---- holding a process still, so that a signal lands at a known point of its work (tests/slurm)


def pid_with_args(*args: str) -> int | None:
    """The process whose command line holds ``args`` as consecutive arguments (``"--name", "slurm-12_0"``)."""
    wanted = [a.encode() for a in args]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if any(argv[i : i + len(wanted)] == wanted for i in range(len(argv))):
            return int(entry.name)
    return None


def pending_signals(pid: int) -> set[int]:
    """The signals sent to ``pid`` and not yet handled (a stopped process keeps them pending): /proc's ShdPnd
    (sent to the process) and SigPnd (to its main thread) masks, bit n-1 for signal n. Empty once it is gone."""
    found: set[int] = set()
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("ShdPnd", "SigPnd"):
            mask = int(value.strip(), 16)
            found |= {n for n in range(1, 65) if mask & (1 << (n - 1))}
    return found


def process_state(pid: int) -> str | None:
    """``pid``'s state letter from /proc/<pid>/stat (R, S, D, T when stopped, Z when ended but not reaped), or
    None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]  # the state follows the parenthesised command name


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is held by a stop signal; False once it has ended."""
    return process_state(pid) == "T"


@contextlib.contextmanager
def frozen(pid: int):
    """``pid`` stopped (SIGSTOP) while the block runs, continued (SIGCONT) after it: what the block sends it stays
    pending and is handled where the process was, however fast or slow the machine. (Whoever else sends SIGCONT
    meanwhile lets it go early: Slurm does, before the SIGTERM of a requeue or scancel.)"""
    os.kill(pid, signal.SIGSTOP)
    try:
        while (state := process_state(pid)) != "T":  # a signal acts when the process next runs: wait for it
            if state in (None, "Z"):
                raise ProcessLookupError(f"process {pid} ended before it could be stopped")
            time.sleep(0.01)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
