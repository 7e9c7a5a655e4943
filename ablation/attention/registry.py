"""The attention registry: one entry per attention type, so a backbone never knows which attention it got.

An entry names the type's options schema (``options.py``: its fields, defaults, checks and table label), the
module it builds, as ``Module(channels, **options)``, and where a backbone puts it: ``"block"`` inside every
residual block (after its last BN, before the residual add: CBAM, SE, ECA), ``"stage"`` after stages 1-3 (BAM),
``None`` nowhere (the plain network), or ``"option"``: where the options' ``placement`` says (a user's module).
The pydantic union of ``model.attention``, the type names in error messages, the labels and the tests all come
from ``REGISTRY``; adding an attention type is one module file plus one line here.

Torch-free: modules are named by import path and loaded when a network is built, so reading and validating an
experiment never waits for torch.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from ablation.attention.options import (
    AttentionSchema,
    BAMOptions,
    CBAMOptions,
    CustomOptions,
    ECAOptions,
    NoAttentionOptions,
    SEOptions,
)
from ablation.core.errors import ConfigError
from ablation.core.targets import load_target


@dataclass(frozen=True)
class AttentionType:
    """One attention type: its options schema, the module it builds and where a backbone puts that module."""

    options: type[AttentionSchema]
    module: str  # "package.module:Name", called as Name(channels, **options.constructor_kwargs())
    placement: Literal["block", "stage", "option"] | None

    @property
    def name(self) -> str:
        """The ``type`` of model.attention: the schema's ``type`` literal."""
        return get_args(self.options.model_fields["type"].annotation)[0]


REGISTRY: tuple[AttentionType, ...] = (
    AttentionType(NoAttentionOptions, "ablation.attention.base:NoAttention", placement=None),
    AttentionType(SEOptions, "ablation.attention.se:SE", placement="block"),
    AttentionType(CBAMOptions, "ablation.attention.cbam:CBAM", placement="block"),
    AttentionType(BAMOptions, "ablation.attention.bam:BAM", placement="stage"),
    AttentionType(ECAOptions, "ablation.attention.eca:ECA", placement="block"),
    AttentionType(CustomOptions, "ablation.attention.adapter:build_custom", placement="option"),
)
ENTRIES: dict[str, AttentionType] = {entry.name: entry for entry in REGISTRY}
ATTENTION_TYPES: tuple[str, ...] = tuple(ENTRIES)
OPTIONS: dict[str, type[AttentionSchema]] = {name: entry.options for name, entry in ENTRIES.items()}
# The schema of model.attention: one of the registered options, told apart by ``type``.
AttentionOptions = Annotated[reduce(operator.or_, OPTIONS.values()), Field(discriminator="type")]


def parse_attention(options: AttentionSchema | Mapping[str, Any]) -> AttentionSchema:
    """Validated options for ``options`` (a mapping with a ``type`` key, or already-validated options)."""
    if isinstance(options, AttentionSchema):
        return options
    kind = options.get("type")
    if not isinstance(kind, str) or kind not in OPTIONS:
        raise ConfigError("model.attention.type", kind, f"required; allowed: {', '.join(ATTENTION_TYPES)}")
    return OPTIONS[kind].model_validate(dict(options))


def placement(options: AttentionSchema | Mapping[str, Any]) -> str | None:
    """Where a backbone puts this attention: "block", "stage" or None (no attention)."""
    parsed = parse_attention(options)
    where = ENTRIES[parsed.type].placement
    return parsed.placement if where == "option" else where


def build_attention(options: AttentionSchema | Mapping[str, Any], channels: int):
    """The attention module of ``options`` for a ``channels``-channel feature map."""
    parsed = parse_attention(options)
    return load_target(ENTRIES[parsed.type].module)(channels, **parsed.constructor_kwargs())
