"""A small file system that fills up: a tmpfs of a few hundred KiB mounted for a test (as root), and a filler file
that leaves it a chosen amount of free space."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(folder: Path, size_kib: int) -> Iterator[Path]:
    """``folder``, a fresh tmpfs of ``size_kib`` KiB while the block runs (skips where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def fill(folder: Path, leave_bytes: int) -> Path:
    """A filler file in ``folder`` that leaves about ``leave_bytes`` free (never more); delete it to free the space."""
    filler = folder / "filler"
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free_bytes(folder) - leave_bytes))
    return filler
