"""The holdout split (ablation/data/holdout.py) and the loaders of a job that has one: a fixed, class-stratified
partition of the training set, the same in every process, that trains on one part and is scored on the other,
never on the test set (nor, for ImageNet, its val/ folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablation.data.catalog import dataset_info
from ablation.data.holdout import held_out_count, stratified_holdout
from ablation.data.loaders import FolderLoader, make_loaders
from ablation.data.memory import InMemoryLoader
from ablation.data.registry import dataset_entry
from ablation.experiment.schema import parse_run_config
from ablation.tracking.names import EPOCH_TIME, THROUGHPUT

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def _bundled() -> dict[str, np.ndarray]:
    with np.load(dataset_entry("cifar10-micro").file) as f:
        return {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}


def _labels(sizes: dict[int, int], seed: int = 0) -> np.ndarray:
    """Class ``c`` ``sizes[c]`` times, shuffled."""
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in sizes.items()])
    return np.random.default_rng(seed).permutation(labels)


# ---- the split


def test_the_split_is_a_sorted_partition_of_all_indices():
    labels = _labels({0: 1, 1: 2, 2: 3, 3: 10, 4: 100, 5: 37, 7: 64})
    for fraction in (0.01, 0.1, 0.5, 0.9, 0.99):
        kept, held = stratified_holdout(labels, fraction, seed=3)
        for part in (kept, held):
            assert part.dtype == np.int64 and part.ndim == 1
            assert np.all(np.diff(part) > 0)  # sorted, no repeats
        assert not np.intersect1d(kept, held).size
        assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))


def test_each_class_is_held_out_in_proportion_keeping_training_images():
    sizes = {0: 1, 1: 2, 2: 3, 3: 10, 4: 100, 5: 37, 9: 25}
    labels = _labels(sizes)
    # round(f * n), at least 1 once a class has 2 images, at most n - 1: a class of one stays in training.
    expected = {
        0.1: {0: 0, 1: 1, 2: 1, 3: 1, 4: 10, 5: 4, 9: 2},  # round(0.3) = 0 -> 1; round(3.7) = 4; round(2.5) = 2
        0.5: {0: 0, 1: 1, 2: 2, 3: 5, 4: 50, 5: 18, 9: 12},  # round half to even: 1.5 -> 2, 18.5 -> 18, 12.5 -> 12
        0.9: {0: 0, 1: 1, 2: 2, 3: 9, 4: 90, 5: 33, 9: 22},  # round(1.8) = 2 -> 1; round(2.7) = 3 -> 2
    }
    for fraction, counts in expected.items():
        kept, held = stratified_holdout(labels, fraction, seed=0)
        for c, n in sizes.items():
            assert (labels[held] == c).sum() == counts[c] == held_out_count(n, fraction), (fraction, c)
            assert (labels[kept] == c).sum() == n - counts[c] >= 1
    assert held_out_count(0, 0.5) == held_out_count(1, 0.99) == 0
    with pytest.raises(ValueError, match="fraction"):
        stratified_holdout(labels, 1.0, 0)
    with pytest.raises(ValueError, match="1-D"):
        stratified_holdout(labels.reshape(-1, 1), 0.1, 0)


def test_a_class_s_choice_depends_only_on_its_own_images_and_the_seed():
    """Which images of a class are held out does not change when the classes appear in another order or another
    class is left out: each class draws from a generator seeded by (seed, class) alone."""
    a = np.array([0] * 30 + [1] * 20 + [2] * 40)
    b = np.array([2] * 40 + [0] * 30 + [1] * 20)
    without_1 = np.array([0] * 30 + [2] * 40)

    def ranks(labels: np.ndarray, c: int) -> list[int]:
        """Positions, among class c's images, of those held out."""
        held = stratified_holdout(labels, 0.25, seed=5)[1]
        members = np.flatnonzero(labels == c)
        return np.flatnonzero(np.isin(members, held)).tolist()

    for c in (0, 2):
        assert ranks(a, c) == ranks(b, c) == ranks(without_1, c)
    assert ranks(a, 1) == ranks(b, 1)


