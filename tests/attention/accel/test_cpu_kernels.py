"""The C++ CPU kernels (ablation/attention/accel/cpu_kernels.py) build here and are used where they apply."""

from __future__ import annotations

import pytest
import torch

from ablation.attention.accel import fused
from ablation.attention.accel.cpu_kernels import cpu_kernels_available
from ablation.attention.cbam import CBAM

pytestmark = pytest.mark.usefixtures("one_thread", "_seed")


def test_cpu_kernels_are_built_and_used() -> None:
    """The C++ kernels must build on a machine like CI's (g++ + ninja): a silent fallback would keep the results
    and lose the speed, so it is a failure here."""
    assert cpu_kernels_available()
    params = fused.module_params(CBAM(4, reduction=2))
    assert fused.cpp_op_takes(torch.randn(2, 4, 3, 3), params)
    assert not fused.cpp_op_takes(torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last), params)
    assert not fused.cpp_op_takes(torch.randn(2, 4, 3, 3, dtype=torch.bfloat16), params)  # AMP
    assert not fused.cpp_op_takes(torch.randn(2, 4, 3, 3, dtype=torch.float64), params)  # map and weights differ
