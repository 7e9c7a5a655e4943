"""Typed, strict options of every attention type: the ``model.attention`` section of an experiment.

Each class is the schema of one registry entry; its fields (minus ``type``) are exactly the keyword arguments
of that module's constructor, ``Module(channels, **options)``. Unknown keys and wrong types are errors.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ChannelPool = Literal["avg", "max", "lp", "lse"]
Order = Literal["channel-first", "spatial-first", "parallel", "channel-only", "spatial-only"]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys and wrong types (e.g. "3" for an int) are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Reduced(StrictModel):
    """Options shared by every module with a channel MLP C -> C/r -> C."""

    reduction: int = 16

    @field_validator("reduction")
    @classmethod
    def _reduction(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be an integer >= 1")
        return value


class NoAttention(StrictModel):
    """The plain backbone: no attention module anywhere."""

    type: Literal["none"] = "none"


class SEOptions(_Reduced):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018): sigmoid(MLP(AvgPool(F))) * F."""

    type: Literal["se"] = "se"
    mlp_bias: bool = True  # SE and the official CBAM code use nn.Linear with bias
    impl: Literal["fast", "reference"] = "fast"  # as CBAM's: SE is CBAM's channel-only avg arm


class CBAMOptions(_Reduced):
    """CBAM (Woo et al., ECCV 2018) with every axis the paper ablates, plus the official code's details."""

    type: Literal["cbam"] = "cbam"
    # Paper Table 1: avg / max / both; the official code also offers lp (p=2) and lse.
    channel_pool: list[ChannelPool] = Field(default_factory=lambda: ["avg", "max"])
    # Paper Table 2: "pool" = [AvgPool_c; MaxPool_c]; "conv" = a learned 1x1 conv C -> 1.
    spatial: Literal["pool", "conv"] = "pool"
    kernel_size: int = 7
    # Paper Table 3 arrangements, plus the single-gate arms.
    order: Order = "channel-first"
    # Only used by order=parallel. "product": F * Mc(F) * Ms(F), each gate exactly as in sequential CBAM,
    # so Table 3 changes one variable (the arrangement) and nothing else; this is the default.
    # "sum-logits": F * sigmoid(logit_c(F) + logit_s(F)), the BAM-style merge of the two branches.
    parallel_combine: Literal["product", "sum-logits"] = "product"
    # Fidelity switches for the official code (Jongchan/attention-module):
    mlp_bias: bool = True  # nn.Linear with bias (timm: 1x1 conv without bias)
    spatial_bn: bool = True  # BatchNorm2d(1, momentum=0.01) after the k x k conv
    spatial_bn_zero_init: bool = True  # that BN's weight starts at 0: the spatial gate starts at 0.5
    # How CBAM is computed, not what: "fast" (ablation/attention/fused.py: one autograd Function over fused
    # C++ kernels on CPU; fast.py for the variants it does not cover) or "reference" (the straightforward
    # modules). Same parameters, same function up to float rounding, so it is excluded from config_hash
    # (ablation/config.py HASH_EXCLUDED).
    impl: Literal["fast", "reference"] = "fast"

    @field_validator("channel_pool")
    @classmethod
    def _pools(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must be a non-empty subset of [avg, max, lp, lse]")
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a pooling; a subset of [avg, max, lp, lse]")
        return value

    @field_validator("kernel_size")
    @classmethod
    def _kernel(cls, value: int) -> int:
        if value < 1 or value % 2 == 0:
            raise ValueError("must be an odd integer >= 1 (1, 3, 7, ...), so the padding k // 2 keeps H x W")
        return value


class BAMOptions(_Reduced):
    """BAM (Park et al., BMVC 2018): F * (1 + sigmoid(Mc(F) + Ms(F))) after stages 1-3 only."""

    type: Literal["bam"] = "bam"
    dilation: int = 4

    @field_validator("dilation")
    @classmethod
    def _dilation(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be an integer >= 1")
        return value


AttentionOptions = Annotated[NoAttention | SEOptions | CBAMOptions | BAMOptions, Field(discriminator="type")]
ATTENTION_OPTIONS: dict[str, type[StrictModel]] = {
    "none": NoAttention,
    "se": SEOptions,
    "cbam": CBAMOptions,
    "bam": BAMOptions,
}
