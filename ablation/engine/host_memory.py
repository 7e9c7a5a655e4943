"""Keep freed host memory inside the training process instead of handing it back to the kernel every step.

glibc's malloc returns the top of its heap to the kernel whenever more than its trim threshold is free there, and
serves blocks above its mmap threshold with fresh mappings that are unmapped on free. Both thresholds adapt, but
only up to the largest block freed so far, and training frees and re-allocates the same feature maps every step:
each round trip costs a minor page fault per 4 KiB page (plus zeroing the page) on the next step, for every map
re-allocated. On CPU that cost CBAM-ResNet-50 a visible share of its step in system time (its allocation order
triggers the trim where plain ResNet-50's happens not to at 112 px); ``benchmarks/cbam_overhead.py --malloc
default`` shows the difference, and ``benchmarks/README.md`` the figures measured.

``keep_freed_memory()`` serves every block from the heap (M_MMAP_MAX 0: glibc's mmap threshold cannot go above
32 MiB, and a 224 px batch of 16's stage-1 maps are 49 MiB; glibc still maps memory itself if the heap cannot
grow) and raises the trim threshold to 2 GiB - 1 (freed heap is kept for the next step; setting it also stops
the thresholds' adaptation). Peak memory does not grow with it: what is kept is what the next step allocates again.
PyTorch's CPU performance guide reaches the same end by preloading jemalloc or tcmalloc; this needs no extra
library or launcher. The cost is that a process keeps its peak heap until it exits (training workers are
processes that do exactly that anyway). Linux with glibc only; a no-op elsewhere. ``ABLATION_KEEP_HOST_MEMORY=0``
turns it off. The state is recorded in each run's environment.json.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
ENV = "ABLATION_KEEP_HOST_MEMORY"

_state: list[str] = []


def keep_freed_memory() -> str:
    """Apply the settings once per process; returns ``host_memory_state()``."""
    if not _state:
        _state.append(_apply())
    return _state[0]


def host_memory_state() -> str:
    """This process's setting: "kept", "glibc defaults (<why>)", or "not set" (nothing here asked for it)."""
    return _state[0] if _state else "not set"


def _apply() -> str:
    if os.environ.get(ENV, "1") == "0":
        return f"glibc defaults ({ENV}=0)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "glibc defaults (not glibc)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(
            libc.mallopt(param, value) == 1 for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        )
    except (OSError, AttributeError) as exc:
        return f"glibc defaults ({type(exc).__name__})"
    return "kept" if ok else "glibc defaults (mallopt refused)"
