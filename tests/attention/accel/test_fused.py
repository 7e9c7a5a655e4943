"""The fused path (ablation/attention/accel/fused.py): the whole-module C++ op and the FusedCBAM Function on
PyTorch ops (which CUDA uses), in float64 for every arrangement they cover, with ties in both maxima, BatchNorm
settings, the folded residual addition, a whole ResNet, autocast, memory kept for backward, and the C++ op's
order numbering.

Same weights (one state_dict loaded into both), forward output, input gradient and every parameter gradient
agree with the straightforward modules (what impl="reference" runs) to float rounding; parameters and BN
statistics are randomised first (with the official init the spatial BN weight is 0 and the spatial branch would
be invisible)."""

from __future__ import annotations

import re
from typing import get_args

import pytest
import torch
from torch import Tensor, nn

from ablation.attention.accel import accelerate, fused
from ablation.attention.cbam import CBAM
from ablation.attention.options import Impl, Order
from ablation.attention.se import SE
from ablation.models import build_model
from tests.attention.accel.conftest import BACKENDS, CPU, compare, max_diff
from tests.support.folders import ROOT
from tests.support.formulation import randomize
from tests.support.variants import MODES, TOL, C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


@BACKENDS
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_ties_share_the_max_gradient_like_amax(train: bool) -> None:
    """A constant map: every position ties for both maxima; amax splits the gradient evenly, so must fast."""
    reference = randomize(CBAM(C, reduction=4)).train(train)
    fast = accelerate(CBAM(C, reduction=4).train(train), CPU)
    fast.load_state_dict(reference.state_dict())
    grads = []
    for module in (reference, fast):
        x = torch.ones(2, C, 5, 6, requires_grad=True)
        module(x).sum().backward()
        grads.append(x.grad)
    assert max_diff(grads[1], grads[0]) < TOL


FUSED_VARIANTS = [
    {"order": order, "channel_pool": pools, "spatial": descriptor, "spatial_bn": bn}
    for order in fused.FUSED_ORDERS + fused.CPP_ONLY_ORDERS
    for pools in (["avg"], ["max"], ["avg", "max"], ["max", "avg"])
    for descriptor in ("pool", "conv")
    for bn in (True, False)
]


