"""A loader for small image datasets held in memory as uint8 tensors on the training device.

Why: for CIFAR-sized data the standard ``DataLoader`` over PIL images spends far more time decoding, cropping
and collating one image at a time in Python than a small network spends training on them. Here (as in
airbench) the whole set lives on the device as uint8 (4x less memory than float32), a batch is a slice of a
permutation, and crop, flip and normalisation are a handful of batched tensor ops per batch.

Randomness comes from a CPU ``torch.Generator`` seeded from ``(seed, epoch)`` only, so an epoch's batches are
the same on CPU and GPU, from run to run, and after resuming from a checkpoint at any epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["InMemoryLoader", "augment_batch", "channel_stats", "epoch_seed"]

# Odd multiplier so that (seed, epoch) pairs do not collide for any realistic number of epochs (< 1,000,003).
_SEED_STRIDE = 1_000_003


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch: a function of ``(seed, epoch)`` alone, so a resumed run replays it."""
    # Masked to 63 bits because torch.Generator.manual_seed rejects values outside the uint64/int64 range.
    return (seed * _SEED_STRIDE + epoch) & ((1 << 63) - 1)


def augment_batch(
    x: torch.Tensor, offsets_y: torch.Tensor, offsets_x: torch.Tensor, flips: torch.Tensor, pad: int
) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a uint8 batch, with the randomness given.

    ``x`` is B x C x H x W (any dtype, on any device). Image ``b`` of the result is the H x W window at
    ``(offsets_y[b], offsets_x[b])`` of ``x[b]`` padded with ``pad`` zeros on every side, mirrored left-right
    where ``flips[b]`` is true. Offsets lie in ``[0, 2 * pad]``; ``offsets_*`` are integer tensors and
    ``flips`` a bool tensor, each of length B, on ``x``'s device.

    Kept separate from the loader so that a test can feed it the same offsets as a per-image reference.
    The crop and the flip are a single ``torch.gather`` on the padded batch: the flip is folded into the
    column indices (a window read right to left *is* the flipped window), chosen per image with
    ``torch.where`` on the flip mask, so no pass over the pixels is spent on flipping.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    hp, wp = h + 2 * pad, w + 2 * pad
    rows = offsets_y.view(b, 1).long() + torch.arange(h, device=x.device)  # B x H
    cols_fwd = torch.arange(w, device=x.device)
    cols = offsets_x.view(b, 1).long() + torch.where(flips.view(b, 1), cols_fwd.flip(0), cols_fwd)  # B x W
    # Linear index into the flattened padded image, shared by all channels (expand allocates nothing), so the
    # index costs B*H*W int64, not B*C*H*W.
    index = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(padded.reshape(b, c, hp * wp), 2, index).view(b, c, h, w)


