"""The direct one-output-channel conv op (ablation/attention/accel/direct_conv.py): against F.conv2d and its
autograd, PyTorch's opcheck, and differentiable once only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablation.attention.accel import accelerate
from ablation.attention.accel.cpu_kernels import cpu_kernels_available
from ablation.attention.cbam import CBAM
from tests.attention.accel.conftest import CPU, max_diff
from tests.support.variants import C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


def test_direct_spatial_conv_refuses_higher_order_gradients() -> None:
    """The per-op fast path (here sum-logits) runs the spatial conv on the direct C++ kernel, differentiable once:
    a second derivative through it must fail loudly, not come out as zero."""
    module = accelerate(CBAM(C, reduction=4, order="parallel", parallel_combine="sum-logits").train(), CPU)
    x = torch.randn(2, C, 5, 5, requires_grad=True)
    (gx,) = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        gx.sum().backward()


@pytest.mark.parametrize("kernel_size", [1, 3, 7])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("size", [(2, 3), (7, 9), (16, 12)], ids=str)
def test_direct_spatial_conv_matches_conv2d(size: tuple[int, int], channels: int, kernel_size: int) -> None:
    """The C++ one-output-channel conv and its backward against F.conv2d's autograd, including kernels larger
    than the map (7 x 7 on 2 x 3: most taps fall in the padding)."""
    assert cpu_kernels_available()
    d = torch.randn(5, channels, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, channels, kernel_size, kernel_size, dtype=torch.float64, requires_grad=True)
    want = nn.functional.conv2d(d, w, padding=kernel_size // 2)
    grad = torch.randn_like(want)
    want_gd, want_gw = torch.autograd.grad(want, (d, w), grad)
    got = torch.ops.ablation_cbam.spatial_conv(d.detach(), w.detach())
    got_gd, got_gw = torch.ops.ablation_cbam.spatial_conv_backward(grad, d.detach(), w.detach())
    for a, b in ((got, want), (got_gd, want_gd), (got_gw, want_gw)):
        assert max_diff(a, b) < 1e-12


def test_compiled_spatial_conv_passes_torch_library_opcheck() -> None:
    """PyTorch's own checks of the conv op as the compiler sees it: schema, fake kernel against the real one,
    autograd registration (gradients against its own backward op), and AOT dispatch."""
    assert cpu_kernels_available()
    d = torch.randn(3, 2, 7, 9, requires_grad=True)
    w = torch.randn(1, 2, 7, 7, requires_grad=True)
    torch.library.opcheck(torch.ops.ablation_cbam.spatial_conv.default, (d, w))
    # The backward op is differentiable once (as the eager C++ op): checked on plain tensors.
    backward_args = (torch.randn(3, 1, 7, 9), d.detach(), w.detach())
    torch.library.opcheck(torch.ops.ablation_cbam.spatial_conv_backward.default, backward_args)
