"""The dataset registry (ablation/data/registry.py): one entry per dataset, and a dataset registered from outside the
package is validated, checked, loaded, normalised, keyed and swept without any other module knowing it."""

from __future__ import annotations

import numpy as np
import pytest

from ablation.core.errors import ConfigError
from ablation.data import registry
from ablation.data.catalog import DatasetInfo, dataset_info
from ablation.data.registry import Dataset, dataset_entry, dataset_names, register_dataset
from ablation.data.sources import ArrayDataset, load_arrays, normalization
from ablation.experiment.prepared import prepare_sweep
from ablation.experiment.schema import load_experiment, parse_run_config
from tests.support.tiny import sweep_in


def test_the_config_accepts_exactly_the_registered_datasets():
    for name in dataset_names():
        data = {"dataset": name, **({"target": "mypkg.data:make"} if name == "custom" else {})}  # custom: its maker
        assert parse_run_config({"data": data}).data.dataset == name
    with pytest.raises(ConfigError, match=r"data\.dataset: 'mnist' is not allowed; allowed: cifar10-micro, npz"):
        parse_run_config({"data": {"dataset": "mnist"}})
    with pytest.raises(ConfigError, match="allowed: cifar10-micro, npz, cifar10, cifar100, imagenet, custom"):
        dataset_entry("mnist")


def test_an_entry_says_what_it_needs():
    with pytest.raises(ValueError, match="needs its arrays function"):
        Dataset("x", "arrays", "m:f")
    with pytest.raises(ValueError, match="needs its normalisation stats"):
        Dataset("x", "folders", "m:f")
    with pytest.raises(ValueError, match="registered already"):
        register_dataset(dataset_entry("npz"))


# ---- a user's own dataset: the bundled CIFAR images in grayscale, from this test module alone


def _gray(tiny_npz) -> ArrayDataset:
    with np.load(tiny_npz) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
    to_gray = lambda x: x.mean(axis=3, keepdims=True).round().astype(np.uint8)  # noqa: E731
    return ArrayDataset(
        "gray",
        str(tiny_npz),
        to_gray(arrays["x_train"]),
        arrays["y_train"].astype(np.int64),
        to_gray(arrays["x_test"]),
        arrays["y_test"].astype(np.int64),
        tuple(str(c) for c in arrays["classes"]),
    )


@pytest.fixture
def gray(tiny_npz, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the entry goes with the test
    read = []

    def arrays(data) -> ArrayDataset:
        read.append(data.dataset)
        return _gray(tiny_npz)

    def info(data, check_paths: bool) -> DatasetInfo:
        images = _gray(tiny_npz)
        identity = f"gray:{images.digest}" if check_paths else None
        return DatasetInfo(data.dataset, 10, data.image_size or 32, 1, tiny_npz, identity, len(images.y_train))

    register_dataset(Dataset("gray", "arrays", info, arrays))
    return read


def test_a_dataset_registered_from_outside_is_read_through_its_entry(gray):
    data = parse_run_config({"data": {"dataset": "gray"}}).data
    found = dataset_info(data)
    assert (found.num_classes, found.in_channels, found.train_size) == (10, 1, 100)
    assert found.identity.startswith("gray:")
    images = load_arrays(data)
    assert images.x_train.shape == (100, 32, 32, 1) and gray == ["gray"]
    mean, _ = normalization(data, images)  # its own images' statistics, the gray channel repeated
    assert len(mean) == 3 and mean[0] == mean[1] == mean[2] == pytest.approx(images.x_train.mean() / 255, rel=1e-4)


@pytest.mark.slow
def test_a_dataset_registered_from_outside_is_swept_and_keyed_by_its_identity(gray, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        """
name: gray
base:
  model: {arch: resnet18, width: 0.125, stem: cifar, attention: {type: cbam, reduction: 4}}
  data: {dataset: gray}
  train: {epochs: 1, batch_size: 25, lr: 0.05, schedule: cosine}
grid:
  - model.attention: [{type: none}]
seeds: [0]
"""
    )
    prepared = prepare_sweep(load_experiment(path))
    (arm,) = prepared.arms
    assert arm.data.identity.startswith("gray:")
    report, _ = sweep_in(tmp_path / "run", prepared)
    assert (report.done, report.trained_now) == (1, 1)
