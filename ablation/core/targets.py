"""Loading what a registry names by import path, "package.module:Name", on first use: the registries of attention
types, backbones and datasets stay torch-free, and a user's own entry is named the same way."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any


@cache
def load_target(path: str) -> Any:
    """The object ``path`` ("package.module:Name", or "package.module:Outer.Inner") names, its module imported."""
    module, _, name = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target
