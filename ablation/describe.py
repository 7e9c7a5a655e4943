"""Human labels for arms: read like the paper's row labels ("ResNet50 + CBAM (k=3)")."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from ablation.attention.options import CBAMOptions, StrictModel
from ablation.config import get_dotted

POOL_NAMES = {"avg": "AvgPool", "max": "MaxPool", "lp": "LpPool", "lse": "LSEPool"}
ORDER_NAMES = {
    "channel-first": "channel + spatial",
    "spatial-first": "spatial + channel",
    "parallel": "channel & spatial in parallel",
    "channel-only": "channel only",
    "spatial-only": "spatial only",
}
_CBAM_DEFAULTS = CBAMOptions().model_dump()


def format_value(value: Any) -> str:
    """A config value as a label fragment: lists joined with ' & ', pooling names as the paper writes them."""
    if isinstance(value, list):
        return " & ".join(format_value(v) for v in value)
    if isinstance(value, str):
        return POOL_NAMES.get(value, value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe_attention(options: StrictModel) -> str:
    """'' for none, '+ SE', '+ CBAM', or '+ CBAM (...)' listing every option that differs from the paper's."""
    kind = options.type
    if kind == "none":
        return ""
    if kind in ("se", "bam"):
        extra = "" if options.reduction == 16 else f" (r={options.reduction})"
        return f" + {kind.upper()}{extra}"
    opts = options.model_dump()
    parts = []
    if opts["order"] != "channel-first":
        parts.append(ORDER_NAMES[opts["order"]])
    if opts["order"] != "spatial-only" and opts["channel_pool"] != _CBAM_DEFAULTS["channel_pool"]:
        parts.append(format_value(opts["channel_pool"]))
    if opts["order"] != "channel-only":
        if opts["spatial"] != "pool":
            parts.append("1x1 conv descriptor")
        if opts["kernel_size"] != 7:
            parts.append(f"k={opts['kernel_size']}")
    if opts["order"] == "parallel" and opts["parallel_combine"] != "product":
        parts.append("sigmoid of summed logits")
    if opts["reduction"] != 16:
        parts.append(f"r={opts['reduction']}")
    for key, label in (
        ("mlp_bias", "no MLP bias"),
        ("spatial_bn", "no spatial BN"),
        ("spatial_bn_zero_init", "spatial BN weight 1 at init"),
    ):
        if not opts[key]:
            parts.append(label)
    return " + CBAM" + (f" ({', '.join(parts)})" if parts else "")


class _DottedFormatter(string.Formatter):
    """str.format where ``{model.attention.kernel_size}`` looks the dotted key up in the resolved config."""

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        return format_value(get_dotted(kwargs, field_name)), field_name


def render_template(template: str, resolved: Mapping[str, Any]) -> str:
    try:
        return _DottedFormatter().format(template, **resolved)
    except KeyError as exc:
        from ablation.errors import ConfigError

        raise ConfigError("grid.description", template, f"names {exc.args[0]!r}, which is not a config key") from None
