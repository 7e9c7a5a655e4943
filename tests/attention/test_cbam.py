"""CBAM (ablation/attention/cbam.py) against the independent formulation (tests/support/formulation.py):
every arrangement of the two gates, the official state_dict and init, gradients, and values that bypass the
schema."""

from __future__ import annotations

import pytest
import torch

from ablation.attention.bam import BAM
from ablation.attention.cbam import CBAM
from ablation.core.errors import ConfigError
from tests.support.formulation import _gradcheck, _input_grad, assert_matches, image, randomize, reference_cbam
from tests.support.variants import ARRANGEMENTS, MODES, POOLS, C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


@MODES
@pytest.mark.parametrize("descriptor", ["pool", "conv"])
@pytest.mark.parametrize(("order", "combine"), ARRANGEMENTS)
def test_arrangement(order: str, combine: str, descriptor: str, train: bool) -> None:
    m = randomize(CBAM(C, reduction=4, order=order, parallel_combine=combine, spatial=descriptor)).train(train)
    assert (m.channel is None) == (order == "spatial-only")
    assert (m.spatial is None) == (order == "channel-only")
    x = image()
    expected = reference_cbam(m, x, train=train, order=order, combine=combine, descriptor=descriptor)
    assert_matches(m(x), expected)


def test_parallel_combines_differ() -> None:
    """The two parallel merges are different functions (the option is not silently ignored)."""
    product = randomize(CBAM(C, reduction=4, order="parallel"))
    summed = CBAM(C, reduction=4, order="parallel", parallel_combine="sum-logits")
    summed.load_state_dict(product.state_dict(), strict=True)
    x = image()
    assert (product(x) - summed(x)).abs().max() > 1e-2


def test_state_dict_and_parameter_count() -> None:
    """The official layout: Linear MLP with bias, k x k conv without bias, BN(1): 2*C*C/r + C/r + C + 2*49 + 2."""
    m = CBAM(256)
    assert set(m.state_dict()) == {
        "channel.mlp.0.weight",
        "channel.mlp.0.bias",
        "channel.mlp.2.weight",
        "channel.mlp.2.bias",
        "spatial.conv.weight",
        "spatial.bn.weight",
        "spatial.bn.bias",
        "spatial.bn.running_mean",
        "spatial.bn.running_var",
        "spatial.bn.num_batches_tracked",
    }
    assert sum(p.numel() for p in m.parameters()) == 2 * 256 * 16 + 16 + 256 + 2 * 49 + 2
    assert m.spatial.bn.momentum == 0.01


def test_fresh_init_follows_official_code() -> None:
    """Linear biases 0 (weights PyTorch's default); convs kaiming-normal fan_out; BAM's BN weight 1."""
    cbam = CBAM(2048, spatial="conv")
    for layer in (cbam.channel.mlp[0], cbam.channel.mlp[2]):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        assert layer.weight.abs().max() <= layer.in_features**-0.5  # PyTorch's default: U(-1/sqrt(in), +)
    # fan_out of the 1x1 conv C -> 1 is 1: std sqrt(2) (fan_in would give sqrt(2 / 2048) = 0.03)
    assert abs(cbam.spatial.compress.weight.std().item() - 2**0.5) < 0.1
    bam = BAM(1024)
    assert abs(bam.spatial[0].weight.std().item() - (2 / 64) ** 0.5) < 0.01
    assert torch.equal(bam.spatial[10].weight, torch.ones(1))
    assert torch.equal(bam.channel[3].bias, torch.zeros(1024))


@pytest.mark.parametrize(
    "options",
    [
        {"channel_pool": list(POOLS), "kernel_size": 3},
        {"channel_pool": ["max", "lse"], "order": "parallel", "parallel_combine": "sum-logits", "spatial": "conv"},
        {"channel_pool": ["avg", "lp"], "order": "spatial-first", "kernel_size": 5},
    ],
    ids=["channel-first", "parallel-sum", "spatial-first"],
)
def test_gradcheck_cbam(options: dict) -> None:
    """Train mode: the BN's batch statistics make the harder backward (eval mode is checked just below)."""
    _gradcheck(randomize(CBAM(8, reduction=2, **options)).train(), torch.randn(2, 8, 4, 3))


@MODES
@pytest.mark.parametrize(("order", "combine"), ARRANGEMENTS)
def test_input_gradient_matches_reference(order: str, combine: str, train: bool) -> None:
    pools = list(POOLS)
    m = randomize(CBAM(C, reduction=4, channel_pool=pools, order=order, parallel_combine=combine)).train(train)
    x = image()
    weight = torch.randn_like(x)
    expected = _input_grad(
        lambda f: reference_cbam(m, f, train=train, order=order, combine=combine, pools=pools), x, weight
    )
    assert_matches(_input_grad(m, x, weight), expected)


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("order", {"order": "sideways"}),
        ("channel_pool", {"channel_pool": ["median"]}),
        ("channel_pool", {"channel_pool": []}),
        ("channel_pool", {"channel_pool": ["avg", "avg"]}),
        ("channel_pool", {"channel_pool": ["lse", "median"], "order": "spatial-only"}),  # even where unused
        ("kernel_size", {"kernel_size": 4}),
        ("kernel_size", {"kernel_size": 0}),
        ("spatial", {"spatial": "fc"}),
        ("parallel_combine", {"parallel_combine": "mean"}),
    ],
)
def test_direct_construction_rejects(key: str, options: dict) -> None:
    """Values that bypass the schema still fail at construction, with one line naming key and value."""
    with pytest.raises(ConfigError) as err:
        CBAM(64, **options)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.attention.{key}: ")
    assert repr(options[key]) in message and "allowed" in message
