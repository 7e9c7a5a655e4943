"""OpenMP threads (ablation/engine/threads.py): waiting threads sleep unless the user chose otherwise, set before torch
starts its threads."""

from __future__ import annotations

import subprocess

import pytest
import torch


def test_waiting_threads_sleep_unless_the_user_chose_otherwise(monkeypatch):
    from ablation.engine.threads import configure_threads, thread_state

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("ABLATION_SET_OMP_WAIT_POLICY", raising=False)
    configure_threads()
    state = thread_state()
    assert (state["omp_wait_policy"], state["omp_wait_policy_set_by"]) == ("PASSIVE", "harness")
    assert state["torch_num_threads"] == torch.get_num_threads()

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("ABLATION_SET_OMP_WAIT_POLICY")
    configure_threads()
    assert thread_state()["omp_wait_policy"] == "ACTIVE" and thread_state()["omp_wait_policy_set_by"] == "user"


@pytest.mark.slow
def test_runner_sets_the_wait_policy_before_torch_starts_its_threads():
    """In a fresh process: importing the command line imports no torch, and its first act sets the policy, so the
    OpenMP runtime that torch starts later reads it."""
    import os
    import sys

    from tests.support.folders import EXPERIMENTS, ROOT

    probe = (
        "import os, sys, runner; before = 'torch' in sys.modules; "
        f"runner.main(['profile', r'{EXPERIMENTS / 'demo.yaml'}', '--format', 'csv']); "
        "print(before, 'torch' in sys.modules, os.environ['OMP_WAIT_POLICY'], file=sys.stderr)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "ABLATION_SET_OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.stderr.split()[-3:] == ["False", "True", "PASSIVE"], done.stderr
