"""ablation/slurm/submit.py, task.py and state.py without a cluster: the script, the options' checks, the
task wrapper's stop-and-requeue decision, reading scontrol's records. tests/slurm/ runs them against real Slurm."""

import os
import signal
import subprocess
import sys

import pytest

import runner
from ablation.core.errors import ConfigError
from ablation.slurm.state import parse_scontrol
from ablation.slurm.submit import SlurmOptions, parse_extra, time_minutes
from tests.support.tiny import tiny_experiment

URL = "postgresql+psycopg2://user@db/sweeps"


def test_slurm_writes_a_worker_array_and_refuses_a_local_storage(
    tmp_path, tiny_npz, write_experiment, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the default log folder, slurm-logs/<experiment>, is made where it runs
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first, parallel]", "[0, 1]"))
    out = tmp_path / "array.sh"
    args = ["slurm", str(path), "--storage", URL, "--tracking-uri", "http://mlflow:5000", "--out", str(out)]
    extra = ["--sbatch=--qos=high", "--sbatch", "#SBATCH --exclusive", "--setup", "module load cuda/12"]
    assert runner.main([*args, "--gpus-per-job", "2", "--time", "2:00:00", "--signal-grace", "300", *extra]) == 0
    script = out.read_text()
    assert "#SBATCH --array=0-3" in script  # one worker per cell by default: 2 arms x 2 seeds
    assert "#SBATCH --gpus-per-task=2" in script and "--gpus-per-job 2" in script
    # What recovery depends on: requeueable, SIGUSR2 before the limit, logs appended across restarts.
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=USR2@300" in script
    assert "#SBATCH --open-mode=append" in script and "#SBATCH --time=120" in script
    assert "#SBATCH --qos=high" in script and "#SBATCH --exclusive" in script
    assert script.index("module load cuda/12") < script.index("srun ")
    assert "python -m ablation.slurm.task --max-requeues 3 -- python " in script  # --setup: python of the env
    # srun's exit code goes to the task's check (a time-limit signal that came before any handler: requeue)
    assert script.rstrip().endswith("|| python -m ablation.slurm.task --max-requeues 3 --after-step $?"), script
    assert f"--storage {URL}" in script and "-m ablation worker" in script and "--name" not in script
    assert "runner.py worker" not in script and "PYTHONPATH" not in script  # the module, not a file of a checkout
    assert str(path.resolve()) in script  # paths a task on another node resolves the same way
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    assert f"#SBATCH --output={tmp_path}/slurm-logs/tiny/%A_%a.out" in script
    assert (tmp_path / "slurm-logs" / "tiny").is_dir()  # Slurm does not make it
    capsys.readouterr()
    assert runner.main(["slurm", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: --storage")
    assert runner.main(["slurm", str(path), "--storage", URL, "--submit"]) == 2
    assert capsys.readouterr().err.startswith("error: --tracking-uri: None is not allowed; allowed: the MLflow server")


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440), ("1-02:30", 1590), ("0-00:00:30", 1)],
)
def test_slurm_time_limits_in_minutes(text, minutes):
    assert time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "0", "1:2:3:4", "-5"])
def test_bad_slurm_time_limits(text):
    with pytest.raises(ValueError, match="is not allowed"):
        time_minutes(text)


def test_extra_sbatch_options_are_parsed_and_owned_ones_refused():
    assert parse_extra(("--qos=high", "#SBATCH --mem=32G", "--exclusive")) == {
        "qos": "high",
        "mem": "32G",
        "exclusive": True,
    }
    with pytest.raises(ConfigError, match=r"--sbatch: '--time=5' is not allowed; .* use --time$"):
        parse_extra(("--time=5",))
    with pytest.raises(ConfigError, match="an sbatch option such as"):
        parse_extra(("qos=high",))
    with pytest.raises(ConfigError, match="--signal-grace: 600 is not allowed; allowed: fewer seconds than"):
        SlurmOptions(tasks=1, time="10", signal_grace_s=600)


