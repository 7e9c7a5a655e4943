"""CBAM's spatial gate (ablation/attention/spatial.py): both descriptors, every kernel size, with and without
its BatchNorm, the official zero-initialised BN and its momentum."""

from __future__ import annotations

import pytest
import torch

from ablation.attention.cbam import CBAM
from ablation.attention.spatial import SpatialGate
from tests.support.formulation import assert_matches, image, randomize, reference_cbam, spatial_logits
from tests.support.variants import MODES, C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


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
