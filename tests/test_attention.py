"""The attention modules against an independent formulation of the papers' equations (shared/SPEC.md).

The reference below is written from the equations with different ops than the modules use (einsum for the
Linear layers, unfold + einsum for the convs, hand-written pools, batch norm and sigmoid), reading only the
modules' weight tensors. Every parameter and BN running statistic is randomised first: with the official init
the spatial BN weight is 0, which would hide the whole spatial branch (the gate is then the constant 0.5).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from ablation.attention import build_attention, placement
from ablation.attention.bam import BAM
from ablation.attention.cbam import CBAM
from ablation.attention.channel import ChannelGate
from ablation.attention.options import CBAMOptions
from ablation.attention.se import SE
from ablation.attention.spatial import SpatialGate
from ablation.errors import ConfigError
from tests.conftest import randomize
from tests.variants import ARRANGEMENTS, MODES, POOL_SUBSETS, POOLS, TOL, C

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def image(batch: int = 3, channels: int = C, height: int = 7, width: int = 9) -> Tensor:
    return torch.randn(batch, channels, height, width)  # H != W catches a transposed pool or conv


def assert_matches(actual: Tensor, expected: Tensor) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() < TOL


# ---- the independent formulation ----------------------------------------------------------------------------


def sigmoid(z: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-z))


def relu(z: Tensor) -> Tensor:
    return z.clamp_min(0.0)


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    out = torch.einsum("ni,oi->no", x, layer.weight)
    return out if layer.bias is None else out + layer.bias


def conv(x: Tensor, layer: nn.Conv2d, dilation: int = 1) -> Tensor:
    """A 'same' convolution as a matrix product of the unfolded patches with the flattened kernel."""
    k = layer.weight.shape[-1]
    patches = F.unfold(x, k, dilation=dilation, padding=dilation * (k // 2))  # (B, Cin*k*k, H*W)
    out = torch.einsum("bpn,op->bon", patches, layer.weight.flatten(1))
    out = out.reshape(x.shape[0], -1, *x.shape[2:])
    return out if layer.bias is None else out + layer.bias[:, None, None]


def batch_norm(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, train: bool) -> Tensor:
    """(x - mean) / sqrt(var + eps) * w + b per channel: batch statistics (biased var) in train mode."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    if train:
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    else:
        mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def global_pool(x: Tensor, name: str) -> Tensor:
    flat = x.reshape(*x.shape[:2], -1)
    if name == "avg":
        return flat.sum(dim=-1) / flat.shape[-1]
    if name == "max":
        return flat.max(dim=-1).values
    if name == "lp":  # F.lp_pool2d(p=2) over the whole map: sqrt of the SUM of squares
        return torch.einsum("bcn,bcn->bc", flat, flat).sqrt()
    # official logsumexp_2d: s + log(sum(exp(x - s))), s = max
    s = flat.max(dim=-1, keepdim=True).values
    return (s + (flat - s).exp().sum(dim=-1, keepdim=True).log()).squeeze(-1)


def channel_logits(gate: ChannelGate, x: Tensor, pools: list[str]) -> Tensor:
    """sum_p W1 ReLU(W0 pool_p(x)): one shared MLP, logits summed before any sigmoid (CBAM eq. 2)."""
    w0, w1 = gate.mlp[0], gate.mlp[2]
    return sum(linear(relu(linear(global_pool(x, p), w0)), w1) for p in pools)[:, :, None, None]


def spatial_logits(gate: SpatialGate, x: Tensor, descriptor: str, bn: bool, train: bool) -> Tensor:
    """BN(conv_kxk([AvgPool_c; MaxPool_c])) or with a 1x1 conv C -> 1 as the descriptor (CBAM eq. 3)."""
    if descriptor == "pool":
        d = torch.stack((x.sum(dim=1) / x.shape[1], x.max(dim=1).values), dim=1)
    else:
        d = torch.einsum("bchw,c->bhw", x, gate.compress.weight.flatten())[:, None]
    out = conv(d, gate.conv)
    return batch_norm(out, gate.bn, train) if bn else out