def test_scontrol_records_give_every_array_task_even_folded_pending_ones():
    running = "JobId=8 ArrayJobId=7 ArrayTaskId=1 JobState=RUNNING Reason=None Restarts=1 RunTime=00:01:05 NodeList=n3"
    pending = "JobId=7 ArrayJobId=7 ArrayTaskId=2-4%2 JobState=PENDING Reason=BeginTime Restarts=0 NodeList="
    other = "JobId=9 ArrayJobId=9 ArrayTaskId=0 JobState=RUNNING"
    tasks = {t.task: t for t in parse_scontrol("7", "\n".join([running, pending, other]))}
    assert sorted(tasks) == ["7_1", "7_2", "7_3", "7_4"]
    assert (tasks["7_1"].state, tasks["7_1"].node, tasks["7_1"].restarts) == ("RUNNING", "n3", 1)
    assert (tasks["7_3"].state, tasks["7_3"].reason, tasks["7_3"].node) == ("PENDING", "BeginTime", "")
    # A one-task array is a plain job (submitit submits it so): its record has no array fields.
    (plain,) = parse_scontrol("12", "JobId=12 JobName=w JobState=CANCELLED Reason=None Restarts=0 NodeList=n1")
    assert (plain.task, plain.state, plain.node) == ("12", "CANCELLED", "n1")


# ---- the task wrapper (python -m ablation.slurm.task), on a stand-in worker that stops like runner.py does

WORKER = """
import os, signal, sys, time
def stop(signum, frame):
    print(f"worker got {signal.Signals(signum).name}", flush=True)
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
print("worker up " + " ".join(sys.argv[1:]) + " threads " + os.environ.get("OMP_NUM_THREADS", "-"), flush=True)
# Short sleeps, as the real worker's loops: a signal that lands just before a long sleep starts is handled only when
# it ends (CPython checks for signals between bytecodes): seen here about once in 150 runs on a loaded machine.
for _ in range(600):
    time.sleep(0.1)
"""


# A worker still importing when the signal comes: no handler yet, so the signal's default action ends it.
STARTING_WORKER = """
import os, sys, time
print("worker up " + " ".join(sys.argv[1:]) + " threads " + os.environ.get("OMP_NUM_THREADS", "-"), flush=True)
time.sleep(60)
"""


