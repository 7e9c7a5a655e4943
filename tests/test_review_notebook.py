"""notebooks/review.ipynb executed top to bottom (nbclient) against a tiny real sweep."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from ablation.cell import CellOptions
from ablation.config import load_experiment
from ablation.sweep import prepare_sweep, run_sweep
from ablation.worker import WorkerOptions
from tests.conftest import ROOT, tiny_experiment

pytestmark = pytest.mark.slow


def test_review_notebook_runs_against_a_sweep(tmp_path, tiny_npz, write_experiment, monkeypatch):
    grid = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"
    path = write_experiment(tiny_experiment(tiny_npz, grid, "[0, 1]", epochs=1))
    tracking, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'sweeps.db'}"
    prepared = prepare_sweep(load_experiment(path))
    options = WorkerOptions(tracking, storage, CellOptions(checkpoint_dir=tmp_path / "ckpt", progress=False))
    assert run_sweep(prepared, options).done == 4

    monkeypatch.setenv("REVIEW_EXPERIMENT", str(path))
    monkeypatch.setenv("REVIEW_TRACKING_URI", tracking)
    monkeypatch.setenv("REVIEW_STORAGE", storage)
    notebook = nbformat.read(ROOT / "notebooks" / "review.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "4 cells: 0 pending, 0 running, 4 done, 0 failed" in text
    markdown = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "| ResNet18 (width=0.125) | 2 |" in markdown and "| ResNet18 (width=0.125) + CBAM (r=4) | 2 |" in markdown
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert os.environ["REVIEW_STORAGE"] == storage
