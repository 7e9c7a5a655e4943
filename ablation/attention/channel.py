"""The channel gate Mc of CBAM (Woo et al., ECCV 2018, eq. 2), and with AvgPool alone, SE's gate.

    Mc(F) = sigmoid( sum over pools p of MLP(Pool_p(F)) ),   MLP = W1 . ReLU . W0,  W0: C -> C/r,  W1: C/r -> C

ONE MLP is shared by all pools and the sigmoid comes after the sum, so the gate lies in (0, 1); a sigmoid per
pool followed by a sum (a common blog version) would range over (0, P).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import get_args

import torch
from torch import Tensor, nn

from ablation.attention.options import ChannelPool
from ablation.core.errors import ConfigError

# Global poolings over H x W, (B, C, H, W) -> (B, C), one per name of the schema's ChannelPool. "lp" and "lse"
# are the extras of the official code (Jongchan/attention-module, cbam.py): lp = F.lp_pool2d(p=2) over the full
# window = the L2 norm (a sum, not a mean); lse = its logsumexp_2d, a log-sum-exp over all H*W positions (again a
# sum, not a mean).
POOLS: dict[str, Callable[[Tensor], Tensor]] = {
    "avg": lambda x: x.mean(dim=(2, 3)),
    "max": lambda x: x.amax(dim=(2, 3)),
    # vector_norm rather than sqrt(sum(x^2)): same value, but a zero gradient instead of NaN on an all-zero map.
    "lp": lambda x: torch.linalg.vector_norm(x, ord=2, dim=(2, 3)),
    "lse": lambda x: torch.logsumexp(x.flatten(2), dim=2),
}


def check_pools(pools: Sequence[str]) -> None:
    """Raise ConfigError unless ``pools`` is a non-empty, repeat-free subset of the schema's poolings (the schema
    checks this too; repeated for direct construction: tests, notebooks)."""
    allowed = get_args(ChannelPool)
    if not pools or len(set(pools)) != len(pools) or not set(pools) <= set(allowed):
        raise ConfigError(
            "model.attention.channel_pool",
            pools,
            f"allowed: a non-empty subset of {', '.join(allowed)} without repeats",
        )


def hidden_channels(channels: int, reduction: int) -> int:
    """C // r, the MLP's hidden width; ConfigError if it would be 0 (or r < 1), instead of an empty Linear."""
    if reduction < 1 or channels // reduction < 1:
        detail = f"leaves {channels} // {reduction} = 0 hidden channels" if reduction >= 1 else "must be >= 1"
        raise ConfigError(
            "model.attention.reduction",
            reduction,
            f"{detail} for a {channels}-channel feature map; allowed: 1..{channels}",
        )
    return channels // reduction


class ChannelGate(nn.Module):
    """Mc(F), shape (B, C, 1, 1): which channels matter ("what"). Returns the gate, not the gated features."""

    def __init__(
        self, channels: int, *, pools: Sequence[str] = ("avg", "max"), reduction: int = 16, mlp_bias: bool = True
    ) -> None:
        super().__init__()
        check_pools(pools)
        hidden = hidden_channels(channels, reduction)
        self.pools = tuple(pools)
        # nn.Linear as the official code (timm uses 1x1 convs without bias: mlp_bias=False).
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=mlp_bias),
            nn.ReLU(inplace=False),
            nn.Linear(hidden, channels, bias=mlp_bias),
        )
        # Official init: the Linear weights keep PyTorch's default, every bias starts at 0.
        for layer in (self.mlp[0], self.mlp[2]):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def logits(self, x: Tensor) -> Tensor:
        """sum_p MLP(Pool_p(x)), (B, C, 1, 1), before the sigmoid (BAM-style merges add these to Ms's logits)."""
        # One (P, B, C) batch through the shared MLP: one pair of matmuls whatever the number of pools.
        pooled = torch.stack([POOLS[name](x) for name in self.pools])
        return self.mlp(pooled).sum(dim=0)[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))
