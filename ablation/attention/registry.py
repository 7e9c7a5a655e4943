"""The attention registry: a name -> module table, so a backbone never knows which attention it got.

Every module is built as ``Module(channels, **options)`` from the options of ``model.attention`` in an
experiment (see ``options.py``). ``placement`` says where a backbone puts it: ``"block"`` inside every
residual block (after its last BN, before the residual add: CBAM, SE), ``"stage"`` after stages 1-3 (BAM),
or ``None`` for the plain network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ablation.attention.bam import BAM
from ablation.attention.cbam import CBAM
from ablation.attention.options import ATTENTION_OPTIONS, StrictModel
from ablation.attention.se import SE
from ablation.errors import ConfigError

ATTENTION_MODULES: dict[str, type[nn.Module]] = {"none": nn.Identity, "se": SE, "cbam": CBAM, "bam": BAM}
ATTENTION_PLACEMENT: dict[str, str | None] = {"none": None, "se": "block", "cbam": "block", "bam": "stage"}
ATTENTION_TYPES = tuple(ATTENTION_MODULES)


def parse_attention(options: StrictModel | Mapping[str, Any]) -> StrictModel:
    """Validated options for ``options`` (a mapping with a ``type`` key, or already-validated options)."""
    if isinstance(options, StrictModel):
        return options
    kind = options.get("type")
    if not isinstance(kind, str) or kind not in ATTENTION_OPTIONS:
        raise ConfigError("model.attention.type", kind, f"required; allowed: {', '.join(ATTENTION_OPTIONS)}")
    return ATTENTION_OPTIONS[kind].model_validate(dict(options))


def placement(options: StrictModel | Mapping[str, Any]) -> str | None:
    """Where a backbone puts this attention: "block", "stage" or None (no attention)."""
    return ATTENTION_PLACEMENT[parse_attention(options).type]


def build_attention(options: StrictModel | Mapping[str, Any], channels: int) -> nn.Module:
    """The attention module of ``options`` for a ``channels``-channel feature map."""
    parsed = parse_attention(options)
    kwargs = parsed.model_dump(exclude={"type"})
    if parsed.type == "none":
        return nn.Identity()
    return ATTENTION_MODULES[parsed.type](channels, **kwargs)
