"""One cell as a job (ablation/scheduler/cell.py): where its checkpoint lives, and the dataset its MLflow run records
(the file it was read from and a digest of its content, the same for a copy, another for other images)."""

import shutil

import numpy as np

from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.schema import load_experiment
from ablation.scheduler.cell import checkpoint_path, dataset_input
from ablation.scheduler.launch import CellOptions
from tests.support.tiny import tiny_experiment


def test_checkpoint_and_dataset_input_of_a_cell(tmp_path, tiny_npz, write_experiment):
    copy, other = tmp_path / "copy.npz", tmp_path / "other.npz"
    shutil.copy(tiny_npz, copy)
    with np.load(tiny_npz) as f:
        arrays = dict(f)
    arrays["x_test"] = 255 - arrays["x_test"]
    np.savez(other, **arrays)
    path = write_experiment(tiny_experiment(tiny_npz, "  model.attention.order: [channel-first, parallel]", "[0]"))

    def cells(root):
        experiment = load_experiment(path, [f"data.root={root}"])
        return experiment, expand_cells(experiment, expand_arms(experiment))

    experiment, (first, second) = cells(tiny_npz)
    options = CellOptions(checkpoint_dir=tmp_path / "checkpoints")
    folder = tmp_path / "checkpoints" / "tiny"
    assert checkpoint_path(options, experiment.name, first) == folder / first.hash / "last.pt"
    assert checkpoint_path(options, experiment.name, second).parent.name == second.hash != first.hash

    record = dataset_input(first)
    assert record["name"] == "npz" and record["source"] == str(tiny_npz.resolve())
    assert dataset_input(second)["digest"] == record["digest"]
    copied, changed = dataset_input(cells(copy)[1][0]), dataset_input(cells(other)[1][0])
    assert copied["source"] == str(copy.resolve()) and copied["digest"] == record["digest"]
    assert changed["digest"] != record["digest"]
