"""BAM (ablation/attention/bam.py) against its equations (BAM eq. 1-4): values, shapes and gradients."""

from __future__ import annotations

import pytest
import torch

from ablation.attention.bam import BAM
from tests.support.formulation import _gradcheck, _input_grad, assert_matches, image, randomize, reference_bam
from tests.support.variants import MODES, C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


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


def test_gradcheck_bam() -> None:
    _gradcheck(randomize(BAM(8, reduction=2, dilation=2)).train(), torch.randn(3, 8, 5, 4))


@MODES
def test_bam_input_gradient_matches_reference(train: bool) -> None:
    m = randomize(BAM(C, reduction=4, dilation=2)).train(train)
    x = image(batch=4)
    weight = torch.randn_like(x)
    expected = _input_grad(lambda f: reference_bam(m, f, train=train, dilation=2), x, weight)
    assert_matches(_input_grad(m, x, weight), expected)
