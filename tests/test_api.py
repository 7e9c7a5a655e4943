"""The Python API (``ablation.sweep``, ``ablation.results``): the command line's checks with its very messages, raised
as typed exceptions; a dict experiment that is the same sweep as its file; results as DataFrames; an interrupt that
stops it as Ctrl-C does, and a next call that resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
import yaml

import ablation
from ablation import cli
from ablation.report import columns as C
from tests.support.folders import ROOT, in_folder
from tests.support.tiny import tiny_experiment

# ---- the command line's messages, raised (no training: each stops before torch is imported)

CASES = [
    # (API call's arguments, the command line's argv after "sweep", the exception type)
    ({"experiment": "demo", "overrides": {"train.epochs": 0}}, ["demo", "--set", "train.epochs=0"], "ConfigError"),
    ({"experiment": "demo", "overrides": {"train.lr": "fast"}}, ["demo", "--set", 'train.lr="fast"'], "ConfigError"),
    ({"experiment": "no/such/file.yaml"}, ["no/such/file.yaml"], "ConfigError"),
    ({"experiment": "demo", "workers": 0}, ["demo", "--workers", "0"], "ConfigError"),
    ({"experiment": "demo", "store_wait": -1}, ["demo", "--store-wait", "-1"], "UsageError"),
    ({"experiment": "demo", "overrides": {"seeds": []}}, ["demo", "--set", "seeds=[]"], "ConfigError"),
]


@pytest.mark.parametrize(("call", "argv", "kind"), CASES, ids=[" ".join(c[1]) for c in CASES])
def test_the_api_raises_the_command_lines_one_line_message(call, argv, kind, capsys, tmp_path):
    with in_folder(tmp_path):
        code = cli.main(["sweep", *argv])
        line = capsys.readouterr().err.strip()
        with pytest.raises(getattr(ablation, kind)) as raised:
            ablation.sweep(**call)
    assert code == 2 and line.startswith("error: ")
    assert str(raised.value) == line.removeprefix("error: ")
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created before the error


def test_a_dict_experiment_is_checked_before_anything_is_written(tmp_path):
    experiment = yaml.safe_load(tiny_experiment(tmp_path / "tiny.npz", "  - model.attention: [{type: none}]\n"))
    with pytest.raises(ablation.ConfigError, match=r"^data.root: .* does not exist"):
        ablation.sweep(experiment, checkpoint_dir=tmp_path / "checkpoints")
    del experiment["name"]
    with pytest.raises(ablation.ConfigError, match=r"^name: missing: an experiment needs a name"):
        ablation.sweep(experiment, checkpoint_dir=tmp_path / "checkpoints")
    with pytest.raises(ablation.UsageError, match=r"^experiment: list is not allowed"):
        ablation.sweep([1, 2])
    with pytest.raises(ablation.UsageError, match=r"^overrides\['train.lr'\]: .* is not allowed"):
        ablation.sweep("demo", overrides={"train.lr": object()})
    assert not (tmp_path / "checkpoints").exists()


def test_importing_the_package_imports_nothing_heavy_and_the_api_loads_on_first_use():
    code = (
        "import sys, ablation\n"
        "assert 'ablation.api' not in sys.modules and 'torch' not in sys.modules\n"
        "assert ablation.ConfigError.__module__ == 'ablation.core.errors'\n"
        "assert 'torch' not in sys.modules\n"
        "assert callable(ablation.sweep) and callable(ablation.results)\n"
        "assert set(ablation.__all__) <= set(dir(ablation))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- sweeps


def _experiment(npz, name: str, grid: str, seeds: str, epochs: int) -> dict:
    return {**yaml.safe_load(tiny_experiment(npz, grid, seeds, epochs=epochs)), "name": name}


@pytest.mark.slow
def test_a_dict_sweep_is_the_command_lines_sweep_and_its_results_read_back(tmp_path, tiny_npz, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    experiment = _experiment(
        tiny_npz, "api", "  - model.attention: [{type: none}, {type: se, reduction: 4}]\n", "[0, 1]", 1
    )
    stores = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "storage": f"sqlite:///{tmp_path / 's.db'}"}
    with in_folder(tmp_path):
        result = ablation.sweep(experiment, checkpoint_dir=tmp_path / "ck", progress=False, **stores)
        assert (result.total, result.done, result.pending, result.failed, result.trained_now) == (4, 4, 0, {}, 4)
        assert result.finished and result.parent_run_id

        table, runs = result.table(), result.runs()
        assert list(table[C.DESCRIPTION]) == ["ResNet18 (width=0.125)", "ResNet18 (width=0.125) + SE (r=4)"]
        assert list(table[C.N]) == [2, 2]
        assert list(runs.columns[:3]) == [C.CELL, C.ARM, C.DESCRIPTION]
        assert {"model.attention.type", "model.attention.reduction", C.SEED, C.STATUS, C.RUN_ID} <= set(runs.columns)
        assert list(runs[C.STATUS]) == ["done"] * 4 and list(runs["model.attention.type"]) == ["none"] * 2 + ["se"] * 2
        # The table's mean is the mean of the long format's rows: one source, two shapes.
        for arm, cells in runs.groupby(C.ARM):
            assert table.loc[arm, C.TOP1_MEAN] == pytest.approx(cells[C.TOP1].mean())

        # The file the dict was written to is the same sweep for the command line: nothing trains again.
        (written,) = (tmp_path / "ck" / "experiments").glob("api-*.yaml")
        capsys.readouterr()
        argv = ["sweep", str(written), "--no-progress", "--checkpoint-dir", str(tmp_path / "ck")]
        code = cli.main([*argv, "--tracking-uri", stores["tracking_uri"], "--storage", stores["storage"]])
        assert code == 0 and "4/4 cells done, 0 failed, 0 pending" in capsys.readouterr().out
        again = ablation.sweep(experiment, checkpoint_dir=tmp_path / "ck", progress=False, **stores)
        assert again.trained_now == 0 and again.done == 4

        read = ablation.results(experiment, tracking_uri=stores["tracking_uri"])
        assert (read.total, read.done, read.pending) == (4, 4, 0)
        assert read.table().equals(table) and read.runs().equals(runs)
        out = result.write(tmp_path / "out")
        assert {p.name for p in out} >= {"table.md", "table.tex", "table.csv", "table.html", "runs.csv"}

    # MLflow's conventions on every cell run: source tags, the commit of this checkout, system metrics.
    from mlflow import MlflowClient

    run = MlflowClient(stores["tracking_uri"]).get_run(runs[C.RUN_ID][0])
    tags = run.data.tags
    assert tags["mlflow.source.name"] == str(written) and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags.get("mlflow.source.git.commit") == (commit or None)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)


@pytest.fixture
def sigint_handled():
    """SIGINT handled as a notebook kernel handles it (KeyboardInterrupt), whatever this test run inherited: one
    started as a background job gets SIGINT ignored, which the harness rightly leaves be."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_an_interrupt_stops_the_sweep_as_ctrl_c_does_and_the_next_call_resumes(
    tmp_path, tiny_npz, monkeypatch, capfd, sigint_handled
):
    """What a notebook's stop button does: SIGINT to the process running the kernel, mid-epoch."""
    from mlflow import MlflowClient

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    epochs = 20
    experiment = _experiment(tiny_npz, "stop", "  - model.attention: [{type: none}]\n", "[0]", epochs)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stores = {"tracking_uri": uri, "storage": f"sqlite:///{tmp_path / 's.db'}"}

    # Waited for, then caused: the first epoch logged (the training loop's own point), then SIGINT from another
    # thread while the second trains. (Polling MLflow for the epoch instead missed a 20-epoch cell on a busy machine.)
    from ablation.engine import train

    first_epoch, reached = threading.Event(), train.kill_point

    def at_point(name: str) -> None:
        if name == "epoch.logged":
            first_epoch.set()
        reached(name)

    monkeypatch.setattr(train, "kill_point", at_point)

    def interrupt_after_the_first_epoch() -> None:
        if first_epoch.wait(timeout=300):
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_after_the_first_epoch, daemon=True)
    handler = signal.getsignal(signal.SIGINT)
    with in_folder(tmp_path):
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            ablation.sweep(experiment, checkpoint_dir=tmp_path / "ck", progress=False, **stores)
        watcher.join()
        assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back

        stopped = ablation.results(experiment, tracking_uri=uri)
        (row,) = stopped.runs().to_dict("records")
        assert row[C.STATUS] == "interrupted" and (stopped.done, stopped.pending) == (0, 1)
        assert MlflowClient(uri).get_run(row[C.RUN_ID]).info.status == "KILLED"

        capfd.readouterr()
        resumed = ablation.sweep(experiment, checkpoint_dir=tmp_path / "ck", progress=False, **stores)
        assert "resuming after epoch" in capfd.readouterr().err
    assert (resumed.done, resumed.trained_now) == (1, 1)
    (again,) = resumed.runs().to_dict("records")
    assert again[C.RUN_ID] == row[C.RUN_ID] and again[C.STATUS] == "done"  # the same run, reopened
    steps = sorted(m.step for m in MlflowClient(uri).get_metric_history(row[C.RUN_ID], "val/top1_err"))
    assert steps == list(range(1, epochs + 1))  # each epoch logged once