def _wrapper(tmp_path, restarts: str, max_requeues: str, worker: str = WORKER) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(SLURM_ARRAY_JOB_ID="41", SLURM_ARRAY_TASK_ID="3", SLURM_RESTART_COUNT=restarts, SLURM_CPUS_PER_TASK="3")
    argv = [sys.executable, "-m", "ablation.slurm.task", "--max-requeues", max_requeues, "--"]
    process = subprocess.Popen(
        [*argv, sys.executable, "-c", worker], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    line = process.stdout.readline()
    assert line.startswith("worker up --name slurm-41_3"), line  # each task names its worker after itself
    assert line.strip().endswith("threads 3"), line  # its share of the node's cores, not all of them
    return process


@pytest.mark.parametrize("restarts", ["0", "2"])
def test_near_the_time_limit_the_worker_is_stopped_and_a_spent_task_is_not_requeued(tmp_path, restarts):
    process = _wrapper(tmp_path, restarts, max_requeues="2" if restarts == "2" else "0")
    process.send_signal(signal.SIGUSR2)  # Slurm's warning, --signal=USR2@grace
    out, _ = process.communicate(timeout=30)
    assert "worker got SIGTERM" in out  # passed on as the stop the worker knows
    assert f"not requeued: the task was requeued {restarts} times" in out, out
    assert process.returncode == 130


def test_a_worker_ended_by_the_time_limit_signal_while_starting_counts_as_stopped(tmp_path):
    """Slurm may send the time limit's SIGUSR2 up to a minute early, to every process of the task: a worker that has
    not installed its handlers yet is ended by it (or by the SIGTERM passed on). It had claimed nothing, so the task
    goes on as after a clean stop (here: its requeues are spent, so it says so instead of requeueing)."""
    process = _wrapper(tmp_path, "1", max_requeues="1", worker=STARTING_WORKER)
    process.send_signal(signal.SIGUSR2)
    out, _ = process.communicate(timeout=30)
    assert "time limit near, cell given back; not requeued: the task was requeued 1 times" in out, out
    assert process.returncode != 0  # the worker's own end, passed on: the task itself is not requeued


# A worker the time limit's signal ends at once, reaped before the wrapper's own copy of the signal is handled
# (Slurm signals the step's processes one by one): here the wrapper is not signalled at all.
ENDED_BY_THE_SIGNAL_WORKER = """
import os, signal, sys
print("worker up " + " ".join(sys.argv[1:]) + " threads " + os.environ.get("OMP_NUM_THREADS", "-"), flush=True)
os.kill(os.getpid(), signal.SIGUSR2)
"""


def test_a_worker_the_time_limit_signal_ended_counts_as_stopped_even_before_the_wrapper_hears_it(tmp_path):
    process = _wrapper(tmp_path, "1", max_requeues="1", worker=ENDED_BY_THE_SIGNAL_WORKER)
    out, _ = process.communicate(timeout=60)
    assert "time limit near, cell given back; not requeued: the task was requeued 1 times" in out, out
    # the worker's end passed on, and not as a step the signal ended (the batch script's check would say it again)
    assert process.returncode not in (0, 128 + signal.SIGUSR2)


def _after_step(code: int, restarts: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "3", "SLURM_RESTART_COUNT": restarts}
    argv = [sys.executable, "-m", "ablation.slurm.task", "--max-requeues", "2", "--after-step", str(code)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_after_srun_a_step_the_time_limit_signal_ended_before_any_handler_is_requeued_and_other_ends_pass_on():
    """The batch script's line after srun: 140 (128 + SIGUSR2) is a step the signal ended before Python had a
    handler; the task requeues itself as after a clean stop (here its requeues are spent, so it says so). Any other
    code is the task's own end, passed on silently. (The requeue itself runs against real Slurm in
    tests/slurm/cluster/test_array.py.)"""
    spent = _after_step(128 + signal.SIGUSR2, restarts="2")
    assert spent.returncode == 128 + signal.SIGUSR2
    assert spent.stdout.strip() == (
        "[slurm-41_3] time limit near before the task had started, no cell claimed; not requeued: the task was "
        "requeued 2 times (--max-requeues 2). Other tasks or a new submission take the sweep on."
    )
    for code in (0, 1, 130, 137):
        passed = _after_step(code, restarts="0")
        assert (passed.returncode, passed.stdout, passed.stderr) == (code, "", "")


def test_submitits_handler_between_its_handlers_and_the_wrappers_requeues_the_same_task(monkeypatch, capsys):
    from submitit.helpers import DelayedSubmission

    from ablation.slurm.task import WorkerTask

    task = WorkerTask(("python", "-m", "ablation", "worker"), max_requeues=2)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = task.checkpoint()
    assert isinstance(again, DelayedSubmission) and again.function == task
    assert "time limit near before the task had started, no cell claimed; requeueing this task (2/2)" in (
        capsys.readouterr().out
    )
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert task.checkpoint() is None
    assert "no cell claimed; not requeued: the task was requeued 2 times (--max-requeues 2)" in (
        capsys.readouterr().out
    )


def test_a_stop_that_is_not_the_time_limit_is_passed_on_and_nothing_requeued(tmp_path):
    process = _wrapper(tmp_path, "0", max_requeues="3")
    process.send_signal(signal.SIGTERM)  # scancel, or a preemption (Slurm requeues those itself)
    out, _ = process.communicate(timeout=30)
    assert "worker got SIGTERM" in out and "requeue" not in out, out
    assert process.returncode == 130


# A worker an outage stopped (a full disk, a store that stayed away): it said which, and exits with code 75.
OUTAGE_WORKER = """
import os, sys
print("worker up " + " ".join(sys.argv[1:]) + " threads " + os.environ.get("OMP_NUM_THREADS", "-"), flush=True)
print("error: the folder /shared/checkpoints/x: has no space left; free space there", flush=True)
sys.exit(75)
"""


def test_a_worker_stopped_by_an_outage_is_said_in_the_tasks_log_and_not_requeued(tmp_path):
    from ablation.core.outages import OUTAGE_EXIT
    from ablation.slurm.task import OUTAGE

    assert OUTAGE == OUTAGE_EXIT  # restated in task.py, which imports nothing of the package
    process = _wrapper(tmp_path, "0", max_requeues="3", worker=OUTAGE_WORKER)
    out, _ = process.communicate(timeout=30)
    assert "the worker stopped on an outage of the machine or a store" in out, out
    assert "requeueing" not in out, out
    assert process.returncode == OUTAGE_EXIT
