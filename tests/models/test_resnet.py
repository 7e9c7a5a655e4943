"""The ResNets (ablation/models/resnet.py): the official code's parameter counts, the paper's Table 4 to the
printed precision, the two bottleneck layouts, where a block's attention sits, and the backbone's init."""

from __future__ import annotations

import pytest
import torch

from ablation.attention.base import Attention
from ablation.attention.cbam import CBAM
from ablation.models import build_model, display_name
from ablation.models.measure import count_params
from tests.models.conftest import _counts, _modules_of


@pytest.mark.parametrize(
    ("arch", "attention", "expected"),
    [
        ("resnet18", "cbam", 11_779_392),
        ("resnet34", "cbam", 21_960_468),
        ("resnet50", "cbam", 28_089_624),
        ("resnet101", "cbam", 49_330_172),
        ("resnet50", "none", 25_557_032),
    ],
)
def test_exact_parameter_counts_of_the_official_code(arch: str, attention: str, expected: int) -> None:
    with torch.device("meta"):
        model = build_model(arch, num_classes=1000, attention={"type": attention})
    assert count_params(model) == expected


# Paper Table 4 as printed: (arch, width, attention, params M, GFLOPs). The paper's GFLOPs are multiply-adds
# of the original ResNet layout (v1). Every row is matched to the printed precision: our count, rounded as
# the paper rounds, is the printed number (so +SE and +CBAM, 0.001-0.006 GMACs apart, are told apart).
TABLE4 = [
    ("resnet18", 1.0, "none", 11.69, 1.814),
    ("resnet18", 1.0, "se", 11.78, 1.814),
    ("resnet18", 1.0, "cbam", 11.78, 1.815),
    ("resnet34", 1.0, "none", 21.80, 3.664),
    ("resnet34", 1.0, "se", 21.96, 3.664),
    ("resnet34", 1.0, "cbam", 21.96, 3.665),
    ("resnet50", 1.0, "none", 25.56, 3.858),
    ("resnet50", 1.0, "se", 28.09, 3.860),
    ("resnet50", 1.0, "cbam", 28.09, 3.864),
    ("resnet101", 1.0, "none", 44.55, 7.570),
    ("resnet101", 1.0, "se", 49.33, 7.575),
    ("resnet101", 1.0, "cbam", 49.33, 7.581),
    ("resnet18", 1.5, "none", 25.88, 3.866),
    ("resnet18", 1.5, "se", 26.07, 3.867),
    ("resnet18", 1.5, "cbam", 26.08, 3.868),
    ("resnet18", 2.0, "none", 45.62, 6.696),
    ("resnet18", 2.0, "se", 45.97, 6.696),
    ("resnet18", 2.0, "cbam", 45.97, 6.697),
    ("resnext50_32x4d", 1.0, "none", 25.03, 3.768),
    ("resnext50_32x4d", 1.0, "se", 27.56, 3.771),
    ("resnext50_32x4d", 1.0, "cbam", 27.56, 3.774),
    ("resnext101_32x4d", 1.0, "none", 44.18, 7.508),
    ("resnext101_32x4d", 1.0, "se", 48.96, 7.512),
    ("resnext101_32x4d", 1.0, "cbam", 48.96, 7.519),
]


@pytest.mark.parametrize(
    ("arch", "width", "attention", "params", "gmacs"),
    TABLE4,
    ids=[f"{display_name(a, w)} {att}" for a, w, att, *_ in TABLE4],
)
def test_table4_row(arch: str, width: float, attention: str, params: float, gmacs: float) -> None:
    measured_params, measured_gmacs = _counts(arch, attention, width)
    assert round(measured_params, 2) == pytest.approx(params)
    assert round(measured_gmacs, 3) == pytest.approx(gmacs)


def test_resnet50_layouts() -> None:
    """The paper's 3.858 GMACs is the v1 layout; torchvision's v1.5 (the official code's) costs 4.09."""
    assert _counts("resnet50", "none", layout="v1")[1] == pytest.approx(3.858, rel=0.005)
    assert _counts("resnet50", "none", layout="v1.5")[1] == pytest.approx(4.09, rel=0.005)


class _Recorder(Attention):
    """Stands in for a block's attention: records its input and doubles it, so its effect is visible."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return 2 * x


@pytest.mark.parametrize(("arch", "last_bn"), [("resnet50", "bn3"), ("resnet18", "bn2")])
def test_block_attention_sits_after_last_bn_before_the_add(arch: str, last_bn: str) -> None:
    """CBAM paper, Fig. 3: out = relu(attention(last_bn(...)) + shortcut(x)); the shortcut is not attended."""
    model = build_model(arch, num_classes=10, attention={"type": "cbam"}).eval()
    block = model.layer2[0]  # a block with a projection shortcut
    block.attention = _Recorder()
    bn_out = {}
    getattr(block, last_bn).register_forward_hook(lambda _m, _i, out: bn_out.setdefault("x", out))
    x = torch.randn(2, block.conv1.in_channels, 16, 16)
    with torch.no_grad():
        out = block(x)
        assert torch.equal(block.attention.seen, bn_out["x"])
        torch.testing.assert_close(out, torch.relu(2 * bn_out["x"] + block.downsample(x)))


def test_resnet50_eca_adds_one_kernel_per_block() -> None:
    """ECA's only parameters are one k-wide 1-D kernel per block; by the paper's formula (k = |log2(C)/2 + 1/2|,
    made odd) the 3 + 4 + 6 + 3 blocks of 256, 512, 1024 and 2048 channels get k = 5, 5, 5 and 7 (worked out by
    hand: 4.5 -> 4 -> 5, 5 -> 5, 5.5 -> 5, 6 -> 7)."""
    with torch.device("meta"):
        plain = count_params(build_model("resnet50", num_classes=1000, attention={"type": "none"}))
        eca = count_params(build_model("resnet50", num_classes=1000, attention={"type": "eca"}))
    assert eca - plain == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7


def test_backbone_init_leaves_the_attention_init_alone() -> None:
    """CBAM's spatial BN weight starts at 0 (official code): the backbone's init must not reset it to 1."""
    model = build_model("resnet50", num_classes=10, attention={"type": "cbam"})
    for cbam in _modules_of(model, CBAM):
        assert cbam.spatial.bn.weight.item() == 0
