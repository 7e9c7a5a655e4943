"""notebooks/from_python.ipynb runs headless top to bottom: a sweep from a dict through ``ablation.sweep``, its table,
its runs, a figure, and the same results read back with ``ablation.results``."""

import pytest

from tests.support import notebooks
from tests.support.notebooks import images, text

pytestmark = pytest.mark.slow


def test_the_from_python_notebook_sweeps_and_shows_its_table_runs_and_a_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_PYTHON_FOLDER", str(tmp_path / "run"))
    monkeypatch.setenv("FROM_PYTHON_EPOCHS", "1")
    monkeypatch.setenv("FROM_PYTHON_SEEDS", "0")  # one seed: the notebook's path is the same, in half the time
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The kernel works in the temporary folder: MLflow's ./mlruns for a SQLite store lands there, not in the checkout.
    outputs = notebooks.execute("from_python.ipynb", working_folder=tmp_path)

    assert "total=3, done=3, pending=0, failed={}" in text(outputs["sweep"])
    table = text(outputs["table"])
    for description in ("ResNet18 (width=0.125)", "+ SE (r=4)", "+ CBAM (r=4)"):
        assert description in table
    runs = text(outputs["runs"])
    assert runs.count(" done ") == 3, runs
    assert len(images(outputs["figure"])) == 1
    assert "3/3 cells done; same table: True" in text(outputs["results"])
    assert (tmp_path / "run" / "mlflow.db").is_file() and (tmp_path / "run" / "checkpoints").is_dir()
