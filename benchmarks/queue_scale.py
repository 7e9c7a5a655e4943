#!/usr/bin/env python
"""The sweep queue at a cluster's scale: many workers claiming from one PostgreSQL sweep storage.

For each worker count (default 10, 50, 200) a fresh database gets one sweep of ``--cells`` cells (default 5,000)
set up as ``runner.py sweep`` sets one up (``SweepQueue.create_or_join``), and that many workers drain it through
the queue calls a real worker makes per cell: claim (which first takes back orphaned cells), the worker's name,
a heartbeat thread started and stopped, the run id, complete. Training is a no-op, so what is measured is the
queue alone. Each worker is a thread with a storage (connection pool) of its own, spread over
``--processes`` processes, as separate machines would each hold their own connections. Printed per worker
count: claims per second, p50 / p99 claim latency, rows the server read per claim (``pg_stat_user_tables``'
rows read by sequential scans and fetched through indexes: what grows with the queue's length when a claim scans
it; ``--tables`` shows them by table), and duplicates: cells
claimed by more than one worker or completed more than once in the storage (no worker dies here, so any is a
bug). The last line reads ``duplicates: <n>``, their total.

This machine runs the database and every worker on the same cores, so the latencies include waiting for a core;
the rows read per claim do not depend on that, and show how a design scales.

    python benchmarks/queue_scale.py [--workers 10 50 200] [--cells 5000] [--processes 8] [--max-seconds 300]
                                     [--storage-server postgresql+psycopg2://user@host:port]

Without ``--storage-server`` a throwaway PostgreSQL server is started from Debian's binaries (as the tests do) and
removed at the end. A drain that passes ``--max-seconds`` stops there and is reported as partial (cells claimed
of the total).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import threading
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _worker_process(url: str, study: str, threads: int, first: int, start, max_seconds: float, results) -> None:
    """``threads`` workers in this process, each with a storage of its own; puts (cell hash, latency s) pairs."""
    from ablation.scheduler.queue import HEARTBEAT_INTERVAL_S, WORKER, Heartbeat, SweepQueue, open_storage
    from ablation.tracking.stores import mark_set_up

    mark_set_up(url)  # as the workers a sweep starts: the tables are there (measure() made them)

    claimed: list[tuple[str, float]] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        storage = open_storage(url)
        queue = SweepQueue(storage, study, say=lambda line: None, url=url)
        mine: list[tuple[str, float]] = []
        start.wait()
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            began = time.perf_counter()
            claim = queue.claim()
            latency = time.perf_counter() - began
            if claim is None:
                if queue.unfinished() == 0:
                    break
                time.sleep(0.05)
                continue
            storage.set_trial_user_attr(claim.trial_id, WORKER, f"w{index}")
            beat = Heartbeat(storage, claim.trial_id, HEARTBEAT_INTERVAL_S).start()
            queue.set_run_id(claim, f"run-{claim.cell_hash}")  # training is a no-op
            queue.complete(claim, 0.0)
            beat.stop()
            mine.append((claim.cell_hash, latency))
        with lock:
            claimed.extend(mine)
        storage.remove_session()
        storage.engine.dispose()

    pool = [threading.Thread(target=work, args=(first + i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put(claimed)


def _rows_read(server_url: str, database: str) -> dict[str, int]:
    """Rows the server has read in ``database``, per table (sequential scans + index fetches)."""
    import psycopg2

    conn = psycopg2.connect(_dsn(server_url, database))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables"
            )
            return {name: int(rows) for name, rows in cur.fetchall()}
    finally:
        conn.close()


def _dsn(server_url: str, database: str) -> str:
    return server_url.replace("postgresql+psycopg2://", "postgresql://").rstrip("/") + f"/{database}"


def _create_database(server_url: str, database: str) -> str:
    import psycopg2

    conn = psycopg2.connect(_dsn(server_url, "postgres"))
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}"')
            cur.execute(f'CREATE DATABASE "{database}"')
    finally:
        conn.close()
    return f"{server_url.rstrip('/')}/{database}"


def measure(server_url: str, workers: int, cells: int, processes: int, max_seconds: float) -> dict:
    from optuna.trial import TrialState

    from ablation.scheduler.queue import CELL, SweepQueue, open_storage

    database = f"queue_scale_{workers}"
    url = _create_database(server_url, database)
    storage = open_storage(url)
    began = time.perf_counter()
    fake_cells = [types.SimpleNamespace(hash=f"{i:012x}", name=f"cell-{i}", spec=None) for i in range(cells)]
    queue = SweepQueue.create_or_join(storage, url, "queue-scale", fake_cells, say=lambda line: None)
    set_up_s = time.perf_counter() - began

    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    processes = min(processes, workers)
    shares = [workers // processes + (1 if i < workers % processes else 0) for i in range(processes)]
    pool, first = [], 0
    for share in shares:
        args = (url, "queue-scale", share, first, start, max_seconds, results)
        pool.append(context.Process(target=_worker_process, args=args))
        first += share
    for process in pool:
        process.start()
    time.sleep(1.0)
    # Every worker's storage is open before the clock starts: the spawned processes import Optuna first.
    while _connections(server_url, database) < workers:
        time.sleep(0.2)
    rows_before = _rows_read(server_url, database)
    wall_began = time.perf_counter()
    start.set()
    claimed: list[tuple[str, float]] = []
    for _ in pool:
        claimed.extend(results.get())
    wall = time.perf_counter() - wall_began
    for process in pool:
        process.join()
    rows_after = _rows_read(server_url, database)
    rows = {table: rows_after[table] - rows_before.get(table, 0) for table in rows_after}

    hashes = [h for h, _ in claimed]
    latencies = sorted(lat for _, lat in claimed)
    completed: dict[str, int] = {}
    for trial in queue.trials((TrialState.COMPLETE,)):
        completed[trial.user_attrs[CELL]] = completed.get(trial.user_attrs[CELL], 0) + 1
    duplicates = (len(hashes) - len(set(hashes))) + sum(n - 1 for n in completed.values() if n > 1)
    storage.engine.dispose()
    return {
        "workers": workers,
        "cells": cells,
        "claimed": len(set(hashes)),
        "set_up_s": set_up_s,
        "wall_s": wall,
        "claims_per_s": len(hashes) / wall if wall > 0 else 0.0,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
        "rows_per_claim": sum(rows.values()) / max(1, len(hashes)),
        "rows_by_table": {t: n / max(1, len(hashes)) for t, n in sorted(rows.items(), key=lambda x: -x[1]) if n},
        "duplicates": duplicates,
    }


def _connections(server_url: str, database: str) -> int:
    import psycopg2

    conn = psycopg2.connect(_dsn(server_url, "postgres"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop a drain after this long")
    parser.add_argument("--tables", action="store_true", help="also print the rows read per claim by table")
    parser.add_argument("--storage-server", default="", help="a PostgreSQL server URL without the database")
    args = parser.parse_args()
    if min(args.workers) < 1 or args.cells < 1 or args.processes < 1:
        parser.error("--workers, --cells and --processes must be at least 1")

    server = None
    server_url = args.storage_server
    if not server_url:
        from tests.support.postgres import HOST, PG_USER, _find_binaries, _Server

        server = _Server(_find_binaries(), max_connections=max(args.workers) * 2 + 20)
        server.start()
        server_url = f"postgresql+psycopg2://{PG_USER}@{HOST}:{server.port}"
    total = 0
    try:
        print(
            f"{'workers':>7} {'cells':>6} {'claimed':>7} {'set-up s':>8} {'wall s':>7} {'claims/s':>8} "
            f"{'p50 ms':>7} {'p99 ms':>8} {'rows/claim':>10} {'duplicates':>10}",
            flush=True,
        )
        for workers in args.workers:
            r = measure(server_url, workers, args.cells, args.processes, args.max_seconds)
            total += r["duplicates"]
            partial = "" if r["claimed"] == r["cells"] else "  (partial: --max-seconds reached)"
            print(
                f"{r['workers']:>7} {r['cells']:>6} {r['claimed']:>7} {r['set_up_s']:>8.1f} {r['wall_s']:>7.1f} "
                f"{r['claims_per_s']:>8.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>8.1f} {r['rows_per_claim']:>10.0f} "
                f"{r['duplicates']:>10}{partial}",
                flush=True,
            )
            if args.tables:
                print(
                    "        rows read per claim: " + ", ".join(f"{t} {n:.0f}" for t, n in r["rows_by_table"].items())
                )
    finally:
        if server is not None:
            server.cleanup()
    print(f"duplicates: {total}")


if __name__ == "__main__":
    main()
