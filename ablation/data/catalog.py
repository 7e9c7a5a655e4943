"""What a dataset is (classes, image size, channels) without loading it, and where it lives.

Every check here runs before any job starts, so a missing path is a one-line error, not a crash in epoch 1.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.config import DataConfig
from ablation.errors import ConfigError

BUNDLED = {"cifar10-micro": Path(__file__).with_name("cifar10-micro.npz")}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int  # the resolution the network sees (after crops)
    in_channels: int
    path: Path | None  # the file or folder read, None for a torchvision download target not yet present


def npz_path(data: DataConfig) -> Path:
    if data.dataset in BUNDLED:
        return BUNDLED[data.dataset]
    if data.root is None:
        raise ConfigError("data.root", None, "dataset npz needs data.root = the path of an .npz file")
    path = Path(data.root).expanduser()
    if not path.is_file():
        raise ConfigError("data.root", data.root, "no such .npz file")
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
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ConfigError("data.root", str(path), f"is not a readable .npz archive ({exc})") from None
    missing = [k for k in NPZ_KEYS if k not in out]
    if missing:
        raise ConfigError("data.root", str(path), f"must hold {', '.join(NPZ_KEYS)}; missing {', '.join(missing)}")
    return out


def dataset_info(data: DataConfig, check_paths: bool = True) -> DatasetInfo:
    """Classes, resolution and channels of ``data``.

    With ``check_paths`` a path that does not exist is a ConfigError; without it (profiling a network, which
    needs no images) torchvision datasets and ImageNet fall back to their standard class counts.
    """
    if data.dataset in ("npz", *BUNDLED):
        path = npz_path(data)
        header = npz_header(path)
        shape = header["x_train"][0]
        if len(shape) != 4 or shape[1] != shape[2]:
            raise ConfigError("data.root", str(path), f"x_train must be N x H x W x C with H == W, got {shape}")
        num_classes = header["classes"][0][0]
        return DatasetInfo(data.dataset, num_classes, data.image_size or shape[1], shape[3], path)
    if data.dataset in ("cifar10", "cifar100"):
        root = Path(data.root).expanduser() if data.root else None
        if root is None and check_paths:
            raise ConfigError("data.root", None, f"dataset {data.dataset} needs data.root = a folder for torchvision")
        classes = 10 if data.dataset == "cifar10" else 100
        return DatasetInfo(data.dataset, classes, data.image_size or 32, 3, root)
    # imagenet: train/ and val/ ImageFolders under root.
    if not check_paths:
        return DatasetInfo("imagenet", 1000, data.image_size or 224, 3, None)
    if data.root is None:
        raise ConfigError("data.root", None, "dataset imagenet needs data.root = a folder with train/ and val/")
    root = Path(data.root).expanduser()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError("data.root", data.root, f"has no {split}/ folder; imagenet needs root/train and root/val")
    num_classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    return DatasetInfo("imagenet", num_classes, data.image_size or 224, 3, root)
