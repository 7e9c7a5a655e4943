"""A user's module built into a backbone's slot (ablation/attention/adapter.py): a plain ``nn.Module`` is wrapped
to get ``forward_add`` (its parameters one level deeper), an ``Attention`` is placed as it is, and what the
constructor raises or returns wrongly is one line. The targets are defined here, in this importable module."""

import pytest
import torch
from torch import Tensor, nn

from ablation.attention.adapter import AttentionAdapter, build_custom
from ablation.attention.base import Attention
from ablation.core.errors import ConfigError

HERE = __name__


class Gate(nn.Module):
    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.scale * self.conv(x))


class Gain(Attention):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.full((channels,), 2.0))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain[:, None, None]


def refuses(channels: int, **options) -> nn.Module:
    raise ValueError(f"cannot work on\n{channels} channels")


def not_a_module(channels: int) -> int:
    return channels


def test_a_plain_module_is_wrapped_and_an_attention_placed_as_it_is():
    wrapped = build_custom(8, target=f"{HERE}:Gate", options={"scale": 0.5})
    assert isinstance(wrapped, AttentionAdapter) and type(wrapped.module) is Gate and wrapped.module.scale == 0.5
    assert set(wrapped.state_dict()) == {"module.conv.weight", "module.conv.bias"}
    x, residual = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(wrapped(x), wrapped.module(x))
    torch.testing.assert_close(wrapped.forward_add(x, residual), wrapped.module(x) + residual)

    placed = build_custom(8, target=f"{HERE}:Gain", options={})
    assert type(placed) is Gain and set(placed.state_dict()) == {"gain"}


def test_what_the_constructor_raises_or_returns_is_one_line():
    with pytest.raises(ConfigError) as raised:
        build_custom(8, target=f"{HERE}:refuses", options={"depth": 2})
    message = str(raised.value)
    assert message.startswith("model.attention.options: ") and "\n" not in message
    assert f"{HERE}:refuses(8, depth=2) raised ValueError: cannot work on 8 channels" in message
    with pytest.raises(ConfigError) as returned:
        build_custom(8, target=f"{HERE}:not_a_module", options={})
    assert str(returned.value).startswith("model.attention.target: ") and "returned a int" in str(returned.value)
