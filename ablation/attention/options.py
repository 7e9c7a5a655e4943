"""Typed, strict options of every attention type: the ``model.attention`` section of an experiment, and its label.

Each class is the schema of one registry entry (``ablation.attention.registry``); its fields, minus ``type`` and
the ``HOW_FIELDS``, are exactly the keyword arguments of that module's constructor, ``Module(channels,
**options)``. Unknown keys and wrong types are errors. ``table_label()`` is the arm's label in the results table.
Pydantic only: reading and validating an experiment never waits for torch.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from ablation.core.strict import StrictModel
from ablation.core.targets import TARGET_FORMAT, TARGET_PATTERN

# Every allowed value of an attention option is declared here once; the modules (channel.py, spatial.py, cbam.py)
# and the labels below derive theirs with typing.get_args.
ChannelPool = Literal["avg", "max", "lp", "lse"]
Order = Literal["channel-first", "spatial-first", "parallel", "channel-only", "spatial-only"]
SpatialDescriptor = Literal["pool", "conv"]
ParallelCombine = Literal["product", "sum-logits"]
Impl = Literal["fast", "reference"]
Placement = Literal["block", "stage"]

# Keys of model.attention that say how a module is computed or named, never what it computes: they are not
# constructor arguments, and ablation.experiment.schema leaves them out of the config hash.
HOW_FIELDS = ("impl", "label")

# Labels as the paper writes them, keyed by the Literals' values (checked below: a value added to a Literal
# without a label fails at import).
POOL_NAMES = {"avg": "AvgPool", "max": "MaxPool", "lp": "LpPool", "lse": "LSEPool"}
ORDER_NAMES = {
    "channel-first": "channel + spatial",
    "spatial-first": "spatial + channel",
    "parallel": "channel & spatial in parallel",
    "channel-only": "channel only",
    "spatial-only": "spatial only",
}
assert tuple(POOL_NAMES) == get_args(ChannelPool), "POOL_NAMES must label every ChannelPool"
assert tuple(ORDER_NAMES) == get_args(Order), "ORDER_NAMES must label every Order"


def format_value(value: Any) -> str:
    """A config value as a label fragment: lists joined with ' & ', pooling names as the paper writes them."""
    if isinstance(value, list | tuple):
        return " & ".join(format_value(v) for v in value)
    if isinstance(value, str):
        return POOL_NAMES.get(value, value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _odd_kernel(value: int, kept: str = "the size") -> int:
    """A conv kernel whose padding k // 2 keeps ``kept`` (CBAM's H x W, ECA's channel count)."""
    if value < 1 or value % 2 == 0:
        raise ValueError(f"must be an odd integer >= 1 (1, 3, 7, ...), so the padding k // 2 keeps {kept}")
    return value


class AttentionSchema(StrictModel):
    """Base of every attention type's options."""

    type: str

    def table_label(self) -> str:
        """The attention's part of an arm's label: "" (none), "SE", "CBAM (k=3)", ..."""
        raise NotImplementedError

    def constructor_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the module's constructor: every field but ``type`` and the HOW_FIELDS."""
        return self.model_dump(exclude={"type", *HOW_FIELDS})


def _with(name: str, parts: list[str]) -> str:
    return f"{name} ({', '.join(parts)})" if parts else name


