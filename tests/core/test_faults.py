"""Kill points (ablation/core/faults.py): inert unless ``ABLATION_KILL_AT`` names them; then a SIGKILL of the process
the n-th time it reaches the point, with what it printed so far flushed."""

import os
import signal
import subprocess
import sys

from ablation.core.faults import ENV, armed
from tests.support.folders import ROOT

# Reaches two points four times each, printing the round after both.
ROUNDS = """
from ablation.core.faults import kill_point
for i in range(1, 5):
    kill_point("other")
    kill_point("here")
    print(i)
"""


def _rounds(kill_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV} | ({ENV: kill_at} if kill_at else {})
    return subprocess.run([sys.executable, "-c", ROUNDS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_armed_reads_the_name_before_the_count(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert not armed("sweep.setup")
    monkeypatch.setenv(ENV, "sweep.setup@3")
    assert armed("sweep.setup") and not armed("sweep") and not armed("sweep.setup@3")


def test_a_kill_point_kills_the_nth_time_it_is_reached_and_never_when_unarmed():
    done = _rounds(None)
    assert done.returncode == 0 and done.stdout.split() == ["1", "2", "3", "4"]
    for kill_at, printed in (("here", []), ("here@3", ["1", "2"])):
        done = _rounds(kill_at)
        assert done.returncode == -signal.SIGKILL, (kill_at, done.stderr)
        assert done.stdout.split() == printed, kill_at
