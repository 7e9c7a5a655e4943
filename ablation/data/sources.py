"""Reading the datasets an experiment names: arrays for the ``"arrays"`` kind, ImageFolders for ``"folders"``.

An ``"arrays"`` dataset (the bundled set, any .npz in its format, CIFAR-10/100 through torchvision, a user's own)
becomes uint8 arrays that ``InMemoryLoader`` keeps on the training device; its registry entry's ``arrays``
function reads them (``npz_arrays``, ``cifar_arrays`` here). A ``"folders"`` dataset (ImageNet) streams from disk
through DataLoader workers with the paper's preprocessing (``ablation.data.loaders``). ``check_data`` runs before
any job: a path that is missing or a dataset that cannot be fetched is a one-line ConfigError then, not a crash
inside a sweep.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.core.errors import ConfigError
from ablation.data.catalog import DatasetInfo, dataset_info, npz_path
from ablation.data.config import DataConfig
from ablation.data.holdout import stratified_holdout
from ablation.data.registry import dataset_entry


@dataclass(frozen=True)
class ArrayDataset:
    """A small dataset as uint8 arrays (N x H x W x C) and int64 labels."""

    name: str
    source: str  # the file or folder it was read from, for the MLflow dataset input
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @functools.cached_property
    def digest(self) -> str:
        """Content hash of the arrays: two runs on the same digest saw the same images."""
        h = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(np.ascontiguousarray(array).data)
        return h.hexdigest()[:16]


def _cifar(data: DataConfig, download: bool) -> tuple:
    from torchvision import datasets

    cls = datasets.CIFAR10 if data.dataset == "cifar10" else datasets.CIFAR100
    root = Path(data.root).expanduser()
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            "data.root", data.root, f"{data.dataset} is not there and could not be downloaded ({reason})"
        ) from None
    return train, test


def cifar_arrays(data: DataConfig) -> ArrayDataset:
    """torchvision's CIFAR-10 or -100 under ``data.root``, downloaded there if missing."""
    train, test = _cifar(data, download=True)
    return ArrayDataset(
        data.dataset,
        str(Path(data.root).expanduser().resolve()),
        np.asarray(train.data, dtype=np.uint8),
        np.asarray(train.targets, dtype=np.int64),
        np.asarray(test.data, dtype=np.uint8),
        np.asarray(test.targets, dtype=np.int64),
        tuple(train.classes),
    )


def npz_arrays(data: DataConfig) -> ArrayDataset:
    """An .npz in the harness's format: the bundled set, or the file ``data.root`` names."""
    path = npz_path(data)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
            raise ConfigError("data.root", str(path), f"x_{split} must be uint8 N x H x W x C with N labels")
    return ArrayDataset(
        data.dataset,
        str(path.resolve()),
        arrays["x_train"],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"],
        arrays["y_test"].astype(np.int64),
        tuple(str(c) for c in arrays["classes"]),
    )


@functools.lru_cache(maxsize=4)
def _load_arrays_cached(data_json: str) -> ArrayDataset:
    data = DataConfig.model_validate_json(data_json)
    return dataset_entry(data.dataset).call("arrays", data)


def load_arrays(data: DataConfig) -> ArrayDataset:
    """The arrays of an ``"arrays"`` dataset; cached per process, so the cells of a sweep read the file once."""
    if dataset_entry(data.dataset).kind != "arrays":
        raise ValueError(f"{data.dataset} is not an in-memory dataset")
    # The cache key ignores what does not change the arrays (augmentation, resolution, the holdout split); it is the
    # config's JSON, since a config with options (a dict) cannot be hashed.
    key = data.model_copy(update={"augment": True, "image_size": None, "holdout": None})
    return _load_arrays_cached(key.model_dump_json())


def forget_arrays() -> None:
    """A new command: arrays are read again (a notebook's user may have changed the data in between)."""
    _load_arrays_cached.cache_clear()


def holdout_split(data: DataConfig, arrays: ArrayDataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(train indices, held-out indices) into ``arrays.x_train`` when ``data.holdout`` is set, else None
    (``ablation.data.holdout.stratified_holdout``: the same split in every process)."""
    if data.holdout is None:
        return None
    return stratified_holdout(arrays.y_train, data.holdout.fraction, data.holdout.seed)


def normalization(data: DataConfig, arrays: ArrayDataset | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) the job's inputs are normalised with: the dataset's own (its registry entry's
    ``stats``: ImageNet, CIFAR), otherwise those
    of the images the job trains on, which with ``data.holdout`` is the training part only (the held-out images,
    what the job is scored on, do not shape its inputs)."""
    fixed = dataset_entry(data.dataset).stats
    if fixed is not None:
        return fixed
    from ablation.data.memory import channel_stats  # torch: the training images' own statistics

    split = holdout_split(data, arrays)
    mean, std = channel_stats(arrays.x_train if split is None else arrays.x_train[split[0]])
    if len(mean) == 1:  # grayscale is repeated to 3 channels by the loader
        mean, std = tuple(mean) * 3, tuple(std) * 3
    return tuple(mean), tuple(std)


def check_data(data: DataConfig) -> DatasetInfo:
    """Everything about the data that can fail, checked before any job starts (downloads CIFAR if needed)."""
    info = dataset_info(data, check_paths=True)
    if dataset_entry(data.dataset).downloads:  # fetched now, once, not inside every job
        load_arrays(data)
    return info
