#!/usr/bin/env python
"""Makespan of a sweep on W workers: wall time against the ideal N x t / W, and the fixed costs around it.

Runs N equal cells (one arm of the demo network on the bundled data, N seeds) with ``runner.py sweep --workers W``
(W CPU worker processes, the cores split between them; on a GPU machine pass --workers auto and --device cuda),
into a fresh local storage and MLflow store, and prints wall / ideal, where t is the mean pure training time of
a cell as measured inside the workers. Everything else — worker start-up, claiming, MLflow I/O, idle workers at
the end — counts against the ratio (target <= 1.1).

Then where that time went, per worker, from what the stores already hold and when the sweep's lines arrived:
each worker's process start (its pid and start time are in the owner of every trial it claimed), its first
claim (the trial's start), its cells' training (``final/train_time_s``) and what else its cells took (run
creation, set-up, checkpoints, logging), its last cell's training end (its last epoch's metric) and completion
(the trial's end), and its exit (a worker process's closing line); and the sweep's own set-up before its state
is ready and its tail after the last worker. Times are seconds from the start of ``run_sweep`` (the sweep's
``wall``), whose own start is the command's start plus imports, validation and the networks built on meta. The
CPU time other processes took meanwhile is printed too: the ratio means something on an idle machine only.

    python benchmarks/makespan.py [--workers 2] [--cells 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = """
name: makespan
base:
  model: {{arch: resnet18, width: 0.25, stem: cifar, attention: {{type: cbam}}}}
  data: {{dataset: cifar10-micro}}
  train: {{epochs: {epochs}, batch_size: 100, lr: 0.05, schedule: cosine}}
seeds: {seeds}
"""


@dataclass
class Command:
    """The sweep command's run: when it started, its pid, exit code and every line with its arrival time."""

    started: float
    pid: int
    returncode: int
    lines: list[tuple[float, str]]

    def first(self, pattern: str) -> tuple[float, re.Match] | None:
        for at, line in self.lines:
            if found := re.search(pattern, line):
                return at, found
        return None

    def tail(self) -> str:
        return "\n".join(line for _, line in self.lines[-40:])


@dataclass
class Worker:
    pid: int
    started: float  # process start (epoch seconds)
    name: str = ""
    claims: list[float] = field(default_factory=list)
    train_s: float = 0.0
    train_ends: list[float] = field(default_factory=list)
    completes: list[float] = field(default_factory=list)
    exited: float | None = None  # a worker process's closing line


def run_command(command: list[str], folder: Path) -> Command:
    """Run the sweep, stamping each line of its output (and its workers', which share it) as it arrives."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a line's arrival is when it was written
    started = time.time()
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []

    def read(stream) -> None:
        for line in stream:
            lines.append((time.time(), line.rstrip("\n")))

    readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (process.stdout, process.stderr)]
    for reader in readers:
        reader.start()
    process.wait()
    for reader in readers:
        reader.join()
    lines.sort(key=lambda item: item[0])
    return Command(started, process.pid, process.returncode, lines)


def busy_cpu_s() -> float:
    """Core-seconds this machine's CPUs have spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def boot_time() -> float:
    """This machine's boot, in epoch seconds (processes' start times are clock ticks since then)."""
    return time.time() - float(Path("/proc/uptime").read_text().split()[0])


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sweep and, waited for by it, its workers
    return usage.ru_utime + usage.ru_stime


