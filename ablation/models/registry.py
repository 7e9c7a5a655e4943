"""The backbone registry: one entry per backbone, so the config, the builders, the labels and the profile read one
list.

An entry (``Backbone``) names the function that builds the network, as "package.module:function" (called as
``function(num_classes=..., attention=..., width=..., stem=..., layout=...)``), how the paper labels its rows
(``label``, ``detail``; the width multiplier reads "widen"/"width" for a ResNet, "alpha" for MobileNet), and whether
it is built of bottlenecks (whose ``layout`` v1 / v1.5 moves the stride). ``model.arch`` accepts exactly the
registered names; ``register_backbone`` adds one from anywhere. ``custom`` (``CUSTOM``) is a user's own network
named in the experiment itself (``model.target``, ``ablation.models.custom``): a registered name lives only in the
process that registered it, a target travels to every worker process and Slurm task. Torch-free: a builder is
imported when a network is built, so reading and validating an experiment never waits for torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from ablation.core.errors import ConfigError
from ablation.core.targets import load_target

if TYPE_CHECKING:  # for annotations only: importing the registry must not import torch
    from torch import nn

# What every backbone can be asked for besides its width: the stem ("imagenet": 7x7/2 conv + max-pool for 224 px
# inputs; "cifar": 3x3/1 conv, no max-pool, for 32 px) and the bottleneck's strided conv ("v1.5": the 3x3, as
# torchvision and the official CBAM code; "v1": the first 1x1, as He et al. 2016 and the paper's printed GFLOPs).
Stem = Literal["imagenet", "cifar"]
Layout = Literal["v1", "v1.5"]
STEMS, LAYOUTS = get_args(Stem), get_args(Layout)
# The smallest input each stem keeps at least 1 x 1 pixels through: the imagenet stem and four stages halve the
# resolution five times (MobileNet v1 too), the cifar stem three times.
MIN_IMAGE_SIZE = {"imagenet": 32, "cifar": 8}
# A user's own network, named by import path in the experiment (model.target; ablation.models.custom).
CUSTOM = "custom"


@dataclass(frozen=True)
class Backbone:
    name: str
    builder: str  # "package.module:function"
    label: str  # the paper's row name: "ResNet50"
    detail: str = ""  # in parentheses after it: "32x4d"
    bottleneck: bool = False  # built of Bottleneck blocks: ``layout`` picks which conv strides
    width_name: str = ""  # how its width multiplier reads: "" (ResNets: widen / width) or "alpha" (MobileNet)


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(entry: Backbone, *, replace: bool = False) -> Backbone:
    if entry.name in _REGISTRY and not replace:
        raise ValueError(f"backbone {entry.name!r} is registered already; pass replace=True to replace it")
    _REGISTRY[entry.name] = entry
    return entry


def backbone_names() -> tuple[str, ...]:
    """The networks built by name alone (``custom`` needs its target too: ``arch_names``)."""
    return tuple(name for name in _REGISTRY if name != CUSTOM)


def arch_names() -> tuple[str, ...]:
    """Every ``model.arch`` an experiment may name: the registered networks, then ``custom``."""
    return (*backbone_names(), CUSTOM)


def backbone(name: str) -> Backbone:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError("model.arch", name, f"allowed: {', '.join(arch_names())}") from None


def display_name(arch: str, width: float = 1.0) -> str:
    """The paper's row label: "ResNet50", "WideResNet18 (widen=1.5)", "MobileNet (alpha=0.7)"."""
    entry = backbone(arch)
    factor = repr(float(width))  # 2.0 prints as "2.0", as in the paper
    if entry.width_name:
        return f"{entry.label} ({entry.width_name}={factor})"
    name, detail = entry.label, entry.detail
    if width > 1:
        name, detail = f"Wide{name}", ", ".join(part for part in (detail, f"widen={factor}") if part)
    elif width < 1:  # a slimmed network is not a "wide" one
        detail = ", ".join(part for part in (detail, f"width={factor}") if part)
    return f"{name} ({detail})" if detail else name


def build_model(
    arch: str,
    *,
    num_classes: int,
    attention: Any | Mapping[str, Any],
    width: float = 1.0,
    stem: str = "imagenet",
    layout: str = "v1.5",
    target: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The network ``arch`` with ``attention`` (options or a mapping with a ``type`` key) inside it: the only way
    the rest of the package makes one, so an experiment changes a backbone by changing one string.

    ``width`` multiplies the stage widths of a ResNet (stem kept at 64: the paper's WideResNet18) and is alpha
    for MobileNet. ``stem="cifar"`` suits 32-pixel inputs; ``layout`` picks the bottleneck's strided conv.
    ``arch="custom"`` builds the user's network ``target`` with its ``options`` (``ablation.models.custom``).
    """
    entry = backbone(arch)
    if arch == CUSTOM:
        if target is None:
            raise ConfigError("model.target", None, "required with model.arch custom; allowed: 'package.module:build'")
        return load_target(entry.builder)(
            target=target, options=dict(options or {}), num_classes=num_classes, attention=attention
        )
    _check_choice("model.stem", stem, STEMS)
    _check_choice("model.layout", layout, LAYOUTS)
    if isinstance(width, bool) or not isinstance(width, int | float) or width <= 0:
        raise ConfigError("model.width", width, "allowed: a number > 0")
    builder = load_target(entry.builder)  # torch: imported with the first network built
    return builder(num_classes=num_classes, attention=attention, width=width, stem=stem, layout=layout)


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"allowed: {', '.join(allowed)}")


for _entry in (
    Backbone("resnet18", "ablation.models.resnet:resnet18", "ResNet18"),
    Backbone("resnet34", "ablation.models.resnet:resnet34", "ResNet34"),
    Backbone("resnet50", "ablation.models.resnet:resnet50", "ResNet50", bottleneck=True),
    Backbone("resnet101", "ablation.models.resnet:resnet101", "ResNet101", bottleneck=True),
    Backbone("resnext50_32x4d", "ablation.models.resnet:resnext50_32x4d", "ResNeXt50", "32x4d", bottleneck=True),
    Backbone("resnext101_32x4d", "ablation.models.resnet:resnext101_32x4d", "ResNeXt101", "32x4d", bottleneck=True),
    Backbone("mobilenet_v1", "ablation.models.mobilenet:MobileNetV1", "MobileNet", width_name="alpha"),
    Backbone(CUSTOM, "ablation.models.custom:build_custom", "Custom"),
):
    register_backbone(_entry)