def reference_cbam(
    m: CBAM,
    x: Tensor,
    *,
    train: bool,
    order: str = "channel-first",
    combine: str = "product",
    pools: list[str] = ("avg", "max"),
    descriptor: str = "pool",
    bn: bool = True,
) -> Tensor:
    def mc(f: Tensor) -> Tensor:
        return sigmoid(channel_logits(m.channel, f, pools))

    def ms(f: Tensor) -> Tensor:
        return sigmoid(spatial_logits(m.spatial, f, descriptor, bn, train))

    if order == "channel-first":
        f = mc(x) * x
        return ms(f) * f
    if order == "spatial-first":
        f = ms(x) * x
        return mc(f) * f
    if order == "parallel" and combine == "product":
        return x * mc(x) * ms(x)
    if order == "parallel":
        z = channel_logits(m.channel, x, pools) + spatial_logits(m.spatial, x, descriptor, bn, train)
        return x * sigmoid(z)
    return x * (mc(x) if order == "channel-only" else ms(x))


def reference_bam(m: BAM, x: Tensor, *, train: bool, dilation: int) -> Tensor:
    """F * (1 + sigmoid(BN(MLP(AvgPool F)) + BN(conv1x1(conv3x3_d(conv3x3_d(conv1x1 F)))))), BAM eq. 1-4."""
    ch, sp = m.channel, m.spatial
    a = global_pool(x, "avg")
    mc = batch_norm(linear(relu(batch_norm(linear(a, ch[0]), ch[1], train)), ch[3]), ch[4], train)
    s = relu(batch_norm(conv(x, sp[0]), sp[1], train))
    s = relu(batch_norm(conv(s, sp[3], dilation), sp[4], train))
    s = relu(batch_norm(conv(s, sp[6], dilation), sp[7], train))
    ms = batch_norm(conv(s, sp[9]), sp[10], train)
    return x * (1 + sigmoid(mc[:, :, None, None] + ms))


# ---- 1. every variant against the reference -----------------------------------------------------------------


