"""CBAM's spatial k x k conv (2 -> 1 channels, 'same' padding) on each CPU kernel, forward + backward.

Three kernels compute the same convolution: oneDNN (what ``F.conv2d`` and a compiled graph's conv call on CPU),
ATen's im2col + GEMM (``thnn_conv2d``: ``small_conv``'s fallback where the C++ kernels cannot be built) and our
direct C++ conv (``torch.ops.ablation_cbam.spatial_conv``: the C++ CBAM op, the per-op fast path and compiled
graphs; ablation/attention/accel/direct_conv.py). Shapes are ResNet-50's four stages at 112 px, batch 16; the
per-step column multiplies by the number of blocks per stage.
Timing: repetitions interleaved across kernels, medians.

    python benchmarks/spatial_conv.py [--reps 41] [--kernel 7] [--batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation.attention.accel.cpu_kernels import cpu_kernels_available

STAGES = ((28, 3), (14, 4), (7, 6), (4, 3))  # ResNet-50 at 112 px: (map side, blocks)


def kernels(d: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> dict[str, Callable[[], object]]:
    k = w.shape[-1]
    dd, wd = d.detach(), w.detach()

    def onednn() -> object:
        return torch.autograd.grad(F.conv2d(d, w, padding=k // 2), (d, w), g)

    def im2col() -> object:
        out = torch._C._nn.thnn_conv2d(d, w, [k, k], None, [1, 1], [k // 2, k // 2])
        return torch.autograd.grad(out, (d, w), g)

    def direct() -> object:
        torch.ops.ablation_cbam.spatial_conv(dd, wd)
        return torch.ops.ablation_cbam.spatial_conv_backward(g, dd, wd)

    return {"oneDNN (F.conv2d)": onednn, "im2col (thnn)": im2col, "direct C++": direct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=41)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if not cpu_kernels_available():
        sys.exit("the C++ kernels could not be built (see the warning above)")
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.kernel}x{args.kernel}, fwd+bwd, float32")
    totals: dict[str, float] = {}
    for side, blocks in STAGES:
        d = torch.randn(args.batch, 2, side, side, requires_grad=True)
        w = torch.randn(1, 2, args.kernel, args.kernel, requires_grad=True)
        g = torch.randn(args.batch, 1, side, side)
        runs = kernels(d, w, g)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(3):  # warm-up
            for run in runs.values():
                run()
        for _ in range(args.reps):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
        direct = times["direct C++"]
        for name, ts in times.items():
            ms = statistics.median(ts) * 1e3
            ratio = statistics.median(a / b for a, b in zip(ts, direct, strict=True))
            totals[name] = totals.get(name, 0.0) + ms * blocks
            per_step = f"x{blocks} blocks: {ms * blocks:6.2f} ms"
            print(f"{side:3d}x{side:<3d} {name:18s} {ms:7.3f} ms  {ratio:5.2f}x direct  {per_step}")
    print("per ResNet-50 step (16 blocks): " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in totals.items()))


if __name__ == "__main__":
    main()
