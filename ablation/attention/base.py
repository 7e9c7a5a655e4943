"""What every registered attention module is: ``forward(x)``, its equation, and ``forward_add(x, residual)``.

A residual block ends with ``relu(attention(out) + identity)``. It calls ``attention.forward_add(out, identity)``
so that an accelerated module (``ablation.attention.accel``) can fold the addition into its last pass over the
map; here it is the plain ``self(x) + residual``, out of place (a module's backward may need what it returned),
the same single addition the plain network's blocks do, so a CBAM-vs-plain comparison stays like for like.
"""

from __future__ import annotations

from torch import Tensor, nn


class Attention(nn.Module):
    """Base of every attention module a backbone holds, so a backbone never asks what it got."""

    def forward_add(self, x: Tensor, residual: Tensor) -> Tensor:
        """``self(x) + residual``: the residual block's addition."""
        return self(x) + residual


class NoAttention(Attention):
    """The plain network's slot: the identity (no parameters, so the plain state_dict is torchvision's)."""

    def __init__(self, channels: int | None = None) -> None:
        """``channels`` is ignored: the registry builds every attention type as ``Module(channels, **options)``."""
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x