def read_workers(folder: Path, command: Command) -> tuple[dict[int, Worker], list[float]]:
    """Each worker's events, from the sweep's state (trials: who claimed them, when, when done) and the MLflow
    store (training time, last epoch logged); and every cell's training time."""
    import optuna
    from mlflow import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'sweeps.db'}", skip_compatibility_check=True)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("makespan")
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'cell'")}
    boot, tick = boot_time(), os.sysconf("SC_CLK_TCK")
    workers: dict[int, Worker] = {}
    for study in storage.get_all_studies():
        for trial in storage.get_all_trials(study._study_id):
            owner, run = trial.user_attrs.get("owner"), runs.get(trial.user_attrs.get("mlflow_run_id", ""))
            if owner is None or run is None or trial.datetime_complete is None:
                continue
            _, _, _, pid, ticks = owner.split("|")
            worker = workers.setdefault(int(pid), Worker(int(pid), boot + int(ticks) / tick))
            worker.claims.append(trial.datetime_start.timestamp())
            worker.completes.append(trial.datetime_complete.timestamp())
            worker.train_s += run.data.metrics["final/train_time_s"]
            last_epoch = client.get_metric_history(run.info.run_id, "val/top1_err")
            worker.train_ends.append(max(m.timestamp for m in last_epoch) / 1000)
    # Names: the sweep's own process runs w0; it names the pid of each worker process it started, and those
    # say "[wN] finished ..." as they end.
    started = command.first(r"^\[sweep\] started \d+ worker process")
    pids = dict(re.findall(r"(w\d+\S*) \(pid (\d+)", started[1].string)) if started else {}
    ended = {m.group(1): at for at, line in command.lines if (m := re.match(r"\[(\S+)\] finished \d+ cells", line))}
    for name, pid in pids.items():
        if int(pid) in workers:
            workers[int(pid)].name, workers[int(pid)].exited = name, ended.get(name)
    if command.pid in workers:
        workers[command.pid].name = "w0 (sweep)"
    # A sweep whose started line gives no pids (older trees): its worker processes in the order they started.
    unnamed = sorted((w for w in workers.values() if not w.name), key=lambda w: (w.started, w.pid))
    for worker, name in zip(unnamed, sorted(set(ended) - set(pids)), strict=False):
        worker.name, worker.exited = name, ended[name]
    times = [r.data.metrics["final/train_time_s"] for r in runs.values()]
    return workers, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="2")
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    workers_count = int(args.workers) if args.workers.isdigit() else None
    if workers_count is None:
        sys.exit("--workers auto: pass the number of slots as an integer to compute the ideal")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        experiment = folder / "makespan.yaml"
        experiment.write_text(EXPERIMENT.format(epochs=args.epochs, seeds=list(range(args.cells))))
        command = [
            sys.executable,
            str(ROOT / "runner.py"),
            "sweep",
            str(experiment),
            "--workers",
            args.workers,
            "--device",
            args.device,
            "--no-progress",
        ]
        busy, ours = busy_cpu_s(), _children_cpu_s()
        result = run_command(command, folder)
        ended = time.time()
        # What else ran meanwhile (another job's tests, say): the ratio is only this sweep's on an idle machine.
        others = (busy_cpu_s() - busy) - (_children_cpu_s() - ours)
        if result.returncode != 0:
            sys.exit(result.tail()[-3000:])
        workers, times = read_workers(folder, result)

    t = sum(times) / len(times)
    ideal = len(times) * t / workers_count
    found = result.first(r"; wall ([0-9.]+)s")
    if found is None:
        sys.exit("the sweep printed no wall time:\n" + result.tail())
    sweep_end, sweep_wall = found[0], float(found[1].group(1))
    began = sweep_end - sweep_wall  # run_sweep's start, to which every time below is relative

    print(f"{len(times)} cells x {args.epochs} epochs on {workers_count} workers")
    print(f"mean pure training time per cell t:   {t:8.2f} s  (min {min(times):.2f}, max {max(times):.2f})")
    print(f"ideal N x t / W:                      {ideal:8.2f} s")
    print(f"sweep wall time (run_sweep):          {sweep_wall:8.2f} s  (state + MLflow stores created, workers run)")
    print(f"whole command (imports, validation):  {ended - result.started:8.2f} s  (and the table at the end)")
    print(f"ratio sweep wall / ideal:             {sweep_wall / ideal:8.3f}  (target <= 1.1)")
    print(f"ratio whole command / ideal:          {(ended - result.started) / ideal:8.3f}")
    cores = os.cpu_count() or 1
    share = others / ((ended - result.started) * cores)
    print(f"CPU used by other processes meanwhile: {others:7.1f} core-s ({share:.0%} of {cores} cores)")
    print()
    print_fixed_costs(result, workers, began, sweep_end)


def print_fixed_costs(result: Command, workers: dict[int, Worker], began: float, sweep_end: float) -> None:
    def rel(at: float | None) -> str:
        return f"{at - began:7.2f}" if at is not None else "      -"

    ready = result.first(r"^\[sweep\] makespan: ")
    started = result.first(r"^\[sweep\] started \d+ worker process")
    last_complete = max((c for w in workers.values() for c in w.completes), default=None)
    print("sweep (s from run_sweep's start)")
    print(f"  command start (imports, validation, networks on meta before run_sweep): {rel(result.started)}")
    print(f"  sweep state ready (stores probed, opened, sweep set up):                 {rel(ready and ready[0])}")
    print(f"  its line '[sweep] started N worker processes' (they may join):           {rel(started and started[0])}")
    print(f"  last cell complete:                                                      {rel(last_complete)}")
    print(f"  run_sweep end:                                                           {rel(sweep_end)}")
    print()
    header = (
        f"{'worker':12s} {'process':>8s} {'first':>8s} {'cells':>6s} {'training':>9s} {'in cells':>9s} "
        f"{'last':>8s} {'last':>8s} {'exit':>8s} | {'start':>6s} {'end':>6s}"
    )
    print(header)
    print(
        f"{'':12s} {'start':>8s} {'claim':>8s} {'':>6s} {'(sum)':>9s} {'not train':>9s} "
        f"{'trained':>8s} {'complete':>8s} {'':>8s} | {'cost':>6s} {'cost':>6s}"
    )
    for worker in sorted(workers.values(), key=lambda w: w.name):
        first, trained = min(worker.claims), max(worker.train_ends)
        other = trained - first - worker.train_s  # inside its cells, not training: run creation, set-up, I/O
        print(
            f"{worker.name:12s} {rel(worker.started):>8s} {rel(first):>8s} {len(worker.claims):6d} "
            f"{worker.train_s:9.2f} {other:9.2f} {rel(trained):>8s} {rel(max(worker.completes)):>8s} "
            f"{rel(worker.exited):>8s} | {first - began:6.2f} {sweep_end - trained:6.2f}"
        )
    print(
        "start cost: run_sweep's start to the worker's first claim; end cost: its last cell's training end to "
        "run_sweep's end.\nEach worker's share of the wall time: start cost + training + in cells not training + "
        "end cost."
    )


if __name__ == "__main__":
    main()
