"""A result's identity includes its data (ablation/data/identity.py): the same config on other images is another
cell, the same images moved elsewhere are not, and runs from before data identities are adopted only for the
same data."""

import os
import shutil

import numpy as np
import pytest
from mlflow import MlflowClient

from ablation.data import identity
from ablation.data.catalog import dataset_info
from ablation.experiment.schema import load_experiment, parse_run_config
from ablation.report.table import collect_runs
from ablation.scheduler.local import prepare_sweep
from ablation.tracking.names import CONFIG_HASH, DATA_IDENTITY, LEGACY_HASH
from tests.support.tiny import sweep_in, tiny_experiment

GRID = "  model.attention.order: [channel-first]"


def _other_images(tiny_npz, path):
    """The tiny set with other training images of the same classes: a valid dataset that is not the same one."""
    with np.load(tiny_npz) as f:
        arrays = dict(f)
    arrays["x_train"] = np.ascontiguousarray(arrays["x_train"][:, :, ::-1])  # every training image mirrored
    np.savez(path, **arrays)
    return path


def _sweep(experiment_path, folder, overrides=()):
    prepared = prepare_sweep(load_experiment(experiment_path, list(overrides)))
    report, options = sweep_in(folder, prepared)
    return prepared, report, options.tracking_uri


def test_identity_follows_the_content_not_the_path(tiny_npz, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed.npz"
    moved.parent.mkdir()
    shutil.copy(tiny_npz, moved)
    other = _other_images(tiny_npz, tmp_path / "other.npz")

    def info(path):
        return dataset_info(parse_run_config({"data": {"dataset": "npz", "root": str(path)}}).data)

    assert info(tiny_npz).identity == info(moved).identity
    assert info(other).identity != info(tiny_npz).identity
    # The digest is cached by (size, mtime, inode): a file rewritten in place gets a new one.
    before = info(moved).identity
    _other_images(tiny_npz, moved)
    assert info(moved).identity == info(other).identity != before
    # torchvision datasets are identified by name and splits, wherever their folder is.
    cifar = parse_run_config({"data": {"dataset": "cifar10", "root": "/nowhere"}}).data
    assert dataset_info(cifar).identity == "torchvision:cifar10:train+test"


@pytest.mark.slow
def test_the_same_experiment_on_other_data_is_other_cells(tiny_npz, tmp_path, write_experiment):
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    other = _other_images(tiny_npz, tmp_path / "other.npz")
    prepared_a, first, uri = _sweep(path, tmp_path)
    assert (first.trained_now, first.done) == (1, 1)

    prepared_b, second, _ = _sweep(path, tmp_path, [f"data.root={other}"])
    assert (second.trained_now, second.done) == (1, 1)  # not "1 done, 0 to run" with the first data's result
    assert prepared_a.cells[0].hash != prepared_b.cells[0].hash
    assert prepared_a.cells[0].legacy_hash == prepared_b.cells[0].legacy_hash  # the configs alone are equal

    # Each data's table holds its own run only, and the runs say which data they saw.
    runs_a, runs_b = collect_runs(prepared_a, uri), collect_runs(prepared_b, uri)
    assert len(runs_a) == len(runs_b) == 1 and runs_a["run_id"][0] != runs_b["run_id"][0]
    client = MlflowClient(uri)
    assert client.get_run(runs_b["run_id"][0]).data.tags[DATA_IDENTITY] == prepared_b.arms[0].data.identity

    # The first data moved elsewhere: the same cells, nothing to train.
    moved = tmp_path / "moved" / "tiny.npz"
    moved.parent.mkdir()
    shutil.copy2(tiny_npz, moved)
    _, third, _ = _sweep(path, tmp_path, [f"data.root={moved}"])
    assert (third.trained_now, third.done) == (0, 1)


@pytest.mark.slow
def test_finished_runs_from_before_data_identities_are_adopted_only_for_the_same_data(
    tiny_npz, tmp_path, write_experiment, capsys
):
    """Runs logged by the harness before this change carry the config-only key and no data identity: they count
    for this data when the dataset digest they logged matches it, and never for other data."""
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    prepared, _, uri = _sweep(path, tmp_path / "old")
    client = MlflowClient(uri)
    (cell,) = prepared.cells
    run_id = collect_runs(prepared, uri)["run_id"][0]
    # What the earlier harness logged: the key without the data, no identity tag, the checkpoint under that key.
    client.set_tag(run_id, CONFIG_HASH, cell.legacy_hash)
    client.delete_tag(run_id, DATA_IDENTITY)
    checkpoints = tmp_path / "old" / "checkpoints" / "tiny"
    (checkpoints / cell.hash).rename(checkpoints / cell.legacy_hash)
    (tmp_path / "old" / "sweeps.db").unlink()
    capsys.readouterr()

    other = _other_images(tiny_npz, tmp_path / "other.npz")
    _, on_other, _ = _sweep(path, tmp_path / "old", [f"data.root={other}"])
    assert on_other.trained_now == 1  # the old run saw other images: not this data's result
    assert "1 cannot be matched to this data" in capsys.readouterr().err

    _, again, _ = _sweep(path, tmp_path / "old")
    err = capsys.readouterr().err
    assert again.trained_now == 0 and again.done == 1, err
    assert "1 hold this data (same image digest)" in err
    tags = client.get_run(run_id).data.tags
    assert tags[CONFIG_HASH] == cell.hash and tags[LEGACY_HASH] == cell.legacy_hash
    assert (checkpoints / cell.hash / "last.pt").is_file()  # Grad-CAM finds it under the new key


def test_a_folder_is_identified_by_its_file_list_and_listed_once(tmp_path, monkeypatch):
    root = tmp_path / "imagenet"
    for split, names in (("train", ["a/1.jpg", "a/2.jpg", "b/1.jpg"]), ("val", ["a/9.jpg"])):
        for name in names:
            (root / split / name).parent.mkdir(parents=True, exist_ok=True)
            (root / split / name).write_bytes(b"x" * len(name))
    lines = []
    first = identity.folder_identity(root, say=lines.append)
    assert first.startswith("files:") and any("4 files" in line for line in lines)

    def never(*args):
        raise AssertionError("listed again")

    monkeypatch.setattr(identity, "_walk", never)
    assert identity.folder_identity(root) == first  # from the cache: no file listed
    monkeypatch.undo()

    folder = root / "train" / "b"
    (folder / "2.jpg").write_bytes(b"new image")
    # A new file changes its folder's mtime, but within the file system's timestamp resolution it may read the
    # same: move it a second on, as any later change would.
    before = folder.stat().st_mtime_ns
    os.utime(folder, ns=(before + 10**9, before + 10**9))
    assert identity.folder_identity(root, say=lines.append) != first
    moved = tmp_path / "moved"
    (root / "train" / "b" / "2.jpg").unlink()
    shutil.copytree(root, moved, copy_function=shutil.copy2)  # mtimes kept, as cp -a / rsync -t do
    assert identity.folder_identity(moved, say=lines.append) == first
