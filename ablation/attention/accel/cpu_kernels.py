"""Build (once) and load CBAM's C++ CPU op and kernels (csrc/cbam_cpu*.cpp) as ``torch.ops.ablation_cbam``.

Built on first use with PyTorch's own extension builder (g++ and ninja; tens of seconds, see
``benchmarks/README.md``) and cached by it (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``);
later processes only load the library. ``accelerate`` asks for them when it sets a model up for the CPU, so a
first build is never timed as training. Concurrent first uses are serialised by PyTorch's lock file. Without a
compiler, or with ``ABLATION_CPU_KERNELS=0``, :func:`cpu_kernels_available` is False and the fused path runs on
PyTorch ops instead (same math, slower): a warning says so once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

from ablation.attention.accel import direct_conv

SOURCES = [Path(__file__).with_name("csrc") / name for name in ("cbam_cpu.cpp", "cbam_cpu_function.cpp")]
NAME = "ablation_cbam_cpu"
_lock = threading.Lock()
_state: dict[str, bool] = {}
_why_not: list[str] = []


def cpu_kernels_state() -> str:
    """For the run's environment record, without building anything: "loaded", "unavailable: <why>" or
    "not used" (nothing in this process has needed them: a GPU run, or no accelerated CBAM on CPU)."""
    if "ok" not in _state:
        return "not used"
    return "loaded" if _state["ok"] else f"unavailable: {_why_not[0] if _why_not else 'unknown'}"


@torch.compiler.assume_constant_result
def cpu_kernels_available() -> bool:
    """True once the C++ kernels are loaded (building them first if needed); False if they cannot be.

    A constant for torch.compile, evaluated while tracing: its lock (or a first build) inside a traced function
    would break the graph at every CBAM block."""
    if "ok" in _state:
        return _state["ok"]
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _load()
            if _state["ok"]:
                direct_conv.register()  # the direct conv's fake kernels and autograd formula
    return _state["ok"]


def kernels_take(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether the C++ kernels' dtypes and device fit these tensors: CPU, float32 or float64, ``others`` (None
    skipped) of x's dtype. (Layout and the library being built are checked by the callers.)"""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and all(t is None or t.dtype == x.dtype for t in others)
    )


def _load() -> bool:
    if os.environ.get("ABLATION_CPU_KERNELS", "1") == "0":
        _why_not.append("ABLATION_CPU_KERNELS=0")
        return False
    if hasattr(torch.ops, "ablation_cbam") and hasattr(torch.ops.ablation_cbam, "cbam"):
        return True
    try:
        # Importing the builder logs a warning about CUDA_HOME on machines without CUDA; irrelevant for a CPU
        # library, and noise in every first sweep, so that logger is quiet during the import.
        builder_log = logging.getLogger("torch.utils.cpp_extension")
        level = builder_log.level
        builder_log.setLevel(logging.ERROR)
        try:
            from torch.utils.cpp_extension import load
        finally:
            builder_log.setLevel(level)
        if _first_build():
            print("building CBAM's C++ CPU kernels (once per machine, ~30 s)", file=sys.stderr, flush=True)
        # -O3 and the build machine's vector units: the library is built where it runs, never shipped.
        load(
            name=NAME,
            sources=[str(source) for source in SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a broken toolchain: fall back, loudly
        _why_not.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        warnings.warn(
            f"CBAM's fused C++ CPU kernels could not be built ({_why_not[-1]}); "
            "the fused path runs on PyTorch ops instead (same results, slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def _first_build() -> bool:
    """Whether no built library is cached yet (only to say why the first use pauses; never fails the load)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private: guarded

        return not (Path(_get_build_directory(NAME, verbose=False)) / f"{NAME}.so").exists()
    except Exception:
        return False
