"""CBAM as one autograd Function that reads the feature map a few times and keeps only the input for backward.

For a map x (N, C, H, W), channel gate c (N, C) and spatial gate s (N, H*W), every arrangement it covers is

    out = x * c * s,   c = Mc(x)  (1 without a channel gate),
                       s = Ms(x * ce), ce = c for channel-first, 1 for parallel (product) and spatial-only
                       (s = 1 without a spatial gate),

with Ms's descriptor D = [sum_c x * a; max_c x * ce], a = ce / C (the channel mean) or, for the learned 1x1 conv
descriptor, a = ce * w (and no max). Spatial-first (the C++ op only) is s = Ms(x), c = Mc(x * s): the channel
pools read the gated map, so their gradients reach s and x scaled by s (csrc/cbam_cpu.cpp, pool_grad_positions
and input_grad). The big-map passes are six kernels:

    forward:  channel_stats (mean, max over positions)  spatial_stats (D)  gate_forward (out, + residual)
    backward: gate_backward (grads of c and s)  spatial_backward (grads of a and ce from D)  input_grad (grad x)

In a residual block, ``forward_add`` passes the block's shortcut as ``residual`` and gate_forward writes
x * c * s + residual directly (the gradient of the residual is the incoming gradient itself).

Everything between them is on (N, C) or (N, 2, H, W) tensors: the MLP, the k x k conv, the BN, the sigmoids.
Those small parts keep their own (small) intermediates and have their backward written out (ChannelPart,
SpatialPart), so the only map kept for backward is x itself: one map per block, where the reference path keeps
x, the channel-gated map and more.

Gradient of x, term by term (the reference path's autograd computes the same sum):
    g * c * s                         through the product
    + gdw * a                         through the descriptor's weighted channel sum
    + [x * ce == dmax] * ce * gdmax / ties      through its channel max (shared among ties, as amax)
    + gpa / HW + [x == pmax] * gpm / ties       through the channel gate's avg and max pools

Two implementations of that computation, as two modules that ``accelerate`` puts in place of a reference CBAM:
- ``CppOpCBAM``, on CPU where the kernels build: for contiguous float32/float64 maps the whole module, forward and
  backward, is one C++ op, ``torch.ops.ablation_cbam.cbam`` (csrc/cbam_cpu_function.cpp, map passes in
  csrc/cbam_cpu.cpp), with no Python between the passes (on CPU that Python-side work was a large part of what
  the fused Function still cost over plain ResNet: see ``benchmarks/README.md``).
- ``FunctionCBAM`` elsewhere (CUDA, or a CPU where the C++ cannot be built): ``FusedCBAM``, this module's
  autograd Function, the map passes in PyTorch ops (``TorchKernels``; on CUDA this still saves the memory of the
  intermediate maps) and the small parts below. ``CppOpCBAM`` runs it too for the calls the C++ op does not take
  (AMP's bfloat16/float16 maps, channels_last).
A compiled model keeps the straightforward formulation instead, which the compiler fuses.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ablation.attention.accel import direct_conv
from ablation.attention.accel.cpu_kernels import kernels_take
from ablation.attention.accel.fast import small_conv, uses_direct_conv
from ablation.attention.cbam import CBAM

# The orders as the C++ op numbers them (kChannelFirst ... in csrc/cbam_cpu_function.cpp), and its pools.
ORDER_CODES = {"channel-first": 0, "parallel": 1, "channel-only": 2, "spatial-only": 3, "spatial-first": 4}
POOL_CODES = {"avg": 0, "max": 1}
FUSED_ORDERS = ("channel-first", "parallel", "channel-only", "spatial-only")  # the C++ op and FusedCBAM
CPP_ONLY_ORDERS = ("spatial-first",)  # the C++ op only; elsewhere the per-op fast gates
FUSED_POOLS = {"avg", "max"}


def cpp_op_covers(module: CBAM) -> bool:
    """Whether ``module``'s variant is one the C++ op computes: every order but sum-logits, avg/max pools."""
    if module.order not in ORDER_CODES:
        return False
    if module.order == "parallel" and module.parallel_combine != "product":
        return False
    return module.channel is None or set(module.channel.pools) <= FUSED_POOLS


def function_covers(module: CBAM) -> bool:
    """Whether ``module``'s variant is one the FusedCBAM Function computes: the C++ op's, spatial-first aside."""
    return cpp_op_covers(module) and module.order in FUSED_ORDERS


