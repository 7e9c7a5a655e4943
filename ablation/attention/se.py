"""Squeeze-and-Excitation (Hu et al., CVPR 2018): F * sigmoid(MLP(AvgPool(F))).

SE is exactly CBAM's channel gate with AvgPool alone (CBAM paper, Table 1), so it is that CBAM arm: the same
module, state_dict (``channel.mlp.*``) and computation as CBAM(channel_pool=["avg"], order="channel-only"),
and ``ablation.attention.accel`` speeds it up as that arm.
"""

from __future__ import annotations

from ablation.attention.cbam import CBAM


class SE(CBAM):
    """F * Mc(F) with Mc pooling by average only."""

    def __init__(self, channels: int, *, reduction: int = 16, mlp_bias: bool = True) -> None:
        super().__init__(channels, reduction=reduction, channel_pool=("avg",), order="channel-only", mlp_bias=mlp_bias)
