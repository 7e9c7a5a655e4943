"""The per-op fast gates and the direct conv module (ablation/attention/accel/fast.py): the variants outside the
fused Function keep them, and a model accelerated for compiling traces in one graph with the spatial conv on
the direct kernel."""

from __future__ import annotations

import pytest
import torch

from ablation.attention.accel import accelerate
from ablation.attention.accel.fast import DirectConv2d, FastChannelGate, FastSpatialGate
from ablation.attention.cbam import CBAM
from ablation.attention.channel import ChannelGate
from ablation.attention.spatial import SpatialGate
from tests.attention.accel.conftest import CPU, max_diff
from tests.support.formulation import randomize
from tests.support.variants import TOL, C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


def test_variants_outside_the_fused_function_keep_the_per_op_fast_path() -> None:
    for options in ({"order": "parallel", "parallel_combine": "sum-logits"}, {"channel_pool": ["avg", "lse"]}):
        module = accelerate(CBAM(C, **options), CPU)
        assert type(module) is CBAM, options
        assert isinstance(module.channel, FastChannelGate) and isinstance(module.spatial, FastSpatialGate)


@pytest.mark.parametrize("descriptor", ["pool", "conv"])
def test_torch_compile_traces_the_straightforward_formulation_in_one_graph(descriptor: str) -> None:
    """torch.compile fuses the straightforward formulation itself: a model accelerated for compiling must not enter
    the fused path or the per-op fast pieces (fullgraph=True fails on any graph break), must run the spatial conv
    on the direct C++ kernel (the one op the compiler cannot fuse, and oneDNN's is slow for it: direct_conv.py),
    and must give the same values. A recording backend runs the captured graph as it is, in seconds."""
    module = accelerate(randomize(CBAM(C, reduction=4, spatial=descriptor)).train(), CPU, compiled=True)
    assert type(module) is CBAM and type(module.channel) is ChannelGate and type(module.spatial) is SpatialGate
    assert isinstance(module.spatial.conv, DirectConv2d)
    reference = CBAM(C, reduction=4, spatial=descriptor).train()
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
