"""``build_model`` (ablation/models/__init__.py): every backbone with every registered attention type trains on
a tiny batch, the attention modules are where their papers put them, and bad arguments are one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablation.attention import REGISTRY
from ablation.attention.bam import BAM
from ablation.attention.cbam import CBAM
from ablation.attention.eca import ECA
from ablation.attention.se import SE
from ablation.core.errors import ConfigError
from ablation.models import backbone_names, build_model
from tests.models.conftest import _modules_of

# Every backbone (and the paper's wide ResNet18) with every registered attention type trains on a tiny batch (a
# user's own module, which needs a target, in tests/attention/test_custom.py).
NETWORKS = [(arch, 1.0) for arch in backbone_names()] + [("resnet18", 1.5)]
BUILT_IN = [e.name for e in REGISTRY if not any(f.is_required() for f in e.options.model_fields.values())]


@pytest.mark.parametrize("attention", BUILT_IN)
@pytest.mark.parametrize(("arch", "width"), NETWORKS, ids=[f"{a}-{w:g}" for a, w in NETWORKS])
@pytest.mark.parametrize(("stem", "size"), [("cifar", 32), ("imagenet", 64)])
def test_forward_backward(arch: str, width: float, attention: str, stem: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, attention={"type": attention}, width=width, stem=stem)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(
    ("arch", "attention", "kind", "count"),
    [
        ("resnet50", "cbam", CBAM, 16),  # one per block: 3 + 4 + 6 + 3
        ("resnet18", "se", SE, 8),
        ("resnet50", "eca", ECA, 16),
        ("resnet50", "bam", BAM, 3),  # after stages 1-3 only (BAM paper)
        ("mobilenet_v1", "cbam", CBAM, 26),  # after each of 13 depthwise and 13 pointwise convs
        ("mobilenet_v1", "bam", BAM, 3),
    ],
)
def test_number_of_attention_modules(arch: str, attention: str, kind: type[nn.Module], count: int) -> None:
    with torch.device("meta"):
        model = build_model(arch, num_classes=10, attention={"type": attention})
    assert len(_modules_of(model, kind)) == count


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v1"])
def test_bam_sits_where_the_resolution_drops(arch: str) -> None:
    """BAM paper: at the bottlenecks between stages, i.e. on the 1/4, 1/8 and 1/16 resolution maps."""
    model = build_model(arch, num_classes=10, attention={"type": "bam"}).eval()
    sizes = []
    for bam in _modules_of(model, BAM):
        bam.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert sizes == [16, 8, 4]


@pytest.mark.parametrize(
    ("key", "value", "kwargs"),
    [
        ("model.arch", "resnet152", {"arch": "resnet152"}),
        ("model.stem", "tiny", {"stem": "tiny"}),
        ("model.layout", "v2", {"layout": "v2"}),
        ("model.width", 0, {"width": 0}),
        ("model.width", -1.5, {"width": -1.5}),
    ],
)
def test_bad_input_is_a_one_line_config_error(key: str, value: object, kwargs: dict) -> None:
    arguments = {"arch": "resnet18", "num_classes": 10, "attention": {"type": "none"}} | kwargs
    with pytest.raises(ConfigError) as error:
        build_model(arguments.pop("arch"), **arguments)
    message = str(error.value)
    assert key in message
    assert repr(value) in message
    assert "\n" not in message