@MODES
@pytest.mark.parametrize("mlp_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("pools", POOL_SUBSETS, ids="+".join)
def test_channel_pooling(pools: list[str], mlp_bias: bool, train: bool) -> None:
    m = randomize(CBAM(C, reduction=4, channel_pool=pools, mlp_bias=mlp_bias)).train(train)
    assert (m.channel.mlp[0].bias is None) == (not mlp_bias)
    x = image()
    assert_matches(m.channel.logits(x), channel_logits(m.channel, x, pools))
    assert_matches(m(x), reference_cbam(m, x, train=train, pools=pools))


@MODES
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
@pytest.mark.parametrize("descriptor", ["pool", "conv"])
def test_spatial_gate(descriptor: str, kernel_size: int, bn: bool, train: bool) -> None:
    m = CBAM(C, reduction=4, spatial=descriptor, kernel_size=kernel_size, spatial_bn=bn)
    randomize(m).train(train)
    assert m.spatial.conv.weight.shape == (1, 2 if descriptor == "pool" else 1, kernel_size, kernel_size)
    assert m.spatial.conv.bias is None
    assert (m.spatial.bn is None) == (not bn)
    x = image()
    assert_matches(m.spatial.logits(x), spatial_logits(m.spatial, x, descriptor, bn, train))
    assert_matches(m(x), reference_cbam(m, x, train=train, descriptor=descriptor, bn=bn))


@MODES
@pytest.mark.parametrize("descriptor", ["pool", "conv"])
@pytest.mark.parametrize(("order", "combine"), ARRANGEMENTS)
def test_arrangement(order: str, combine: str, descriptor: str, train: bool) -> None:
    m = randomize(CBAM(C, reduction=4, order=order, parallel_combine=combine, spatial=descriptor)).train(train)
    assert (m.channel is None) == (order == "spatial-only")
    assert (m.spatial is None) == (order == "channel-only")
    x = image()
    expected = reference_cbam(m, x, train=train, order=order, combine=combine, descriptor=descriptor)
    assert_matches(m(x), expected)


def test_parallel_combines_differ() -> None:
    """The two parallel merges are different functions (the option is not silently ignored)."""
    product = randomize(CBAM(C, reduction=4, order="parallel"))
    summed = CBAM(C, reduction=4, order="parallel", parallel_combine="sum-logits")
    summed.load_state_dict(product.state_dict(), strict=True)
    x = image()
    assert (product(x) - summed(x)).abs().max() > 1e-2


@pytest.mark.parametrize("reduction", [1, 4, 32])
@pytest.mark.parametrize("mlp_bias", [True, False], ids=["bias", "nobias"])
def test_se(mlp_bias: bool, reduction: int) -> None:
    m = randomize(SE(C, reduction=reduction, mlp_bias=mlp_bias))
    assert m.channel.mlp[0].weight.shape == (C // reduction, C)
    x = image()
    w0, w1 = m.channel.mlp[0], m.channel.mlp[2]
    expected = x * sigmoid(linear(relu(linear(x.mean(dim=(2, 3)), w0)), w1))[:, :, None, None]
    assert_matches(m(x), expected)


@MODES
@pytest.mark.parametrize("reduction", [4, 8])
@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_bam(dilation: int, reduction: int, train: bool) -> None:
    m = randomize(BAM(C, reduction=reduction, dilation=dilation)).train(train)
    hidden = C // reduction
    assert m.channel[0].weight.shape == (hidden, C)
    assert m.spatial[0].weight.shape == (hidden, C, 1, 1)
    assert m.spatial[3].weight.shape == m.spatial[6].weight.shape == (hidden, hidden, 3, 3)
    assert m.spatial[3].dilation == m.spatial[6].dilation == (dilation, dilation)
    assert m.spatial[9].weight.shape == (1, hidden, 1, 1)
    x = image(batch=4, height=9, width=8)
    assert_matches(m(x), reference_bam(m, x, train=train, dilation=dilation))


# ---- 2. SE is CBAM's avg-only channel arm, key for key ------------------------------------------------------


@pytest.mark.parametrize("mlp_bias", [True, False], ids=["bias", "nobias"])
def test_se_is_cbam_channel_only_avg(mlp_bias: bool) -> None:
    se = randomize(SE(C, reduction=4, mlp_bias=mlp_bias))
    cbam = CBAM(C, reduction=4, channel_pool=["avg"], order="channel-only", mlp_bias=mlp_bias)
    assert set(se.state_dict()) == set(cbam.state_dict())
    cbam.load_state_dict(se.state_dict(), strict=True)
    x = image()
    assert torch.equal(se(x), cbam(x))


def test_state_dict_and_parameter_count() -> None:
    """The official layout: Linear MLP with bias, k x k conv without bias, BN(1): 2*C*C/r + C/r + C + 2*49 + 2."""
    m = CBAM(256)
    assert set(m.state_dict()) == {
        "channel.mlp.0.weight",
        "channel.mlp.0.bias",
        "channel.mlp.2.weight",
        "channel.mlp.2.bias",
        "spatial.conv.weight",
        "spatial.bn.weight",
        "spatial.bn.bias",
        "spatial.bn.running_mean",
        "spatial.bn.running_var",
        "spatial.bn.num_batches_tracked",
    }
    assert sum(p.numel() for p in m.parameters()) == 2 * 256 * 16 + 16 + 256 + 2 * 49 + 2
    assert m.spatial.bn.momentum == 0.01


# ---- 3. gate ranges, the ReLU, the initial spatial gate -----------------------------------------------------


def test_channel_gate_sigmoid_after_sum() -> None:
    gate = ChannelGate(C, pools=("avg", "max"), reduction=4)
    with torch.no_grad():
        gate.mlp[0].weight.zero_()
        gate.mlp[2].weight.zero_()
        gate.mlp[2].bias.fill_(2.0)
    # Each pool's MLP gives 2: sigmoid(2 + 2) = 0.982; a sigmoid per pool would give 2 * sigmoid(2) = 1.76.
    mc = gate(image())
    assert mc.shape == (3, C, 1, 1)
    torch.testing.assert_close(mc, torch.full_like(mc, 1 / (1 + torch.exp(torch.tensor(-4.0)).item())))
    with torch.no_grad():
        gate.mlp[2].bias.fill_(1e4)
    mc = gate(image())
    assert (mc <= 1).all() and (mc == 1).all()
    with torch.no_grad():
        gate.mlp[2].bias.fill_(-1e4)
    assert (gate(image()) >= 0).all()


def test_channel_gate_random_weights_in_unit_interval() -> None:
    gate = randomize(ChannelGate(C, pools=("avg", "max"), reduction=4))
    mc = gate(image())
    assert ((mc > 0) & (mc < 1)).all()


def test_channel_mlp_has_relu() -> None:
    """Every hidden unit negative: with the ReLU the logits are b1 = 0 and the gate exactly 0.5."""
    gate = ChannelGate(C, pools=("avg", "max"), reduction=4)
    with torch.no_grad():
        gate.mlp[0].weight.fill_(-1.0)
        gate.mlp[2].weight.fill_(1.0)
    x = torch.rand(2, C, 5, 5) + 1.0  # positive pools -> W0 p < 0 for every hidden unit
    assert torch.equal(gate(x), torch.full((2, C, 1, 1), 0.5))


@MODES
def test_fresh_spatial_gate_is_one_half(train: bool) -> None:
    """Official init: the spatial BN weight is 0, so Ms starts as the constant 0.5 in both modes."""
    x = image()
    gate = SpatialGate(C).train(train)
    assert torch.equal(gate(x), torch.full((3, 1, 7, 9), 0.5))
    assert torch.equal(CBAM(C, order="spatial-only").train(train)(x), 0.5 * x)
    for other in (SpatialGate(C, bn_zero_init=False), SpatialGate(C, batch_norm=False)):
        ms = other.train(train)(x)
        assert ((ms > 0) & (ms < 1)).all()
        assert (ms - 0.5).abs().max() > 1e-2


def test_fresh_init_follows_official_code() -> None:
    """Linear biases 0 (weights PyTorch's default); convs kaiming-normal fan_out; BAM's BN weight 1."""
    cbam = CBAM(2048, spatial="conv")
    for layer in (cbam.channel.mlp[0], cbam.channel.mlp[2]):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        assert layer.weight.abs().max() <= layer.in_features**-0.5  # PyTorch's default: U(-1/sqrt(in), +)
    # fan_out of the 1x1 conv C -> 1 is 1: std sqrt(2) (fan_in would give sqrt(2 / 2048) = 0.03)
    assert abs(cbam.spatial.compress.weight.std().item() - 2**0.5) < 0.1
    bam = BAM(1024)
    assert abs(bam.spatial[0].weight.std().item() - (2 / 64) ** 0.5) < 0.01
    assert torch.equal(bam.spatial[10].weight, torch.ones(1))
    assert torch.equal(bam.channel[3].bias, torch.zeros(1024))


def test_spatial_bn_momentum() -> None:
    """BatchNorm2d(1, momentum=0.01): running stats move 1% toward the batch's (unbiased) statistics."""
    gate = randomize(SpatialGate(C)).train()
    x = image()
    old_mean, old_var = gate.bn.running_mean.clone(), gate.bn.running_var.clone()
    with torch.no_grad():
        out = gate.conv(torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1))
        gate(x)
    torch.testing.assert_close(gate.bn.running_mean, 0.99 * old_mean + 0.01 * out.mean())
    torch.testing.assert_close(gate.bn.running_var, 0.99 * old_var + 0.01 * out.var(unbiased=True))


# ---- 4. gradients -------------------------------------------------------------------------------------------


def _gradcheck(module: nn.Module, x: Tensor) -> None:
    """gradcheck in float64 w.r.t. the input and every parameter."""
    module = module.double()
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def run(x: Tensor, *ps: Tensor) -> Tensor:
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x.double().requires_grad_(), *params))


