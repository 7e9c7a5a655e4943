"""One Slurm array task: a ``runner.py worker`` process, stopped cleanly and requeued when its time runs out.

Slurm ends a task three ways, and each must lose nothing:

- preemption or ``scontrol requeue``: SIGTERM to every process of the task, then SIGKILL after ``KillWait``.
  The worker gives its cell back (the last epoch checkpoint is on the shared filesystem, the MLflow run marked
  KILLED), Slurm requeues the task, and whichever worker claims the cell next resumes it in the same run;
- the time limit: a task submitted by ``runner.py slurm`` asks for SIGUSR2 some minutes before it
  (``--signal=USR2@...``). The worker stops the same way, and this wrapper then requeues its own task (Slurm does
  not requeue a task that timed out), at most ``max_requeues`` times counted by ``SLURM_RESTART_COUNT``;
- ``scancel``: SIGTERM, the worker stops, and nothing is requeued: a person asked for the stop.

A SIGKILL anywhere (a node lost, ``KillWait`` too short) is the kill-anywhere case the queue already recovers
from: the cell comes back once its heartbeat is older than the grace period.

Slurm may send the time limit's SIGUSR2 up to a minute early, so a task that starts within about a minute of its
limit's warning can get it before any Python handler exists, and the signal's default action ends the step.
Nothing was claimed yet (this wrapper sets its handlers before it starts the worker), so the batch script's line
after srun (``--after-step $?``: submitit's teardown, or the written script's ``||``) requeues the task as after a
clean stop. In the instant between submitit's own handlers and ours, submitit's handler asks ``WorkerTask.checkpoint``
and requeues the task itself.

This module imports nothing heavy: it runs in submitit's process on the node (``WorkerTask``, pickled at
submission) or as ``python -m ablation.slurm.task`` from a written sbatch script, and the worker is a child
process that imports torch, MLflow and Optuna itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

STOPPED = 130  # runner.py's exit code after a clean stop (SIGINT, SIGTERM, SIGUSR2)
# The exit code of a worker that an outage of the machine or a store stopped (ablation.core.outages.OUTAGE_EXIT,
# restated: this module imports nothing of the package, it runs before the worker's imports).
OUTAGE = 75


def task_id() -> str:
    """This task's Slurm id: ``<array job>_<task>`` in an array, else the job id."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID", "local")


def worker_name() -> str:
    """The worker's name in log lines and in the queue (``runner.py status`` matches array tasks to cells by it)."""
    return worker_name_of(task_id())


def worker_name_of(task: str) -> str:
    return f"slurm-{task}"


