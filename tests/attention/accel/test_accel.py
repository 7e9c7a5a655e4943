"""The accelerator seam (ablation/attention/accel/__init__.py, ``accelerate``): every CBAM ablation variant, as
the seam runs it, against the reference module, in train and eval mode, contiguous and channels_last, on each
backend of the fused path; what it chooses per variant and device, that it keeps the parameters, what it leaves
alone, when it builds the kernels, and that the reference modules never import it.

Same weights (one state_dict loaded into both), forward output, input gradient and every parameter gradient
agree with the straightforward modules (what impl="reference" runs) to float rounding; parameters and BN
statistics are randomised first (with the official init the spatial BN weight is 0 and the spatial branch would
be invisible)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn

from ablation.attention.accel import ACCELERATED, accelerate, cpu_kernels, fused
from ablation.attention.accel.fast import FastChannelGate, FastSpatialGate
from ablation.attention.bam import BAM
from ablation.attention.base import NoAttention
from ablation.attention.cbam import CBAM
from ablation.models import build_model
from tests.attention.accel.conftest import BACKENDS, CPU, LAYOUTS, compare
from tests.support.folders import ROOT
from tests.support.variants import ARRANGEMENTS, MODES, POOL_SUBSETS, C

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


@BACKENDS
@MODES
@LAYOUTS
@pytest.mark.parametrize("mlp_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("pools", POOL_SUBSETS, ids="+".join)
def test_channel_pooling(pools: list[str], mlp_bias: bool, channels_last: bool, train: bool) -> None:
    compare({"channel_pool": pools, "mlp_bias": mlp_bias}, train, channels_last)


@BACKENDS
@MODES
@LAYOUTS
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
@pytest.mark.parametrize("descriptor", ["pool", "conv"])
def test_spatial_gate(descriptor: str, kernel_size: int, bn: bool, channels_last: bool, train: bool) -> None:
    compare({"spatial": descriptor, "kernel_size": kernel_size, "spatial_bn": bn}, train, channels_last)


@BACKENDS
@MODES
@LAYOUTS
@pytest.mark.parametrize("descriptor", ["pool", "conv"])
@pytest.mark.parametrize("pools", [["avg", "max"], ["max"], ["avg", "lse"]], ids="+".join)
@pytest.mark.parametrize(("order", "combine"), ARRANGEMENTS)
def test_arrangement(
    order: str, combine: str, pools: list[str], descriptor: str, channels_last: bool, train: bool
) -> None:
    options = {"order": order, "parallel_combine": combine, "channel_pool": pools, "spatial": descriptor}
    compare(options, train, channels_last)


@pytest.mark.parametrize(
    ("device", "options", "chosen"),
    [
        ("cpu", {}, fused.CppOpCBAM),
        ("cpu", {"order": "spatial-first"}, fused.CppOpCBAM),
        ("cpu", {"order": "spatial-only", "spatial": "conv"}, fused.CppOpCBAM),
        ("cpu", {"order": "parallel", "parallel_combine": "sum-logits"}, CBAM),
        ("cpu", {"channel_pool": ["max", "lp"]}, CBAM),
        ("cuda", {}, fused.FunctionCBAM),
        ("cuda", {"order": "channel-only", "channel_pool": ["max"]}, fused.FunctionCBAM),
        ("cuda", {"order": "spatial-first"}, CBAM),  # the C++ op only: per-op fast gates elsewhere
        ("cuda", {"order": "parallel", "parallel_combine": "sum-logits"}, CBAM),
    ],
)
def test_accelerate_chooses_the_implementation_once_by_variant_and_device(
    device: str, options: dict, chosen: type
) -> None:
    """The choice the old modules made at every call, made once: the C++ op's module on CPU, the Function's
    elsewhere, the reference arrangement with the fast gates for what neither covers. (No CUDA tensor is made:
    choosing reads only the module.)"""
    module = accelerate(CBAM(C, reduction=4, **options), torch.device(device))
    assert type(module) is chosen
    assert module.channel is None or isinstance(module.channel, FastChannelGate)
    assert module.spatial is None or isinstance(module.spatial, FastSpatialGate)


def test_accelerate_on_cuda_for_compiling_leaves_the_reference() -> None:
    """Compiled on CUDA: the compiler fuses the straightforward formulation and cuDNN runs the conv."""
    model = build_model("resnet18", num_classes=10, attention={"type": "cbam"}, stem="cifar", width=0.25)
    blocks = [block.attention for block in model.layer1]
    assert accelerate(model, torch.device("cuda"), compiled=True) is model
    assert [block.attention for block in model.layer1] == blocks
    assert all(type(m.spatial.conv) is nn.Conv2d for m in blocks)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize(
    "attention",
    [
        {"type": "cbam"},
        {"type": "cbam", "order": "spatial-first", "spatial": "conv"},
        {"type": "cbam", "order": "parallel", "parallel_combine": "sum-logits", "channel_pool": ["avg", "lse"]},
        {"type": "cbam", "order": "channel-only"},
        {"type": "se"},
    ],
    ids=lambda a: "-".join(str(v) for v in a.values()),
)
def test_accelerate_keeps_the_state_dict_keys_and_the_very_parameters(attention: dict, compiled: bool) -> None:
    """An optimizer built before, a checkpoint or a state_dict loaded after: all see the same network. The
    accelerated modules hold the reference's Parameter objects and buffers (not copies); the reference modules
    taken out are left as they were."""
    model = build_model("resnet18", num_classes=10, attention=attention, stem="cifar", width=0.25)
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    references = {name: m for name, m in model.named_modules() if type(m) in ACCELERATED}
    gate_types = {name: (type(m.channel), type(m.spatial)) for name, m in references.items()}
    assert accelerate(model, CPU, compiled=compiled) is model
    assert list(model.state_dict()) == keys
    assert all(p is params[name] for name, p in model.named_parameters())
    assert all(b is buffers[name] for name, b in model.named_buffers())
    assert len(list(model.parameters())) == len(params)
    for name, reference in references.items():
        assert (model.get_submodule(name) is reference) == (compiled and reference.spatial is None)
        assert (type(reference.channel), type(reference.spatial)) == gate_types[name]
        assert reference.spatial is None or type(reference.spatial.conv) is nn.Conv2d


def test_accelerate_returns_the_model_itself_on_meta_and_for_modules_it_does_not_know() -> None:
    """The meta device (the profiler counts the paper's FLOPs on the reference modules) never accelerates; nor do
    modules the seam does not know: BAM, the plain slot, a user's module, or a subclass of CBAM, whose forward
    may compute something else with the same gates."""

    class MyCBAM(CBAM):
        def forward(self, x: Tensor) -> Tensor:
            return 2 * super().forward(x)

    for compiled in (False, True):
        with torch.device("meta"):
            model = build_model("resnet18", num_classes=10, attention={"type": "cbam"}, stem="cifar", width=0.25)
        blocks = [block.attention for block in model.layer1]
        assert accelerate(model, torch.device("meta"), compiled=compiled) is model
        assert [block.attention for block in model.layer1] == blocks and type(blocks[0]) is CBAM
        cbam = CBAM(C, reduction=4)
        assert accelerate(cbam, "meta", compiled=compiled) is cbam
        for module in (BAM(C, reduction=4), NoAttention(), MyCBAM(C, reduction=4), nn.Conv2d(2, 1, 7)):
            assert accelerate(module, CPU, compiled=compiled) is module
        plain = build_model("resnet18", num_classes=10, attention={"type": "bam"}, stem="cifar", width=0.25)
        modules = list(plain.modules())
        assert accelerate(plain, CPU, compiled=compiled) is plain and list(plain.modules()) == modules


def test_reference_modules_import_nothing_from_accel() -> None:
    """One direction only: the accelerator imports the reference modules, never the other way round. A fresh
    process builds a CBAM network with every reference module imported and finds no accel module loaded."""
    code = """
import sys
import ablation.attention.bam, ablation.attention.base, ablation.attention.cbam, ablation.attention.channel
import ablation.attention.registry, ablation.attention.se, ablation.attention.spatial
from ablation.models import build_model
for kind in ("none", "se", "cbam", "bam"):
    build_model("resnet18", num_classes=10, attention={"type": kind}, stem="cifar", width=0.25)
print(sorted(name for name in sys.modules if name.startswith("ablation.attention.accel")))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_kernels_are_built_by_accelerate_only_where_they_will_run(monkeypatch) -> None:
    """train_job calls accelerate before its clock starts: a first build must not be timed as epoch 1; and a
    network that never runs the C++ kernels (plain, on the meta device, on CUDA) must not build them."""
    calls: list[int] = []
    monkeypatch.setattr(cpu_kernels, "cpu_kernels_available", lambda: calls.append(1) or True)

    def cbam() -> nn.Module:
        return build_model("resnet18", num_classes=10, attention={"type": "cbam"}, stem="cifar", width=0.25)

    accelerate(build_model("resnet18", num_classes=10, attention={"type": "none"}), CPU)
    accelerate(cbam(), torch.device("meta"))
    accelerate(cbam(), torch.device("cuda"))
    accelerate(cbam(), torch.device("cuda"), compiled=True)
    assert calls == []
    accelerate(cbam(), CPU)
    assert calls == [1]  # once for the network, not once per block
    accelerate(cbam(), CPU, compiled=True)
    assert calls == [1, 1]
