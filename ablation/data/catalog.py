"""What a dataset is (classes, image size, channels, identity) without loading it, and where it lives.

Every check here runs before any job starts, so a missing path or a corrupt file is a one-line error, not a crash
in epoch 1 after the sweep's runs exist.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.core.errors import ConfigError
from ablation.data.config import DataConfig
from ablation.data.holdout import held_out_count
from ablation.data.identity import file_identity, file_is_verified, file_stamp, folder_identity, mark_verified
from ablation.data.registry import dataset_entry

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int  # the resolution the network sees (after crops)
    in_channels: int
    path: Path | None  # the file or folder read, None for a torchvision download target not yet present
    # What the images are (``ablation.data.identity``), part of every cell's key; None when only the shape of the
    # data was asked for (profiling, which reads no images).
    identity: str | None = None
    # Training images, where known without reading them; with ``data.holdout`` those of the training part.
    train_size: int | None = None


def npz_path(data: DataConfig) -> Path:
    shipped = dataset_entry(data.dataset).file
    if shipped is not None:
        return shipped
    if data.root is None:
        raise ConfigError("data.root", None, "dataset npz needs data.root = the path of an .npz file")
    path = Path(data.root).expanduser()
    if path.is_dir():
        raise ConfigError("data.root", data.root, "is a folder; dataset npz needs the path of an .npz file")
    if not path.is_file():
        raise ConfigError("data.root", data.root, "does not exist; dataset npz needs the path of an .npz file")
    return path


def npz_header(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of the arrays in an .npz without reading them (numpy's .npy header)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f)
                out[name.removesuffix(".npy")] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:
        raise ConfigError("data.root", str(path), f"is not a readable .npz archive ({exc})") from None
    missing = [k for k in NPZ_KEYS if k not in out]
    if missing:
        raise ConfigError("data.root", str(path), f"must hold {', '.join(NPZ_KEYS)}; missing {', '.join(missing)}")
    return out


def verify_npz(path: Path, identity: str) -> None:
    """Read every byte of an .npz once and check what training relies on, so that a corrupt or malformed file
    fails now, in one line, and not inside a cell: every member's CRC, uint8 N x H x W x C images (H == W, 1 or 3
    channels, the same size in both splits), one integer label per image within the classes. Remembered per
    identity, so an unchanged file is read once."""
    if file_is_verified(path, identity):
        return

    def bad(problem: str) -> ConfigError:
        return ConfigError("data.root", str(path), "", sentence=f"{str(path)!r}: {problem}")

    try:
        with zipfile.ZipFile(path) as archive:
            corrupt = archive.testzip()
        if corrupt is not None:
            raise bad(f"its member {corrupt} is damaged (CRC mismatch); write the file again")
        with np.load(path, allow_pickle=False) as f:
            y = {split: f[f"y_{split}"] for split in ("train", "test")}
            classes = f["classes"]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as exc:
        raise bad(f"the file cannot be read as an .npz archive ({exc})") from None
    if classes.ndim != 1 or len(classes) < 2:
        raise bad(f"its classes array has shape {classes.shape}; it must list at least 2 class names")
    header = npz_header(path)
    train_shape = header["x_train"][0]
    for split in ("train", "test"):
        shape, dtype = header[f"x_{split}"]
        if dtype != np.uint8:
            raise bad(f"x_{split} has dtype {dtype}; images must be uint8 (0-255)")
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] not in (1, 3):
            raise bad(f"x_{split} has shape {shape}; images must be N x H x W x C with H == W and C 1 or 3")
        if shape[1:] != train_shape[1:]:
            raise bad(
                f"x_{split} images are {shape[1:]} but x_train images are {train_shape[1:]}; "
                "mixed sizes are not allowed"
            )
        if shape[0] == 0:
            raise bad(f"x_{split} holds no images")
        labels = y[split]
        if labels.ndim != 1 or len(labels) != shape[0]:
            raise bad(f"y_{split} has shape {labels.shape}; it needs one label per image ({shape[0]})")
        if not np.issubdtype(labels.dtype, np.integer):
            raise bad(f"y_{split} has dtype {labels.dtype}; labels must be integers")
        outside = labels[(labels < 0) | (labels >= len(classes))]
        if len(outside):
            raise bad(
                f"y_{split} holds label {int(outside[0])}, outside the {len(classes)} classes (0..{len(classes) - 1})"
            )
    mark_verified(path, identity)


def training_part(data: DataConfig, class_sizes: list[int]) -> int:
    """Images a job trains on, given the training set's class sizes: all, or those ``data.holdout`` keeps."""
    if data.holdout is None:
        return sum(class_sizes)
    return sum(n - held_out_count(n, data.holdout.fraction) for n in class_sizes)


