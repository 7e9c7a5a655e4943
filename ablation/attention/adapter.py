"""Builds a user's own attention module (``type: custom``) into a backbone's slot.

A module whose class subclasses ``ablation.attention.base.Attention`` is placed as it is. Any other
``nn.Module`` is wrapped in ``AttentionAdapter``, which gives it the ``forward_add`` every backbone calls, and
whose only child is the user's module, under the name ``module``: its parameters then appear in the network's
state_dict one level deeper (``layer1.0.attention.module.conv.weight`` rather than
``layer1.0.attention.conv.weight``). Subclass ``Attention`` to keep the keys of a checkpoint made elsewhere.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ablation.attention.base import Attention
from ablation.attention.custom import OPTIONS_KEY, TARGET_KEY, resolve_target
from ablation.core.errors import ConfigError


class AttentionAdapter(Attention):
    """Any ``nn.Module`` mapping a feature map to one of the same shape, as an ``Attention``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)


def build_custom(channels: int, *, target: str, options: dict[str, Any]) -> Attention:
    """``target(channels, **options)`` as an ``Attention``; what its constructor raises is one ConfigError line
    (it runs on the meta device before any job, so a value the module rejects is reported then)."""
    factory = resolve_target(target)
    try:
        module = factory(channels, **options)
    except ConfigError:
        raise
    except Exception as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        call = ", ".join([str(channels), *(f"{key}={value!r}" for key, value in options.items())])
        raise ConfigError(OPTIONS_KEY, options, "", sentence=f"{target}({call}) raised {why}") from None
    if isinstance(module, Attention):
        return module
    if not isinstance(module, nn.Module):
        raise ConfigError(
            TARGET_KEY, target, f"returned a {type(module).__name__}, not a torch.nn.Module; allowed: a module class"
        )
    return AttentionAdapter(module)
