"""ECA (Wang et al., CVPR 2020; ablation/attention/eca.py) against the band-matrix form of its 1-D conv, its
adaptive kernel size, its options and labels."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from ablation.attention.eca import ECA
from ablation.attention.options import ECAOptions
from ablation.core.errors import ConfigError
from ablation.models.measure import count_params
from tests.support.formulation import image, randomize, sigmoid
from tests.support.variants import C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


def reference_eca(m: ECA, x: Tensor) -> Tensor:
    """out = F * sigmoid(W y), y the per-channel mean and W the C x C band matrix of the 1-D conv with zero
    padding: W[i, j] = w[j - i + k // 2] where |j - i| <= k // 2, written out entry by entry."""
    channels, k = x.shape[1], m.conv.weight.shape[-1]
    w = m.conv.weight.reshape(k)
    band = torch.zeros(channels, channels, dtype=x.dtype)
    for i in range(channels):
        for j in range(channels):
            if abs(j - i) <= k // 2:
                band[i, j] = w[j - i + k // 2]
    y = torch.einsum("bchw->bc", x) / (x.shape[2] * x.shape[3])
    return x * sigmoid(torch.einsum("ij,bj->bi", band, y))[:, :, None, None]


@pytest.mark.parametrize("kernel_size", [None, 1, 3, 5, 9])
def test_eca_matches_band_matrix(kernel_size: int | None) -> None:
    m = randomize(ECA(C, kernel_size=kernel_size)).double()
    x = image().double()
    torch.testing.assert_close(m(x), reference_eca(m, x), rtol=0, atol=1e-12)


# k = |log2(C) / 2 + 1 / 2| truncated, then made odd, worked out by hand:
# C=16: 5/2 = 2.5 -> 2 -> 3; C=64: 7/2 = 3.5 -> 3; C=128: 8/2 = 4 -> 5; C=256: 9/2 = 4.5 -> 4 -> 5;
# C=512: 10/2 = 5; C=1024: 11/2 = 5.5 -> 5; C=2048: 12/2 = 6 -> 7.
ADAPTIVE_K = {16: 3, 64: 3, 128: 5, 256: 5, 512: 5, 1024: 5, 2048: 7}


@pytest.mark.parametrize(("channels", "k"), ADAPTIVE_K.items())
def test_eca_adaptive_kernel_size(channels: int, k: int) -> None:
    with torch.device("meta"):
        m = ECA(channels)
    assert m.conv.kernel_size == (k,) and m.conv.padding == (k // 2,)
    assert m.conv.bias is None and m.conv.in_channels == m.conv.out_channels == 1
    assert count_params(m) == k  # the whole module: one k-wide kernel


def test_eca_gamma_and_beta_move_the_kernel() -> None:
    # C=256, gamma=1, beta=1: |8 + 1| = 9; gamma=4, beta=0: 8/4 = 2 -> 3.
    assert ECA(256, gamma=1.0, beta=1.0).kernel_size == 9
    assert ECA(256, gamma=4.0, beta=0.0).kernel_size == 3
    assert ECA(256, kernel_size=7).kernel_size == 7


def test_eca_schema_and_construction_reject_an_even_kernel() -> None:
    for value in (0, 4):
        with pytest.raises(ValidationError, match="odd"):
            ECAOptions.model_validate({"kernel_size": value})
        with pytest.raises(ConfigError, match=r"^model\.attention\.kernel_size: "):
            ECA(64, kernel_size=value)
    with pytest.raises(ValidationError, match="> 0"):
        ECAOptions.model_validate({"gamma": 0.0})


def test_eca_labels() -> None:
    assert ECAOptions().table_label() == "ECA"
    assert ECAOptions(kernel_size=5).table_label() == "ECA (k=5)"
    assert ECAOptions(gamma=3.0).table_label() == "ECA (gamma=3)"


def test_gradcheck_eca() -> None:
    m = randomize(ECA(8, kernel_size=3)).double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
