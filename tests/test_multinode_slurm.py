"""A Slurm cluster of several machines on this one, and the faults a lab's cluster brings (tests/support/netns.py,
tests/support/slurm_cluster.py).

The head is a network namespace of its own (host name ``head``) running slurmctld, PostgreSQL (the sweep storage,
and the MLflow server's backend) and ``mlflow server`` (artifacts in a folder); three compute nodes, each a namespace
with its own address and host name, run a slurmd each and reach the head over a link of their own; the checkpoint
folder is one every node sees. The sweep is submitted as ``runner.py slurm --submit`` would be from a login node (this
process, on the head's bridge), and its worker task runs on whichever node Slurm picks.

The task's worker holds itself still (``ABLATION_STOP_AT``) at a known point of its first attempt (the task's
``--python`` sets it only when ``SLURM_RESTART_COUNT`` is 0), so each fault lands there on any machine. Each ends
with the cell finished exactly once, as tests/support/multinode.py checks it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

import runner
from ablation.tracking.names import SYSTEM_METRICS_PREFIX
from tests.support import processes
from tests.support.mlflow_server import MlflowServer
from tests.support.multinode import assert_finished_once_as, reference, renamed, undisturbed  # noqa: F401 (fixture)
from tests.support.netns import Network, Node, require_namespaces
from tests.support.postgres import _find_binaries, _Server
from tests.support.slurm_cluster import (
    CLIENT_ENV_PREFIXES,
    Machine,
    SlurmCluster,
    SlurmUnavailable,
    start_cluster,
)

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
# How long the tracking server stays away in fault 3.
OUTAGE_S = 60
# The task's Python: the worker of the task's first attempt stops itself at the point the test names.
HELD_FIRST_ATTEMPT = """#!/bin/sh
if [ -n "${{SLURM_STEP_ID:-}}" ] && [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then export ABLATION_STOP_AT={point}; fi
exec {python} "$@"
"""
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL"}


@dataclass
class Head:
    network: Network
    nodes: list[Node]
    slurm: SlurmCluster
    database: _Server
    mlflow: MlflowServer


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The cluster: the head's namespace (slurmctld, PostgreSQL, mlflow server) and three nodes with a slurmd each;
    everything stopped and removed at the module's end, in the reverse order."""
    require_namespaces()
    folder = tmp_path_factory.mktemp("cluster")
    with contextlib.ExitStack() as stack:
        network = Network().open()
        stack.callback(network.close)
        nodes = [network.node(i) for i in (1, 2, 3)]
        database = _Server(_find_binaries(), also_listen=(network.head_address,), machine=network.command)
        stack.callback(database.cleanup)
        database.start()
        backend = database.create_database("mlflow", "127.0.0.1")  # the server's own, on the head
        mlflow = MlflowServer(folder / "mlflow", network.head_address, backend, network.command)
        stack.callback(mlflow.stop)
        mlflow.start()
        # A node that misses slurmctld's pings for SlurmdTimeout is DOWN and its jobs are requeued; the backfill
        # scheduler looks for work every second, so a requeued task starts once released.
        settings = {"SlurmdTimeout": 10, "SchedulerParameters": "bf_interval=1"}
        controller = Machine(network.hostname, network.head_address, network.command)
        machines = [Machine(n.hostname, n.address, n.command) for n in nodes]
        try:
            slurm = stack.enter_context(start_cluster(folder / "slurm", 30, controller, machines, settings))
        except SlurmUnavailable as exc:
            if os.environ.get("ABLATION_REQUIRE_SLURM") == "1":
                pytest.fail(f"the Slurm test cluster could not start (ABLATION_REQUIRE_SLURM=1): {exc}", pytrace=False)
            pytest.skip(f"the Slurm test cluster could not start: {exc.reason}")
        yield Head(network, nodes, slurm, database, mlflow)


@pytest.fixture
def on_cluster(head, monkeypatch, tmp_path):
    """The head, with this process's Slurm commands pointed at its slurmctld, working in ``tmp_path`` (sbatch runs
    the tasks where it was called: nothing lands in the checkout)."""
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith(CLIENT_ENV_PREFIXES)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_CONF", str(head.slurm.conf))
    return head


def _submit(head: Head, folder: Path, experiment: Path, storage: str, stop_at: str, capsys) -> str:
    """Submit the sweep as a one-task array whose first attempt holds at ``stop_at``; the job id."""
    python = folder / "python"
    python.write_text(HELD_FIRST_ATTEMPT.format(point=stop_at, python=sys.executable))
    python.chmod(0o755)
    argv = [
        *("slurm", str(experiment), "--submit", "--storage", storage, "--tracking-uri", head.mlflow.uri),
        *("--checkpoint-dir", str(folder / "ckpt"), "--tasks", "1", "--gpus-per-task", "0", "--cpus-per-task", "1"),
        *("--device", "cpu", "--heartbeat-interval", "1", "--grace-period", "20", "--store-wait", "600"),
        *("--log-dir", str(folder / "logs"), "--setup", "export OMP_NUM_THREADS=1", "--python", str(python)),
    ]
    assert runner.main(argv) == 0
    out = capsys.readouterr().out
    found = re.search(r"submitted Slurm job array (\d+)", out)
    assert found, out
    return found.group(1)


def _logs(folder: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted((folder / "logs").rglob("*.out")))


def _held_worker(head: Head, job: str) -> tuple[int, Node]:
    """The task's worker, once it holds itself still, and the node it runs on."""
    found: dict = {}

    def held() -> bool:
        for pid in head.slurm.processes():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # ended meanwhile
                continue
            ours = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_ARRAY_JOB_ID={job}".encode()} & set(environ)
            if ours and processes.is_stopped(pid):
                found["pid"] = pid
                return True
        return False

    head.slurm.wait_for(held, TIMEOUT_S, "the task's worker to hold itself still")
    where = head.slurm.run("squeue", "-h", "-j", job, "-o", "%N").strip()
    (node,) = [n for n in head.nodes if n.hostname == where]
    return found["pid"], node


def _finish(head: Head, job: str) -> str:
    """Wait for the array to end, releasing a requeued task from Slurm's hold-off; the task's last node."""

    def ended() -> bool:
        states = head.slurm.task_states(job)
        for task, state in states.items():
            if state == "PENDING" and "BeginTime" in head.slurm.run("squeue", "-h", "-j", task, "-o", "%r"):
                head.slurm.release(task)
        return bool(states) and all(state in ENDED for state in states.values())

    head.slurm.wait_for(ended, TIMEOUT_S, "the array to end")
    assert set(head.slurm.task_states(job).values()) == {"COMPLETED"}, head.slurm.task_states(job)
    shown = head.slurm.run("scontrol", "show", "job", "-o", job)
    return re.search(r"\bBatchHost=(\S+)", shown).group(1)


def test_a_node_lost_mid_cell_is_replaced_and_the_cell_resumes_on_another_node(
    on_cluster,
    undisturbed,  # noqa: F811
    tmp_path,
    capsys,
):
    """Fault 1: the node running the cell loses power after its second epoch (its slurmd, the task and the worker
    SIGKILLed, no handler run) and its link goes down. slurmctld marks it DOWN and requeues the task; the task
    starts on another node, whose worker takes the cell back (its owner's heartbeat is older than the grace period)
    and resumes it from the epoch-2 checkpoint in the same MLflow run."""
    head = on_cluster
    experiment = renamed(undisturbed, tmp_path, "lost_node")
    storage = head.database.create_database("lost_node", head.network.head_address)
    job = _submit(head, tmp_path, experiment, storage, "epoch.logged@2", capsys)
    _, lost = _held_worker(head, job)
    assert lost.kill()
    lost.cut()

    finished_on = _finish(head, job)
    assert finished_on != lost.hostname
    assert f"Nodes {lost.hostname} not responding, setting DOWN" in (head.slurm.folder / "slurmctld.log").read_text()
    logs = _logs(tmp_path)
    assert f"was left running by a worker on {lost.hostname} that has been silent for" in logs, logs[-3000:]
    assert "resuming after epoch 2" in logs, logs[-3000:]
    assert_finished_once_as(head.mlflow.uri, storage, reference(undisturbed), "lost_node")


def test_a_tracking_server_down_for_a_minute_mid_epoch_loses_and_repeats_nothing(
    on_cluster,
    undisturbed,  # noqa: F811
    tmp_path,
    capsys,
):
    """Fault 3: the head's mlflow server stops while the task's worker trains its second epoch, and starts again on
    its port a minute later. The worker says in one line what it waits for and goes on; the epoch it logged into
    the outage is logged once, as is every other."""
    head = on_cluster
    experiment = renamed(undisturbed, tmp_path, "tracking_down")
    storage = head.database.create_database("tracking_down", head.network.head_address)
    job = _submit(head, tmp_path, experiment, storage, "epoch.logged@1", capsys)
    worker, _ = _held_worker(head, job)
    head.mlflow.stop()
    stopped = time.monotonic()
    os.kill(worker, signal.SIGCONT)
    head.slurm.wait_for(lambda: "is unreachable since" in _logs(tmp_path), TIMEOUT_S, "the worker to say it waits")
    time.sleep(max(0.0, stopped + OUTAGE_S - time.monotonic()))
    head.mlflow.start()

    _finish(head, job)
    logs = _logs(tmp_path)
    waits = [line for line in logs.splitlines() if "is unreachable since" in line]
    assert len(waits) == 1 and f"[store] the tracking store {head.mlflow.uri} is unreachable since" in waits[0], waits
    answers = re.search(rf"the tracking store {re.escape(head.mlflow.uri)} answers again after (\d+) s", logs)
    assert answers and int(answers.group(1)) >= OUTAGE_S - 10, logs[-3000:]
    run_id = assert_finished_once_as(head.mlflow.uri, storage, reference(undisturbed), "tracking_down")
    # System metrics were sampled through the outage (every 10 s) and each step logged once when it ended.
    client = MlflowClient(head.mlflow.uri)
    steps = [m.step for m in client.get_metric_history(run_id, f"{SYSTEM_METRICS_PREFIX}cpu_utilization_percentage")]
    assert sorted(steps) == list(range(len(steps))) and len(steps) >= OUTAGE_S // 10, steps