def test_the_split_is_the_same_in_another_process_and_changes_with_the_seed():
    labels = _bundled()["y_train"]
    kept, held = stratified_holdout(labels, 0.1, seed=0)
    probe = (
        "import json, numpy as np\n"
        "from ablation.data.registry import dataset_entry\n"
        "from ablation.data.holdout import stratified_holdout\n"
        "labels = np.load(dataset_entry('cifar10-micro').file)['y_train']\n"
        "print(json.dumps([part.tolist() for part in stratified_holdout(labels, 0.1, seed=0)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # nothing may hang on the process's hash randomisation
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout) == [kept.tolist(), held.tolist()]
    assert len(held) == 100 and np.array_equal(np.bincount(labels[held]), [10] * 10)

    again = stratified_holdout(labels, 0.1, seed=0)
    assert np.array_equal(again[1], held)
    other = stratified_holdout(labels, 0.1, seed=1)[1]
    assert len(other) == len(held) and not np.array_equal(other, held)
    assert not np.array_equal(stratified_holdout(labels, 0.1, seed=-1)[1], stratified_holdout(labels, 0.1, 1)[1])


# ---- the loaders of a job with a holdout


def _normalised(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C images as the network should see them, computed in float64 here."""
    x = images.astype(np.float64) / 255
    return torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2))


def _batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = list(loader)
    return torch.cat([x for x, _ in pairs]).double(), torch.cat([y for _, y in pairs])


def test_in_memory_loaders_train_on_the_kept_part_and_are_scored_on_the_held_out_part():
    arrays = _bundled()
    data = parse_run_config({"data": {"augment": False, "holdout": {"fraction": 0.2, "seed": 7}}}).data
    info = dataset_info(data)
    kept, held = stratified_holdout(arrays["y_train"], 0.2, seed=7)
    assert len(kept) == info.train_size == 800 and len(held) == 200
    train, val = make_loaders(data, info, batch_size=100, seed=0, device=CPU, eval_batch_size=64)
    assert isinstance(train, InMemoryLoader) and isinstance(val, InMemoryLoader) and not val.train

    # Normalised with the statistics of the training part alone.
    part = arrays["x_train"][kept].reshape(-1, 3).astype(np.float64) / 255
    mean, std = part.mean(axis=0), part.std(axis=0)
    everything = arrays["x_train"].reshape(-1, 3).astype(np.float64) / 255
    assert not np.allclose(everything.mean(axis=0), mean, rtol=0, atol=1e-6)  # the two differ: the check can fail

    images, labels = _batches(val)
    assert torch.equal(labels, torch.from_numpy(arrays["y_train"][held]))
    torch.testing.assert_close(images, _normalised(arrays["x_train"][held], mean, std), rtol=0, atol=1e-5)
    # None of the test images is among them (the bundled train and test images are all different).
    seen = {image.tobytes() for image in arrays["x_train"][held]}
    assert len(seen) == len(held) and not seen & {image.tobytes() for image in arrays["x_test"]}

    # An epoch of training (no augmentation) is every kept image once, in some order, and nothing else.
    assert train.num_samples == len(kept) and len(train) == 8
    images, labels = _batches(train)
    order = torch.argsort(labels, stable=True)  # compare per class, as sets of images
    expected = _normalised(arrays["x_train"][kept], mean, std)
    expected_labels = torch.from_numpy(arrays["y_train"][kept])
    assert torch.equal(labels[order], expected_labels[torch.argsort(expected_labels, stable=True)])
    flat, reference = images.flatten(1), expected.flatten(1)
    nearest = torch.cdist(flat, reference).min(dim=1)
    assert nearest.values.max() < 1e-3 and len(set(nearest.indices.tolist())) == len(kept)


def test_without_a_holdout_the_loaders_train_on_everything_and_evaluate_on_the_test_split():
    arrays = _bundled()
    data = parse_run_config({"data": {"augment": False}}).data
    info = dataset_info(data)
    assert info.train_size == 1000
    train, val = make_loaders(data, info, batch_size=100, seed=0, device=CPU)
    assert train.num_samples == 1000 and val.num_samples == 200
    pixels = arrays["x_train"].reshape(-1, 3).astype(np.float64) / 255
    images, labels = _batches(val)
    assert torch.equal(labels, torch.from_numpy(arrays["y_test"]))
    expected = _normalised(arrays["x_test"], pixels.mean(axis=0), pixels.std(axis=0))
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


def test_image_folders_split_the_training_folder_and_never_open_val(tmp_path):
    from torchvision import transforms

    rng = np.random.default_rng(0)
    paths = []
    for label in ("ant", "bee"):
        folder = tmp_path / "train" / label
        folder.mkdir(parents=True)
        for i in range(5):
            paths.append(folder / f"{i}.png")
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "val").mkdir()  # empty: an ImageFolder over it would raise, so opening it fails the test
    data = parse_run_config(
        {"data": {"dataset": "imagenet", "root": str(tmp_path), "image_size": 16, "holdout": {"fraction": 0.4}}}
    ).data
    info = dataset_info(data)
    targets = np.array([0] * 5 + [1] * 5)
    kept, held = stratified_holdout(targets, 0.4, seed=0)
    assert len(kept) == 6 and len(held) == 4

    common = {"batch_size": 2, "seed": 0, "device": CPU, "workers": 0}
    train, val = make_loaders(data, info, eval_batch_size=3, **common)
    assert isinstance(train, FolderLoader) and isinstance(val, FolderLoader)
    assert train.num_samples == 6 and len(train) == 3 and val.num_samples == 4
    assert train.folder.samples == val.folder.samples == [(str(p), t) for p, t in zip(paths, targets, strict=True)]
    train_labels = torch.cat([y for _, y in train])
    assert sorted(train_labels.tolist()) == sorted(targets[kept].tolist())

    # Validation: the held-out training images, in order, with the evaluation transform.
    evaluation = transforms.Compose(
        [
            transforms.Resize(round(16 * 256 / 224)),
            transforms.CenterCrop(16),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    expected = torch.stack([evaluation(Image.open(paths[i]).convert("RGB")) for i in held])
    images, labels = _batches(val)
    assert torch.equal(labels, torch.from_numpy(targets[held]))
    torch.testing.assert_close(images.float(), expected)

    # Sharded: each rank trains on half of every global batch of the kept part; evaluation covers the rest once.
    shards = [make_loaders(data, info, rank=rank, world_size=2, **common) for rank in (0, 1)]
    assert [train_r.num_samples for train_r, _ in shards] == [3, 3]
    assert torch.equal(torch.cat([y for _, val_r in shards for _, y in val_r]), labels)


# ---- a whole training job


def _train(npz: Path, holdout: bool, checkpoint: Path) -> list[dict[str, float]]:
    from ablation.engine.train import seed_everything, train_job
    from ablation.models import build_model
    from ablation.tracking.tracker import MemoryTracker

    config = parse_run_config(
        {
            "model": {"arch": "resnet18", "width": 0.25, "stem": "cifar", "attention": {"type": "cbam"}},
            "data": {
                "dataset": "npz",
                "root": str(npz),
                "augment": False,
                "holdout": {"fraction": 0.2, "seed": 0} if holdout else None,
            },
            "train": {"epochs": 1, "batch_size": 100, "lr": 0.05, "schedule": "constant"},
            "seed": 0,
        }
    )
    seed_everything(config.seed, CPU)
    model = build_model("resnet18", width=0.25, stem="cifar", num_classes=10, attention=config.model.attention)
    result = train_job(
        config,
        model=model,
        info=dataset_info(config.data),
        device=CPU,
        checkpoint_path=checkpoint,
        tracker=MemoryTracker(),
        progress=False,
        workers=0,
    )
    return [{k: v for k, v in epoch.items() if k not in (EPOCH_TIME, THROUGHPUT)} for epoch in result.history]


@pytest.mark.slow
def test_a_jobs_holdout_scores_do_not_depend_on_the_test_set(tmp_path):
    """Two .npz files that differ only in their test split (noise and other labels in the second): with a
    holdout the job's whole history is the same on both; without one the scores differ (the check can fail).
    Half the bundled training images (50 a class) and all its test images, to keep four jobs within seconds."""
    arrays = _bundled()
    pick = np.concatenate([np.flatnonzero(arrays["y_train"] == c)[:50] for c in range(10)])
    arrays = {**arrays, "x_train": arrays["x_train"][pick], "y_train": arrays["y_train"][pick]}
    rng = np.random.default_rng(0)
    noisy = {
        **arrays,
        "x_test": rng.integers(0, 256, arrays["x_test"].shape, dtype=np.uint8),
        "y_test": rng.permutation(arrays["y_test"]),
    }
    files = {"real": tmp_path / "real.npz", "noise": tmp_path / "noise.npz"}
    np.savez(files["real"], **arrays)
    np.savez(files["noise"], **noisy)

    held = {name: _train(path, True, tmp_path / name / "held.pt") for name, path in files.items()}
    assert held["real"] == held["noise"] and len(held["real"]) == 1
    tested = {name: _train(path, False, tmp_path / name / "test.pt") for name, path in files.items()}
    assert tested["real"][0]["val/loss"] != tested["noise"][0]["val/loss"]
    assert tested["real"][0]["train/loss"] == tested["noise"][0]["train/loss"]  # the same training set
