"""An independent formulation of the attention papers' equations (shared/SPEC.md), for the module tests of
tests/attention/.

It is written from the equations with different ops than the modules use (einsum for the Linear layers, unfold +
einsum for the convs, hand-written pools, batch norm and sigmoid), reading only the modules' weight tensors. The
tests randomise every parameter and BN running statistic first: with the official init the spatial BN weight is 0,
which would hide the whole spatial branch (the gate is then the constant 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablation.attention.bam import BAM
from ablation.attention.cbam import CBAM
from ablation.attention.channel import ChannelGate
from ablation.attention.spatial import SpatialGate
from tests.support.variants import TOL, C


def image(batch: int = 3, channels: int = C, height: int = 7, width: int = 9) -> Tensor:
    return torch.randn(batch, channels, height, width)  # H != W catches a transposed pool or conv


def assert_matches(actual: Tensor, expected: Tensor) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() < TOL


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


def _gradcheck(module: nn.Module, x: Tensor) -> None:
    """gradcheck in float64 w.r.t. the input and every parameter."""
    module = module.double()
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def run(x: Tensor, *ps: Tensor) -> Tensor:
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x.double().requires_grad_(), *params))


def _input_grad(fn, x: Tensor, weight: Tensor) -> Tensor:
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad((fn(x) * weight).sum(), x)
    return grad


def randomize(module):
    """Random weights (std 1/sqrt(fan_in), so the gates stay off saturation), biases, BN affine and stats: with
    the official init the spatial BN weight is 0 and the spatial branch would be invisible to a comparison."""
    import torch
    from torch import nn

    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.5)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module