class _Reduced(AttentionSchema):
    """Options shared by every module with a channel MLP C -> C/r -> C."""

    reduction: int = 16

    @field_validator("reduction")
    @classmethod
    def _reduction(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be an integer >= 1")
        return value

    def _reduction_label(self) -> list[str]:
        return [] if self.reduction == 16 else [f"r={self.reduction}"]


class NoAttentionOptions(AttentionSchema):
    """The plain backbone: no attention module anywhere."""

    type: Literal["none"] = "none"

    def table_label(self) -> str:
        return ""


class SEOptions(_Reduced):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018): sigmoid(MLP(AvgPool(F))) * F."""

    type: Literal["se"] = "se"
    mlp_bias: bool = True  # SE and the official CBAM code use nn.Linear with bias
    impl: Impl = "fast"  # as CBAM's: SE is CBAM's channel-only avg arm

    def table_label(self) -> str:
        return _with("SE", self._reduction_label())


class CBAMOptions(_Reduced):
    """CBAM (Woo et al., ECCV 2018) with every axis the paper ablates, plus the official code's details."""

    type: Literal["cbam"] = "cbam"
    # Paper Table 1: avg / max / both; the official code also offers lp (p=2) and lse.
    channel_pool: list[ChannelPool] = Field(default_factory=lambda: ["avg", "max"])
    # Paper Table 2: "pool" = [AvgPool_c; MaxPool_c]; "conv" = a learned 1x1 conv C -> 1.
    spatial: SpatialDescriptor = "pool"
    kernel_size: int = 7
    # Paper Table 3 arrangements, plus the single-gate arms.
    order: Order = "channel-first"
    # Only used by order=parallel. "product": F * Mc(F) * Ms(F), each gate exactly as in sequential CBAM,
    # so Table 3 changes one variable (the arrangement) and nothing else; this is the default.
    # "sum-logits": F * sigmoid(logit_c(F) + logit_s(F)), the BAM-style merge of the two branches.
    parallel_combine: ParallelCombine = "product"
    # Fidelity switches for the official code (Jongchan/attention-module):
    mlp_bias: bool = True  # nn.Linear with bias (timm: 1x1 conv without bias)
    spatial_bn: bool = True  # BatchNorm2d(1, momentum=0.01) after the k x k conv
    spatial_bn_zero_init: bool = True  # that BN's weight starts at 0: the spatial gate starts at 0.5
    # How CBAM is computed, not what: "fast" lets the training job speed it up (ablation.attention.accel) with
    # the same parameters and the same function up to float rounding; "reference" runs the straightforward
    # modules. Not a constructor argument, and excluded from config_hash (HOW_FIELDS).
    impl: Impl = "fast"

    @field_validator("channel_pool")
    @classmethod
    def _pools(cls, value: list[str]) -> list[str]:
        allowed = ", ".join(get_args(ChannelPool))
        if not value:
            raise ValueError(f"must be a non-empty subset of [{allowed}]")
        if len(set(value)) != len(value):
            raise ValueError(f"must not repeat a pooling; a subset of [{allowed}]")
        return value

    @field_validator("kernel_size")
    @classmethod
    def _kernel(cls, value: int) -> int:
        return _odd_kernel(value, "H x W")

    def table_label(self) -> str:
        """'CBAM', or 'CBAM (...)' listing every option that differs from the paper's."""
        default = CBAMOptions()
        parts = []
        if self.order != default.order:
            parts.append(ORDER_NAMES[self.order])
        if self.order != "spatial-only" and self.channel_pool != default.channel_pool:
            parts.append(format_value(self.channel_pool))
        if self.order != "channel-only":
            if self.spatial != default.spatial:
                parts.append("1x1 conv descriptor")
            if self.kernel_size != default.kernel_size:
                parts.append(f"k={self.kernel_size}")
        if self.order == "parallel" and self.parallel_combine != default.parallel_combine:
            parts.append("sigmoid of summed logits")
        parts += self._reduction_label()
        for key, label in (
            ("mlp_bias", "no MLP bias"),
            ("spatial_bn", "no spatial BN"),
            ("spatial_bn_zero_init", "spatial BN weight 1 at init"),
        ):
            if not getattr(self, key):
                parts.append(label)
        return _with("CBAM", parts)


class ECAOptions(AttentionSchema):
    """ECA (Wang et al., CVPR 2020): F * sigmoid(conv1d_k(AvgPool(F))), a k-wide 1-D conv across the channels."""

    type: Literal["eca"] = "eca"
    # None: the paper's adaptive k = |log2(C) / gamma + beta / gamma|, taken to the nearest odd integer above.
    kernel_size: int | None = None
    gamma: float = 2.0
    beta: float = 1.0

    @field_validator("kernel_size")
    @classmethod
    def _kernel(cls, value: int | None) -> int | None:
        return None if value is None else _odd_kernel(value)

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a number > 0")
        return value

    def table_label(self) -> str:
        default = ECAOptions()
        parts = [] if self.kernel_size is None else [f"k={self.kernel_size}"]
        parts += [
            f"{key}={format_value(getattr(self, key))}"
            for key in ("gamma", "beta")
            if self.kernel_size is None and getattr(self, key) != getattr(default, key)
        ]
        return _with("ECA", parts)


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

    def table_label(self) -> str:
        return _with("BAM", self._reduction_label())


class CustomOptions(AttentionSchema):
    """A module of the user's own, built as ``Name(channels, **options)`` from an importable ``target``.

    Its constructor arguments are checked against ``options`` before any job (ablation.attention.custom), and
    the SHA-256 of its source file is part of each cell's key: editing the module gives new cells.
    """

    type: Literal["custom"] = "custom"
    target: str
    options: dict[str, Any] = Field(default_factory=dict)
    # "block": in every block, after its last BN and before the residual add (as CBAM); "stage": after stages
    # 1-3 (as BAM).
    placement: Placement = "block"
    label: str | None = None  # the table's label; default: the class name and the options given

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not TARGET_PATTERN.fullmatch(value):
            raise ValueError(f"must be {TARGET_FORMAT}")
        return value

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty text (or absent: the class name)")
        return value

    def table_label(self) -> str:
        if self.label is not None:
            return self.label
        name = self.target.rpartition(":")[2].rpartition(".")[2]
        return _with(name, [f"{key}={format_value(value)}" for key, value in self.options.items()])

    def constructor_kwargs(self) -> dict[str, Any]:
        """The builder's arguments (ablation.attention.adapter.build_custom), not the user's constructor's."""
        return {"target": self.target, "options": dict(self.options)}
