"""Accelerated modules are made from the reference ones (ablation/attention/accel/sharing.py): the very same
parameters, buffers and children, with only the named children replaced, and the reference left as it was."""

import torch
from torch import Tensor, nn

from ablation.attention.accel.sharing import adopt


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.scale = nn.Parameter(torch.full((2,), 3.0))
        self.register_buffer("calls", torch.zeros(()))
        self.note = "kept"

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) * self.scale[:, None, None]


class _Faster(_Block):
    pass


def test_adopt_shares_everything_but_the_children_it_replaces():
    reference = _Block()
    conv = nn.Conv2d(2, 2, 1)
    conv.load_state_dict(reference.conv.state_dict())
    made = adopt(_Faster, reference, conv=conv)
    assert type(made) is _Faster and made.note == "kept"
    assert made.scale is reference.scale and made.calls is reference.calls and made.bn is reference.bn
    assert made.conv is conv and reference.conv is not conv  # the reference keeps its own child
    assert list(made.state_dict()) == list(reference.state_dict())
    x = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(made.eval()(x), reference.eval()(x))
    with torch.no_grad():
        made.scale.mul_(2)  # one Parameter object: an optimizer stepping either steps both
    assert torch.equal(reference.scale, torch.full((2,), 6.0))
