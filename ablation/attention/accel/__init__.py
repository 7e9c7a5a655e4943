"""The one seam through which attention runs fast: ``accelerate(model, device, compiled=...)`` and ``kernel_state()``.

The attention modules (``ablation/attention/cbam.py``, ``se.py``, ...) are the straightforward formulation only.
Everything that computes them faster lives in this subpackage, and which implementation runs is chosen here, once,
when a model is set up for its device (``_accelerated``; train_job does it before its clock starts, so a first
build of the C++ kernels is not timed as training):

- on the ``meta`` device: the reference modules (the profiler counts the paper's FLOPs, not our kernels');
- compiled: the reference modules, with the spatial gate's k x k conv on the direct C++ kernel on a CPU where the
  kernels are built (``fast.DirectConv2d``);
- eager, on a CPU where the kernels are built, the variants the C++ op covers (avg/max pools, any order but the
  sum-logits merge): ``fused.CppOpCBAM``, the whole module as one C++ op;
- eager, elsewhere (CUDA, a CPU without the kernels), those variants but spatial-first: ``fused.FunctionCBAM``,
  the FusedCBAM autograd Function;
- eager, the other variants (sum-logits, lp/lse pools, spatial-first off the C++ op): the reference arrangement
  with the per-op fast gates (``fast.FastChannelGate``, ``fast.FastSpatialGate``).

A compiled model keeps the straightforward formulation because the compiler fuses it itself (with the BN before it
and the ReLU after it), better than it could trace around a custom Function; the spatial conv is the one piece it
cannot fuse. What still depends on each call's tensors (a bfloat16 map under AMP, a channels_last one) is checked
in the accelerated module's forward (``fused.cpp_op_takes``).

Every accelerated module is made from the reference one and holds the same parameters, buffers and children
(``sharing.adopt``): the state_dict keys and Parameter objects do not change, and every implementation computes the
reference's function up to float rounding (tests/attention/accel/test_fused.py). Modules it does not know (BAM, a user's
module, a subclass of CBAM) are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ablation.attention.accel import cpu_kernels
from ablation.attention.accel.fast import DirectConv2d, FastChannelGate, FastSpatialGate
from ablation.attention.accel.fused import CppOpCBAM, FunctionCBAM, cpp_op_covers, function_covers
from ablation.attention.accel.sharing import adopt
from ablation.attention.cbam import CBAM
from ablation.attention.se import SE

# Exact types: a subclass (a user's) may compute something else with the same gates.
ACCELERATED: tuple[type[CBAM], ...] = (CBAM, SE)


def accelerate(model: nn.Module, device: torch.device | str, *, compiled: bool = False) -> nn.Module:
    """The network that runs on ``device``: ``model`` with each attention module it can speed up replaced, in its
    parent, by a faster one of the same parameters (same state_dict keys, the same Parameter objects), and
    ``model`` itself where nothing applies (the meta device, no CBAM / SE in it). When ``model`` is itself such a
    module the faster one is returned. ``compiled``: the model is about to be torch.compile'd.

    On CPU this builds (once per machine) or loads the C++ kernels the chosen modules use."""
    device = torch.device(device)
    if device.type == "meta":
        return model
    kernels: list[bool] = []

    def cpu_kernels_built() -> bool:  # asked once, and only when a module could use them
        if not kernels:
            kernels.append(device.type == "cpu" and cpu_kernels.cpu_kernels_available())
        return kernels[0]

    if type(model) in ACCELERATED:
        return _accelerated(model, compiled, cpu_kernels_built)
    made: dict[int, nn.Module] = {}  # a module held in two places is replaced by one accelerated module
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in ACCELERATED:
                if id(child) not in made:
                    made[id(child)] = _accelerated(child, compiled, cpu_kernels_built)
                setattr(parent, name, made[id(child)])
    return model


def _accelerated(module: CBAM, compiled: bool, cpu_kernels_built: Callable[[], bool]) -> nn.Module:
    """The module that runs in place of ``module`` (see the module docstring's list): the one place where the
    implementation is chosen."""
    if compiled:
        if module.spatial is None or not cpu_kernels_built():
            return module
        spatial = adopt(type(module.spatial), module.spatial, conv=DirectConv2d.made_from(module.spatial.conv))
        return adopt(type(module), module, spatial=spatial)
    gates = {}
    if module.channel is not None:
        gates["channel"] = FastChannelGate.made_from(module.channel)
    if module.spatial is not None:
        gates["spatial"] = FastSpatialGate.made_from(module.spatial)
    # Asked for every variant: the fast spatial gate's conv runs on the direct C++ kernel too.
    if cpu_kernels_built() and cpp_op_covers(module):
        return adopt(CppOpCBAM, module, **gates)
    if function_covers(module):
        return adopt(FunctionCBAM, module, **gates)
    return adopt(type(module), module, **gates)


def kernel_state() -> str:
    """For the run's environment record: "loaded", "unavailable: <why>" or "not used" (nothing in this process has
    needed the C++ kernels)."""
    return cpu_kernels.cpu_kernels_state()
