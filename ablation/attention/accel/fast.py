"""The per-op fast pieces: the same function as the reference gates, fewer slow kernels.

Profiling the straightforward CBAM on the project's CPU (PyTorch 2.x) showed that its cost is not the pooling
passes themselves but two pathological kernels:

1. ``amax``'s autograd backward. It is computed as ``grad * (x == amax).to(float) / count`` followed by an add
   into the other pooling's gradient: an ``eq``, a bool -> float copy, a float sum, a division, a multiply and an
   accumulation, each a full pass over the feature map, several times slower than the forward reduction.
   ``AvgMaxPool`` below computes the *same* gradient (the one of ``amax``: the incoming gradient shared equally
   among tied maxima; of ``mean``: the gradient / n at every position) in one ``eq``, one bool count and one
   ``where`` that writes the summed avg + max gradient directly.
2. The k x k convolution of the spatial gate, 2 (or 1) -> 1 channels: oneDNN (mkldnn), which ``F.conv2d`` picks on
   CPU, is slow for these one-output-channel convolutions. ``small_conv`` runs our direct C++ conv instead
   (direct_conv.py), or, where the C++ library cannot be built, ATen's im2col + GEMM convolution
   (``thnn_conv2d``), both faster than oneDNN there (``benchmarks/spatial_conv.py``; figures in
   ``benchmarks/README.md``). On CUDA cuDNN is used as before.

``FastChannelGate`` and ``FastSpatialGate`` are the reference gates with these pieces; ``accelerate`` gives them
to the variants the fused path does not cover (sum-logits, lp/lse pools, spatial-first off the C++ op).
``DirectConv2d`` is the spatial gate's conv on the direct C++ kernel alone, for compiled models. All keep the
parameters, the state_dict and the result (up to float rounding: summation order) of the reference modules;
tests/attention/accel/ (test_fast.py, test_fused.py) checks forward and gradients of every ablation variant
against them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablation.attention.accel import direct_conv
from ablation.attention.accel.cpu_kernels import cpu_kernels_available, kernels_take
from ablation.attention.accel.sharing import adopt
from ablation.attention.channel import POOLS, ChannelGate
from ablation.attention.spatial import SpatialGate


class AvgMaxPool(torch.autograd.Function):
    """``(mean(x, dims), amax(x, dims))`` (keepdim) with a fused backward giving the gradient of their sum.

    Why the backward equals autograd's: d mean / dx = 1/n everywhere; d amax / dx = 1/k at each of the k positions
    equal to the maximum and 0 elsewhere (PyTorch's amax splits the gradient evenly among ties). So
    ``dx = ga / n + where(x == max, gm / k, 0)``, written by one ``where`` over the map. Only ``x`` (already kept
    alive by the surrounding graph) and the small max are saved.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, dims: tuple[int, ...], want_avg: bool, want_max: bool) -> tuple[Tensor, Tensor]:
        avg = x.mean(dims, keepdim=True) if want_avg else x.new_zeros(())
        mx = x.amax(dims, keepdim=True) if want_max else x.new_zeros(())
        ctx.dims, ctx.want_avg, ctx.want_max = dims, want_avg, want_max
        ctx.save_for_backward(x if want_max else None, mx if want_max else None)
        ctx.x_shape = x.shape
        ctx.mark_non_differentiable(*(t for t, w in ((avg, want_avg), (mx, want_max)) if not w))
        return avg, mx

    @staticmethod
    def backward(ctx: Any, grad_avg: Tensor | None, grad_max: Tensor | None) -> tuple[Tensor | None, ...]:
        x, mx = ctx.saved_tensors
        n = 1
        for d in ctx.dims:
            n *= ctx.x_shape[d]
        base = grad_avg / n if (ctx.want_avg and grad_avg is not None) else None
        if not ctx.want_max or grad_max is None:
            grad = base.expand(ctx.x_shape) if base is not None else None
            return grad, None, None, None
        mask = x == mx
        share = grad_max / mask.sum(ctx.dims, keepdim=True, dtype=grad_max.dtype)
        if base is None:
            return torch.where(mask, share, 0.0), None, None, None
        # Same memory format as x (where follows its inputs' layout), so channels_last stays channels_last.
        return torch.where(mask, base + share, base), None, None, None


