"""Parameter and multiply-accumulate counts of a network, without running it for real.

The network is built and run on PyTorch's ``meta`` device: shapes propagate, no memory is allocated and no
arithmetic is done, so ResNet-101 at 224 px is counted in well under a second. MACs come from
``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add of convolutions and matrix
products and nothing for pooling, BN or elementwise ops: exactly the paper's "GFLOPs" convention once halved.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (BN running statistics are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass of one image of ``image_size`` x ``image_size``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.empty(1, in_channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def measure(build: Callable[[], nn.Module], image_size: int, in_channels: int = 3) -> tuple[int, int]:
    """(params, MACs) of the network that ``build()`` returns, built on the meta device."""
    with torch.device("meta"):
        model = build()
    return count_params(model), count_macs(model, image_size, in_channels)
