"""ablation.engine.host_memory: freed heap stays in the process, so re-allocating it costs no page faults.

Each case runs in a fresh interpreter (malloc's thresholds are per process and adapt to its history): it frees a
16 MiB block, which lifts glibc's dynamic mmap threshold to 16 MiB and its trim threshold to 32 MiB, then three
times allocates, touches and frees 5 x 8 MiB. With glibc's defaults the 40 MiB freed at the heap's top exceed the
trim threshold and go back to the kernel, so every round faults them in again; kept, only the first round does.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from ablation.engine.host_memory import ENV

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

SCENARIO = """
import json, resource, sys
from ablation.engine.host_memory import keep_freed_memory, host_memory_state
state = keep_freed_memory() if sys.argv[1] == "keep" else host_memory_state()
block = bytearray(16 << 20)
del block
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [bytearray(8 << 20) for _ in range(5)]  # bytearray zero-fills: every page is touched
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"state": state, "faults": faults}))
"""
PAGES_40_MIB = (40 << 20) // 4096


def run(mode: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        timeout=60,
    )
    return json.loads(result.stdout)


def test_freed_heap_is_kept_and_reused_without_page_faults() -> None:
    default, kept = run("default"), run("keep")
    assert default["state"] == "not set"
    assert kept["state"] == "kept"
    # The scenario does cost faults with glibc's defaults (otherwise the test below proves nothing) ...
    assert min(default["faults"][1:]) > PAGES_40_MIB // 2, default
    # ... and none once the freed memory is kept.
    assert max(kept["faults"][1:]) < PAGES_40_MIB // 50, kept


def test_switched_off_by_the_environment_variable() -> None:
    off = run("keep", **{ENV: "0"})
    assert off["state"] == f"glibc defaults ({ENV}=0)"
    assert min(off["faults"][1:]) > PAGES_40_MIB // 2, off
