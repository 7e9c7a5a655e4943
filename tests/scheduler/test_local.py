"""End to end: sweeps on real images into a real MLflow store, the table read back, reruns and resumes."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

import runner
from ablation.experiment.prepared import prepare_sweep
from ablation.experiment.schema import load_experiment
from ablation.report import columns as C
from ablation.report.table import collect_runs, summarize
from ablation.tracking.names import (
    ARM,
    CONFIG_FILE,
    CONFIG_HASH,
    CURVE_FILE,
    ENVIRONMENT_FILE,
    EPOCH_METRICS,
    FAILURE,
    FINAL_PARAMS,
    FINAL_TOP1_ERR_LAST,
    FINAL_TOP5_ERR_LAST,
    FINAL_VAL_LOSS_LAST,
    PARENT_RUN,
    ROLE_CELL,
    ROLE_SWEEP,
    SEED,
    TRAIN_LOSS,
    VAL_TOP1_ERR,
    role_filter,
)
from tests.support import processes
from tests.support.tiny import sweep_in, tiny_experiment

pytestmark = pytest.mark.slow

GRID = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"


def sweep(path, tmp_path, retry_failed=False, **cell_options):
    prepared = prepare_sweep(load_experiment(path))
    report, options = sweep_in(tmp_path, prepared, retry_failed=retry_failed, **cell_options)
    return prepared, report, options.tracking_uri


def cell_runs(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    return client, client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL))


def test_sweep_tracks_every_cell_and_the_table_equals_the_runs(tmp_path, tiny_npz, write_experiment):
    path = write_experiment(tiny_experiment(tiny_npz, GRID))
    prepared, report, uri = sweep(path, tmp_path)
    assert (report.trained_now, report.done, report.failed) == (4, 4, {})

    client, runs = cell_runs(uri)
    assert len(runs) == 4  # 2 arms x 2 seeds
    parents = {r.data.tags[PARENT_RUN] for r in runs}
    assert parents == {report.parent_run_id}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.info.run_name.endswith(f"| seed {run.data.tags[SEED]}")
        for key in EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        assert run.data.params["train.epochs"] == "2"
        assert run.data.params["model.attention.type"] in ("none", "cbam")
        assert len(run.data.tags[CONFIG_HASH]) == 12
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {CONFIG_FILE, ENVIRONMENT_FILE, CURVE_FILE} <= artifacts
        if run.data.params["model.attention.type"] == "cbam":
            # A reader comparing timings must see which CBAM implementation ran.
            local = client.download_artifacts(run.info.run_id, ENVIRONMENT_FILE, str(tmp_path / run.info.run_id))
            environment = json.loads(Path(local).read_text())
            assert environment["cbam_cpu_kernels"] == "loaded"
            assert environment["host_memory"] == "kept"
        assert run.inputs.dataset_inputs[0].dataset.name == "npz"
        last = client.get_metric_history(run.info.run_id, VAL_TOP1_ERR)[-1].value
        assert run.data.metrics[FINAL_TOP1_ERR_LAST] == last
        assert 0 < run.data.metrics[FINAL_PARAMS] < 1e6

    summary = summarize(prepared, collect_runs(prepared, uri))
    assert summary["n"].tolist() == [2, 2]
    from scipy import stats

    by_arm = [[r.data.metrics[FINAL_TOP1_ERR_LAST] for r in runs if r.data.tags[ARM] == str(i)] for i in (0, 1)]
    if len(set(by_arm[0] + by_arm[1])) > 1 and min(len(set(v)) for v in by_arm) > 1:
        assert summary[C.VS_BASELINE_P][1] == pytest.approx(
            stats.ttest_ind(by_arm[1], by_arm[0], equal_var=False).pvalue
        )
    assert summary[C.VS_BASELINE][0] == "baseline"
    for arm in prepared.arms:
        values = [r.data.metrics[FINAL_TOP1_ERR_LAST] for r in runs if r.data.tags[ARM] == str(arm.index)]
        row = summary.iloc[arm.index]
        assert row[C.TOP1_MEAN] == pytest.approx(sum(values) / 2)
        assert row[C.TOP1_STD] == pytest.approx(pd.Series(values).std(ddof=1))

    # Running it again creates no run and trains nothing.
    _, again, _ = sweep(path, tmp_path)
    assert (again.trained_now, again.done) == (0, 4)
    assert len(cell_runs(uri)[1]) == 4


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny_npz, write_experiment):
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first]", "[0]", epochs=3))
    _, straight, straight_uri = sweep(path, tmp_path / "straight")
    assert straight.done == 1

    _, first, uri = sweep(path, tmp_path / "resumed", stop_after_epochs=1)
    assert (first.done, first.pending) == (0, 1)
    client, (interrupted,) = cell_runs(uri)
    assert interrupted.info.status == "KILLED"
    _, second, _ = sweep(path, tmp_path / "resumed")
    assert second.done == 1
    client, (resumed,) = cell_runs(uri)
    assert resumed.info.run_id == interrupted.info.run_id  # the same MLflow run carried on
    assert resumed.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, VAL_TOP1_ERR)] == [1, 2, 3]

    _, (reference,) = cell_runs(straight_uri)
    for key in (FINAL_TOP1_ERR_LAST, FINAL_TOP5_ERR_LAST, FINAL_VAL_LOSS_LAST):
        assert resumed.data.metrics[key] == reference.data.metrics[key], key
    assert client.get_metric_history(resumed.info.run_id, TRAIN_LOSS)[-1].value == (
        MlflowClient(straight_uri).get_metric_history(reference.info.run_id, TRAIN_LOSS)[-1].value
    )


def test_a_diverging_cell_fails_with_its_reason_and_the_sweep_goes_on(tmp_path, tiny_npz, write_experiment):
    grid = "  - train.lr: [1.0e+30, 0.05]\n"
    path = write_experiment(tiny_experiment(tiny_npz, grid, "[0]", epochs=1))
    _, report, uri = sweep(path, tmp_path)
    assert report.done == 1 and len(report.failed) == 1
    (reason,) = report.failed.values()
    assert "NonFiniteLossError" in reason
    _client, runs = cell_runs(uri)
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "loss is nan" in failed.data.tags[FAILURE] or "loss is inf" in failed.data.tags[FAILURE]
    # A rerun leaves the failed cell alone unless asked; --retry-failed runs it again (and it fails again).
    _, again, _ = sweep(path, tmp_path)
    assert (again.trained_now, len(again.failed), again.done) == (0, 1, 1)
    _, retried, _ = sweep(path, tmp_path, retry_failed=True)
    assert (retried.trained_now, len(retried.failed), retried.done) == (0, 1, 1)
    _, runs = cell_runs(uri)
    assert len(runs) == 2  # the retry reopened the failed cell's run instead of adding one


def run_cli(*args, cwd):
    """``runner.py`` as a separate process (forked from a process that imported everything once)."""
    done = processes.run(list(args), cwd, cwd / "runner.log")
    return done.exitcode, done.log


def test_bad_data_or_file_fails_before_any_run(tmp_path, tiny_npz, write_experiment, capsys, monkeypatch):
    good = tiny_experiment(tiny_npz, GRID)
    cases = {
        "missing-data": good.replace(str(tiny_npz), str(tmp_path / "nowhere.npz")),
        "malformed": good + "grid: [\n",
        "bad-value": good.replace("lr: 0.05", "lr: fast"),
    }
    monkeypatch.chdir(tmp_path)
    for name, text in cases.items():
        path = write_experiment(text, name)
        capsys.readouterr()
        assert runner.main(["sweep", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, (name, err)
        assert err.startswith("error: ")
        assert not (tmp_path / "mlflow.db").exists(), name  # no store, so certainly no run
        if name == "missing-data":
            assert "data.root" in err and "nowhere.npz" in err


def test_cli_sweep_then_table_formats(tmp_path, tiny_npz, write_experiment, capsys):
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, log = run_cli("sweep", str(path), "--tracking-uri", uri, "--no-progress", cwd=tmp_path)
    assert code == 0, log
    assert "2/2 cells done" in log
    table_args = ["table", str(path), "--tracking-uri", uri, "--format", "csv", "--out", str(tmp_path / "csv")]
    assert runner.main(table_args) == 0
    from io import StringIO

    table = pd.read_csv(StringIO(capsys.readouterr().out))
    assert {C.DESCRIPTION, C.N, C.TOP1_MEAN, C.TOP1_STD, C.TOP5_MEAN, C.TOP5_STD} <= set(table)
    assert table["n"].tolist() == [1, 1]
    assert table[C.TOP1_STD].isna().all()  # one seed: no spread, not a made-up one
    for name in (
        "table.md",
        "table.tex",
        "table.csv",
        "table.html",
        "top1_err.png",
        "top1_err.pdf",
        "learning_curves.png",
        "learning_curves.pdf",
        "cost.png",
        "cost.pdf",
    ):
        assert (tmp_path / "results" / "tiny" / name).stat().st_size > 0
    markdown = (tmp_path / "results" / "tiny" / "table.md").read_text()
    assert "| baseline |" in markdown and "| n < 2 |" in markdown  # one seed: no test, and it says so
    # The table and figures are attached to the sweep's parent run.
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([experiment.experiment_id], role_filter(ROLE_SWEEP))
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/table.md", "results/top1_err.png", "results/learning_curves.png"} <= logged
    latex = (tmp_path / "results" / "tiny" / "table.tex").read_text()
    assert r"\toprule" in latex and r"\bottomrule" in latex
    assert not math.isnan(table[C.TOP1_MEAN][0])


class _NoCells:
    """A queue with nothing in it: all ``_wait_for`` reads of the sweep's state is its counts."""

    def latest(self):
        return {}


