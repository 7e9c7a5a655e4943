"""The names the harness declares once (ablation/names.py): the paper's row labels."""

from __future__ import annotations

import pytest

from ablation.models import display_name


@pytest.mark.parametrize(
    ("arch", "width", "label"),
    [
        ("resnet50", 1.0, "ResNet50"),
        ("resnet18", 1.5, "WideResNet18 (widen=1.5)"),
        ("resnet18", 2, "WideResNet18 (widen=2.0)"),
        ("resnext101_32x4d", 1.0, "ResNeXt101 (32x4d)"),
        ("mobilenet_v1", 0.7, "MobileNet (alpha=0.7)"),
        ("mobilenet_v1", 1.0, "MobileNet (alpha=1.0)"),
    ],
)
def test_display_name_is_the_papers_row_label(arch: str, width: float, label: str) -> None:
    assert display_name(arch, width) == label
