"""Images/s of the in-memory loader against torchvision's DataLoader over PIL images, on the same data.

Why: ``ablation.data.memory.InMemoryLoader`` exists because, for CIFAR-sized images, the per-image PIL pipeline
is the bottleneck of a small network's training step. This measures by how much, with the same augmentation
(random crop 32 with 4 px zero padding, horizontal flip, ToTensor, Normalize) and the same batch size.

Method: each method runs one warm-up epoch (not timed: first-touch allocations, worker start-up), then the
timed repetitions (whole epochs, at least ``--min-seconds`` each) are interleaved (A, B, C, A, B, C, ...) so
that drift in machine load hits all methods alike, and each method's median throughput is reported. The
DataLoader keeps its workers between epochs (persistent_workers), which favours it: worker start-up is left
out of its figures. Everything runs on the CPU, the in-memory loader included (its device is the CPU here).

On a shared machine, when another process holds the cores, torch's OpenMP threads spin-wait at every op and
the in-memory loader's small batched ops slow down about 100x (measured: ~1,800 images/s instead of ~290,000
on 2 cores) while the single-threaded PIL path barely notices. ``OMP_WAIT_POLICY=PASSIVE`` in the environment
or ``--threads 1`` avoids it; the load average and the policy are printed so such figures can be recognised.

    python benchmarks/loader.py [--data PATH] [--batch-size 128] [--epochs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from ablation.data.memory import InMemoryLoader, channel_stats  # noqa: E402

DEFAULT_DATA = [ROOT / "ablation" / "data" / "cifar10-micro.npz", Path("/work/shared/data/cifar10-jpeg-q75-mini.npz")]


class PILDataset(Dataset):
    """What torchvision's CIFAR10 does per item: uint8 array -> PIL image -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i].squeeze(-1) if self.images.shape[-1] == 1 else self.images[i])
        return self.transform(image), int(self.labels[i])


def time_epochs(loader: Iterable, min_seconds: float) -> tuple[float, int]:
    """Seconds and images for whole epochs run until ``min_seconds`` have passed (at least one epoch).

    An in-memory epoch of the 1,000-image set takes milliseconds, too short to time alone on a shared machine;
    every method gets the same rule, so a repetition is always whole epochs.
    """
    count = 0
    start = time.perf_counter()
    while True:
        for x, _ in loader:
            count += x.shape[0]  # batches are consumed as a training loop would
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed, count


def bench(path: Path, batch_size: int, epochs: int, min_seconds: float) -> None:
    with np.load(path) as data:
        images, labels = data["x_train"], data["y_train"]
    n, h, w, c = images.shape
    mean, std = channel_stats(images)
    pad = h // 8
    print(f"\n{path.name}: {n} train images {h}x{w}x{c}, batch {batch_size}, pad {pad}, {epochs} timed repetitions")

    transform = transforms.Compose(
        [
            transforms.RandomCrop(h, padding=pad),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = PILDataset(images, labels, transform)
    # drop_last=True on both sides, so both yield the same number of images per epoch.
    methods: dict[str, Iterable] = {
        "in-memory": InMemoryLoader(
            torch.from_numpy(images),
            torch.from_numpy(labels),
            batch_size=batch_size,
            train=True,
            mean=mean,
            std=std,
            pad=pad,
        ),
        "DataLoader w=0": DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0),
        "DataLoader w=2": DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=2, persistent_workers=True
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for loader in methods.values():
        time_epochs(loader, 0.0)  # warm-up epoch, not timed
    for _ in range(epochs):
        for name, loader in methods.items():
            seconds, count = time_epochs(loader, min_seconds)
            rates[name].append(count / seconds)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        spread = ", ".join(f"{v:,.0f}" for v in r)
        print(f"  {name:15s} median {medians[name]:>12,.0f} images/s   (repetitions: {spread})")
    fast = medians["in-memory"]
    for name in ("DataLoader w=0", "DataLoader w=2"):
        print(f"  in-memory / {name}: {fast / medians[name]:.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="an .npz with x_train / y_train (default: the bundled micro set, "
                        "and the shared 5k set if present)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed repetitions per method, after a warm-up epoch")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of the main process (default: torch's)")
    parser.add_argument("--min-seconds", type=float, default=0.25, help="a repetition runs whole epochs for this long")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [args.data] if args.data else [p for p in DEFAULT_DATA if p.is_file()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, device cpu")
    # Printed because small batched ops with several OpenMP threads slow down by an order of magnitude when
    # another process holds the cores: a load average near the CPU count means these figures are contaminated.
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"load average before: {os.getloadavg()[0]:.2f}, OMP_WAIT_POLICY {policy}")
    for path in paths:
        bench(path, args.batch_size, args.epochs, args.min_seconds)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
