"""A job's loaders (ablation/data/loaders.py), whatever the dataset: in-memory for an .npz, ImageFolders for
ImageNet (here a folder of a few PNGs), the global batch split over ranks, and evaluation shards that cover the
validation set once, in order."""

import numpy as np
import pytest
import torch
from PIL import Image

from ablation.data.catalog import dataset_info
from ablation.data.loaders import FolderLoader, make_loaders
from ablation.data.memory import InMemoryLoader
from ablation.experiment.schema import parse_run_config

CPU = torch.device("cpu")


def test_an_npz_trains_on_the_global_batch_and_evaluates_its_whole_test_split(tiny_npz):
    data = parse_run_config({"data": {"dataset": "npz", "root": str(tiny_npz)}}).data
    info = dataset_info(data)
    train, val = make_loaders(data, info, batch_size=20, seed=0, device=CPU, eval_batch_size=16)
    assert isinstance(train, InMemoryLoader) and isinstance(val, InMemoryLoader)
    images, labels = next(iter(train))
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    with np.load(tiny_npz) as f:
        test_labels = torch.from_numpy(f["y_test"].astype(np.int64))
    assert torch.equal(torch.cat([y for _, y in val]), test_labels)
    with pytest.raises(ValueError, match="divisible"):
        make_loaders(data, info, batch_size=20, seed=0, device=CPU, world_size=3)


def test_an_image_folder_is_read_with_the_papers_preprocessing_and_sharded(tmp_path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 5)):
        for label in ("ant", "bee"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = parse_run_config({"data": {"dataset": "imagenet", "root": str(tmp_path), "image_size": 16}}).data
    info = dataset_info(data)
    common = {"batch_size": 4, "seed": 0, "device": CPU, "workers": 0}
    train, val = make_loaders(data, info, eval_batch_size=4, **common)
    assert isinstance(train, FolderLoader) and len(train) == 2 and train.num_samples == 8
    images, labels = next(iter(train))
    assert images.shape == (4, 3, 16, 16) and set(labels.tolist()) <= {0, 1}
    whole = torch.cat([y for _, y in val])
    assert whole.tolist() == [0] * 5 + [1] * 5 and val.num_samples == 10
    shards = [make_loaders(data, info, rank=rank, world_size=2, **common) for rank in (0, 1)]
    assert torch.equal(torch.cat([y for _, val_r in shards for _, y in val_r]), whole)  # each image once, in order
    assert [train_r.num_samples for train_r, _ in shards] == [4, 4]  # each rank half of every global batch
