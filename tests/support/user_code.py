"""A researcher's own code in a temporary package: importable in this process and in every process a test starts
(worker processes, through PYTHONPATH), under a name no other test used (a module imported by another test is never
reused)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def user_package(folder: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> Iterator[str]:
    """A package under ``folder`` holding ``files`` (module name -> source); yields its name."""
    name = f"userpkg_{uuid.uuid4().hex[:8]}"
    package = folder / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module, source in files.items():
        (package / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder / "site"))
    monkeypatch.setenv("PYTHONPATH", str(folder / "site"))
    try:
        yield name
    finally:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]
