"""The dataset registry: one entry per dataset, so that nothing else in the package branches on a dataset's name.

An entry (``Dataset``) says everything the harness needs of a dataset:

- ``info``: what it is without loading it (classes, resolution, channels, the training images, its identity: what
  the images are, part of every cell's key), its paths checked, as ``info(data, check_paths) -> DatasetInfo``;
- ``kind``: how a job reads it: ``"arrays"`` (uint8 arrays held on the training device by the in-memory loader,
  read by ``arrays(data) -> ArrayDataset``) or ``"folders"`` (ImageFolders under ``data.root`` streamed from disk
  by DataLoader workers with the paper's ImageNet preprocessing);
- ``stats``: the per-channel (mean, std) its inputs are normalised with, or None for those of the images a job
  trains on;
- ``downloads``: whether checking it may fetch it (torchvision's CIFAR), so the check reads it once up front;
- ``root``: what ``data.root`` must be, for the one-line errors.

``register_dataset`` adds one from anywhere (a user's own data, beside the built-in ones); ``data.dataset`` accepts
exactly the registered names. Torch-free: functions are named by import path ("package.module:function") or given
as callables, and loaded when first used, so reading and validating an experiment never waits for torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ablation.core.errors import ConfigError
from ablation.core.targets import load_target

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# A user's own data, made by a function the experiment names (data.target; ablation.data.custom).
CUSTOM = "custom"


@dataclass(frozen=True)
class Dataset:
    """One registered dataset (see the module docstring)."""

    name: str
    kind: Literal["arrays", "folders"]
    info: str | Callable[..., Any]  # (data: DataConfig, check_paths: bool) -> DatasetInfo
    arrays: str | Callable[..., Any] | None = None  # (data: DataConfig) -> ArrayDataset, for kind "arrays"
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    downloads: bool = False
    root: str = ""  # what data.root must be ("" : none needed)
    file: Path | None = None  # a file shipped with the package (the bundled set): data.root is not read

    def __post_init__(self) -> None:
        if self.kind not in ("arrays", "folders"):
            raise ValueError(f"dataset {self.name!r}: kind {self.kind!r} is not 'arrays' or 'folders'")
        if self.kind == "arrays" and self.arrays is None:
            raise ValueError(f"dataset {self.name!r}: an 'arrays' dataset needs its arrays function")
        if self.kind == "folders" and self.stats is None:  # streamed images: no pass over them to compute their own
            raise ValueError(f"dataset {self.name!r}: a 'folders' dataset needs its normalisation stats")

    def call(self, field: str, *args: Any) -> Any:
        """Call the entry's ``field`` function (importing it on first use)."""
        target = getattr(self, field)
        return (load_target(target) if isinstance(target, str) else target)(*args)


_REGISTRY: dict[str, Dataset] = {}


def register_dataset(entry: Dataset, *, replace: bool = False) -> Dataset:
    """Make ``entry`` a dataset an experiment can name (``data.dataset: <entry.name>``). A name already registered is
    an error unless ``replace``."""
    if entry.name in _REGISTRY and not replace:
        raise ValueError(f"dataset {entry.name!r} is registered already; pass replace=True to replace it")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_dataset(name: str) -> None:
    _REGISTRY.pop(name, None)


def dataset_names() -> tuple[str, ...]:
    """Every dataset an experiment may name, the built-in ones first."""
    return tuple(_REGISTRY)


def dataset_entry(name: str) -> Dataset:
    """The registered dataset ``name``; a ConfigError naming the registered ones if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError("data.dataset", name, f"allowed: {', '.join(_REGISTRY)}") from None


_BUNDLED = Path(__file__).with_name("cifar10-micro.npz")
_NPZ_ROOT = "the path of an .npz file (x_train, y_train, x_test, y_test, classes)"
for _entry in (
    # 1,000 CIFAR-10 images shipped with the package: demos and tests need no download (PROVENANCE.md).
    Dataset(
        "cifar10-micro", "arrays", "ablation.data.catalog:npz_info", "ablation.data.sources:npz_arrays", file=_BUNDLED
    ),
    Dataset("npz", "arrays", "ablation.data.catalog:npz_info", "ablation.data.sources:npz_arrays", root=_NPZ_ROOT),
    Dataset(
        "cifar10",
        "arrays",
        "ablation.data.catalog:cifar_info",
        "ablation.data.sources:cifar_arrays",
        stats=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        downloads=True,
        root="a folder for torchvision's CIFAR-10 (downloaded there if missing)",
    ),
    Dataset(
        "cifar100",
        "arrays",
        "ablation.data.catalog:cifar_info",
        "ablation.data.sources:cifar_arrays",
        stats=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        downloads=True,
        root="a folder for torchvision's CIFAR-100 (downloaded there if missing)",
    ),
    Dataset(
        "imagenet",
        "folders",
        "ablation.data.catalog:imagenet_info",
        stats=IMAGENET_STATS,
        root="a folder with train/ and val/ ImageFolders",
    ),
    Dataset(CUSTOM, "arrays", "ablation.data.custom:custom_info", "ablation.data.custom:custom_arrays"),
):
    register_dataset(_entry)
