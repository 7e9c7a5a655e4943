"""A user's own data (``data: {dataset: custom, target: "mypkg.data:make", options: {...}}``), registered in the
dataset registry as ``custom``, beside the built-in datasets.

``make(**options)`` returns a ``CustomData`` (or a dict with its fields):

- ``train``, ``test``: the two splits, each either ``(x, y)`` arrays (uint8 images N x H x W x C or N x H x W, and
  integer labels; NumPy or torch) or a dataset of ``(image, label)`` pairs whose images are PIL images, uint8 arrays
  H x W (x C), or float tensors C x H x W in [0, 1] as torchvision's ``ToTensor`` makes them;
- ``classes``: the class names (or their number);
- ``identity``: a non-empty string that changes exactly when the data does: a digest of the content, or a version
  string the user bumps. It is part of every cell's key, beside a SHA-256 of the images and labels the harness
  computes itself, so other data is always another cell, never reported as this one's; a function that gives no
  identity is refused in one line.

The images are held in memory on the training device like the bundled set (the in-memory loader: random crop with
4-pixel padding and flip when ``data.augment``, normalised by the training images' own statistics). They must be
square, 1 or 3 channels, of one size in both splits. ``make`` runs once per command in each process (the cache is
cleared when a command starts, so a notebook that changed its data sees the change); it must return the same data
in every process of a sweep, worker processes and Slurm tasks included (it is imported from ``target`` there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ablation.core.errors import ConfigError
from ablation.core.targets import keyword_arguments, resolve_user_target, source_digest
from ablation.data.catalog import DatasetInfo, training_part
from ablation.data.config import DataConfig
from ablation.data.sources import ArrayDataset

TARGET_KEY, OPTIONS_KEY = "data.target", "data.options"
EXPECTED = "a function taking (**options) and returning ablation.data.custom.CustomData (or a dict of its fields)"
FIELDS = ("train", "test", "classes", "identity")


@dataclass(frozen=True)
class CustomData:
    """What a user's ``make(**options)`` returns (see the module docstring)."""

    train: Any
    test: Any
    classes: Sequence[str] | int
    identity: str


_MADE: dict[str, tuple[ArrayDataset, str]] = {}  # (target, options) -> (arrays, identity), for the current command


def forget() -> None:
    """A new command: the next request calls ``make`` again (a notebook may have changed the data)."""
    _MADE.clear()


def custom_info(data: DataConfig, check_paths: bool) -> DatasetInfo:
    """Classes, resolution, channels and identity of the user's data: ``make`` is called (its data is what is
    known of it), its arrays checked and kept for the jobs of this command."""
    arrays, identity = _made(data)
    class_sizes = [int(n) for n in np.bincount(arrays.y_train, minlength=len(arrays.classes))]
    size, channels = arrays.x_train.shape[1], arrays.x_train.shape[3]
    train_size = training_part(data, class_sizes)
    return DatasetInfo(data.dataset, len(arrays.classes), data.image_size or size, channels, None, identity, train_size)


def custom_arrays(data: DataConfig) -> ArrayDataset:
    """The user's data as the in-memory loader's arrays."""
    return _made(data)[0]


def _made(data: DataConfig) -> tuple[ArrayDataset, str]:
    key = json.dumps([data.target, data.options], sort_keys=True, default=str)
    if key not in _MADE:
        _MADE[key] = _make(data)
    return _MADE[key]