@BACKENDS
@MODES
@pytest.mark.parametrize("options", FUSED_VARIANTS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_fused_variants_in_float64(options: dict, train: bool) -> None:
    """float64 leaves only ~1e-16 rounding: an error in a gradient term hidden by float32 noise shows here."""
    assert isinstance(accelerate(CBAM(C, **options), CPU), fused.CppOpCBAM)
    compare(options, train, False, dtype=torch.float64, tol=1e-11)


@BACKENDS
@MODES
@pytest.mark.parametrize("order", fused.FUSED_ORDERS + fused.CPP_ONLY_ORDERS)
def test_fused_ties_in_both_maxima(order: str, train: bool) -> None:
    """Non-positive maps with many exact zeros: the channel max of x * c and the spatial max of x tie at many
    places at once; the gradient must be shared among the ties exactly as amax shares it."""
    x = -torch.relu(torch.randn(3, C, 7, 9, dtype=torch.float64))
    compare({"order": order}, train, False, dtype=torch.float64, tol=1e-11, x=x)


@pytest.mark.parametrize("order", fused.FUSED_ORDERS + fused.CPP_ONLY_ORDERS)
def test_cpu_float32_training_runs_the_cpp_op(order: str, monkeypatch) -> None:
    """The speed is in the C++ op: every fused arrangement, forward and forward_add, must reach it on CPU."""
    calls: list[str] = []
    real = fused.cpp_op
    monkeypatch.setattr(fused, "cpp_op", lambda module, *args: calls.append(module.order) or real(module, *args))
    module = accelerate(CBAM(C, reduction=4, order=order).train(), CPU)
    x = torch.randn(2, C, 5, 5, requires_grad=True)
    (module(x).sum() + module.forward_add(x, x).sum()).backward()
    assert calls == [order, order]


@MODES
@pytest.mark.parametrize(
    "bn_options",
    [{"momentum": None}, {"track_running_stats": False}, {"affine": False}],
    ids=["cumulative-average", "no-running-stats", "no-affine"],
)
def test_spatial_bn_follows_batchnorm_rules(bn_options: dict, train: bool, backend: str) -> None:
    """The C++ op computes the spatial gate's BatchNorm itself: it must follow nn.BatchNorm2d's rules for the
    settings a user could give it (running statistics, momentum None, no affine parameters), over two steps."""
    reference = randomize(CBAM(C, reduction=4)).train(train).double()
    fast = accelerate(CBAM(C, reduction=4).train(train).double(), CPU)
    for module in (reference, fast):
        module.spatial.bn = nn.BatchNorm2d(1, **bn_options).double().train(train)
    fast.load_state_dict(reference.state_dict())
    for step in range(2):
        x = torch.randn(3, C, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        results = []
        for module in (reference, fast):
            module.zero_grad()
            xi = x.clone().requires_grad_()
            module(xi).square().sum().backward()
            results.append([xi.grad, *(p.grad for p in module.parameters()), *module.buffers()])
        for got, want in zip(results[1], results[0], strict=True):
            assert max_diff(got.double(), want.double()) < 1e-11


def test_cpp_op_refuses_higher_order_gradients() -> None:
    """The op's backward is not itself differentiable: create_graph=True must fail loudly, not give a wrong
    second derivative."""
    module = accelerate(CBAM(C, reduction=4).train(), CPU)
    x = torch.randn(2, C, 5, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(module(x).sum(), x, create_graph=True)


def test_fused_path_keeps_only_the_input_for_backward(backend: str) -> None:
    """Peak memory comes from what autograd keeps between forward and backward. The fused Function keeps x and
    only small tensors; the reference path keeps x, the channel-gated map and more."""
    saved: dict[str, int] = {}
    x = torch.randn(4, C, 16, 16, requires_grad=True)
    map_bytes = x.numel() * x.element_size()
    for impl in ("fast", "reference"):
        module = CBAM(C, reduction=4).train()
        if impl == "fast":
            module = accelerate(module, CPU)
        sizes: list[int] = []

        def pack(t: Tensor, sizes: list[int] = sizes) -> Tensor:
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        saved[impl] = sum(s for s in sizes if s >= map_bytes // 4)  # maps, not (N, C) / (N, H*W) tensors
    assert saved["fast"] == map_bytes
    assert saved["reference"] >= 2 * map_bytes


@BACKENDS
@MODES
@pytest.mark.parametrize("order", ["channel-first", "spatial-first"])
def test_forward_add_is_cbam_plus_the_residual(order: str, train: bool) -> None:
    """The residual block's addition folded into the gating pass: same value and gradients (x, residual, every
    parameter) as CBAM(x) + residual on the reference path; spatial-first shows the unfused fallback."""
    reference = randomize(CBAM(C, reduction=4, order=order)).train(train).double()
    fast = accelerate(CBAM(C, reduction=4, order=order).train(train).double(), CPU)
    fast.load_state_dict(reference.state_dict())
    x, residual = torch.randn(3, C, 7, 9, dtype=torch.float64), torch.randn(3, C, 7, 9, dtype=torch.float64)
    weight = torch.randn_like(x)
    results = []
    for module, combine in ((reference, lambda m, a, b: m(a) + b), (fast, lambda m, a, b: m.forward_add(a, b))):
        xi, ri = x.clone().requires_grad_(), residual.clone().requires_grad_()
        out = combine(module, xi, ri)
        (out * weight).sum().backward()
        results.append([out.detach(), xi.grad, ri.grad] + [p.grad for p in module.parameters()])
    for got, want in zip(results[1], results[0], strict=True):
        assert max_diff(got, want) < 1e-11


def test_resnet_with_fused_cbam_matches_the_reference_network() -> None:
    """Whole network, fused blocks (with the folded residual addition and the in-place ReLU after it) against
    the reference path on the same weights: logits, input gradient and every parameter gradient."""
    nets = {}
    for impl in ("reference", "fast"):
        torch.manual_seed(3)
        nets[impl] = build_model(
            "resnet18", num_classes=10, attention={"type": "cbam", "reduction": 4}, stem="cifar", width=0.25
        ).double()
    nets["fast"] = accelerate(nets["fast"], CPU)
    assert all(isinstance(block.attention, fused.CppOpCBAM) for block in nets["fast"].layer1)
    nets["fast"].load_state_dict(randomize(nets["reference"]).state_dict())
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    results = []
    for impl in ("reference", "fast"):
        xi = x.clone().requires_grad_()
        out = nets[impl](xi)
        out.square().sum().backward()
        results.append([out.detach(), xi.grad] + [p.grad for p in nets[impl].parameters()])
    for got, want in zip(results[1], results[0], strict=True):
        assert max_diff(got, want) < 1e-9


@pytest.mark.parametrize("order", ["channel-first", "parallel"])
def test_fused_under_autocast_is_as_close_to_float32_as_the_reference(order: str) -> None:
    """AMP (what CUDA training uses; CPU autocast with bfloat16 here): a bfloat16 map with float32 parameters.
    The fused path must run, give float32 parameter gradients and a bfloat16 output, and stay at least as close
    to the float32 result as the reference path under the same autocast."""
    base = randomize(CBAM(C, reduction=4, order=order)).train()
    x32 = torch.randn(3, C, 7, 9)
    weight = torch.randn_like(x32)

    def run(impl: str, amp: bool) -> list[Tensor]:
        module = CBAM(C, reduction=4, order=order).train()
        if impl == "fast":
            module = accelerate(module, CPU)
        module.load_state_dict(base.state_dict())
        xi = (x32.bfloat16() if amp else x32).clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = module(xi)
        (out.float() * weight).sum().backward()
        if amp:
            assert out.dtype == torch.bfloat16 and xi.grad.dtype == torch.bfloat16
            assert all(p.grad.dtype == torch.float32 for p in module.parameters())
        return [out.detach().float(), xi.grad.float()] + [p.grad for p in module.parameters()]

    exact = run("reference", amp=False)
    errors = {impl: max(max_diff(a, b) for a, b in zip(run(impl, True), exact, strict=True)) for impl in get_args(Impl)}
    assert errors["fast"] <= 1.5 * errors["reference"] + 1e-3, errors


def test_se_runs_fused_and_matches_its_reference() -> None:
    se = accelerate(randomize(SE(C, reduction=4)), CPU)
    reference = SE(C, reduction=4)
    reference.load_state_dict(se.state_dict())
    assert isinstance(se, fused.CppOpCBAM) and type(reference) is SE
    x = torch.randn(3, C, 7, 9)
    assert max_diff(se(x), reference(x)) < TOL


def test_order_codes_are_the_cpp_ops_numbering() -> None:
    """The C++ op takes the order as a number: fused.ORDER_CODES must number the schema's orders as the C++ does
    (its kChannelFirst ... constants), every order the op covers."""
    source = (ROOT / "ablation/attention/accel/csrc/cbam_cpu_function.cpp").read_text()
    cpp = {
        name: int(code)
        for name, code in re.findall(
            r"k(ChannelFirst|Parallel|ChannelOnly|SpatialOnly|SpatialFirst) = (\d+)",
            source,
        )
    }
    camel = {order: "".join(part.title() for part in order.split("-")) for order in get_args(Order)}
    assert set(fused.ORDER_CODES) == set(get_args(Order)) == set(fused.FUSED_ORDERS + fused.CPP_ONLY_ORDERS)
    assert {order: cpp[camel[order]] for order in fused.ORDER_CODES} == fused.ORDER_CODES
