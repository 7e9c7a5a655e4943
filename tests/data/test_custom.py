"""A user's own data (``data: {dataset: custom, target: ..., options: ...}``): arrays or datasets of (image, label)
pairs become the in-memory loader's arrays, an identity is required, the data's content is part of each cell's key,
mistakes are one line before anything starts, and it sweeps end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ablation.core.errors import ConfigError
from ablation.data.catalog import dataset_info
from ablation.data.custom import forget
from ablation.data.sources import load_arrays
from ablation.experiment.grid import expand_cells
from ablation.experiment.schema import experiment_from_mapping, parse_run_config
from tests.support.user_code import user_package

DATA = """
import numpy as np
from PIL import Image

from ablation.data.custom import CustomData

SHIFT = 0  # a test edits the content through this


def images(n=24, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if channels == 0 else (n, size, size, channels)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return (x.astype(np.int64) + SHIFT).clip(0, 255).astype(np.uint8), np.arange(n) % 3


def arrays(identity="v1", channels=3):
    x, y = images(channels=channels)
    return CustomData(train=(x, y), test=(x[:12], y[:12]), classes=["a", "b", "c"], identity=identity)


def pil_pairs():
    x, y = images()
    pairs = [(Image.fromarray(image), int(label)) for image, label in zip(x, y)]
    return {"train": pairs, "test": pairs[:12], "classes": 3, "identity": "pil"}


def tensor_pairs():
    import torch

    x, y = images()
    pairs = [(torch.from_numpy(image).permute(2, 0, 1).float() / 255, int(label)) for image, label in zip(x, y)]
    return {"train": pairs, "test": pairs[:12], "classes": 3, "identity": "tensors"}


def no_identity():
    d = arrays()
    return {"train": d.train, "test": d.test, "classes": 3}


def floats():
    x, y = images()
    return CustomData(train=(x / 255.0, y), test=(x / 255.0, y), classes=3, identity="f")


def wide():
    x, y = images()
    return CustomData(train=(x[:, :, :4], y), test=(x[:, :, :4], y), classes=3, identity="w")


def labels_outside():
    x, y = images()
    return CustomData(train=(x, y + 5), test=(x, y), classes=3, identity="o")


def fails():
    raise FileNotFoundError("/data/mine is not mounted")
"""


@pytest.fixture
def data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    forget()
    with user_package(tmp_path, monkeypatch, {"data": DATA}) as name:
        yield f"{name}.data"
    forget()


def _data(target: str, **options) -> dict:
    return {"dataset": "custom", "target": target, "options": options}


def _config(data: dict):
    return parse_run_config({"data": data}).data


def test_arrays_become_the_loaders_arrays_with_the_users_identity_and_a_content_digest(data_module):
    data = _config(_data(f"{data_module}:arrays"))
    info = dataset_info(data)
    arrays = load_arrays(data)
    assert (info.num_classes, info.image_size, info.in_channels, info.train_size) == (3, 8, 3, 24)
    assert info.identity == f"custom:v1:sha256:{arrays.digest}"
    assert arrays.x_train.dtype == np.uint8 and arrays.x_train.shape == (24, 8, 8, 3)
    assert arrays.classes == ("a", "b", "c") and arrays.source.endswith("data.py")  # the run's dataset source
    gray = load_arrays(_config(_data(f"{data_module}:arrays", channels=0)))
    assert gray.x_train.shape == (24, 8, 8, 1)  # N x H x W: one channel


@pytest.mark.parametrize("maker", ["pil_pairs", "tensor_pairs"])
def test_datasets_of_image_label_pairs_give_the_same_images(data_module, maker):
    expected = load_arrays(_config(_data(f"{data_module}:arrays")))
    got = load_arrays(_config(_data(f"{data_module}:{maker}")))
    assert np.array_equal(got.x_train, expected.x_train) and np.array_equal(got.y_train, expected.y_train)
    assert np.array_equal(got.x_test, expected.x_test) and got.classes == ("0", "1", "2")


MISTAKES = [
    ("no_identity", {}, "data.target: '{t}' returned no identity; allowed: a non-empty string"),
    ("arrays", {"identity": "  "}, "data.target: '{t}' returned an empty or non-text identity"),
    ("floats", {}, "data.target: '{t}': its train images are float64; allowed: uint8"),
    ("wide", {}, "data.target: '{t}': its train images have shape (24, 8, 4, 3); allowed: N x H x W x C, H == W"),
    ("labels_outside", {}, "data.target: '{t}': its train labels hold 5, outside the 3 classes"),
    ("fails", {}, "data.target: '{t}' raised FileNotFoundError: /data/mine is not mounted"),
    ("arrays", {"colour": 1}, "data.options.colour: unknown argument of {t}; allowed: identity, channels"),
    ("nothing_here", {}, "data.target: '{t}' does not exist"),
]


@pytest.mark.parametrize(("maker", "options", "message"), MISTAKES, ids=[m[2][:60] for m in MISTAKES])
def test_mistakes_are_one_line_before_anything_starts(data_module, maker, options, message):
    target = f"{data_module}:{maker}"
    with pytest.raises(ConfigError) as raised:
        dataset_info(_config(_data(target, **options)))
    assert str(raised.value).startswith(message.format(t=target)), str(raised.value)
    assert "\n" not in str(raised.value)


def test_target_options_and_root_belong_where_they_mean_something():
    with pytest.raises(ConfigError, match=r"^data\.target: required with dataset custom"):
        parse_run_config({"data": {"dataset": "custom"}})
    with pytest.raises(ConfigError, match=r"^data\.root: '/x' is not read for dataset custom"):
        parse_run_config({"data": {"dataset": "custom", "target": "a.b:c", "root": "/x"}})
    with pytest.raises(ConfigError, match=r"^data\.target: 'a\.b:c' is for dataset custom only"):
        parse_run_config({"data": {"dataset": "npz", "target": "a.b:c"}})


def test_other_content_is_another_cell_even_under_the_same_identity(data_module, tmp_path):
    """The user's identity "v1" is kept while the images change (a user who forgot to bump it): the content digest in
    the key still tells the two apart. The same content is the same cell again, in a fresh command."""
    import sys

    experiment = {
        "name": "mine",
        "base": {
            "model": {"arch": "resnet18", "width": 0.125, "stem": "cifar"},
            "data": _data(f"{data_module}:arrays"),
            "train": {"batch_size": 8},
        },
    }

    def keys() -> list[str]:
        forget()  # what a new command does first
        return [cell.hash for cell in expand_cells(experiment_from_mapping(experiment, "<test>"))]

    first = keys()
    assert keys() == first
    sys.modules[data_module].SHIFT = 1  # other images, same identity string
    assert keys() != first
    sys.modules[data_module].SHIFT = 0
    assert keys() == first


@pytest.mark.slow
def test_a_sweep_on_the_users_data(data_module, tmp_path, monkeypatch):
    import ablation
    from ablation.report import columns as C
    from tests.support.folders import in_folder

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    experiment = {
        "name": "mydata",
        "base": {
            "model": {"arch": "resnet18", "width": 0.125, "stem": "cifar", "attention": {"type": "se", "reduction": 4}},
            "data": _data(f"{data_module}:arrays"),
            "train": {"epochs": 2, "batch_size": 8},
        },
        "seeds": [0, 1],
    }
    stores = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "storage": f"sqlite:///{tmp_path / 's.db'}"}
    with in_folder(tmp_path):
        result = ablation.sweep(experiment, checkpoint_dir=tmp_path / "ck", progress=False, workers=2, **stores)
    assert (result.done, result.failed) == (2, {})
    from mlflow import MlflowClient

    run = MlflowClient(stores["tracking_uri"]).get_run(result.runs()[C.RUN_ID][0])
    assert run.data.tags["ablation.data_identity"].startswith("custom:v1:sha256:")
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "custom" and dataset.dataset.source.endswith('data.py"}')
