"""The attention family. Its name -> module table lives in ``registry`` and is loaded on first use, so that reading
and validating an experiment (``options``, pydantic only) never waits for torch: a typo in a config is reported
in well under a second."""

from __future__ import annotations

from typing import Any

_REGISTRY_NAMES = (
    "ATTENTION_MODULES",
    "ATTENTION_PLACEMENT",
    "ATTENTION_TYPES",
    "build_attention",
    "parse_attention",
    "placement",
)


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_NAMES:
        from ablation.attention import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'ablation.attention' has no attribute {name!r}")
