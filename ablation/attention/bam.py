"""BAM, the Bottleneck Attention Module (Park, Woo, Lee, Kweon, BMVC 2018), placed after ResNet stages 1-3.

    out = F * (1 + sigmoid(Mc(F) + Ms(F)))        (paper eq. 1-2; Mc (B, C, 1, 1) + Ms (B, 1, H, W) broadcast)
    Mc(F) = BN(MLP(AvgPool(F))),   MLP = Linear(C, C/r) -> BN1d -> ReLU -> Linear(C/r, C)
    Ms(F) = BN(conv1x1(conv3x3_d(conv3x3_d(conv1x1(F)))))   C -> C/r -> C/r -> C/r -> 1, BN + ReLU between

Choices and where they come from:
- The paper sums the branches; the official bam.py multiplies them (and crashes on construction): the paper's
  sum is used.
- The official MLP has BN1d + ReLU between its Linears; the paper puts a BN on the MLP's output. Both are kept
  (Linear, BN1d, ReLU, Linear, BN1d(C)), as is the paper's BN on the spatial output (BatchNorm2d(1)).
- Every conv is followed by a BN, so the convs have no bias (a bias before a BN is cancelled by its mean).
- 3x3 convs with dilation d and padding d keep H x W.
The BN1d layers normalise over the batch alone: training needs a batch of at least 2 (PyTorch raises otherwise).
"""

from __future__ import annotations

from torch import Tensor, nn

from ablation.attention.base import Attention
from ablation.attention.channel import hidden_channels


def _conv_bn_relu(cin: int, cout: int, kernel_size: int, dilation: int = 1) -> list[nn.Module]:
    padding = dilation * (kernel_size // 2)
    return [
        nn.Conv2d(cin, cout, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    ]


class BAM(Attention):
    """F * (1 + sigmoid(Mc(F) + Ms(F))): a residual attention, so a gate of 0 keeps F rather than erasing it."""

    def __init__(self, channels: int, *, reduction: int = 16, dilation: int = 4) -> None:
        super().__init__()
        hidden = hidden_channels(channels, reduction)
        self.channel = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=False),
            nn.Linear(hidden, channels),
            nn.BatchNorm1d(channels),
        )
        self.spatial = nn.Sequential(
            *_conv_bn_relu(channels, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, dilation),
            *_conv_bn_relu(hidden, hidden, 3, dilation),
            nn.Conv2d(hidden, 1, 1, bias=False),
            nn.BatchNorm2d(1),
        )
        # Official init: kaiming-normal fan_out convs, BN weight 1 / bias 0 (PyTorch's default), Linear biases 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        channel = self.channel(x.mean(dim=(2, 3)))[:, :, None, None]
        return x * (1 + (channel + self.spatial(x)).sigmoid())