def _make(data: DataConfig) -> tuple[ArrayDataset, str]:
    target = data.target
    if target is None:
        raise ConfigError(
            TARGET_KEY, None, "", sentence="required with dataset custom: the data's maker, 'package.module:make'"
        )
    make = resolve_user_target(target, TARGET_KEY, EXPECTED)
    accepted = keyword_arguments(make)
    if accepted is not None:
        names, required, takes_kwargs = accepted
        for key, value in data.options.items():
            if key not in names and not takes_kwargs:
                allowed = ", ".join(names) or "none"
                raise ConfigError(
                    f"{OPTIONS_KEY}.{key}", value, "", sentence=f"unknown argument of {target}; allowed: {allowed}"
                )
        for name in required:
            if name not in data.options:
                raise ConfigError(
                    f"{OPTIONS_KEY}.{name}", None, "", sentence=f"missing: a required argument of {target}"
                )
    try:
        made = make(**data.options)
    except Exception as exc:  # the user's function failing is a one-line error before any run, not a crash in one
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise ConfigError(TARGET_KEY, target, "", sentence=f"{target!r} raised {why}") from None
    fields = _fields(made, target)
    identity = fields["identity"]
    if not isinstance(identity, str) or not identity.strip():
        raise ConfigError(
            TARGET_KEY,
            target,
            "",
            sentence=f"{target!r} returned {'no' if identity is None else 'an empty or non-text'} identity; allowed: "
            "a non-empty string that changes exactly when the data does (a digest of its content, or a version)",
        )
    classes = fields["classes"]
    names = tuple(str(i) for i in range(classes)) if isinstance(classes, int) else tuple(str(c) for c in classes)
    if len(names) < 2:
        raise _bad(target, f"its classes are {classes!r}; allowed: at least 2 class names (or a number >= 2)")
    x_train, y_train = _split(fields["train"], "train", target, len(names))
    x_test, y_test = _split(fields["test"], "test", target, len(names))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise _bad(target, f"its test images are {x_test.shape[1:]} but its train images {x_train.shape[1:]}")
    # The run's dataset source: the file of the function that made it (MLflow's dataset sources are paths or URLs).
    source = source_digest(make, TARGET_KEY, target)["file"]
    arrays = ArrayDataset("custom", source, x_train, y_train, x_test, y_test, names)
    # The cell's data identity: the user's word for it, and what the harness sees (a digest of the arrays), so that
    # an identity the user forgot to change still cannot make other images pass for these.
    return arrays, f"custom:{identity.strip()}:sha256:{arrays.digest}"


def _fields(made: Any, target: str) -> dict[str, Any]:
    if isinstance(made, CustomData):
        return {name: getattr(made, name) for name in FIELDS}
    if isinstance(made, Mapping):
        missing = [name for name in FIELDS if name not in made]
        if missing == ["identity"]:
            return {**dict(made), "identity": None}
        if missing:
            raise _bad(target, f"its result has no {', '.join(missing)}; it needs {', '.join(FIELDS)}")
        return dict(made)
    raise _bad(target, f"returned a {type(made).__name__}; allowed: {EXPECTED}")


def _split(split: Any, name: str, target: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One split as uint8 N x H x W x C images and int64 labels, checked."""
    if isinstance(split, tuple | list) and len(split) == 2 and not _is_pair_of_images(split):
        x, y = (_numpy(part) for part in split)
    else:
        try:
            pairs = [split[i] for i in range(len(split))]
        except TypeError:
            raise _bad(target, f"its {name} split is a {type(split).__name__}; allowed: (x, y) or a dataset") from None
        if not pairs:
            raise _bad(target, f"its {name} split holds no images")
        x = np.stack([_image(image, name, target) for image, _ in pairs])
        y = np.asarray([int(label) for _, label in pairs])
    if x.ndim == 3:  # grayscale without a channel axis
        x = x[..., None]
    if x.dtype != np.uint8:
        raise _bad(target, f"its {name} images are {x.dtype}; allowed: uint8 (0-255), or float tensors from ToTensor")
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] not in (1, 3):
        raise _bad(target, f"its {name} images have shape {x.shape}; allowed: N x H x W x C, H == W, C 1 or 3")
    if len(x) == 0:
        raise _bad(target, f"its {name} split holds no images")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise _bad(target, f"its {name} labels have shape {y.shape} ({y.dtype}); allowed: one integer per image")
    outside = y[(y < 0) | (y >= classes)]
    if len(outside):
        raise _bad(target, f"its {name} labels hold {int(outside[0])}, outside the {classes} classes")
    return np.ascontiguousarray(x), y.astype(np.int64)


def _is_pair_of_images(split: Sequence[Any]) -> bool:
    """A two-image dataset given as a list, told apart from (x, y)."""
    return isinstance(split[0], tuple | list) and len(split[0]) == 2


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _image(image: Any, name: str, target: str) -> np.ndarray:
    """One image as uint8 H x W (x C): a PIL image, a uint8 array, or a float tensor C x H x W in [0, 1]."""
    if hasattr(image, "detach"):  # a torch tensor, as ToTensor makes it
        array = image.detach().cpu().numpy()
        if array.dtype != np.uint8:
            array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
        return np.moveaxis(array, 0, -1) if array.ndim == 3 and array.shape[0] in (1, 3) else array
    array = np.asarray(image)
    if array.dtype == object:
        raise _bad(target, f"one of its {name} images is a {type(image).__name__}; allowed: PIL, uint8, tensors")
    return array


def _bad(target: str, problem: str) -> ConfigError:
    return ConfigError(TARGET_KEY, target, "", sentence=f"{target!r}: {problem}")
