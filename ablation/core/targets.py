"""Loading what a registry or a user names by import path, "package.module:Name": the registries of attention types,
backbones and datasets stay torch-free, and a user's own module, backbone or dataset is named the same way.

``load_target`` is for the package's own entries (a failure is a bug). ``resolve_user_target`` is for a user's: a
target that cannot be imported, does not exist or is not callable is a one-line ``ConfigError`` naming the config
key, and ``source_digest`` records the file that defines it (its SHA-256 is part of each cell's key, so an edited
module keys new cells, never "already done").
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

from ablation.core.errors import ConfigError

TARGET_FORMAT = "'package.module:Name', e.g. mypkg.attn:MyAttention"
TARGET_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@cache
def load_target(path: str) -> Any:
    """The object ``path`` ("package.module:Name", or "package.module:Outer.Inner") names, its module imported."""
    module, _, name = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def resolve_user_target(target: str, key: str, expected: str) -> Any:
    """The callable a user's ``target`` names, for the config key ``key``; a one-line ConfigError when it cannot be
    imported, does not exist or is not callable (``expected`` says what it should be)."""
    if not isinstance(target, str) or not TARGET_PATTERN.fullmatch(target):
        raise ConfigError(key, target, f"allowed: {TARGET_FORMAT}")
    module_name, _, name = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # whatever the user's module raises on import, said on one line
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(
            key, target, f"cannot be imported ({why}); allowed: {TARGET_FORMAT}, on PYTHONPATH or installed"
        ) from None
    for part in name.split("."):
        if not hasattr(found, part):
            raise ConfigError(
                key, target, f"does not exist: {module_name} has no attribute {name!r}; allowed: {TARGET_FORMAT}"
            )
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(key, target, f"is a {type(found).__name__}, not a class or callable; allowed: {expected}")
    return found


def source_digest(found: Any, key: str, target: str) -> dict[str, str]:
    """{"target", "file", "sha256"} of the file that defines ``found`` (what ``target`` resolved to). Only that one
    file is hashed; a helper it imports from another file is not."""
    try:
        path = inspect.getsourcefile(found if inspect.isclass(found) or inspect.isfunction(found) else type(found))
    except TypeError:
        path = None
    path = path or getattr(sys.modules.get(getattr(found, "__module__", "")), "__file__", None)
    if not path or not Path(path).is_file():
        raise ConfigError(key, target, "has no source file whose hash could key its results")
    path = Path(path).resolve()
    return {"target": target, "file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def keyword_arguments(found: Any) -> tuple[list[str], list[str], bool] | None:
    """What ``found`` accepts by keyword: (names, required names, takes **kwargs); None where no signature can be
    read (some builtins: calling it will tell)."""
    try:
        params = list(inspect.signature(found).parameters.values())
    except (TypeError, ValueError):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in keyword]
    required = [p.name for p in params if p.kind in keyword and p.default is inspect.Parameter.empty]
    return names, required, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
