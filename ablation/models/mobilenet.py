"""MobileNet v1 (Howard et al. 2017) with the width multiplier alpha and attention slots.

The CBAM paper (Table 5) adds SE / CBAM to MobileNet without saying where. Putting one module after every
depthwise conv's BN-ReLU and one after every pointwise conv's BN-ReLU (26 in all) is the placement that
reproduces its printed parameter counts (see tests/models/test_mobilenet.py). BAM's "stage" placement goes where the
resolution is about to drop, after the last block at 1/4, 1/8 and 1/16 of the input, as in the ResNets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ablation.attention import build_attention, parse_attention, placement
from ablation.attention.base import NoAttention
from ablation.attention.options import AttentionSchema

# Howard et al. 2017, Table 1: (output channels, stride) of the 13 depthwise-separable blocks, split into
# four stages at the last three stride-2 blocks, so BAM can sit between stages as in the ResNets.
STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1), (128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2), *((512, 1),) * 5),
    ((1024, 2), (1024, 1)),
)
STEM_CHANNELS = 32


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
    )
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DepthwiseSeparable(nn.Module):
    """dw 3x3-BN-ReLU then pw 1x1-BN-ReLU (Howard et al. 2017, Fig. 3), an attention slot after each."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels)
        self.depthwise_attention: nn.Module = NoAttention()
        self.pointwise = _conv_bn_relu(in_channels, out_channels, 1, 1)
        self.pointwise_attention: nn.Module = NoAttention()

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_attention(self.pointwise(self.depthwise_attention(self.depthwise(x))))


class MobileNetV1(nn.Module):
    """MobileNet v1; ``width`` is alpha: every layer has int(channels * alpha) channels.

    ``layout`` is accepted, and ignored, so every backbone is built with the same arguments.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        attention: AttentionSchema | Mapping[str, Any],
        width: float = 1.0,
        stem: str = "imagenet",
        layout: str = "v1.5",
    ) -> None:
        super().__init__()
        channels = int(STEM_CHANNELS * width)
        # "cifar": stride 1, so 32-pixel inputs are not shrunk to 1x1 before the last stage.
        self.stem = _conv_bn_relu(3, channels, 3, stride=1 if stem == "cifar" else 2)
        stages = []
        for stage in STAGES:
            blocks = []
            for out_channels, stride in stage:
                blocks.append(DepthwiseSeparable(channels, int(out_channels * width), stride))
                channels = int(out_channels * width)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

        # Initialised before the attention modules exist: those keep their own init.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

        options = parse_attention(attention)
        where = placement(options)
        if where == "block":
            for block in self.modules():
                if isinstance(block, DepthwiseSeparable):
                    block.depthwise_attention = build_attention(options, block.depthwise[0].out_channels)
                    block.pointwise_attention = build_attention(options, block.pointwise[0].out_channels)
        self.stage_attention = nn.ModuleList(
            build_attention(options, stage[-1].pointwise[0].out_channels) if where == "stage" else NoAttention()
            for stage in self.stages[:-1]
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage, attention in zip(self.stages[:-1], self.stage_attention, strict=True):
            x = attention(stage(x))
        x = self.stages[-1](x)
        return self.fc(self.pool(x).flatten(1))