def _npz_class_sizes(path: Path) -> list[int]:
    """Images per class of an .npz's training split (reads y_train only)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            labels = f["y_train"]
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, zlib.error) as exc:
        raise ConfigError("data.root", str(path), f"its y_train cannot be read ({exc})") from None
    return [int(n) for n in np.unique(labels, return_counts=True)[1]]


@functools.lru_cache(maxsize=32)
def _checked_npz_identity(path: Path, stamp: tuple[int, ...]) -> str:
    """An .npz's identity, its content checked: once per process while the file is unchanged (``stamp``), since
    every arm of a grid asks for the same data."""
    identity = file_identity(path)
    verify_npz(path, identity)
    return identity


def dataset_info(data: DataConfig, check_paths: bool = True) -> DatasetInfo:
    """Classes, resolution, channels and identity of ``data``: its registered dataset's ``info``
    (``ablation.data.registry``).

    With ``check_paths`` a path that does not exist, or an .npz that is corrupt or malformed, is a ConfigError, and
    the data's identity is computed; without it (profiling a network, which needs no images) torchvision datasets
    and ImageNet fall back to their standard class counts and there is no identity.
    """
    return dataset_entry(data.dataset).call("info", data, check_paths)


def npz_info(data: DataConfig, check_paths: bool) -> DatasetInfo:
    """An .npz in the harness's format (the bundled set, or ``data.root``), its header read and, with
    ``check_paths``, its content checked and its identity computed."""
    path = npz_path(data)
    header = npz_header(path)
    shape = header["x_train"][0]
    if len(shape) != 4 or shape[1] != shape[2]:
        raise ConfigError("data.root", str(path), f"x_train must be N x H x W x C with H == W, got {shape}")
    if len(header["classes"][0]) != 1:
        raise ConfigError("data.root", str(path), "classes must be a 1-D array of class names")
    num_classes = header["classes"][0][0]
    identity = None
    if check_paths:
        identity = _checked_npz_identity(path.resolve(), tuple(file_stamp(path).values()))
    train_size = shape[0] if data.holdout is None else training_part(data, _npz_class_sizes(path))
    return DatasetInfo(data.dataset, num_classes, data.image_size or shape[1], shape[3], path, identity, train_size)


def cifar_info(data: DataConfig, check_paths: bool) -> DatasetInfo:
    """torchvision's CIFAR-10 or -100 (by the dataset's name) under ``data.root``: balanced classes, 32 px."""
    root = Path(data.root).expanduser() if data.root else None
    if root is None and check_paths:
        raise ConfigError("data.root", None, f"dataset {data.dataset} needs data.root = a folder for torchvision")
    classes = 100 if data.dataset.endswith("100") else 10
    identity = f"torchvision:{data.dataset}:train+test" if check_paths else None
    train_size = training_part(data, [50_000 // classes] * classes)  # torchvision's CIFAR: balanced classes
    return DatasetInfo(data.dataset, classes, data.image_size or 32, 3, root, identity, train_size)


def imagenet_info(data: DataConfig, check_paths: bool) -> DatasetInfo:
    """train/ and val/ ImageFolders under ``data.root``; its identity is the folder's (``identity``)."""
    if not check_paths:
        return DatasetInfo(data.dataset, 1000, data.image_size or 224, 3, None)
    if data.root is None:
        raise ConfigError("data.root", None, "dataset imagenet needs data.root = a folder with train/ and val/")
    root = Path(data.root).expanduser()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError("data.root", data.root, f"has no {split}/ folder; imagenet needs root/train and root/val")
    num_classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    return DatasetInfo(data.dataset, num_classes, data.image_size or 224, 3, root, folder_identity(root))
