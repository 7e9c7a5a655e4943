"""The in-memory loader: batched crop+flip against a per-image reference, epoch coverage, exact resume,
label pairing, grayscale, channels_last, and channel statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ablation.data.memory import InMemoryLoader, augment_batch, channel_stats

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


def _indexed_images(n: int, size: int = 8, channels: int = 3) -> np.ndarray:
    """N x H x W x C uint8 images whose pixels all equal their index (n <= 256), so a batch says where it came from."""
    assert n <= 256
    return np.broadcast_to(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), (n, size, size, channels)).copy()


def _random_images(n: int, size: int = 8, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _loader(images: np.ndarray, labels: np.ndarray | None = None, **kw) -> InMemoryLoader:
    labels = np.arange(len(images)) if labels is None else labels
    kw = {"batch_size": 16, "train": True, "mean": MEAN, "std": STD, **kw}
    return InMemoryLoader(torch.from_numpy(images), torch.from_numpy(labels), **kw)


def _reference_augment(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flips: torch.Tensor, pad: int):
    """Per-image crop + flip with explicit Python loops: zero-pad, slice the window, mirror."""
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        padded = torch.zeros((c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
        for ch in range(c):
            for r in range(h):
                for col in range(w):
                    padded[ch, r + pad, col + pad] = x[i, ch, r, col]
        window = padded[:, int(oy[i]) : int(oy[i]) + h, int(ox[i]) : int(ox[i]) + w]
        if flips[i]:
            window = torch.stack([window[:, :, w - 1 - col] for col in range(w)], dim=2)
        out[i] = window
    return out


@pytest.mark.parametrize(("pad", "h", "w"), [(4, 8, 8), (2, 5, 7), (0, 6, 6)])
def test_augment_batch_matches_per_image_reference(pad, h, w):
    g = torch.Generator().manual_seed(pad * 100 + h)
    b, c = 12, 3
    x = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flips = torch.rand(b, generator=g) < 0.5
    flips[0], flips[1] = True, False  # both branches, whatever the draw
    if pad:
        oy[0], ox[0], oy[1], ox[1] = 0, 2 * pad, 2 * pad, 0  # the extreme windows, all padding on one side
    got = augment_batch(x, oy, ox, flips, pad)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert torch.equal(got, _reference_augment(x, oy, ox, flips, pad))


def test_train_epoch_visits_every_index_once_minus_dropped_tail():
    n, bs = 100, 16
    loader = _loader(_indexed_images(n), batch_size=bs, augment=False)
    assert loader.drop_last and len(loader) == n // bs and loader.num_samples == (n // bs) * bs
    seen = []
    for x, y in loader:
        assert x.shape == (bs, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        seen.append(y)
    seen = torch.cat(seen)
    assert len(seen) == loader.num_samples and len(set(seen.tolist())) == len(seen)  # no repeats
    assert not torch.equal(seen, torch.arange(len(seen)))  # shuffled


def test_drop_last_defaults():
    images = _indexed_images(10)
    assert not _loader(images, batch_size=16).drop_last  # fewer images than a batch: keep them
    assert len(_loader(images, batch_size=16)) == 1
    assert _loader(images, batch_size=4, drop_last=False).num_samples == 10
    assert len(_loader(images, batch_size=4, drop_last=False)) == 3
    with pytest.raises(ValueError, match="drop_last"):
        _loader(images, batch_size=4, train=False, drop_last=True)


def test_eval_yields_all_samples_in_order_with_exact_values():
    images = _random_images(37)
    loader = _loader(images, batch_size=16, train=False)
    assert not loader.drop_last and len(loader) == 3 and loader.num_samples == 37
    xs, ys = zip(*loader, strict=True)
    assert [len(y) for y in ys] == [16, 16, 5]
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, torch.arange(37))
    raw = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    expected = (raw / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(x, expected)
    # Eval never augments, whatever ``augment`` says, and two passes are identical.
    assert torch.equal(torch.cat([b for b, _ in loader]), x)


def test_same_seed_and_epoch_give_identical_batches():
    images = _random_images(64)

    def epoch(loader: InMemoryLoader, e: int):
        loader.set_epoch(e)
        return list(loader)

    a, b = _loader(images, seed=3), _loader(images, seed=3)
    for (xa, ya), (xb, yb) in zip(epoch(a, 5), epoch(b, 5), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # A fresh loader resumed at epoch 5 replays what the first one did at epoch 5, after other epochs.
    epoch(a, 0)
    for (xa, ya), (xb, yb) in zip(epoch(a, 5), epoch(_loader(images, seed=3), 5), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    perm = [torch.cat([y for _, y in epoch(a, e)]) for e in (5, 6)]
    assert not torch.equal(perm[0], perm[1])
    other_seed = torch.cat([y for _, y in epoch(_loader(images, seed=4), 5)])
    assert not torch.equal(perm[0], other_seed)


def test_iterating_without_set_epoch_advances():
    loader = _loader(_random_images(64))
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert loader.epoch == 2 and not torch.equal(first, second)


def test_labels_stay_paired_through_shuffle_and_augmentation():
    n = 200
    images = _indexed_images(n, size=8)
    labels = (np.arange(n) * 7 + 3) % 1000  # a known function of the index, not the index itself
    loader = _loader(images, labels, batch_size=32, pad=2, mean=(0, 0, 0), std=(1, 1, 1))
    flipped_or_cropped = 0
    for x, y in loader:
        # The image centre is never padding (pad 2 < 8 / 2), so its value is the image's index.
        index = torch.round(x[:, 0, 4, 4] * 255).long()
        assert torch.equal(y, (index * 7 + 3) % 1000)
        # Pixels are either the index or zero padding.
        pix = torch.round(x * 255).long()
        assert bool(((pix == index.view(-1, 1, 1, 1)) | (pix == 0)).all())
        flipped_or_cropped += int((pix == 0).any(dim=(1, 2, 3)).sum())
    assert flipped_or_cropped > 0  # the crops did move


def test_grayscale_repeated_to_three_channels():
    images = _random_images(20, size=6, channels=1)
    loader = _loader(images, batch_size=8, train=False, mean=(0.5,), std=(0.25,))
    assert loader.images.shape == (20, 3, 6, 6) and loader.images.dtype == torch.uint8
    x, _ = next(iter(loader))
    assert x.shape == (8, 3, 6, 6)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    expected = (torch.from_numpy(images[:8, :, :, 0]).float() / 255 - 0.5) / 0.25
    assert torch.equal(x[:, 0], expected)


def test_channels_last_and_resize():
    loader = _loader(_random_images(32), batch_size=8, channels_last=True, image_size=12)
    x, _ = next(iter(loader))
    assert x.shape == (8, 3, 12, 12)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    x, _ = next(iter(_loader(_random_images(32), batch_size=8)))
    assert x.is_contiguous()


def test_channel_stats_against_numpy():
    images = _random_images(50, size=5, seed=1)
    images[..., 2] //= 3  # channels with different statistics
    mean, std = channel_stats(images, chunk_bytes=5 * 5 * 3 * 8 * 7)  # 7 images a chunk: a ragged last chunk
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 1, 2)), rtol=1e-10)
    assert channel_stats(torch.from_numpy(images)) == channel_stats(images)