class TorchKernels:
    """The six map passes in PyTorch ops: any device, dtype and memory format. Tie counts are computed where they
    are used (None from the stats), so the forward stays two reductions cheaper."""

    @staticmethod
    def conv(descriptor: Tensor, weight: Tensor, padding: int) -> Tensor:
        return small_conv(descriptor, weight, padding)

    @staticmethod
    def conv_backward(grad: Tensor, descriptor: Tensor, weight: Tensor, padding: int) -> tuple[Tensor, Tensor]:
        return conv_backward(grad, descriptor, weight, padding)

    @staticmethod
    def channel_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return x.mean((2, 3)), x.amax((2, 3)), None

    @staticmethod
    def spatial_stats(x: Tensor, a: Tensor, ce: Tensor, with_max: bool) -> tuple[Tensor, Tensor | None, None]:
        dw = torch.einsum("nchw,nc->nhw", x, a)
        dmax = (x * ce[:, :, None, None]).amax(1) if with_max else None
        return dw.flatten(1), None if dmax is None else dmax.flatten(1), None

    @staticmethod
    def gate_forward(x: Tensor, c: Tensor, s: Tensor, residual: Tensor | None) -> Tensor:
        out = x * c[:, :, None, None] * s.view(s.shape[0], 1, *x.shape[2:])
        return out if residual is None else out + residual

    @staticmethod
    def gate_backward(g: Tensor, x: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        gx = g * x
        s_map = s.view(s.shape[0], 1, *x.shape[2:])
        return (gx * s_map).sum((2, 3)), torch.einsum("nchw,nc->nhw", gx, c).flatten(1)

    @staticmethod
    def _max_mask(x: Tensor, ce: Tensor, dmax: Tensor) -> tuple[Tensor, Tensor]:
        mask = x * ce[:, :, None, None] == dmax.view(dmax.shape[0], 1, *x.shape[2:])
        return mask, mask.sum(1).flatten(1).to(x.dtype)

    @classmethod
    def spatial_backward(
        cls, x: Tensor, ce: Tensor, dmax: Tensor | None, dcnt: Tensor | None, gdw: Tensor, gdmax: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        ga = torch.einsum("nchw,nhw->nc", x, gdw.view(gdw.shape[0], *x.shape[2:]))
        if dmax is None or gdmax is None:
            return ga, None
        mask, ties = cls._max_mask(x, ce, dmax)
        share = (gdmax / ties).view(gdmax.shape[0], 1, *x.shape[2:])
        return ga, torch.where(mask, x * share, 0.0).sum((2, 3))

    @classmethod
    def input_grad(cls, g: Tensor, x: Tensor, terms: dict[str, Tensor | None]) -> Tensor:
        n, hw = x.shape[0], x.shape[2:]
        gx = g * terms["c"][:, :, None, None] * terms["s"].view(n, 1, *hw)
        if terms["gdw"] is not None:
            gx = gx + terms["gdw"].view(n, 1, *hw) * terms["a"][:, :, None, None]
        if terms["dmax"] is not None and terms["gdmax"] is not None:
            mask, ties = cls._max_mask(x, terms["ce"], terms["dmax"])
            share = terms["ce"][:, :, None, None] * (terms["gdmax"] / ties).view(n, 1, *hw)
            gx = gx + torch.where(mask, share, 0.0)
        if terms["gpa"] is not None:
            gx = gx + (terms["gpa"] / (hw[0] * hw[1]))[:, :, None, None]
        if terms["pmax"] is not None and terms["gpm"] is not None:
            mask = x == terms["pmax"][:, :, None, None]
            share = terms["gpm"] / mask.sum((2, 3)).to(x.dtype)
            gx = gx + torch.where(mask, share[:, :, None, None], 0.0)
        return gx


class FunctionCBAM(CBAM):
    """A CBAM (its gates, the same objects) computed by the FusedCBAM Function, for ``function_covers`` variants."""

    def forward(self, x: Tensor) -> Tensor:
        return self._fused(x, None)

    def forward_add(self, x: Tensor, residual: Tensor) -> Tensor:
        """``self(x) + residual`` (a new tensor), the residual block's addition, done in the gating pass instead
        of writing CBAM's output and reading it back: same values, one map pass less."""
        if residual.shape == x.shape and residual.dtype == x.dtype:
            return self._fused(x, residual)
        return self(x) + residual

    def _fused(self, x: Tensor, residual: Tensor | None) -> Tensor:
        return FusedCBAM.apply(self, x, residual, *module_params(self))


class CppOpCBAM(FunctionCBAM):
    """A CBAM computed by the C++ op, for ``cpp_op_covers`` variants on a CPU where the kernels are built.

    A call whose tensors the op does not take (``cpp_op_takes``) runs the FusedCBAM Function instead, or, for
    spatial-first, which that Function does not cover, the per-op fast gates (``accelerate`` gives this module
    those: ``fast.FastChannelGate``, ``fast.FastSpatialGate``)."""

    def _fused(self, x: Tensor, residual: Tensor | None) -> Tensor:
        params = module_params(self)
        if cpp_op_takes(x, params):
            return cpp_op(self, x, residual, params)
        if self.order in CPP_ONLY_ORDERS:
            out = CBAM.forward(self, x)
            return out if residual is None else out + residual
        return FusedCBAM.apply(self, x, residual, *params)


def cpp_op_takes(x: Tensor, params: list[Tensor | None]) -> bool:
    """Whether the whole-module C++ op takes this call's tensors: contiguous float32/float64 CPU maps with
    parameters of the same dtype. Otherwise (AMP's bfloat16/float16 maps, channels_last, float64 maps with float32
    parameters) the same math runs on PyTorch ops."""
    return kernels_take(x, *params) and x.is_contiguous()


def cpp_op(module: CBAM, x: Tensor, residual: Tensor | None, params: list[Tensor | None]) -> Tensor:
    """CBAM(x) (+ residual) on the C++ op, the kernels loaded."""
    w1, b1, w2, b2, compress_w, conv_w, bn_w, bn_b = params
    channel, spatial = module.channel, module.spatial
    bn = spatial.bn if spatial is not None else None
    return torch.ops.ablation_cbam.cbam(
        x,
        residual,
        w1,
        b1,
        w2,
        b2,
        compress_w,
        conv_w,
        bn is not None,
        bn_w,
        bn_b,
        None if bn is None else bn.running_mean,
        None if bn is None else bn.running_var,
        None if bn is None else bn.num_batches_tracked,
        [] if channel is None else [POOL_CODES[name] for name in channel.pools],
        ORDER_CODES[module.order],
        bn is not None and bn.training,
        None if bn is None else bn.momentum,
        1e-5 if bn is None else bn.eps,
    )


# ---------------------------------------------------------------------------------------------------------------
# The small parts: forward in PyTorch ops, backward written out (what autograd would compute, without building a
# graph twice per block: that Python-side cost was a visible part of the remaining overhead).


def conv_backward(grad: Tensor, inp: Tensor, weight: Tensor, padding: int) -> tuple[Tensor, Tensor]:
    """Gradients of small_conv(inp, weight, padding) w.r.t. inp and weight, on the kernel small_conv used."""
    if uses_direct_conv(inp, weight, padding):
        return direct_conv.spatial_conv_backward(grad, inp, weight)
    if inp.device.type == "cpu" and hasattr(torch._C._nn, "thnn_conv2d"):
        k = list(weight.shape[-2:])
        gi, gw, _ = torch.ops.aten._slow_conv2d_backward.output_mask(
            grad, inp, weight, k, [1, 1], [padding, padding], [True, True, False]
        )
        return gi, gw
    gi, gw, _ = torch.ops.aten.convolution_backward(
        grad, inp, weight, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], 1, [True, True, False]
    )
    return gi, gw


class ChannelPart:
    """c = sigmoid(sum_p MLP(pool_p)) on (N, C) pools: forward keeps what its backward needs (all small)."""

    def __init__(self, pools: tuple[str, ...], avg: Tensor, mx: Tensor, w1: Tensor, b1, w2: Tensor, b2) -> None:
        self.pools = pools
        self.pooled = torch.stack([avg if name == "avg" else mx for name in pools])  # (P, N, C)
        self.hidden = F.relu(F.linear(self.pooled, w1, b1))  # (P, N, C/r)
        # sum_p (W2 h_p + b2) = W2 (sum_p h_p) + P b2: one (N, C/r) x (C/r, C) product instead of P of them
        # (for C = 2048 that matmul is a visible part of the gate's cost). Same value up to rounding.
        self.hidden_sum = self.hidden.sum(0)
        logits = F.linear(self.hidden_sum, w2)
        if b2 is not None:
            logits = logits + len(pools) * b2
        self.c = torch.sigmoid(logits)  # (N, C)
        self.w1, self.w2, self.has_bias = w1, w2, (b1 is not None, b2 is not None)

    def backward(self, gc: Tensor) -> dict[str, Tensor | None]:
        """From dL/dc (N, C): the pools' and the MLP's gradients."""
        p, n, _ = self.pooled.shape
        g_out = gc * self.c * (1 - self.c)  # through the sigmoid; the same for every pool (they are summed)
        g_hidden = (g_out @ self.w2).unsqueeze(0) * (self.hidden > 0)  # (P, N, C/r), through the ReLU
        g_pooled = g_hidden @ self.w1  # (P, N, C)
        grads = {
            "w2": g_out.t() @ self.hidden_sum,
            "b2": g_out.sum(0) * p if self.has_bias[1] else None,
            "w1": g_hidden.reshape(p * n, -1).t() @ self.pooled.reshape(p * n, -1),
            "b1": g_hidden.reshape(p * n, -1).sum(0) if self.has_bias[0] else None,
        }
        for name, g in zip(self.pools, g_pooled, strict=True):
            grads[name] = g
        return grads


class SpatialPart:
    """s = sigmoid(BN(conv(descriptor))) on (N, k, H, W); the forward updates the BN's running statistics as
    the module would, and keeps the batch statistics its backward needs."""

    def __init__(self, module: CBAM, descriptor: Tensor, conv_w: Tensor, bn_w, bn_b) -> None:
        gate = module.spatial
        self.descriptor, self.conv_w, self.padding = descriptor, conv_w, gate.conv.padding[0]
        self.conv = TorchKernels.conv(descriptor, conv_w, self.padding)
        bn = gate.bn
        self.bn, self.bn_w = bn, bn_w
        if bn is None:
            logits = self.conv
        else:
            # nn.BatchNorm's rules: batch statistics in training or without running ones; the running ones
            # updated with the momentum, or the cumulative average when it is None.
            self.batch_stats = bn.training or bn.running_mean is None
            factor = bn.momentum or 0.0
            if bn.training and bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:
                    factor = 1.0 / float(bn.num_batches_tracked)
            logits, self.save_mean, self.save_invstd = torch.native_batch_norm(
                self.conv, bn_w, bn_b, bn.running_mean, bn.running_var, self.batch_stats, factor, bn.eps
            )
        self.s = torch.sigmoid(logits).flatten(1)  # (N, H*W)

    def backward(self, gs: Tensor) -> dict[str, Tensor | None]:
        """From dL/ds (N, H*W): the descriptor's, the conv's and the BN's gradients."""
        g_logits = (gs * self.s * (1 - self.s)).view_as(self.conv)
        grads: dict[str, Tensor | None] = {"bn_w": None, "bn_b": None}
        if self.bn is None:
            g_conv = g_logits
        else:
            bn = self.bn
            g_conv, grads["bn_w"], grads["bn_b"] = torch.ops.aten.native_batch_norm_backward(
                g_logits,
                self.conv,
                self.bn_w,
                bn.running_mean,
                bn.running_var,
                self.save_mean,
                self.save_invstd,
                self.batch_stats,
                bn.eps,
                [True, self.bn_w is not None, self.bn_w is not None],  # affine=False: no BN parameters
            )
        grads["descriptor"], grads["conv_w"] = TorchKernels.conv_backward(
            g_conv, self.descriptor, self.conv_w, self.padding
        )
        return grads


def module_params(module: CBAM) -> list[Tensor | None]:
    """The parameters FusedCBAM needs, in its fixed order (None where the variant has none)."""
    ch, sp = module.channel, module.spatial
    mlp = [ch.mlp[0].weight, ch.mlp[0].bias, ch.mlp[2].weight, ch.mlp[2].bias] if ch is not None else [None] * 4
    if sp is None:
        return [*mlp, None, None, None, None]
    compress = sp.compress.weight if sp.compress is not None else None
    bn = [sp.bn.weight, sp.bn.bias] if sp.bn is not None else [None, None]
    return [*mlp, compress, sp.conv.weight, *bn]


class FusedCBAM(torch.autograd.Function):
    """out = CBAM(x) for the variants of ``function_covers``; see the module docstring for the math.

    Mixed precision: the map passes run in the map's dtype (bfloat16 / float16 under AMP), the small parts in the
    parameters' dtype (float32) with autocast off, the way autocast runs reductions and BN in float32; each
    tensor crossing between the two is cast once. In float32 training every cast is a no-op."""

    @staticmethod
    def forward(ctx: Any, module: CBAM, x: Tensor, residual: Tensor | None, *params: Tensor | None) -> Tensor:
        """CBAM(x), or CBAM(x) + residual: a residual block's addition folded into the gating pass."""
        with torch.autocast(x.device.type, enabled=False):
            return _forward(ctx, module, x, residual, params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        (channel, spatial), small = ctx.parts, ctx.small
        kd, pd = x.dtype, ctx.param_dtype  # map passes / small parts
        gc, gs = TorchKernels.gate_backward(g, x, small["c"], small["s"])
        gc = gc.to(pd)
        spatial_grads: dict[str, Tensor | None] = {}
        g_compress = gdw = gdmax = None
        if spatial is not None:
            spatial_grads = spatial.backward(gs.to(pd))
            gdesc = spatial_grads["descriptor"].flatten(2).to(kd)  # (N, k, H*W)
            gdw = gdesc[:, 0]
            gdmax = gdesc[:, 1] if small["dmax"] is not None else None
            compress_w = ctx.compress_w
            # Only channel-first's ce is a gate with a gradient; the others need this pass only for the 1x1
            # conv descriptor's weight.
            if ctx.sequential or compress_w is not None:
                ga, gm = TorchKernels.spatial_backward(x, small["ce"], small["dmax"], small["dcnt"], gdw, gdmax)
                ga = ga.to(pd)
                # a = ce / C, or ce * w for the conv descriptor; dmax depends on ce too (through x * ce).
                channels = x.shape[1]
                if compress_w is not None:
                    g_compress = (ga * small["ce_p"]).sum(0).view_as(compress_w)
                    g_ce = ga * compress_w.view(1, channels)
                else:
                    g_ce = ga / channels
                if gm is not None:
                    g_ce = g_ce + gm.to(pd)
                if ctx.sequential:
                    gc = gc + g_ce
        channel_grads: dict[str, Tensor | None] = channel.backward(gc) if channel is not None else {}

        gx = None
        if ctx.needs_input_grad[1]:
            gpa, gpm = channel_grads.get("avg"), channel_grads.get("max")
            terms = {
                **small,
                "a": small["a"] if small["a"] is not None else torch.zeros_like(small["c"]),
                "gdw": gdw,
                "gdmax": gdmax,
                "gpa": None if gpa is None else gpa.to(kd),
                "gpm": None if gpm is None else gpm.to(kd),
            }
            if terms["gpm"] is None:
                terms["pmax"] = None
            gx = TorchKernels.input_grad(g, x, terms)
        ctx.parts = ctx.small = None  # free the small tensors now, not when the graph goes
        param_grads = [channel_grads.get(k) for k in ("w1", "b1", "w2", "b2")]
        param_grads += [g_compress, spatial_grads.get("conv_w"), spatial_grads.get("bn_w"), spatial_grads.get("bn_b")]
        g_residual = g if ctx.needs_input_grad[2] else None  # d(out)/d(residual) is the identity
        return (None, gx, g_residual, *param_grads)


def _forward(ctx: Any, module: CBAM, x: Tensor, residual: Tensor | None, params: tuple[Tensor | None, ...]) -> Tensor:
    w1, b1, w2, b2, compress_w, conv_w, bn_w, bn_b = params
    kd = x.dtype
    pd = next(p.dtype for p in params if p is not None)
    n, channels, h, w = x.shape
    ones_c = torch.ones(n, channels, dtype=pd, device=x.device)
    channel = spatial = None
    pmax = pcnt = dmax = dcnt = a = None
    if module.channel is not None:
        avg, pmax, pcnt = TorchKernels.channel_stats(x)
        channel = ChannelPart(module.channel.pools, avg.to(pd), pmax.to(pd), w1, b1, w2, b2)
    c = channel.c if channel is not None else ones_c
    ce = c if module.order == "channel-first" else ones_c
    c_k, ce_k = c.to(kd), ce.to(kd)
    s_k = x.new_ones(n, h * w)
    if module.spatial is not None:
        # D = [sum_c x * a; max_c x * ce] with a = ce / C (the channel mean), or the learned 1x1 conv's
        # sum_c w_c * x * ce (a = ce * w, no max).
        a = (ce * compress_w.view(1, channels) if compress_w is not None else ce / channels).to(kd)
        dw, dmax, dcnt = TorchKernels.spatial_stats(x, a, ce_k, compress_w is None)
        parts = [dw] if dmax is None else [dw, dmax]
        descriptor = torch.stack(parts, 1).view(n, len(parts), h, w).to(pd)
        spatial = SpatialPart(module, descriptor, conv_w, bn_w, bn_b)
        s_k = spatial.s.to(kd)
    out = TorchKernels.gate_forward(x, c_k, s_k, residual)
    ctx.parts, ctx.param_dtype = (channel, spatial), pd
    ctx.sequential, ctx.compress_w = module.order == "channel-first", compress_w
    ctx.small = {
        "c": c_k,
        "s": s_k,
        "a": a,
        "ce": ce_k,
        "ce_p": ce,
        "pmax": pmax,
        "pcnt": pcnt,
        "dmax": dmax,
        "dcnt": dcnt,
    }
    ctx.save_for_backward(x)
    return out
