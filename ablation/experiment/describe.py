"""Human labels for arms: read like the paper's row labels ("ResNet50 + CBAM (k=3)").

The attention's part of a label comes from its options schema (``table_label``, ``ablation.attention.options``),
so every registered type, a user's own module included, is labelled by its own entry.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from ablation.attention.options import ORDER_NAMES, POOL_NAMES, AttentionSchema, format_value
from ablation.core.errors import ConfigError
from ablation.experiment.schema import get_dotted

__all__ = ["ORDER_NAMES", "POOL_NAMES", "describe_attention", "format_value", "render_template"]


def describe_attention(options: AttentionSchema) -> str:
    """'' for none, ' + SE', ' + CBAM', or ' + CBAM (...)' listing every option that differs from the paper's."""
    label = options.table_label()
    return f" + {label}" if label else ""


class _DottedFormatter(string.Formatter):
    """str.format where ``{model.attention.kernel_size}`` looks the dotted key up in the resolved config."""

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        return format_value(get_dotted(kwargs, field_name)), field_name


def render_template(template: str, resolved: Mapping[str, Any]) -> str:
    try:
        return _DottedFormatter().format(template, **resolved)
    except KeyError as exc:
        raise ConfigError("grid.description", template, f"names {exc.args[0]!r}, which is not a config key") from None