def run_task(command: list[str], max_requeues: int, say=print) -> int:
    """Run the worker ``command`` (without ``--name``) to the end; returns its exit code, or 0 after a requeue."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env and env.get("SLURM_CPUS_PER_TASK"):
        # Without CPU confinement (TaskPlugin=task/none) torch would start a thread per core of the node and
        # crowd the other tasks on it; the task's share is what it asked for. A user's own setting is kept.
        env["OMP_NUM_THREADS"] = env["SLURM_CPUS_PER_TASK"]
    child: subprocess.Popen | None = None
    near_limit = stop_asked = False

    def forward(signum, frame) -> None:
        nonlocal near_limit, stop_asked
        near_limit = near_limit or signum == signal.SIGUSR2
        stop_asked = True
        # Slurm may have signalled the worker itself too; a second stop request is one it ignores.
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    # The handlers come first: a stop that arrives while the worker starts is remembered and passed on, not left to
    # the default action (SIGUSR2's ends this wrapper and orphans the worker).
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGUSR2, forward)
    child = subprocess.Popen([*command, "--name", worker_name()], env=env)
    if stop_asked:
        child.send_signal(signal.SIGTERM)
    code = _wait_handling_signals(child)
    if code == OUTAGE:
        # Not requeued: a requeued task would meet the same full disk or unreachable store. The worker's last line
        # says which; its cell was given back (or comes back by heartbeat), and a new submission resumes it.
        say(
            f"[{worker_name()}] the worker stopped on an outage of the machine or a store (its line above says "
            "which); its cell is left to resume: fix the cause, then submit the sweep again"
        )
        return code
    # A worker still starting (importing torch) when the signal came had no handler yet: it ended by the signal
    # itself, before it could claim a cell, so nothing was lost and the task requeues as after a clean stop. Slurm
    # may send the time limit's signal up to a minute early, so this happens with limits near the grace period.
    # Slurm signals the step's processes one by one: a worker the signal ended at once may be reaped before this
    # wrapper's own signal is handled, so a worker ended by SIGUSR2 (which only the time limit sends) counts as it.
    near_limit = near_limit or code == -signal.SIGUSR2
    if not (near_limit and code in (STOPPED, -signal.SIGTERM, -signal.SIGUSR2)):
        return code
    return requeue_self(code, max_requeues, "time limit near, cell given back", say)


def _wait_handling_signals(child: subprocess.Popen) -> int:
    """``child.wait()`` in short waits: a signal that lands after Python's last check for signals and before a
    blocking waitpid starts does not interrupt it, and the handler (the stop passed on) would run only once the
    worker had ended of itself."""
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue


# srun's exit code when the time limit's SIGUSR2 itself ended the step's task (128 + the signal's number).
ENDED_BY_TIME_LIMIT_SIGNAL = 128 + signal.SIGUSR2


def after_step(code: int, max_requeues: int, say=print) -> int:
    """The batch script's check of srun's exit ``code``: a step the time limit's signal ended before any handler
    existed (Slurm may send it up to a minute early) had claimed nothing, so the task requeues itself as after a clean
    stop. Any other code is passed on as it is: the task's end is the step's."""
    if code != ENDED_BY_TIME_LIMIT_SIGNAL:
        return code
    return requeue_self(code, max_requeues, "time limit near before the task had started, no cell claimed", say)


def _restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def may_requeue(max_requeues: int, why: str, say=print) -> bool:
    """Whether this task may be requeued once more (it has been ``SLURM_RESTART_COUNT`` times, at most
    ``max_requeues``), said in one line either way."""
    restarts = _restarts()
    if restarts >= max_requeues:
        say(
            f"[{worker_name()}] {why}; not requeued: the task was requeued {restarts} "
            f"times (--max-requeues {max_requeues}). Other tasks or a new submission take the sweep on."
        )
        return False
    say(f"[{worker_name()}] {why}; requeueing this task ({restarts + 1}/{max_requeues})")
    return True


def requeue_self(code: int, max_requeues: int, why: str, say=print) -> int:
    """Requeue this task (Slurm does not requeue one that runs out of time) unless it has been requeued
    ``max_requeues`` times already; returns 0 after a requeue, else ``code``."""
    if not may_requeue(max_requeues, why, say):
        return code
    # The requeue signals this task again (SIGTERM): nothing is left to stop. (A no-op handler, not SIG_IGN, which
    # prints a "race condition" traceback for a signal already pending.)
    signal.signal(signal.SIGTERM, _nothing)
    signal.signal(signal.SIGUSR2, _nothing)
    done = subprocess.run(["scontrol", "requeue", task_id()], capture_output=True, text=True)
    if done.returncode != 0:
        say(f"[{worker_name()}] scontrol requeue {task_id()} failed: {done.stderr.strip()}")
        return code
    return 0


def _nothing(signum, frame) -> None:
    pass


@dataclass(frozen=True)
class WorkerTask:
    """What submitit pickles for each array task: the worker's command line (the same for every task)."""

    command: tuple[str, ...]
    max_requeues: int

    def __call__(self) -> int:
        # submitit set its own SIGTERM / SIGUSR2 handlers before calling this; run_task replaces them.
        code = run_task(list(self.command), self.max_requeues, say=lambda line: print(line, flush=True))
        if code not in (0, STOPPED):
            raise RuntimeError(f"the worker exited with code {code}; its output is in this task's log")
        return code

    def checkpoint(self):
        """What submitit's SIGUSR2 handler asks for when the signal comes after its handlers and before run_task's:
        nothing is claimed yet, so the same task again (submitit then requeues it), or None once the task has been
        requeued ``max_requeues`` times (submitit then ends it and says so)."""
        from submitit.helpers import DelayedSubmission  # only ever called inside submitit's process

        why = "time limit near before the task had started, no cell claimed"
        if not may_requeue(self.max_requeues, why, say=lambda line: print(line, flush=True)):
            return None
        return DelayedSubmission(self)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablation.slurm.task", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-requeues", type=int, default=3)
    parser.add_argument(
        "--after-step", type=int, metavar="CODE", help="srun's exit code: requeue if the time limit's signal ended it"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- python runner.py worker ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.after_step is not None:
        if command:
            parser.error("--after-step takes no worker command")
        return after_step(args.after_step, args.max_requeues, say=lambda line: print(line, flush=True))
    if not command:
        parser.error("no worker command after --")
    return run_task(command, args.max_requeues, say=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
