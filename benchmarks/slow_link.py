#!/usr/bin/env python
"""What a slow, lossy link between a compute node and the head's stores costs a sweep.

A worker on a node of its own (a network namespace, tests/support/netns.py) runs the tiny cell (an eighth-width
CBAM ResNet-18 on 100 bundled CIFAR-10 images, ``--epochs`` epochs) against the head's PostgreSQL (in the head's own
namespace), which holds the sweep storage and the MLflow store, first over a plain link, then over one with
``--delay-ms`` more per round trip (half each way, through a delaying proxy on the head's bridge) and ``--loss`` %
of the node's packets dropped in each direction (nftables), and again plain, alternating for ``--rounds``. Each run
gets fresh databases whose tables the head made first (as a lab's running servers have them). Printed: the
worker's wall time per run, the medians and their ratio slow / plain; and the same for the cell's training time
alone, which the link must not change.

    python benchmarks/slow_link.py [--epochs 5] [--delay-ms 100] [--loss 1] [--rounds 2]

Needs root, iproute2 and nftables (``tc netem``, which would do both, is not in this machine's kernel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(folder: Path, node, server, experiment: Path, slow: bool, delay_ms: float, loss: int, tag: str) -> tuple:
    """One worker run of the cell on fresh databases; (the worker's wall time, the cell's training time)."""
    from mlflow import MlflowClient

    from ablation.scheduler.queue import open_storage
    from ablation.tracking.names import FINAL_TRAIN_TIME, ROLE_CELL, role_filter
    from tests.support.netns import DelayProxy

    urls = {name: server.create_database(f"{name}_{tag}", node.head_address) for name in ("sweeps", "mlflow")}
    MlflowClient(urls["mlflow"]).search_experiments()
    open_storage(urls["sweeps"]).engine.dispose()

    proxy = None
    direct = via = f"@{node.head_address}:{server.port}/"
    if slow:
        # In this namespace, on the head's bridge: node -> proxy -> the head's PostgreSQL.
        proxy = DelayProxy(node.network.address, (node.head_address, server.port), delay_ms / 2000).start()
        via = f"@{proxy.listen}:{proxy.port}/"
        node.lose(loss)
    argv = [
        sys.executable, "-m", "ablation", "worker", str(experiment), "--name", "node1",
        "--storage", urls["sweeps"].replace(direct, via),
        "--tracking-uri", urls["mlflow"].replace(direct, via),
        "--checkpoint-dir", str(folder / f"checkpoints-{tag}"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    result = subprocess.run(node.command(argv), cwd=folder, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if proxy is not None:
        proxy.close()
        subprocess.run(["ip", "netns", "exec", node.namespace, "nft", "delete", "table", "inet", "impair"], check=True)
    if result.returncode != 0:
        raise SystemExit(f"the worker failed:\n{(result.stdout + result.stderr)[-3000:]}")
    client = MlflowClient(urls["mlflow"])
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], role_filter(ROLE_CELL))
    return wall, run.data.metrics[FINAL_TRAIN_TIME]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=100.0, help="added to each round trip")
    parser.add_argument("--loss", type=int, default=1, help="percent of packets dropped in each direction")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.epochs < 1 or args.rounds < 1 or args.delay_ms < 0 or not 0 <= args.loss < 100:
        parser.error("--epochs and --rounds >= 1, --delay-ms >= 0, 0 <= --loss < 100")

    from tests.support.netns import Network, require_namespaces
    from tests.support.postgres import _find_binaries, _Server
    from tests.support.tiny import tiny_experiment, write_tiny_npz

    require_namespaces()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        experiment = folder / "exp.yaml"
        npz = write_tiny_npz(folder / "tiny.npz")
        experiment.write_text(tiny_experiment(npz, "  model.attention.order: [channel-first]", "[0]", args.epochs))
        network = Network().open()
        node = network.node(1)
        server = _Server(_find_binaries(), also_listen=(network.head_address,), machine=network.command)
        try:
            server.start()
            times: dict[str, list[tuple[float, float]]] = {"plain": [], "slow": []}
            order = ["plain", "slow"] * args.rounds + ["plain"]
            for i, kind in enumerate(order):
                wall, train = one_run(
                    folder, node, server, experiment, kind == "slow", args.delay_ms, args.loss, str(i)
                )
                times[kind].append((wall, train))
                print(f"{kind:>5} run {i}: worker wall {wall:6.1f} s, training {train:5.1f} s", flush=True)
        finally:
            server.cleanup()
            network.close()
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    train = {k: statistics.median(t for _, t in v) for k, v in times.items()}
    ratio = wall["slow"] / wall["plain"]
    print(f"median worker wall: plain {wall['plain']:.1f} s, slow {wall['slow']:.1f} s, ratio {ratio:.2f}")
    print(
        f"median training: plain {train['plain']:.1f} s, slow {train['slow']:.1f} s, "
        f"ratio {train['slow'] / train['plain']:.2f}"
    )


if __name__ == "__main__":
    main()