@pytest.mark.parametrize(
    "options",
    [
        {"channel_pool": list(POOLS), "kernel_size": 3},
        {"channel_pool": ["max", "lse"], "order": "parallel", "parallel_combine": "sum-logits", "spatial": "conv"},
        {"channel_pool": ["avg", "lp"], "order": "spatial-first", "kernel_size": 5},
    ],
    ids=["channel-first", "parallel-sum", "spatial-first"],
)
def test_gradcheck_cbam(options: dict) -> None:
    """Train mode: the BN's batch statistics make the harder backward (eval mode is checked just below)."""
    _gradcheck(randomize(CBAM(8, reduction=2, **options)).train(), torch.randn(2, 8, 4, 3))


def test_gradcheck_bam() -> None:
    _gradcheck(randomize(BAM(8, reduction=2, dilation=2)).train(), torch.randn(3, 8, 5, 4))


def _input_grad(fn, x: Tensor, weight: Tensor) -> Tensor:
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad((fn(x) * weight).sum(), x)
    return grad


@MODES
@pytest.mark.parametrize(("order", "combine"), ARRANGEMENTS)
def test_input_gradient_matches_reference(order: str, combine: str, train: bool) -> None:
    pools = list(POOLS)
    m = randomize(CBAM(C, reduction=4, channel_pool=pools, order=order, parallel_combine=combine)).train(train)
    x = image()
    weight = torch.randn_like(x)
    expected = _input_grad(
        lambda f: reference_cbam(m, f, train=train, order=order, combine=combine, pools=pools), x, weight
    )
    assert_matches(_input_grad(m, x, weight), expected)


