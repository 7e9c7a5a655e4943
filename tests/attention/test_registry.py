"""The attention registry (ablation/attention/registry.py): every registered type builds an Attention module
from its options, is in the config schema, has its placement and its label."""

from __future__ import annotations

import inspect

import pytest
import torch

from ablation.attention import REGISTRY, build_attention, placement
from ablation.attention.bam import BAM
from ablation.attention.base import Attention, NoAttention
from ablation.attention.cbam import CBAM
from ablation.attention.eca import ECA
from ablation.attention.options import CustomOptions
from ablation.attention.se import SE
from ablation.core.targets import load_target as load
from ablation.experiment.schema import parse_run_config

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")

# Every registered type whose options all have defaults (a user's module needs a target:
# tests/attention/test_custom.py).
BUILT_IN = [e for e in REGISTRY if not any(f.is_required() for f in e.options.model_fields.values())]


@pytest.mark.parametrize("entry", BUILT_IN, ids=lambda e: e.name)
def test_every_registered_type_builds_an_attention_module(entry) -> None:
    module = build_attention({"type": entry.name}, 64)
    assert type(module) is load(entry.module)
    assert isinstance(module, Attention)  # so a backbone can call forward_add on any of them
    x, residual = torch.randn(2, 64, 6, 6), torch.randn(2, 64, 6, 6)
    module.eval()
    with torch.no_grad():
        assert module(x).shape == x.shape
        torch.testing.assert_close(module.forward_add(x, residual), module(x) + residual)


@pytest.mark.parametrize("entry", BUILT_IN, ids=lambda e: e.name)
def test_schema_fields_are_the_constructors_keyword_arguments(entry) -> None:
    """options.py's promise: Module(channels, **options), nothing more (impl says how, and is not passed)."""
    parameters = inspect.signature(load(entry.module)).parameters
    keywords = {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(entry.options().constructor_kwargs()) == keywords


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda e: e.name)
def test_every_registered_type_is_in_the_config_schema(entry) -> None:
    fields = {"target": "mypkg.attn:MyAttention"} if entry.options is CustomOptions else {}
    config = parse_run_config({"model": {"attention": {"type": entry.name, **fields}}})
    assert isinstance(config.model.attention, entry.options)


def test_build_attention() -> None:
    m = build_attention({"type": "cbam", "kernel_size": 3}, 64)
    assert isinstance(m, CBAM)
    assert m.spatial.conv.kernel_size == (3, 3) and m.spatial.conv.padding == (1, 1)
    assert isinstance(build_attention({"type": "se"}, 64), SE)
    assert isinstance(build_attention({"type": "bam"}, 64), BAM)
    assert isinstance(build_attention({"type": "eca"}, 64), ECA)
    assert isinstance(build_attention({"type": "none"}, 64), NoAttention)


# Where each paper puts its module; every registered type is covered.
PLACEMENTS = {"none": None, "se": "block", "cbam": "block", "eca": "block", "bam": "stage"}


@pytest.mark.parametrize("entry", BUILT_IN, ids=lambda e: e.name)
def test_placement(entry) -> None:
    assert placement({"type": entry.name}) == PLACEMENTS[entry.name]


@pytest.mark.parametrize("entry", BUILT_IN, ids=lambda e: e.name)
def test_default_label_is_the_modules_name(entry) -> None:
    assert entry.options().table_label() == ("" if entry.name == "none" else entry.name.upper())
