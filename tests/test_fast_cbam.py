"""The fast CBAM path (impl="fast", the default) against the straightforward one (impl="reference").

Same weights (one state_dict loaded into both), every ablation variant: forward output, input gradient and every
parameter gradient must agree to 1e-5 in float32, in train and eval mode, with contiguous and channels_last
inputs, and on each implementation of the fused path (ablation/attention/fused.py): the whole-module C++ op
and the FusedCBAM Function on PyTorch ops (which CUDA uses). Parameters and BN statistics are randomised first
(with the official init the spatial BN weight is 0 and the spatial branch would be invisible).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ablation.attention import build_attention, fused
from ablation.attention.cbam import CBAM, IMPLS
from ablation.attention.cpu_kernels import cpu_kernels_available
from ablation.attention.options import CBAMOptions
from ablation.attention.se import SE
from ablation.config import config_hash, parse_run_config
from tests.conftest import randomize
from tests.variants import ARRANGEMENTS, MODES, POOL_SUBSETS, TOL, C

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
# Run once per backend of the fused Function (the `backend` fixture).
BACKENDS = pytest.mark.usefixtures("backend")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=["cpp", "torch"], ids=["cpp-op", "torch-kernels"])
def backend(request, monkeypatch) -> str:
    """Every test runs once per implementation of the fused path: "cpp", the whole-module C++ op where it applies
    (contiguous CPU float32 / float64), "torch", the FusedCBAM Function on PyTorch ops everywhere (what CUDA,
    AMP and compiler-less CPUs use)."""
    if request.param == "torch":
        monkeypatch.setattr(fused, "uses_cpp_op", lambda x, params: False)
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
    reference = randomize(CBAM(C, reduction=4, impl="reference", **options)).train(train).to(dtype)
    fast = CBAM(C, reduction=4, impl="fast", **options).train(train).to(dtype)
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


@BACKENDS
@MODES
@LAYOUTS
@pytest.mark.parametrize("mlp_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("pools", POOL_SUBSETS, ids="+".join)
def test_channel_pooling(pools: list[str], mlp_bias: bool, channels_last: bool, train: bool) -> None:
    compare({"channel_pool": pools, "mlp_bias": mlp_bias}, train, channels_last)


@BACKENDS
@MODES
@LAYOUTS
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
@pytest.mark.parametrize("descriptor", ["pool", "conv"])
def test_spatial_gate(descriptor: str, kernel_size: int, bn: bool, channels_last: bool, train: bool) -> None:
    compare({"spatial": descriptor, "kernel_size": kernel_size, "spatial_bn": bn}, train, channels_last)


@BACKENDS
@MODES
@LAYOUTS
@pytest.mark.parametrize("descriptor", ["pool", "conv"])
@pytest.mark.parametrize("pools", [["avg", "max"], ["max"], ["avg", "lse"]], ids="+".join)
@pytest.mark.parametrize(("order", "combine"), ARRANGEMENTS)
def test_arrangement(
    order: str, combine: str, pools: list[str], descriptor: str, channels_last: bool, train: bool
) -> None:
    options = {"order": order, "parallel_combine": combine, "channel_pool": pools, "spatial": descriptor}
    compare(options, train, channels_last)


@BACKENDS
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_ties_share_the_max_gradient_like_amax(train: bool) -> None:
    """A constant map: every position ties for both maxima; amax splits the gradient evenly, so must fast."""
    reference = randomize(CBAM(C, reduction=4, impl="reference")).train(train)
    fast = CBAM(C, reduction=4).train(train)
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
    module = CBAM(C, impl="fast", **options)
    assert module.fused
    compare(options, train, False, dtype=torch.float64, tol=1e-11)


@BACKENDS
@MODES
@pytest.mark.parametrize("order", fused.FUSED_ORDERS + fused.CPP_ONLY_ORDERS)
def test_fused_ties_in_both_maxima(order: str, train: bool) -> None:
    """Non-positive maps with many exact zeros: the channel max of x * c and the spatial max of x tie at many
    places at once; the gradient must be shared among the ties exactly as amax shares it."""
    x = -torch.relu(torch.randn(3, C, 7, 9, dtype=torch.float64))
    compare({"order": order}, train, False, dtype=torch.float64, tol=1e-11, x=x)


def test_cpu_kernels_are_built_and_used() -> None:
    """The C++ kernels must build on a machine like CI's (g++ + ninja): a silent fallback would keep the results
    and lose the speed, so it is a failure here."""
    assert cpu_kernels_available()
    params = fused.module_params(CBAM(4, reduction=2))
    assert fused.uses_cpp_op(torch.randn(2, 4, 3, 3), params)
    assert not fused.uses_cpp_op(torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last), params)
    assert not fused.uses_cpp_op(torch.randn(2, 4, 3, 3, dtype=torch.bfloat16), params)  # AMP
    assert not fused.uses_cpp_op(torch.randn(2, 4, 3, 3, dtype=torch.float64), params)  # map and weights differ


@pytest.mark.parametrize("order", fused.FUSED_ORDERS + fused.CPP_ONLY_ORDERS)
def test_cpu_float32_training_runs_the_cpp_op(order: str, monkeypatch) -> None:
    """The speed is in the C++ op: every fused arrangement, forward and forward_add, must reach it on CPU."""
    calls: list[str] = []
    real = fused._cpp_op
    monkeypatch.setattr(fused, "_cpp_op", lambda module, *args: calls.append(module.order) or real(module, *args))
    module = CBAM(C, reduction=4, order=order).train()
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
    reference = randomize(CBAM(C, reduction=4, impl="reference")).train(train).double()
    fast = CBAM(C, reduction=4).train(train).double()
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
    module = CBAM(C, reduction=4).train()
    x = torch.randn(2, C, 5, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(module(x).sum(), x, create_graph=True)


def test_direct_spatial_conv_refuses_higher_order_gradients() -> None:
    """The per-op fast path (here sum-logits) runs the spatial conv on the direct C++ kernel, differentiable once:
    a second derivative through it must fail loudly, not come out as zero."""
    module = CBAM(C, reduction=4, order="parallel", parallel_combine="sum-logits").train()
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


def test_fused_path_keeps_only_the_input_for_backward(backend: str) -> None:
    """Peak memory comes from what autograd keeps between forward and backward. The fused Function keeps x and
    only small tensors; the reference path keeps x, the channel-gated map and more."""
    saved: dict[str, int] = {}
    x = torch.randn(4, C, 16, 16, requires_grad=True)
    map_bytes = x.numel() * x.element_size()
    for impl in ("fast", "reference"):
        module = CBAM(C, reduction=4, impl=impl).train()
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
    reference = randomize(CBAM(C, reduction=4, impl="reference", order=order)).train(train).double()
    fast = CBAM(C, reduction=4, order=order).train(train).double()
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
    from ablation.models import build_model

    nets = {}
    for impl in ("reference", "fast"):
        torch.manual_seed(3)
        nets[impl] = build_model(
            "resnet18",
            num_classes=10,
            attention={"type": "cbam", "reduction": 4, "impl": impl},
            stem="cifar",
            width=0.25,
        ).double()
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
    base = randomize(CBAM(C, reduction=4, impl="reference", order=order)).train()
    x32 = torch.randn(3, C, 7, 9)
    weight = torch.randn_like(x32)

    def run(impl: str, amp: bool) -> list[Tensor]:
        module = CBAM(C, reduction=4, impl=impl, order=order).train()
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
    errors = {impl: max(max_diff(a, b) for a, b in zip(run(impl, True), exact, strict=True)) for impl in IMPLS}
    assert errors["fast"] <= 1.5 * errors["reference"] + 1e-3, errors


@pytest.mark.parametrize("descriptor", ["pool", "conv"])
def test_torch_compile_traces_the_straightforward_formulation_in_one_graph(descriptor: str) -> None:
    """torch.compile fuses the straightforward formulation itself: under it, CBAM must not enter the fused path or
    the per-op fast pieces (fullgraph=True fails on any graph break), must run the spatial conv on the direct C++
    kernel (the one op the compiler cannot fuse, and oneDNN's is slow for it: direct_conv.py), and must give the
    same values. A recording backend runs the captured graph as it is, in seconds."""
    module = randomize(CBAM(C, reduction=4, spatial=descriptor)).train()
    reference = CBAM(C, reduction=4, spatial=descriptor, impl="reference").train()
    reference.load_state_dict(module.state_dict())
    ops: list = []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        ops.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    x, residual = torch.randn(3, C, 7, 9, requires_grad=True), torch.randn(3, C, 7, 9)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: module.forward_add(a, b), backend=record, fullgraph=True)
    out = compiled(x, residual)
    names = [str(op) for op in ops]
    assert sum("ablation_cbam.spatial_conv" in name for name in names) == 1, names
    # The one conv2d left is the conv descriptor's 1 x 1 compression (C -> 1), an ordinary conv.
    assert sum("conv2d" in name for name in names) == (descriptor == "conv"), names
    want = reference(x) + residual
    assert max_diff(out, want) < TOL
    weight = torch.randn_like(want)
    got_grads = torch.autograd.grad(out, [x, *module.parameters()], weight)
    want_grads = torch.autograd.grad(want, [x, *reference.parameters()], weight)
    for got, expected in zip(got_grads, want_grads, strict=True):
        assert max_diff(got, expected) < TOL


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


def test_se_runs_fused_and_matches_its_reference() -> None:
    se = randomize(SE(C, reduction=4))
    reference = SE(C, reduction=4, impl="reference")
    reference.load_state_dict(se.state_dict())
    assert se.fused and not reference.fused
    x = torch.randn(3, C, 7, 9)
    assert max_diff(se(x), reference(x)) < TOL


def test_variants_outside_the_fused_function_keep_the_per_op_fast_path() -> None:
    assert not CBAM(C, order="parallel", parallel_combine="sum-logits").fused
    assert not CBAM(C, channel_pool=["avg", "lse"]).fused
    assert CBAM(C, channel_pool=["avg", "lse"]).channel.fast


def test_default_impl_is_fast() -> None:
    assert CBAMOptions().impl == "fast"
    module = build_attention({"type": "cbam"}, 64)
    assert module.impl == "fast" and module.channel.fast and module.spatial.fast
    reference = build_attention({"type": "cbam", "impl": "reference"}, 64)
    assert reference.impl == "reference" and not reference.channel.fast and not reference.spatial.fast
    assert set(module.state_dict()) == set(reference.state_dict())


def test_impl_is_validated() -> None:
    from pydantic import ValidationError

    from ablation.errors import ConfigError

    with pytest.raises(ValidationError):
        CBAMOptions.model_validate({"impl": "turbo"})
    with pytest.raises(ConfigError):
        CBAM(16, impl="turbo")


def test_switching_impl_keeps_config_hash() -> None:
    fast = parse_run_config({"model": {"attention": {"type": "cbam"}}})
    reference = parse_run_config({"model": {"attention": {"type": "cbam", "impl": "reference"}}})
    other = parse_run_config({"model": {"attention": {"type": "cbam", "kernel_size": 3}}})
    assert fast.model.attention.impl == "fast" and reference.model.attention.impl == "reference"
    assert config_hash(fast) == config_hash(reference) != config_hash(other)


def test_kernels_are_prepared_before_training_only_where_they_will_run(monkeypatch) -> None:
    """train_job calls prepare_for before its clock starts: a first build must not be timed as epoch 1."""
    from ablation.attention import cpu_kernels
    from ablation.models import build_model

    calls: list[int] = []
    monkeypatch.setattr(cpu_kernels, "cpu_kernels_available", lambda: calls.append(1) or True)
    cbam = build_model("resnet18", num_classes=10, attention={"type": "cbam"}, stem="cifar", width=0.25)
    plain = build_model("resnet18", num_classes=10, attention={"type": "none"}, stem="cifar", width=0.25)
    reference = build_model("resnet18", num_classes=10, attention={"type": "cbam", "impl": "reference"})
    cpu_kernels.prepare_for(plain, torch.device("cpu"))
    cpu_kernels.prepare_for(reference, torch.device("cpu"))
    cpu_kernels.prepare_for(cbam, torch.device("meta"))
    assert calls == []
    cpu_kernels.prepare_for(cbam, torch.device("cpu"))
    assert calls == [1]
