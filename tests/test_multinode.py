"""Several machines on this one (tests/support/netns.py): a worker on a node of its own, with its own address and host
name, reaching the stores on the head (PostgreSQL in the head's namespace: the sweep storage and the MLflow store)
over a link the test can cut, and sharing the checkpoint folder as NFS would. Each fault ends with the cell finished
exactly once, as tests/support/multinode.py checks it. (The Slurm cluster on these machines, with its faults:
tests/test_multinode_slurm.py.)

A worker is held at a known point of its work by ``ABLATION_STOP_AT`` (it stops itself, e.g. right after logging
its second epoch), so that the fault lands there on any machine; the test continues it (SIGCONT) once the fault is
in place.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ablation.engine.checkpoint import load_checkpoint
from ablation.scheduler.queue import open_storage
from tests.support import processes
from tests.support.multinode import EPOCHS, assert_finished_once_as, reference, undisturbed  # noqa: F401 (fixture)
from tests.support.netns import DelayProxy, Network, Node, network  # noqa: F401 (fixture)
from tests.support.postgres import _find_binaries, _Server
from tests.support.processes import ONE_THREAD

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Cluster:
    network: Network
    node: Node
    server: _Server
    storage: str
    tracking: str
    checkpoints: Path
    folder: Path
    argv: list[str]  # a worker of the sweep: add --name
    env: dict[str, str]

    def start_on_node(self, name: str, stop_at: str) -> tuple[subprocess.Popen, Path]:
        log = self.folder / f"{name}.txt"
        with log.open("w") as out:
            worker = subprocess.Popen(
                self.node.command([*self.argv, "--name", name]),
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, "ABLATION_STOP_AT": stop_at},
            )
        # The command is exec'd all the way down (nsenter, unshare, sh): the pid is the worker's.
        _wait(lambda: processes.is_stopped(worker.pid), f"{name} holds at {stop_at}", lambda: worker.poll() is None)
        return worker, log

    def assert_finished_once_as(self, expected: dict[str, float]) -> str:
        return assert_finished_once_as(self.tracking, self.storage, expected)


@pytest.fixture
def cluster(tmp_path, undisturbed, network):  # noqa: F811
    """node1, and the head (a namespace of its own) with PostgreSQL serving the sweep storage and the MLflow store."""
    node1 = network.node(1)
    server = _Server(_find_binaries(), also_listen=(network.head_address,), machine=network.command)
    server.start()
    try:
        # One address for every worker, the head's included: the sweep's state is bound to the store it names.
        storage = server.create_database("sweeps", network.head_address)
        tracking = server.create_database("mlflow", network.head_address)
        # The stores' tables made first, as a lab's running servers have them: not the faults' business, and
        # hundreds of round trips across a slow link.
        MlflowClient(tracking).search_experiments()
        open_storage(storage).engine.dispose()
        checkpoints = tmp_path / "checkpoints"  # the shared folder
        argv = [
            sys.executable, "-m", "ablation", "worker", str(undisturbed[0]), "--storage", storage, "--tracking-uri",
            tracking, "--checkpoint-dir", str(checkpoints), "--heartbeat-interval", "1", "--grace-period", "5",
            "--store-wait", "600",
        ]  # fmt: skip
        env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
        yield Cluster(network, node1, server, storage, tracking, checkpoints, tmp_path, argv, env)
    finally:
        server.cleanup()


def _wait(predicate, what: str, alive=None, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if alive is not None:
            assert alive(), f"ended while waiting until {what}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def _ended(worker: subprocess.Popen, log: Path) -> str:
    try:
        worker.wait(timeout=600)
    finally:
        if worker.poll() is None:
            worker.kill()
    text = log.read_text()
    assert worker.returncode == 0, text[-3000:]
    return text


def test_a_node_cut_off_past_the_grace_period_cannot_overwrite_the_cell_taken_up_elsewhere(cluster, undisturbed):  # noqa: F811
    """Fault 5: node1 is cut off after its second epoch and trains on; node2's worker takes the cell up after the grace
    period and finishes it from node1's last checkpoint. When node1 comes back, its worker's next write is fenced off
    (SweepQueue.ensure_claimed: its claim was failed when the cell was taken back): node2's checkpoint and results
    stay as they are."""
    stale, stale_log = cluster.start_on_node("node1", "epoch.logged@2")
    cluster.node.cut()
    os.kill(stale.pid, signal.SIGCONT)  # it trains on, cut off from the stores
    node2 = cluster.network.node(2)
    other = subprocess.run(
        node2.command([*cluster.argv, "--name", "node2"]),
        cwd=cluster.folder,
        capture_output=True,
        text=True,
        env=cluster.env,
    )
    other_log = other.stdout + other.stderr
    assert other.returncode == 0, other_log[-3000:]
    assert "was left running by a worker on node1 that has been silent for" in other_log, other_log[-3000:]
    assert "resuming after epoch 2" in other_log, other_log[-3000:]
    (last,) = cluster.checkpoints.glob("tiny/*/last.pt")
    finished = last.read_bytes()
    assert load_checkpoint(last)["epoch"] == EPOCHS

    cluster.node.mend()  # node1 comes back: its next write is fenced off
    text = _ended(stale, stale_log)
    assert "was taken back while it was silent for longer than the grace period" in text, text[-3000:]
    assert "1 taken over by other workers while it was cut off" in text, text[-3000:]
    assert last.read_bytes() == finished  # nothing of node1's after the cut
    cluster.assert_finished_once_as(reference(undisturbed))


def test_a_database_restarted_mid_sweep_is_waited_for_and_the_sweep_goes_on(cluster, undisturbed):  # noqa: F811
    """Fault 2: PostgreSQL (the sweep storage and the MLflow store) is stopped while node1's worker trains its second
    epoch; the worker says in one line what it waits for, and goes on once the server is back on its address."""
    worker, log = cluster.start_on_node("node1", "epoch.logged@1")
    cluster.server.stop()
    os.kill(worker.pid, signal.SIGCONT)
    alive = lambda: worker.poll() is None  # noqa: E731
    _wait(lambda: "is unreachable since" in log.read_text(), "the worker says what it waits for", alive)
    cluster.server.start_again()
    text = _ended(worker, log)
    waits = [line for line in text.splitlines() if "is unreachable since" in line]
    stores = [line.partition(" is unreachable since")[0] for line in waits]
    assert waits and len(stores) == len(set(stores)), waits  # one line for each store it waits for, naming it
    assert all(line.startswith("[store] the ") and "--store-wait 600 s" in line for line in waits), waits
    assert "answers again after" in text, text[-3000:]
    assert "finished 1 cells, 0 failed" in text, text[-3000:]
    cluster.assert_finished_once_as(reference(undisturbed))


def test_a_slow_lossy_link_between_node_and_head_slows_the_sweep_and_changes_nothing_else(cluster, undisturbed):  # noqa: F811
    """Fault 4: 100 ms more per round trip (50 ms each way, through DelayProxy) and 1% of node1's packets lost in each
    direction (nftables) between node1 and the head's stores: the cell finishes with the undisturbed run's results.
    What it costs: benchmarks/slow_link.py."""
    # The proxy in this (the test's) namespace, on the head's bridge: node1 -> proxy -> the head's PostgreSQL.
    proxy = DelayProxy(cluster.network.address, (cluster.network.head_address, cluster.server.port), 0.05).start()
    try:
        cluster.node.lose(percent=1)
        direct, slow = f"@{cluster.network.head_address}:{cluster.server.port}/", f"@{proxy.listen}:{proxy.port}/"
        argv = [arg.replace(direct, slow) for arg in cluster.argv]
        assert argv != cluster.argv
        log = cluster.folder / "node1.txt"
        with log.open("w") as out:
            worker = subprocess.Popen(
                cluster.node.command([*argv, "--name", "node1"]),
                cwd=cluster.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=cluster.env,
            )
        text = _ended(worker, log)
    finally:
        proxy.close()
    assert "finished 1 cells, 0 failed" in text, text[-3000:]
    cluster.assert_finished_once_as(reference(undisturbed))
