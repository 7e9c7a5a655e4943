"""The attention family: reference modules (``se``, ``cbam``, ``bam``, ``eca``; ``channel`` and ``spatial`` are
CBAM's gates), their options (``options``), the one registry that names them (``registry``), a user's own module
(``custom``, ``adapter``) and the accelerator seam (``accel``). Importing the package imports no torch: the
registry loads a module when a network is built.

May import ``core`` only: the config (``experiment``), the backbones (``models``) and the accelerated training path
(``engine``) build on it, never the other way round."""

from ablation.attention.registry import (
    ATTENTION_TYPES,
    REGISTRY,
    AttentionOptions,
    build_attention,
    parse_attention,
    placement,
)

__all__ = [
    "ATTENTION_TYPES",
    "REGISTRY",
    "AttentionOptions",
    "build_attention",
    "parse_attention",
    "placement",
]
