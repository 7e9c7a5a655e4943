"""The paper's backbones (CBAM, Tables 4 and 5), built by name with any attention of the registry.

``display_name`` (the paper's row label) is re-exported from ``ablation.names``, which declares the names.

``build_model(arch, num_classes=..., attention=...)`` is the only way the rest of the package makes a network:
one table of builders, all taking the same keyword arguments, so an experiment changes a backbone by changing
one string.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from torch import nn

from ablation.attention.options import AttentionSchema
from ablation.errors import ConfigError
from ablation.models.mobilenet import MobileNetV1
from ablation.models.resnet import BasicBlock, Bottleneck, ResNet
from ablation.names import ARCHS, LAYOUTS, STEMS, display_name

__all__ = ["ARCHS", "BUILDERS", "LAYOUTS", "STEMS", "build_model", "display_name"]

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": partial(ResNet, BasicBlock, [2, 2, 2, 2]),
    "resnet34": partial(ResNet, BasicBlock, [3, 4, 6, 3]),
    "resnet50": partial(ResNet, Bottleneck, [3, 4, 6, 3]),
    "resnet101": partial(ResNet, Bottleneck, [3, 4, 23, 3]),
    # Xie et al. 2017: cardinality 32, 4 channels per group in the first stage.
    "resnext50_32x4d": partial(ResNet, Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4),
    "resnext101_32x4d": partial(ResNet, Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4),
    "mobilenet_v1": MobileNetV1,
}
assert tuple(BUILDERS) == ARCHS, "ablation/names.py and BUILDERS must list the same backbones"


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"allowed: {', '.join(allowed)}")


def build_model(
    arch: str,
    *,
    num_classes: int,
    attention: AttentionSchema | Mapping[str, Any],
    width: float = 1.0,
    stem: str = "imagenet",
    layout: str = "v1.5",
) -> nn.Module:
    """The network ``arch`` with ``attention`` (options or a mapping with a ``type`` key) inside it.

    ``width`` multiplies the stage widths of a ResNet (stem kept at 64: the paper's WideResNet18) and is alpha
    for MobileNet. ``stem="cifar"`` suits 32-pixel inputs; ``layout`` picks the bottleneck's strided conv.
    """
    _check_choice("model.arch", arch, ARCHS)
    _check_choice("model.stem", stem, STEMS)
    _check_choice("model.layout", layout, LAYOUTS)
    if isinstance(width, bool) or not isinstance(width, int | float) or width <= 0:
        raise ConfigError("model.width", width, "allowed: a number > 0")
    return BUILDERS[arch](num_classes=num_classes, attention=attention, width=width, stem=stem, layout=layout)
