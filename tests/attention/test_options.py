"""The attention options schemas (ablation/attention/options.py): allowed values are the schema's Literals,
bad values are rejected, and ``impl`` says how CBAM runs, not what is built or which cell it is."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from ablation.attention import build_attention
from ablation.attention.cbam import CBAM
from ablation.attention.options import ORDER_NAMES, POOL_NAMES, CBAMOptions, ChannelPool, Order, ParallelCombine
from ablation.experiment.schema import config_hash, parse_run_config
from tests.support.variants import ARRANGEMENTS, POOLS

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


def test_allowed_values_are_the_schemas_literals() -> None:
    """The literal lists the tests sweep (tests/support/variants.py) and the labels cover the schema's values."""
    assert set(POOLS) == set(get_args(ChannelPool)) == set(POOL_NAMES)
    assert {order for order, _ in ARRANGEMENTS} == set(get_args(Order)) == set(ORDER_NAMES)
    assert {combine for _, combine in ARRANGEMENTS} == set(get_args(ParallelCombine))


@pytest.mark.parametrize(("field", "value"), [("kernel_size", 4), ("channel_pool", ["median"]), ("order", "sideways")])
def test_schema_rejects(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        CBAMOptions.model_validate({field: value})
    message = str(err.value)
    assert field in message
    assert str(value[0] if isinstance(value, list) else value) in message


def test_default_impl_is_fast() -> None:
    """impl says how the training job runs CBAM, not what is built: the same reference module either way."""
    assert CBAMOptions().impl == "fast"
    module = build_attention({"type": "cbam"}, 64)
    reference = build_attention({"type": "cbam", "impl": "reference"}, 64)
    assert type(module) is type(reference) is CBAM
    assert set(module.state_dict()) == set(reference.state_dict())


def test_impl_is_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        CBAMOptions.model_validate({"impl": "turbo"})
    with pytest.raises(TypeError):  # not a constructor argument any more: chosen by accelerate, not the module
        CBAM(16, impl="fast")


def test_switching_impl_keeps_config_hash() -> None:
    fast = parse_run_config({"model": {"attention": {"type": "cbam"}}})
    reference = parse_run_config({"model": {"attention": {"type": "cbam", "impl": "reference"}}})
    other = parse_run_config({"model": {"attention": {"type": "cbam", "kernel_size": 3}}})
    assert fast.model.attention.impl == "fast" and reference.model.attention.impl == "reference"
    assert config_hash(fast) == config_hash(reference) != config_hash(other)
