"""torchvision's ResNet / ResNeXt with an attention slot in every block and after stages 1-3.

The blocks and the network are torchvision's (``torchvision.models.resnet``), subclassed rather than
rewritten, so the plain networks stay exactly torchvision's. What the subclasses add:

- an ``attention`` module in every block, after its last BN and before the residual add (CBAM paper, Fig. 3;
  the official code's ``BasicBlock`` / ``Bottleneck``); the shortcut is never attended;
- a ``stage_attention`` after layer1-3, where BAM (Park et al., BMVC 2018) sits: "at each bottleneck" of
  the network, i.e. where the resolution is about to drop;
- ``width``: every stage's width times ``width``, stem kept at 64 channels, the paper's WideResNet18;
- ``stem="cifar"`` for 32-pixel inputs and ``layout="v1"``, the original ResNet's bottleneck.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torchvision.models import resnet as tv

from ablation.attention import build_attention, parse_attention, placement
from ablation.attention.base import Attention, NoAttention
from ablation.attention.options import AttentionSchema


class BasicBlock(tv.BasicBlock):
    """torchvision's BasicBlock with ``attention`` applied to the residual branch after bn2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attention: Attention = NoAttention()

    @property
    def out_channels(self) -> int:
        return self.bn2.num_features

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        # attention(out) + identity, the addition in the attention module's last pass (ablation/attention/base.py)
        return self.relu(self.attention.forward_add(self.bn2(self.conv2(out)), identity))


class Bottleneck(tv.Bottleneck):
    """torchvision's Bottleneck with ``attention`` applied to the residual branch after bn3."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attention: Attention = NoAttention()

    @property
    def out_channels(self) -> int:
        return self.bn3.num_features

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.attention.forward_add(self.bn3(self.conv3(out)), identity))


class ResNet(tv.ResNet):
    """torchvision's ResNet / ResNeXt, plus attention, a width multiplier, a CIFAR stem and the v1 layout.

    ``layout`` only matters for Bottleneck: "v1.5" strides the 3x3 conv (torchvision and the official CBAM
    code, which trained the paper's networks); "v1" strides the first 1x1 conv (He et al. 2016), the layout
    whose multiply-adds the paper prints (ResNet-50: 3.858 G; v1.5: 4.09 G).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        num_classes: int,
        attention: AttentionSchema | Mapping[str, Any],
        width: float = 1.0,
        stem: str = "imagenet",
        layout: str = "v1.5",
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        # Read by _make_layer, which torchvision's __init__ calls.
        self.width_multiplier = width
        self.layout = layout
        super().__init__(block, layers, num_classes=num_classes, groups=groups, width_per_group=width_per_group)
        # torchvision has initialised every module built so far (kaiming fan_out convs, BN 1/0). What is added
        # below initialises itself: the attention modules in particular keep their own init (CBAM's spatial
        # BN weight starts at 0).
        if stem == "cifar":
            # 32-pixel inputs: a 3x3 stride-1 conv and no max-pool, so layer1 still sees 32x32.
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()
        # The last stage is width x 512 (x expansion) wide.
        self.fc = nn.Linear(self.inplanes, num_classes)

        options = parse_attention(attention)
        where = placement(options)
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        if where == "block":
            for stage in stages:
                for stage_block in stage:
                    stage_block.attention = build_attention(options, stage_block.out_channels)
        self.stage_attention = nn.ModuleList(
            build_attention(options, stage[-1].out_channels) if where == "stage" else NoAttention()
            for stage in stages[:3]
        )

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        # Stage widths only; the stem stays at 64, so layer1 gets a projection shortcut when width != 1. That
        # is what gives the paper's WideResNet18 its printed 25.88M (widen 1.5) and 45.62M (widen 2.0).
        layer = super()._make_layer(block, round(planes * self.width_multiplier), blocks, stride, dilate)
        if self.layout == "v1" and issubclass(block, tv.Bottleneck):
            # Original ResNet (He et al. 2016): the downsampling block strides its first 1x1 conv, not the 3x3.
            first = layer[0]
            first.conv1.stride, first.conv2.stride = first.conv2.stride, first.conv1.stride
        return layer

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer, attention in zip((self.layer1, self.layer2, self.layer3), self.stage_attention, strict=True):
            x = attention(layer(x))
        x = self.layer4(x)
        return self.fc(self.avgpool(x).flatten(1))


# ---- the registered builders (ablation.models.registry), all called with the same keyword arguments


def resnet18(**kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnext50_32x4d(**kwargs: Any) -> ResNet:
    # Xie et al. 2017: cardinality 32, 4 channels per group in the first stage.
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kwargs)


def resnext101_32x4d(**kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4, **kwargs)
