"""The train and validation loaders of a job, whatever the dataset.

Both kinds yield (float32 normalised NCHW on the device, int64 labels on the device), have ``set_epoch`` (the
order of an epoch depends only on the seed and the epoch, so a resumed job sees the same batches) and
``num_samples``.

With ``data.holdout`` a job trains on a fixed class-stratified part of the training set and is evaluated (the
"val" loader) on the held-out rest of it (``ablation.data.holdout``); the test set, or ImageNet's val/ folder, is
never used.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Subset

from ablation.data.catalog import DatasetInfo
from ablation.data.config import DataConfig
from ablation.data.holdout import stratified_holdout
from ablation.data.memory import InMemoryLoader
from ablation.data.registry import IMAGENET_STATS, dataset_entry
from ablation.data.sources import holdout_split, load_arrays, normalization


class FolderLoader:
    """ImageNet from train/ and val/ ImageFolders with the paper's preprocessing.

    Train: RandomResizedCrop(224) + horizontal flip; evaluation: resize 256, center crop 224 (official
    train_imagenet.py). DataLoader workers decode JPEGs in parallel, pinned memory makes the host-to-GPU copy
    asynchronous, persistent workers survive between epochs. ``batch_size`` is per rank here. Training shards
    with a DistributedSampler (each rank a disjoint 1/K of the epoch's permutation, the tail dropped);
    evaluation gives rank r the contiguous block ``[N * r // K, N * (r + 1) // K)`` of the validation set,
    because DistributedSampler would pad the last ranks with repeated images and so count some twice.

    ``folder``: the ImageFolder to read, already scanned (a shallow copy of it gets this loader's transform);
    None: ``root/train`` when training, ``root/val`` otherwise. ``indices``: only these images of it (a
    ``Subset``; sharding and sampling then run over the subset), None: all of them. A holdout split passes the
    scanned training folder with the train indices to one loader and the held-out ones to the other.
    """

    def __init__(
        self,
        root: Path,
        *,
        train: bool,
        batch_size: int,
        image_size: int,
        seed: int,
        device: torch.device,
        workers: int,
        channels_last: bool = False,
        augment: bool = True,
        rank: int = 0,
        world_size: int = 1,
        folder: Any = None,
        indices: Sequence[int] | np.ndarray | None = None,
        stats: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_STATS,
    ) -> None:
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        normalize = transforms.Normalize(*stats)
        if train and augment:
            transform = transforms.Compose(
                [
                    transforms.RandomResizedCrop(image_size),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                    normalize,
                ]
            )
        else:
            resize = round(image_size * 256 / 224)
            transform = transforms.Compose(
                [transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.ToTensor(), normalize]
            )
        if folder is None:
            folder = datasets.ImageFolder(str(root / ("train" if train else "val")), transform=transform)
        else:
            folder = copy.copy(folder)  # the scan's sample list is shared; the transform is this loader's
            folder.transform = transform
        self.folder = folder
        self.dataset = folder if indices is None else Subset(folder, [int(i) for i in indices])
        n = len(self.dataset)
        self.sampler: DistributedSampler | range = (
            DistributedSampler(
                self.dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
            )
            if train
            else range(n * rank // world_size, n * (rank + 1) // world_size)  # in order, each image exactly once
        )
        self.device, self.channels_last = device, channels_last
        generator = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            drop_last=train,
            generator=generator,
        )

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader) * self.loader.batch_size if self.loader.drop_last else len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
            yield images, labels.to(self.device, non_blocking=True)


def make_loaders(
    data: DataConfig,
    info: DatasetInfo,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    channels_last: bool = False,
    workers: int = 4,
    eval_batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[InMemoryLoader | FolderLoader, InMemoryLoader | FolderLoader]:
    """(train, validation) loaders for a job; with ``world_size`` K > 1, those of rank ``rank``'s shard.

    ``batch_size`` is the global batch whatever K (so a recipe means the same on any number of GPUs): each rank
    trains on ``batch_size // K`` images of it, and K must divide it.

    With ``data.holdout`` the training loader covers the training part of the training set and the validation
    loader, in evaluation mode, its held-out part; the test split is not used (nor ImageNet's val/ opened).
    Without it, training covers the whole training set and validation the test split (ImageNet's val/).
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
    eval_batch_size = eval_batch_size or max(batch_size, 256)
    if dataset_entry(data.dataset).kind == "folders":
        common = dict(
            image_size=info.image_size,
            seed=seed,
            device=device,
            workers=workers,
            rank=rank,
            world_size=world_size,
            stats=normalization(data, None),
        )
        parts: dict[str, dict[str, Any]] = {"train": {}, "val": {}}
        if data.holdout is not None:
            from torchvision import datasets

            folder = datasets.ImageFolder(str(info.path / "train"))  # scanned once, read by both loaders
            kept, held = stratified_holdout(np.asarray(folder.targets), data.holdout.fraction, data.holdout.seed)
            parts = {"train": {"folder": folder, "indices": kept}, "val": {"folder": folder, "indices": held}}
        train = FolderLoader(
            info.path,
            train=True,
            batch_size=batch_size // world_size,
            channels_last=channels_last,
            augment=data.augment,
            **parts["train"],
            **common,
        )
        val = FolderLoader(
            info.path,
            train=False,
            batch_size=max(1, eval_batch_size // world_size),
            channels_last=channels_last,
            **parts["val"],
            **common,
        )
        return train, val
    arrays = load_arrays(data)
    split = holdout_split(data, arrays)
    if split is None:
        x_train, y_train, x_val, y_val = arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test
    else:
        kept, held = split
        x_train, y_train = arrays.x_train[kept], arrays.y_train[kept]
        x_val, y_val = arrays.x_train[held], arrays.y_train[held]
    mean, std = normalization(data, arrays)  # with a holdout, of the training part only
    # The in-memory loaders take the global batch and slice it themselves (same permutation on every rank).
    common = dict(
        mean=mean, std=std, seed=seed, image_size=info.image_size, device=device, rank=rank, world_size=world_size
    )
    train = InMemoryLoader(
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        batch_size=batch_size,
        train=True,
        augment=data.augment,
        channels_last=channels_last,
        **common,
    )
    val = InMemoryLoader(
        torch.from_numpy(x_val),
        torch.from_numpy(y_val),
        batch_size=eval_batch_size,
        train=False,
        channels_last=channels_last,
        **common,
    )
    return train, val
