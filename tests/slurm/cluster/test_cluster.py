"""The Slurm test cluster itself, and the Slurm behaviours the harness's job arrays rely on: array tasks run and
are reported per task, a requeued task starts again with SLURM_RESTART_COUNT=1, and a requeue reaches the task as
SIGTERM first (a worker gives its cell back on it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.slurm_cluster import SlurmCluster, SlurmUnavailable, start_cluster

TIMEOUT_S = 60.0  # for starts, requeues and ends that take seconds: room for a loaded machine


def _submit(cluster: SlurmCluster, folder: Path, *args: str) -> str:
    """sbatch from ``folder`` as code under test calls it: plain subprocess, the session's SLURM_CONF."""
    result = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={folder}", f"--output={folder}/%A_%a.out", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"sbatch failed: {result.stderr.strip()}\n{cluster.log_tail()}"
    return result.stdout.strip().split(";")[0]  # --parsable: "JOBID" or "JOBID;CLUSTER"


def _script(folder: Path, body: str) -> Path:
    path = folder / "job.sh"
    path.write_text("#!/bin/bash\n" + body)
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_array_job_runs_every_task(slurm_cluster, tmp_path):
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)
    job = _submit(
        slurm_cluster,
        tmp_path,
        "--array=0-1",
        "--wrap",
        f"echo $SLURM_ARRAY_TASK_ID > {tmp_path}/task_$SLURM_ARRAY_TASK_ID",
    )

    both_done = {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}
    slurm_cluster.wait_for(lambda: slurm_cluster.task_states(job) == both_done, TIMEOUT_S, f"job {job} to complete")
    assert [_lines(tmp_path / f"task_{i}") for i in (0, 1)] == [["0"], ["1"]]


def test_requeued_task_restarts_with_restart_count(slurm_cluster, tmp_path):
    restarts = tmp_path / "restarts"
    # The first run waits to be requeued; the second records its count and ends.
    script = _script(
        tmp_path,
        f'echo "${{SLURM_RESTART_COUNT:-0}}" >> {restarts}\n'
        '[ "${SLURM_RESTART_COUNT:-0}" = 0 ] && { sleep 60 & wait $!; }\n'
        "exit 0\n",
    )
    job = _submit(slurm_cluster, tmp_path, "--requeue", "--array=0", str(script))
    task = f"{job}_0"
    slurm_cluster.wait_for(lambda: _lines(restarts) == ["0"], TIMEOUT_S, f"{task} to start")
    assert slurm_cluster.task_states(job) == {task: "RUNNING"}

    slurm_cluster.run("scontrol", "requeue", task)
    slurm_cluster.wait_for(lambda: slurm_cluster.task_states(job) == {task: "PENDING"}, TIMEOUT_S, f"{task} requeued")
    # Slurm holds a requeued task back (about 2 minutes): without release() it would not start within the test.
    assert slurm_cluster.run("squeue", "-h", "-j", task, "-o", "%r").strip() == "BeginTime"
    slurm_cluster.release(task)

    slurm_cluster.wait_for(lambda: slurm_cluster.task_states(job) == {task: "COMPLETED"}, TIMEOUT_S, f"{task} done")
    assert _lines(restarts) == ["0", "1"]


def test_requeue_sends_sigterm_to_the_task(slurm_cluster, tmp_path):
    started, term = tmp_path / "started", tmp_path / "sigterm"
    # `wait` returns on a trapped signal at once (a foreground sleep would delay the trap); a SIGKILL runs no trap.
    script = _script(
        tmp_path,
        f"trap 'echo $SLURM_ARRAY_TASK_ID > {term}; exit 143' TERM\necho up > {started}\nsleep 60 & wait $!\n",
    )
    job = _submit(slurm_cluster, tmp_path, "--requeue", "--array=0", str(script))
    task = f"{job}_0"
    try:
        slurm_cluster.wait_for(started.exists, TIMEOUT_S, f"{task} to start")
        slurm_cluster.run("scontrol", "requeue", task)
        slurm_cluster.wait_for(lambda: slurm_cluster.task_states(job) == {task: "PENDING"}, TIMEOUT_S, "requeue")
        # The task has ended and is queued again: the trap ran, so SIGTERM came before any SIGKILL (KillWait later).
        assert _lines(term) == ["0"]
    finally:
        slurm_cluster.run("scancel", job, check=False)


def test_second_cluster_alongside_and_nothing_left_after(slurm_cluster, tmp_path):
    """Two clusters on one machine (two test sessions) do not meet, and stopping one leaves none of its processes,
    even with a job running that ignores SIGTERM."""
    with start_cluster(tmp_path / "other", kill_wait_s=5) as other:  # the stubborn job is SIGKILLed 5 s after TERM
        assert other.conf != slurm_cluster.conf
        assert other.run("scontrol", "show", "config").count("SlurmctldPort") == 1
        ports = {
            c.folder: [line for line in c.conf.read_text().splitlines() if "Port=" in line]
            for c in (slurm_cluster, other)
        }
        assert ports[slurm_cluster.folder] != ports[other.folder]
        job = other.run("sbatch", "--parsable", f"--chdir={tmp_path}", "--wrap", "trap '' TERM; sleep 120").strip()
        other.wait_for(lambda: other.task_states(job) == {job: "RUNNING"}, TIMEOUT_S, "the stubborn job to run")
        assert slurm_cluster.run("squeue", "-h", "-t", "RUNNING") == ""  # the session's cluster runs nothing
        # slurmctld, slurmd, slurmstepd, the job's bash and sleep (RUNNING can come before the job's processes do)
        other.wait_for(lambda: len(other.processes()) >= 4, TIMEOUT_S, "the job's processes")
    assert other.processes() == []
    assert slurm_cluster.run("sinfo", "-h", "-o", "%T").strip() == "idle"


def test_missing_binary_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmUnavailable) as caught, start_cluster(tmp_path / "cluster"):
        pass
    assert caught.value.reason.startswith("munged, slurmctld, slurmd, sbatch")
    assert "apt-get install munge slurmctld slurmd slurm-client" in caught.value.reason
    assert "\n" not in caught.value.reason


def test_taken_port_is_chosen_again(tmp_path, monkeypatch):
    """A port taken between choosing and binding it (another session's cluster) costs a retry, not the session."""
    import socket

    from tests.support import slurm_cluster as module

    chosen: list[list[int]] = []
    real = module._free_ports

    def first_taken(count: int) -> list[int]:
        chosen.append(real(count))
        if len(chosen) == 1:
            chosen[0][0] = taken.getsockname()[1]  # slurmctld's port
        return chosen[-1]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: slurmctld cannot bind it, a client is refused at once
        monkeypatch.setattr(module, "_free_ports", first_taken)
        with start_cluster(tmp_path / "cluster") as cluster:
            assert len(chosen) == 2
            assert f"SlurmctldPort={chosen[1][0]}" in cluster.conf.read_text()
            assert "Address already in use" in (cluster.folder / "slurmctld.stderr").read_text()
