"""Where the checkout and its experiments are, and working in a folder for a while."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"


@contextlib.contextmanager
def in_folder(folder: Path):
    """Work in ``folder`` for a while: MLflow puts a new store's artifacts under ``./mlruns`` of the working folder,
    and tests write only into temporary folders."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