def test_a_worker_process_stopped_by_an_outage_stops_the_others_resumable():
    """A full disk or an unreachable store meets every worker, cell after cell: the first that stops on it (exit
    code OUTAGE_EXIT) stops the others, which give their cells back on SIGTERM, instead of each failing alone."""
    import subprocess
    import sys
    import time

    from ablation.core.outages import OUTAGE_EXIT
    from ablation.scheduler.local import _wait_for

    holder = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(130)); time.sleep(120)"
    others = [subprocess.Popen([sys.executable, "-c", holder]) for _ in range(2)]
    stopped = subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({OUTAGE_EXIT})"])
    began = time.perf_counter()
    _wait_for([*others, stopped], None, _NoCells(), began, lambda: 0)
    assert stopped.returncode == OUTAGE_EXIT
    assert [p.returncode for p in others] == [130, 130]  # stopped as the Ctrl-C path stops them, not killed
    assert time.perf_counter() - began < 60  # not the holders' own 120 s


def test_waiting_for_worker_processes_ends_when_the_last_one_does():
    import subprocess
    import sys

    from ablation.scheduler.local import _wait_for

    workers = [subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({s})"]) for s in (0.1, 0.5)]
    _wait_for(workers, None, _NoCells(), 0.0, lambda: 0)
    assert [p.returncode for p in workers] == [0, 0]
