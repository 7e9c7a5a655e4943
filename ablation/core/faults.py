"""Named points where a test can kill this process, to prove that a rerun recovers from a kill there.

Production code calls ``kill_point(name)`` where a kill would leave state half-written: between the steps of a
sweep's set-up, inside a checkpoint write, between logging an epoch and saving it, during a cell's
finalisation. Nothing happens unless ``ABLATION_KILL_AT`` is set to ``name`` or ``name@n``; then the process
SIGKILLs itself the n-th time (default: the first) it reaches that point, as the OOM killer, a preempting
scheduler or ``kill -9`` would: no handler, no cleanup, no flushed buffers but the two below.

``ABLATION_STOP_AT`` (same form) SIGSTOPs the process there instead: it is held at a known point of its work,
however fast the machine, until the test continues it (SIGCONT), as a paused VM or a frozen node would hold it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

ENV = "ABLATION_KILL_AT"
STOP_ENV = "ABLATION_STOP_AT"
_reached: Counter[tuple[str, str]] = Counter()


def armed(name: str) -> bool:
    """Whether ``ABLATION_KILL_AT`` names this point (so callers can set up a finer-grained kill)."""
    return os.environ.get(ENV, "").partition("@")[0] == name


def kill_point(name: str) -> None:
    for variable, signum in ((ENV, signal.SIGKILL), (STOP_ENV, signal.SIGSTOP)):
        point, _, nth = os.environ.get(variable, "").partition("@")
        if point != name:
            continue
        _reached[variable, name] += 1
        if _reached[variable, name] == (int(nth) if nth else 1):
            # What the process printed so far is what a test reads; the kill itself stays abrupt.
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signum)
