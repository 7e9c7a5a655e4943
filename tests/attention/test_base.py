"""What every attention module is (ablation/attention/base.py): ``forward_add`` is the residual block's addition,
out of place, and the plain network's slot is the identity with no parameters."""

import torch
from torch import Tensor

from ablation.attention.base import Attention, NoAttention


class _Double(Attention):
    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


def test_forward_add_is_the_module_plus_the_residual_out_of_place():
    x, residual = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    kept = x.clone(), residual.clone()
    out = _Double().forward_add(x, residual)
    torch.testing.assert_close(out, 2 * kept[0] + kept[1])
    assert torch.equal(x, kept[0]) and torch.equal(residual, kept[1])  # neither input was written to


def test_no_attention_is_the_identity_without_parameters():
    slot = NoAttention(64)
    x = torch.randn(2, 64, 3, 3)
    assert slot(x) is x
    assert list(slot.parameters()) == [] and slot.state_dict() == {}
    torch.testing.assert_close(slot.forward_add(x, x), 2 * x)
