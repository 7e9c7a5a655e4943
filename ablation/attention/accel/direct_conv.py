"""The spatial gate's k x k conv on our direct C++ kernel (csrc/cbam_cpu.cpp), as a differentiable op that
torch.compile can keep in its graph.

For this one-output-channel conv on a 1- or 2-channel map, oneDNN's kernel (what ``F.conv2d`` and a compiled
graph call on CPU) and ATen's im2col + GEMM are both slower than a direct loop (``benchmarks/spatial_conv.py``;
figures in ``benchmarks/README.md``). The C++ CBAM op calls the kernel itself; this module registers the fake
kernels and the autograd formula that let everything else use it: the per-op fast path and FusedCBAM on CPU
(``fast.small_conv``), and compiled models (``fast.DirectConv2d``), which trace CBAM's straightforward
formulation for the compiler to fuse (better, measured, than keeping the whole C++ CBAM op opaque in the graph)
but cannot fuse the conv.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_registered: list[bool] = []


def register() -> None:
    """Give the loaded library's spatial_conv ops their fake kernels and autograd formula (once per process)."""
    if _registered:
        return
    torch.library.register_fake("ablation_cbam::spatial_conv")(_conv_fake)
    torch.library.register_fake("ablation_cbam::spatial_conv_backward")(_conv_backward_fake)
    torch.library.register_autograd("ablation_cbam::spatial_conv", _backward, setup_context=_setup_context)
    # Its backward is differentiable once, as the C++ CBAM op: a second derivative fails loudly instead of
    # PyTorch's silent "no autograd kernel" fallback.
    torch.library.register_autograd(
        "ablation_cbam::spatial_conv_backward", _refuse_double_backward, setup_context=_no_context
    )
    _registered.append(True)


def spatial_conv(descriptor: Tensor, weight: Tensor) -> Tensor:
    """conv2d(descriptor, weight, padding=k // 2) on the direct C++ kernel, differentiable and traceable."""
    return torch.ops.ablation_cbam.spatial_conv(descriptor.contiguous(), weight)


def spatial_conv_backward(grad: Tensor, descriptor: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of ``spatial_conv`` w.r.t. the descriptor and the weight, on the direct C++ kernel."""
    gd, gw = torch.ops.ablation_cbam.spatial_conv_backward(grad.contiguous(), descriptor.contiguous(), weight)
    return gd, gw


def _conv_fake(d: Tensor, w: Tensor) -> Tensor:
    return d.new_empty(d.shape[0], 1, d.shape[2], d.shape[3])


def _conv_backward_fake(gout: Tensor, d: Tensor, w: Tensor) -> list[Tensor]:
    return [torch.empty_like(d), torch.empty_like(w)]


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
    return spatial_conv_backward(grad, *ctx.saved_tensors)


def _no_context(ctx: Any, inputs: tuple, output: list[Tensor]) -> None:
    pass


def _refuse_double_backward(ctx: Any, *grads: Any) -> None:
    raise RuntimeError(
        "CBAM's direct spatial conv is differentiable once; use attention impl='reference' for higher-order "
        "gradients (create_graph=True)"
    )