def avg_max(x: Tensor, dims: tuple[int, ...], want_avg: bool, want_max: bool) -> tuple[Tensor, Tensor]:
    """Mean and amax of ``x`` over ``dims`` (keepdim) through ``AvgMaxPool``; an unwanted one is a dummy 0."""
    return AvgMaxPool.apply(x, dims, want_avg, want_max)


def small_conv(x: Tensor, weight: Tensor, padding: int) -> Tensor:
    """A stride-1, bias-free 'same' convolution for the spatial gate's few-channel maps.

    On CPU it runs our direct C++ conv where it applies (``uses_direct_conv``), else ATen's im2col + GEMM kernel
    (``thnn_conv2d``), instead of oneDNN's, which is slower for a one-output-channel conv; the function computed is
    identical (same weights, same padding), only the summation order differs. Elsewhere (CUDA) it is ``F.conv2d``.
    """
    if uses_direct_conv(x, weight, padding):
        return direct_conv.spatial_conv(x, weight)
    if x.device.type == "cpu" and hasattr(torch._C._nn, "thnn_conv2d"):
        k = weight.shape[-2:]
        return torch._C._nn.thnn_conv2d(x, weight, list(k), None, [1, 1], [padding, padding])
    return F.conv2d(x, weight, padding=padding)


def uses_direct_conv(x: Tensor, weight: Tensor, padding: int) -> bool:
    """Whether small_conv runs the direct C++ conv: a CPU float32/float64 map and weight of one dtype, an odd
    kernel with 'same' padding (k // 2 on both sides), and the C++ library built."""
    k = weight.shape[-1]
    return k % 2 == 1 and padding == k // 2 and kernels_take(x, weight) and cpu_kernels_available()


class FastChannelGate(ChannelGate):
    """The channel gate with avg and max pooled together by ``AvgMaxPool`` (one fused backward)."""

    @classmethod
    def made_from(cls, gate: ChannelGate) -> FastChannelGate:
        return adopt(cls, gate)

    def logits(self, x: Tensor) -> Tensor:
        want_avg, want_max = "avg" in self.pools, "max" in self.pools
        if want_avg or want_max:
            avg, mx = avg_max(x, (2, 3), want_avg, want_max)
            fused = {"avg": avg, "max": mx}  # (B, C, 1, 1); an unwanted one is a dummy never looked up
            pooled = [fused[name].flatten(1) if name in fused else POOLS[name](x) for name in self.pools]
        else:
            pooled = [POOLS[name](x) for name in self.pools]
        return self.mlp(torch.stack(pooled)).sum(dim=0)[:, :, None, None]


class FastSpatialGate(SpatialGate):
    """The spatial gate with its channel pools from ``AvgMaxPool`` and its conv on ``small_conv``."""

    @classmethod
    def made_from(cls, gate: SpatialGate) -> FastSpatialGate:
        return adopt(cls, gate)

    def logits(self, x: Tensor) -> Tensor:
        # [avg; max], in the reference's order, or the learned 1x1 conv.
        descriptor = torch.cat(avg_max(x, (1,), True, True), dim=1) if self.compress is None else self.compress(x)
        out = small_conv(descriptor, self.conv.weight, self.conv.padding[0])
        return out if self.bn is None else self.bn(out)


class DirectConv2d(nn.Conv2d):
    """The spatial gate's conv (its very weight) on the direct C++ kernel where the call's tensors fit it.

    For compiled models: the compiler fuses the rest of CBAM's straightforward formulation, not this conv, and
    the kernel it would call (oneDNN) is slow for it. A traceable op (direct_conv.py), so the graph stays whole."""

    @classmethod
    def made_from(cls, conv: nn.Conv2d) -> DirectConv2d:
        return adopt(cls, conv)

    def forward(self, x: Tensor) -> Tensor:
        if uses_direct_conv(x, self.weight, self.padding[0]):
            return direct_conv.spatial_conv(x, self.weight)
        return super().forward(x)
