"""The backbone registry (ablation/models/registry.py): the paper's row labels, the names the config accepts, a backbone
registered from outside."""

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


def test_the_config_accepts_exactly_the_registered_backbones() -> None:
    from ablation.core.errors import ConfigError
    from ablation.experiment.schema import parse_run_config
    from ablation.models import backbone_names

    for arch in backbone_names():
        assert parse_run_config({"model": {"arch": arch}}).model.arch == arch
    with pytest.raises(ConfigError, match=r"model\.arch: 'resnet9' is not allowed; allowed: resnet18, resnet34"):
        parse_run_config({"model": {"arch": "resnet9"}})


def test_a_backbone_registered_from_outside_is_built_labelled_and_validated(tmp_path, monkeypatch) -> None:
    """One entry, from a module of the user's own, and every part of the harness knows the backbone: the config, the
    builder, the label, the profile's layout column."""
    from ablation.experiment.schema import parse_run_config
    from ablation.models import Backbone, build_model, register_backbone, registry

    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text(
        "from ablation.models.resnet import BasicBlock, ResNet\n"
        "def resnet10(**kwargs):\n"
        "    return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the test's entry goes with it
    register_backbone(Backbone("resnet10", "mynets.tiny:resnet10", "ResNet10"))
    config = parse_run_config({"model": {"arch": "resnet10", "width": 0.5, "attention": {"type": "cbam"}}})
    model = build_model("resnet10", num_classes=10, attention=config.model.attention, width=0.5, stem="cifar")
    assert sum(1 for name, _ in model.named_modules() if name.endswith(".attention")) == 4  # one block per stage
    assert display_name("resnet10", 0.5) == "ResNet10 (width=0.5)"
    with pytest.raises(ValueError, match="registered already"):
        register_backbone(Backbone("resnet10", "mynets.tiny:resnet10", "ResNet10"))
