"""The ``model`` section of a run config: which backbone (any registered one), its width, stem and layout, and the
attention inside it. Torch-free."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from ablation.attention.options import NoAttentionOptions
from ablation.attention.registry import AttentionOptions
from ablation.core.strict import StrictModel, check_custom_choice, wrong_key
from ablation.core.targets import TARGET_FORMAT, TARGET_PATTERN
from ablation.models.registry import CUSTOM, Layout, Stem, arch_names


class ModelConfig(StrictModel):
    """Which network: backbone, its width, stem and bottleneck layout, and the attention inside it."""

    arch: str = "resnet50"
    # Stage-width multiplier: the paper's WideResNet18 is resnet18 with width 1.5 or 2.0 (stem stays 64);
    # for mobilenet_v1 it is the width multiplier alpha (0.7 and 1.0 in the paper's Table 5).
    width: float = 1.0
    # "imagenet": 7x7/2 conv + max-pool (224 px inputs); "cifar": 3x3/1 conv, no max-pool (32 px inputs).
    stem: Stem = "imagenet"
    # Bottleneck stride: "v1.5" on the 3x3 conv (torchvision, the official CBAM code that trained the paper's
    # nets); "v1" on the first 1x1 conv (original ResNet; the layout of the paper's printed GFLOPs).
    layout: Layout = "v1.5"
    attention: AttentionOptions = Field(default_factory=NoAttentionOptions)
    # None: the dataset's number of classes.
    num_classes: int | None = None
    # arch custom: the user's network, built as target(num_classes=..., attention=..., **options)
    # (ablation.models.custom); neither is allowed with a built-in arch.
    target: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("num_classes")
    @classmethod
    def _classes(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError("must be an integer >= 2 (or absent: the dataset's classes)")
        return value

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        if value not in arch_names():
            raise ValueError(f"allowed: {', '.join(arch_names())}")
        return value

    @field_validator("width")
    @classmethod
    def _width(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a number > 0")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not TARGET_PATTERN.fullmatch(value):
            raise ValueError(f"must be {TARGET_FORMAT.replace('mypkg.attn:MyAttention', 'mypkg.nets:build')}")
        return value

    @model_validator(mode="after")
    def _custom(self) -> ModelConfig:
        # Checks across keys, each reported on the key that is wrong (wrong_key: ablation.core.strict).
        check_custom_choice(
            self.arch, "arch", self.target, self.options, "the network's builder, 'package.module:build'"
        )
        fixed = sorted({"width", "stem", "layout"} & self.model_fields_set) if self.arch == CUSTOM else []
        if fixed:
            raise wrong_key(
                fixed[0],
                getattr(self, fixed[0]),
                "is a built-in backbone's; arch custom takes its network's own arguments in model.options",
            )
        return self