@MODES
def test_bam_input_gradient_matches_reference(train: bool) -> None:
    m = randomize(BAM(C, reduction=4, dilation=2)).train(train)
    x = image(batch=4)
    weight = torch.randn_like(x)
    expected = _input_grad(lambda f: reference_bam(m, f, train=train, dilation=2), x, weight)
    assert_matches(_input_grad(m, x, weight), expected)


# ---- 5. the registry and the error messages -----------------------------------------------------------------


def test_build_attention() -> None:
    m = build_attention({"type": "cbam", "kernel_size": 3}, 64)
    assert isinstance(m, CBAM)
    assert m.spatial.conv.kernel_size == (3, 3) and m.spatial.conv.padding == (1, 1)
    assert isinstance(build_attention({"type": "se"}, 64), SE)
    assert isinstance(build_attention({"type": "bam"}, 64), BAM)
    assert isinstance(build_attention({"type": "none"}, 64), nn.Identity)
    x = torch.randn(2, 64, 6, 6)
    for kind in ("none", "se", "cbam", "bam"):
        assert build_attention({"type": kind}, 64)(x).shape == x.shape


def test_placement() -> None:
    assert placement({"type": "se"}) == "block"
    assert placement({"type": "cbam"}) == "block"
    assert placement({"type": "bam"}) == "stage"
    assert placement({"type": "none"}) is None


@pytest.mark.parametrize("options", [{"type": "cbam", "reduction": 128}, {"type": "bam", "reduction": 128}])
def test_reduction_too_large(options: dict) -> None:
    with pytest.raises(ConfigError) as err:
        build_attention(options, 64)
    message = str(err.value)
    assert "\n" not in message
    assert "model.attention.reduction" in message and "128" in message and "allowed" in message


@pytest.mark.parametrize(("field", "value"), [("kernel_size", 4), ("channel_pool", ["median"]), ("order", "sideways")])
def test_schema_rejects(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        CBAMOptions.model_validate({field: value})
    message = str(err.value)
    assert field in message
    assert str(value[0] if isinstance(value, list) else value) in message


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("order", {"order": "sideways"}),
        ("channel_pool", {"channel_pool": ["median"]}),
        ("channel_pool", {"channel_pool": []}),
        ("channel_pool", {"channel_pool": ["avg", "avg"]}),
        ("channel_pool", {"channel_pool": ["lse", "median"], "order": "spatial-only"}),  # even where unused
        ("kernel_size", {"kernel_size": 4}),
        ("kernel_size", {"kernel_size": 0}),
        ("spatial", {"spatial": "fc"}),
        ("parallel_combine", {"parallel_combine": "mean"}),
    ],
)
def test_direct_construction_rejects(key: str, options: dict) -> None:
    """Values that bypass the schema still fail at construction, with one line naming key and value."""
    with pytest.raises(ConfigError) as err:
        CBAM(64, **options)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.attention.{key}: ")
    assert repr(options[key]) in message and "allowed" in message
