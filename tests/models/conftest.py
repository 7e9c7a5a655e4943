"""What the backbone tests share: the paper's counts of a network, and the modules of a kind in it."""

from __future__ import annotations

from functools import partial

from torch import nn

from ablation.models import build_model, display_name
from ablation.models.measure import measure


def _counts(arch: str, attention: str, width: float = 1.0, layout: str = "v1") -> tuple[float, float]:
    """(params in M, GMACs at 224) of an ImageNet-1K network, built on the meta device."""
    build = partial(build_model, arch, num_classes=1000, attention={"type": attention}, width=width, layout=layout)
    params, macs = measure(build, image_size=224)
    print(f"{display_name(arch, width)} {attention}: {params / 1e6:.3f}M {macs / 1e9:.4f} GMACs ({layout})")
    return params / 1e6, macs / 1e9


def _modules_of(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]
