"""ECA, Efficient Channel Attention (Wang et al., CVPR 2020, "ECA-Net"): SE without its MLP.

    y = AvgPool_hw(F)                       (B, C)
    w = sigmoid( conv1d_k(y) )              a k-wide 1-D conv across the channel axis: one in / out channel,
                                            padding k // 2, no bias, so each channel's gate sees its k neighbours
    out = F * w                             broadcast over H, W

The kernel size adapts to the width (paper, eq. 12): k = |log2(C) / gamma + beta / gamma|, taken to the odd
integer at or above it, with gamma = 2 and beta = 1; the official code (BangguWu/ECANet) writes it as
``t = int(abs((log(C, 2) + b) / gamma)); k = t if t % 2 else t + 1``. Its conv keeps PyTorch's default init
(the official ResNet initialises only Conv2d layers). It goes in every block, where SE goes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ablation.attention.base import Attention
from ablation.core.errors import ConfigError


def adaptive_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """The paper's k for a ``channels``-wide map: |(log2 C + beta) / gamma| truncated, then made odd."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class ECA(Attention):
    """F * sigmoid(conv1d_k(AvgPool(F))); options as ``ECAOptions`` (same names, defaults)."""

    def __init__(self, channels: int, *, kernel_size: int | None = None, gamma: float = 2.0, beta: float = 1.0) -> None:
        super().__init__()
        k = adaptive_kernel_size(channels, gamma, beta) if kernel_size is None else kernel_size
        if k < 1 or k % 2 == 0:  # the schema checks this too; repeated for direct construction
            raise ConfigError("model.attention.kernel_size", k, "allowed: an odd integer >= 1")
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def gate(self, x: Tensor) -> Tensor:
        """w, shape (B, C, 1, 1)."""
        y = x.mean(dim=(2, 3))
        return torch.sigmoid(self.conv(y.unsqueeze(1))).squeeze(1)[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)
