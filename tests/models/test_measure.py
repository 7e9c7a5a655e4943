"""Parameter and multiply-accumulate counts (ablation/models/measure.py), on layers worked out by hand."""

import torch
from torch import nn

from ablation.models.measure import count_macs, count_params, measure


def _net() -> nn.Module:
    # 3 -> 8 channels by a 3x3 conv on a 10x10 map (padding keeps the size), then a linear layer 800 -> 5.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(800, 5)
    )


def test_counts_of_a_conv_and_a_linear_layer():
    devices = []

    def build() -> nn.Module:
        devices.append(torch.empty(0).device.type)
        return _net()

    params, macs = measure(build, image_size=10)
    assert devices == ["meta"]  # built without memory
    assert params == 8 * 3 * 3 * 3 + 2 * 8 + 800 * 5 + 5  # BN's running statistics are buffers, not parameters
    assert macs == 8 * 3 * 3 * 3 * 10 * 10 + 800 * 5  # one multiply-add per weight per output position


def test_counting_keeps_the_networks_mode():
    model = _net().train()
    assert count_macs(model, image_size=10) == 8 * 3 * 3 * 3 * 10 * 10 + 800 * 5
    assert model.training
    assert count_params(model.eval()) == count_params(_net()) and not model.training
