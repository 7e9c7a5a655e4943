"""What the accelerator tests share: the fused path's two backends (a fixture), and the comparison of an
accelerated CBAM with the reference module on the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ablation.attention.accel import accelerate, fused
from ablation.attention.cbam import CBAM
from tests.support.formulation import randomize
from tests.support.variants import TOL, C

LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])

# Run once per backend of the fused Function (the `backend` fixture).
BACKENDS = pytest.mark.usefixtures("backend")
CPU = torch.device("cpu")


@pytest.fixture(params=["cpp", "torch"], ids=["cpp-op", "torch-kernels"])
def backend(request, monkeypatch) -> str:
    """Every test runs once per implementation of the fused path: "cpp", the whole-module C++ op where it applies
    (contiguous CPU float32 / float64), "torch", the FusedCBAM Function on PyTorch ops everywhere (what CUDA,
    AMP and compiler-less CPUs use): the C++ op's module then finds no call it takes and falls back."""
    if request.param == "torch":
        monkeypatch.setattr(fused, "cpp_op_takes", lambda x, params: False)
    return request.param


def max_diff(a: Tensor, b: Tensor) -> float:
    """Max abs difference, relative to the reference's magnitude where that exceeds 1 (float32 rounding of a
    gradient summed over many positions grows with its size: e.g. 1.1e-5 on a weight gradient of 2.4)."""
    assert a.shape == b.shape
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def compare(
    options: dict,
    train: bool,
    channels_last: bool,
    *,
    dtype: torch.dtype = torch.float32,
    tol: float = TOL,
    x: Tensor | None = None,
) -> None:
    """Fast vs reference on shared weights: output, input gradient, parameter gradients, BN running stats."""
    reference = randomize(CBAM(C, reduction=4, **options)).train(train).to(dtype)
    fast = accelerate(CBAM(C, reduction=4, **options).train(train).to(dtype), CPU)
    fast.load_state_dict(reference.state_dict(), strict=True)
    if x is None:
        x = torch.randn(3, C, 7, 9, dtype=dtype)  # H != W catches a transposed pool or conv
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(x.shape, dtype=dtype)  # a random upstream gradient, not the all-ones of .sum()
    results = []
    for module in (reference, fast):
        xi = x.clone().requires_grad_()
        out = module(xi)
        (out * weight).sum().backward()
        grads = {name: p.grad for name, p in module.named_parameters()}
        results.append((out.detach(), xi.grad, grads))
    (out_r, gx_r, gp_r), (out_f, gx_f, gp_f) = results
    assert max_diff(out_f, out_r) < tol
    assert max_diff(gx_f, gx_r) < tol
    assert gp_f.keys() == gp_r.keys()
    for name in gp_r:
        assert max_diff(gp_f[name], gp_r[name]) < tol, name
    for (name, b_r), (_, b_f) in zip(reference.named_buffers(), fast.named_buffers(), strict=True):
        assert max_diff(b_f.double(), b_r.double()) < tol, name
