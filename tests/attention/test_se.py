"""SE (ablation/attention/se.py) against its equation, and as CBAM's avg-only channel arm, key for key."""

from __future__ import annotations

import pytest
import torch

from ablation.attention.cbam import CBAM
from ablation.attention.se import SE
from tests.support.formulation import assert_matches, image, linear, randomize, relu, sigmoid
from tests.support.variants import C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


@pytest.mark.parametrize("reduction", [1, 4, 32])
@pytest.mark.parametrize("mlp_bias", [True, False], ids=["bias", "nobias"])
def test_se(mlp_bias: bool, reduction: int) -> None:
    m = randomize(SE(C, reduction=reduction, mlp_bias=mlp_bias))
    assert m.channel.mlp[0].weight.shape == (C // reduction, C)
    x = image()
    w0, w1 = m.channel.mlp[0], m.channel.mlp[2]
    expected = x * sigmoid(linear(relu(linear(x.mean(dim=(2, 3)), w0)), w1))[:, :, None, None]
    assert_matches(m(x), expected)


@pytest.mark.parametrize("mlp_bias", [True, False], ids=["bias", "nobias"])
def test_se_is_cbam_channel_only_avg(mlp_bias: bool) -> None:
    se = randomize(SE(C, reduction=4, mlp_bias=mlp_bias))
    cbam = CBAM(C, reduction=4, channel_pool=["avg"], order="channel-only", mlp_bias=mlp_bias)
    assert set(se.state_dict()) == set(cbam.state_dict())
    cbam.load_state_dict(se.state_dict(), strict=True)
    x = image()
    assert torch.equal(se(x), cbam(x))