class InMemoryLoader:
    """Batches of (float32 normalised N x C x H x W images, int64 labels), both on ``device``.

    ``images`` is uint8 N x H x W x C (the layout of the .npz files); it is converted once to N x C x H x W
    and moved to ``device``, staying uint8 there. Grayscale images (C == 1) are repeated to 3 channels once,
    here, because every network has a 3-channel stem; ``mean``/``std`` may then have 1 or 3 entries.

    ``train=True``: each epoch is a fresh permutation; the last partial batch is dropped by default when
    N >= batch_size (so a batch of one never reaches BatchNorm); with ``augment`` each image gets a random
    crop with ``pad`` zero pixels of padding (default: stored size // 8, i.e. 4 for 32 px, the standard
    CIFAR recipe) and a horizontal flip with p = 0.5. ``train=False``: all samples in order, no augmentation,
    nothing dropped.

    If ``image_size`` differs from the stored size, batches are resized (bilinear, antialiased) after
    augmentation, so crops keep their stored-resolution meaning.

    Call ``set_epoch(e)`` before each epoch for exact resume: the permutation, crops and flips of epoch ``e``
    depend on ``(seed, e)`` only. Without it each pass over the loader advances to the next epoch, so
    forgetting ``set_epoch`` never silently repeats one permutation.

    Data parallelism: with ``world_size`` K > 1, ``batch_size`` stays the *global* batch and rank ``rank``
    yields only its contiguous slice of each global batch (pieces of ``len(batch) * rank // K`` to
    ``len(batch) * (rank + 1) // K``), augmentation included. Every rank draws the same epoch permutation (it
    depends on (seed, epoch) only), so the K slices of batch i concatenated in rank order are exactly the
    single-process batch i, and every rank yields the same number of batches. For training, every global
    batch must split into K equal slices (``batch_size`` divisible by K, no partial last batch): DDP averages
    the K per-rank mean gradients, which equals the global batch's mean gradient only for equal slices.
    Evaluation slices may be uneven (callers sum losses and counts over ranks); an empty slice is skipped.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        augment: bool = True,
        pad: int | None = None,
        image_size: int | None = None,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N x H x W x C, got {images.dtype} {tuple(images.shape)}")
        n, h, w, c = images.shape
        if c not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels (N x H x W x C), got C = {c}")
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"labels must be a vector of {n} entries, got shape {tuple(labels.shape)}")
        if n == 0:
            raise ValueError("no images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last is None:
            drop_last = train and n >= batch_size
        elif drop_last and not train:
            raise ValueError("drop_last=True with train=False would skip evaluation samples")
        if drop_last and n < batch_size:
            raise ValueError(f"drop_last with {n} images < batch_size {batch_size} would yield no batch")
        if len(mean) not in (1, 3) or len(std) != len(mean):
            raise ValueError(f"mean and std need 1 or 3 entries each, got {len(mean)} and {len(std)}")
        if pad is None:
            pad = min(h, w) // 8
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if train and world_size > 1:
            if batch_size % world_size:
                raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
            if not drop_last and n % batch_size:
                raise ValueError(
                    f"{n} images leave a partial last batch of {n % batch_size}, which cannot be split into "
                    f"{world_size} equal slices; use drop_last=True or a batch_size that divides {n}"
                )

        self.device = torch.device(device)
        # Moved first, then permuted: on a GPU the layout change runs there instead of on the host.
        stored = images.to(self.device).permute(0, 3, 1, 2)
        self.images = (stored.expand(n, 3, h, w) if c == 1 else stored).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment and train
        self.drop_last = drop_last
        self.pad = pad
        self.seed = seed
        self.stored_size = (h, w)
        self.image_size = image_size
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self._mean = torch.tensor([float(v) for v in mean], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor([float(v) for v in std], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``: its permutation and augmentation depend only on (seed, epoch)."""
        self._epoch = epoch

    @property
    def epoch(self) -> int:
        """The epoch the next pass will be."""
        return self._epoch

    def __len__(self) -> int:
        """Global batches per epoch (the same on every rank; an evaluation rank skips its empty slices)."""
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        """Images per epoch actually yielded by this rank (the dataset size minus a dropped tail, on one rank)."""
        return sum(hi - lo for lo, hi in self._slices())

    def _epoch_size(self) -> int:
        """Images per epoch over all ranks: the dataset size minus a dropped tail."""
        n = self.images.shape[0]
        return (n // self.batch_size) * self.batch_size if self.drop_last else n

    def _slices(self) -> Iterator[tuple[int, int]]:
        """[lo, hi) of this rank's slice of each global batch, in positions of the epoch's order."""
        n_out = self._epoch_size()
        for start in range(0, n_out, self.batch_size):
            size = min(self.batch_size, n_out - start)
            yield start + size * self.rank // self.world_size, start + size * (self.rank + 1) // self.world_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1  # a pass without set_epoch moves on, so a forgotten set_epoch never repeats a permutation
        if not self.train:
            for lo, hi in self._slices():
                if hi > lo:
                    # Eval batches are views of the stored tensor: no index, no copy before the float conversion.
                    yield self._finish(self.images[lo:hi]), self.labels[lo:hi]
            return

        # All of an epoch's randomness is drawn up front on the CPU, in a fixed order, then moved in one
        # transfer per tensor: identical on every device, and no host-device sync per batch.
        n, n_out = self.images.shape[0], self._epoch_size()
        # Drawn for the whole epoch on every rank, whatever its slice, so that all ranks (and a single process)
        # see the same permutation and give each image the same crop and flip.
        generator = torch.Generator(device="cpu")
        generator.manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=generator)[:n_out].to(self.device)
        if self.augment:
            span = 2 * self.pad + 1
            offsets_y = torch.randint(0, span, (n_out,), generator=generator).to(self.device)
            offsets_x = torch.randint(0, span, (n_out,), generator=generator).to(self.device)
            flips = (torch.rand(n_out, generator=generator) < 0.5).to(self.device)
        for lo, hi in self._slices():
            index = order[lo:hi]
            x = self.images.index_select(0, index)
            if self.augment:
                window = slice(lo, hi)
                x = augment_batch(x, offsets_y[window], offsets_x[window], flips[window], self.pad)
            yield self._finish(x), self.labels.index_select(0, index)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float32, resized if asked, normalised per channel, in the requested memory format."""
        # Written as (x / 255 - mean) / std, op for op, so the values are exactly those of the textbook formula.
        x = x.float().div_(255)
        size = self.image_size
        if size is not None and (size, size) != self.stored_size:
            # Bilinear interpolation is affine-equivariant, so resizing before normalising gives the same result;
            # it runs on float because antialiased uint8 interpolation exists only on the CPU.
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.sub_(self._mean).div_(self._std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def channel_stats(
    images: np.ndarray | torch.Tensor, chunk_bytes: int = 1 << 24
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] of a uint8 N x H x W x C train set, for ``InMemoryLoader``'s mean/std.

    Accumulates sums and sums of squares in float64 over chunks of about ``chunk_bytes`` of float64, so a
    50,000 x 32 x 32 x 3 set never needs a 1.2 GB float copy. The sums are of integers (pixel values <= 255,
    squares <= 65,025) and stay below 2**53 for any set under ~10**11 pixels, so they are exact and the
    one-pass variance E[x^2] - E[x]^2 loses nothing to cancellation. The std is the population one (ddof=0).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 N x H x W x C, got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("no images")
    per_image = h * w * c * 8
    step = max(1, chunk_bytes // per_image)
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    for start in range(0, n, step):
        chunk = images[start : start + step].reshape(-1, c).astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.einsum("ij,ij->j", chunk, chunk)
    count = n * h * w
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    return tuple(float(v) for v in mean / 255), tuple(float(v) for v in np.sqrt(var) / 255)
