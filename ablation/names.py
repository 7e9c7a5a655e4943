"""Names the harness accepts for backbones, stems, layouts and datasets, declared once, with no heavy import: the
config schema, the model builders and the error messages all read them from here."""

from __future__ import annotations

from typing import Literal, get_args

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x4d", "mobilenet_v1")
Stem = Literal["imagenet", "cifar"]
Layout = Literal["v1", "v1.5"]
Dataset = Literal["cifar10-micro", "npz", "cifar10", "cifar100", "imagenet"]
STEMS, LAYOUTS, DATASETS = get_args(Stem), get_args(Layout), get_args(Dataset)
# Output formats, the default first: of ``runner.py table`` (ablation.report) and ``profile`` (ablation.profiler).
TABLE_FORMATS, PROFILE_FORMATS = ("md", "latex", "csv", "html"), ("table", "csv", "md")

# The smallest input each stem keeps at least 1 x 1 pixels through: the imagenet stem and four stages halve the
# resolution five times (MobileNet v1 too), the cifar stem three times.
MIN_IMAGE_SIZE = {"imagenet": 32, "cifar": 8}

# The paper's row labels: (name, detail in parentheses).
_PAPER_NAMES = {
    "resnet18": ("ResNet18", ""),
    "resnet34": ("ResNet34", ""),
    "resnet50": ("ResNet50", ""),
    "resnet101": ("ResNet101", ""),
    "resnext50_32x4d": ("ResNeXt50", "32x4d"),
    "resnext101_32x4d": ("ResNeXt101", "32x4d"),
}


def display_name(arch: str, width: float = 1.0) -> str:
    """The paper's row label: "ResNet50", "WideResNet18 (widen=1.5)", "MobileNet (alpha=0.7)"."""
    if arch not in ARCHS:
        from ablation.errors import ConfigError

        raise ConfigError("model.arch", arch, f"allowed: {', '.join(ARCHS)}")
    factor = repr(float(width))  # 2.0 prints as "2.0", as in the paper
    if arch == "mobilenet_v1":
        return f"MobileNet (alpha={factor})"
    name, detail = _PAPER_NAMES[arch]
    if width > 1:
        name, detail = f"Wide{name}", ", ".join(part for part in (detail, f"widen={factor}") if part)
    elif width < 1:  # a slimmed network is not a "wide" one
        detail = ", ".join(part for part in (detail, f"width={factor}") if part)
    return f"{name} ({detail})" if detail else name
