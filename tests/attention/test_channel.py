"""CBAM's channel gate (ablation/attention/channel.py): every pooling subset against the formulation, one
shared MLP with its ReLU, the sigmoid after the sum, and the hidden width check."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from ablation.attention import build_attention
from ablation.attention.cbam import CBAM
from ablation.attention.channel import ChannelGate
from ablation.core.errors import ConfigError
from tests.support.formulation import assert_matches, channel_logits, image, randomize, reference_cbam
from tests.support.variants import MODES, POOL_SUBSETS, POOLS, C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


@MODES
@pytest.mark.parametrize("mlp_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("pools", POOL_SUBSETS, ids="+".join)
def test_channel_pooling(pools: list[str], mlp_bias: bool, train: bool) -> None:
    m = randomize(CBAM(C, reduction=4, channel_pool=pools, mlp_bias=mlp_bias)).train(train)
    assert (m.channel.mlp[0].bias is None) == (not mlp_bias)
    x = image()
    assert_matches(m.channel.logits(x), channel_logits(m.channel, x, pools))
    assert_matches(m(x), reference_cbam(m, x, train=train, pools=pools))


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


@pytest.mark.parametrize("options", [{"type": "cbam", "reduction": 128}, {"type": "bam", "reduction": 128}])
def test_reduction_too_large(options: dict) -> None:
    with pytest.raises(ConfigError) as err:
        build_attention(options, 64)
    message = str(err.value)
    assert "\n" not in message
    assert "model.attention.reduction" in message and "128" in message and "allowed" in message


def test_every_pooling_of_the_schema_is_computed() -> None:
    """The schema declares the poolings (ChannelPool) and the gate checks against it: each must have its pool."""
    from ablation.attention.channel import POOLS as GATE_POOLS
    from ablation.attention.options import ChannelPool

    assert set(GATE_POOLS) == set(get_args(ChannelPool)) == set(POOLS)
