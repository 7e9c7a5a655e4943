"""The spatial gate Ms of CBAM (Woo et al., ECCV 2018, eq. 3): where to look.

    Ms(F) = sigmoid( BN( conv_kxk( D(F) ) ) ),   D(F) = [AvgPool_c(F); MaxPool_c(F)]  or a learned 1x1 conv C -> 1

The BN (BatchNorm2d(1, momentum=0.01), no ReLU) and its zero-initialised weight come from the official code
(Jongchan/attention-module): the gate starts as the constant 0.5 and so first scales every position equally.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor, nn

from ablation.attention.options import SpatialDescriptor
from ablation.core.errors import ConfigError

DESCRIPTORS: tuple[str, ...] = get_args(SpatialDescriptor)  # declared by the schema; checked again below


def check_spatial(kernel_size: int, descriptor: str) -> None:
    """Raise ConfigError for a kernel that would not keep H x W (even, < 1) or an unknown descriptor."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError("model.attention.kernel_size", kernel_size, "allowed: an odd integer >= 1 (1, 3, 5, 7, ...)")
    if descriptor not in DESCRIPTORS:
        raise ConfigError("model.attention.spatial", descriptor, f"allowed: {', '.join(DESCRIPTORS)}")


class SpatialGate(nn.Module):
    """Ms(F), shape (B, 1, H, W). Returns the gate, not the gated features.

    The k x k conv never has a bias, with or without the BN (as the official code): spatial_bn=False then only
    removes the BN, one change at a time.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        descriptor: str = "pool",
        batch_norm: bool = True,
        bn_zero_init: bool = True,
    ) -> None:
        super().__init__()
        check_spatial(kernel_size, descriptor)
        # Paper Table 2's alternative descriptor: one learned 1x1 conv C -> 1 instead of the two channel pools.
        self.compress = nn.Conv2d(channels, 1, 1, bias=False) if descriptor == "conv" else None
        self.conv = nn.Conv2d(
            1 if self.compress is not None else 2, 1, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(1, momentum=0.01) if batch_norm else None
        # Official init: kaiming-normal fan_out convs; the spatial BN's weight 0 (the gate starts at 0.5), bias 0.
        for conv in (self.compress, self.conv):
            if conv is not None:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if self.bn is not None:
            nn.init.constant_(self.bn.weight, 0.0 if bn_zero_init else 1.0)
            nn.init.zeros_(self.bn.bias)

    def logits(self, x: Tensor) -> Tensor:
        """BN(conv(D(x))), (B, 1, H, W), before the sigmoid."""
        if self.compress is None:
            # Paper order [avg; max] (the official code stacks [max; avg]: only the conv's inputs are permuted).
            descriptor = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)
        else:
            descriptor = self.compress(x)
        out = self.conv(descriptor)
        return out if self.bn is None else self.bn(out)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))
