"""notebooks/review.ipynb runs headless top to bottom on a real (tiny) sweep and shows status, table and charts."""

import pytest
from mlflow import MlflowClient

from ablation.experiment.prepared import prepare_sweep
from ablation.experiment.schema import load_experiment
from ablation.tracking.names import ROLE_CELL, role_filter
from tests.support import notebooks
from tests.support.folders import ROOT
from tests.support.notebooks import images, text
from tests.support.tiny import sweep_in, tiny_experiment

pytestmark = pytest.mark.slow

GRID = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"


def execute(monkeypatch, experiment, tracking_uri, storage) -> dict[str, list[dict]]:
    """Run the notebook from the repository root with the REVIEW_* parameters; return each tagged cell's outputs."""
    monkeypatch.setenv("REVIEW_EXPERIMENT", str(experiment))
    monkeypatch.setenv("REVIEW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("REVIEW_STORAGE", storage)
    return notebooks.execute("review.ipynb", timeout_s=120)


def test_the_review_notebook_runs_headless_on_a_finished_sweep(tmp_path, tiny_npz, monkeypatch):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_experiment(tiny_npz, GRID, "[0, 1]", epochs=1))
    prepared = prepare_sweep(load_experiment(path))
    report, options = sweep_in(tmp_path, prepared)
    assert report.done == 4

    outputs = execute(monkeypatch, path, options.tracking_uri, options.storage_url)

    # render_status's summary line: "4 cells: 0 pending, 0 running, 4 done, 0 failed".
    assert "4 cells: 0 pending, 0 running, 4 done, 0 failed" in text(outputs["status"])

    # The table, as a DataFrame and as markdown: both arms, each with n = 2 finished seeds.
    descriptions = [arm.description for arm in prepared.arms]
    assert len(set(descriptions)) == 2
    frame, markdown = text(outputs["table"]), text(outputs["table"], "text/markdown")
    for description in descriptions:
        assert description in frame
        assert f"| {description} | 2 |" in markdown, markdown

    # The bar chart and the learning curves are displayed images.
    for tag in ("bar-chart", "curves"):
        assert len(images(outputs[tag])) == 1, tag

    # A link to every cell's MLflow run.
    client = MlflowClient(options.tracking_uri)
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    links = text(outputs["links"], "text/markdown")
    for run in client.search_runs([experiment_id], role_filter(ROLE_CELL)):
        assert f"#/experiments/{experiment_id}/runs/{run.info.run_id})" in links


def test_the_review_notebook_says_not_started_for_a_sweep_that_never_ran(tmp_path, monkeypatch):
    outputs = execute(
        monkeypatch,
        ROOT / "experiments" / "demo.yaml",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        f"sqlite:///{tmp_path / 'sweeps.db'}",
    )
    assert "demo: not started in" in text(outputs["status"])
    assert "no finished runs yet" in text(outputs["bar-chart"])
    assert "no MLflow experiment 'demo'" in text(outputs["links"])
