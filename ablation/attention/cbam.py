"""CBAM (Woo et al., ECCV 2018) with every arrangement the paper ablates (Table 3) and the single-gate arms.

Orders, for a feature map F (Mc: ChannelGate, (B, C, 1, 1); Ms: SpatialGate, (B, 1, H, W)):

- ``channel-first`` (CBAM, paper eq. 1): F' = Mc(F) * F, out = Ms(F') * F'.
- ``spatial-first``: F' = Ms(F) * F, out = Mc(F') * F'.
- ``parallel``: both gates see F. ``parallel_combine="product"`` (default): out = F * Mc(F) * Ms(F);
  ``"sum-logits"``: out = F * sigmoid(logit_c(F) + logit_s(F)), the BAM-style merge.
  Product is the default because each gate then stays exactly the sequential CBAM gate (its own sigmoid, its
  own range (0, 1)): Table 3 compares arrangements, and with the product the arrangement is the only change.
  The sum-logits merge also changes the gate function itself (one sigmoid over a (B, C, H, W) sum).
- ``channel-only``: out = Mc(F) * F (with AvgPool alone this is SE, key for key).
- ``spatial-only``: out = Ms(F) * F.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import torch
from torch import Tensor

from ablation.attention.base import Attention
from ablation.attention.channel import ChannelGate, check_pools
from ablation.attention.options import Order, ParallelCombine
from ablation.attention.spatial import SpatialGate, check_spatial
from ablation.core.errors import ConfigError

# Declared by the schema (ablation/attention/options.py); checked here again for direct construction.
ORDERS: tuple[str, ...] = get_args(Order)
PARALLEL_COMBINES: tuple[str, ...] = get_args(ParallelCombine)


class CBAM(Attention):
    """Channel and/or spatial attention on a C-channel map; options as ``CBAMOptions`` (same names, defaults).

    ``self.channel`` is None for ``spatial-only`` and ``self.spatial`` None for ``channel-only``, so a model's
    state_dict holds exactly the parameters its arm uses. This is the straightforward formulation; the faster ones
    (same parameters, same function up to float rounding) are made from it by ``ablation.attention.accel``.
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        channel_pool: Sequence[str] = ("avg", "max"),
        spatial: str = "pool",
        kernel_size: int = 7,
        order: str = "channel-first",
        parallel_combine: str = "product",
        mlp_bias: bool = True,
        spatial_bn: bool = True,
        spatial_bn_zero_init: bool = True,
    ) -> None:
        super().__init__()
        # The pydantic schema checks these too; repeated here for direct construction (tests, notebooks), and
        # for the options of a gate that this order leaves out, so a bad value is an error whatever the order.
        if order not in ORDERS:
            raise ConfigError("model.attention.order", order, f"allowed: {', '.join(ORDERS)}")
        if parallel_combine not in PARALLEL_COMBINES:
            raise ConfigError(
                "model.attention.parallel_combine", parallel_combine, f"allowed: {', '.join(PARALLEL_COMBINES)}"
            )
        check_pools(channel_pool)
        check_spatial(kernel_size, spatial)
        self.order = order
        self.parallel_combine = parallel_combine
        self.channel = (
            None
            if order == "spatial-only"
            else ChannelGate(channels, pools=channel_pool, reduction=reduction, mlp_bias=mlp_bias)
        )
        self.spatial = (
            None
            if order == "channel-only"
            else SpatialGate(
                channels,
                kernel_size=kernel_size,
                descriptor=spatial,
                batch_norm=spatial_bn,
                bn_zero_init=spatial_bn_zero_init,
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.order == "channel-first":
            x = x * self.channel(x)
            return x * self.spatial(x)
        if self.order == "spatial-first":
            x = x * self.spatial(x)
            return x * self.channel(x)
        if self.order == "parallel":
            if self.parallel_combine == "product":
                return x * self.channel(x) * self.spatial(x)
            return x * torch.sigmoid(self.channel.logits(x) + self.spatial.logits(x))
        if self.order == "channel-only":
            return x * self.channel(x)
        return x * self.spatial(x)
