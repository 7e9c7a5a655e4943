"""Squeeze-and-Excitation (Hu et al., CVPR 2018): F * sigmoid(MLP(AvgPool(F))).

SE is exactly CBAM's channel gate with AvgPool alone (CBAM paper, Table 1), so it reuses ChannelGate under the
same attribute name: its state_dict is the one of CBAM(channel_pool=["avg"], order="channel-only").
"""

from __future__ import annotations

from torch import Tensor, nn

from ablation.attention.channel import ChannelGate


class SE(nn.Module):
    """F * Mc(F) with Mc pooling by average only."""

    def __init__(self, channels: int, *, reduction: int = 16, mlp_bias: bool = True) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, pools=("avg",), reduction=reduction, mlp_bias=mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.channel(x)
