"""A user's own attention module (``model.attention: {type: custom, target: "mypkg.attn:MyAttention", ...}``):
found, its constructor arguments checked, and its source file recorded, all before any job starts.

The user's module is imported here and only for ``type: custom``; this file itself imports no torch (the module
is built by ``ablation.attention.adapter``). Its target must be importable from where the harness runs: an
installed package, or a folder on ``PYTHONPATH``.

The SHA-256 of the file that defines the target is part of each cell's key (``ablation.experiment.schema.config_hash``,
wherever a key is computed): a result is keyed by everything that determines it, so editing the module gives new
cells, never "already done".
Only that one file is hashed; a helper the module imports from another file is not.
"""

from __future__ import annotations

import inspect
from typing import Any

from ablation.attention.options import CustomOptions
from ablation.core.errors import ConfigError
from ablation.core.targets import resolve_user_target, source_digest

TARGET_KEY = "model.attention.target"
OPTIONS_KEY = "model.attention.options"


def resolve_target(target: str) -> Any:
    """The class or callable that ``target`` ("package.module:Name") names; ConfigError (one line) if there is
    none."""
    return resolve_user_target(
        target, TARGET_KEY, "a class (or function) taking (channels, **options) and returning a torch.nn.Module"
    )


def check_arguments(options: CustomOptions) -> None:
    """ConfigError (one line, naming the argument) unless ``target(channels, **options)`` is a valid call:
    every option a named argument of it, every required argument given."""
    factory = resolve_target(options.target)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (some builtins): building it will tell
        return
    params = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    takes_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    if not takes_args and not any(p.kind in positional for p in params):
        raise ConfigError(
            TARGET_KEY,
            options.target,
            f"takes no channels argument: {_call(options.target, signature)}; allowed: "
            "a class or callable taking (channels, **options)",
        )
    rest = params[1:] if params and params[0].kind in positional else params
    named = [
        p.name for p in rest if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    allowed = ", ".join(named) or "none"
    for key in options.options:
        if params and params[0].kind in positional and key == params[0].name:
            raise ConfigError(
                f"{OPTIONS_KEY}.{key}",
                options.options[key],
                "",
                sentence=f"is the channel count, which the backbone passes; allowed: {allowed}",
            )
        if key not in named and not takes_kwargs:
            raise ConfigError(
                f"{OPTIONS_KEY}.{key}",
                options.options[key],
                "",
                sentence=f"unknown argument of {options.target}; allowed: {allowed}",
            )
    for p in rest:
        if p.default is inspect.Parameter.empty and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise ConfigError(
                    TARGET_KEY,
                    options.target,
                    f"has a required positional-only argument {p.name!r}, which options cannot pass: "
                    f"{_call(options.target, signature)}",
                )
            if p.name not in options.options:
                raise ConfigError(
                    f"{OPTIONS_KEY}.{p.name}",
                    None,
                    "",
                    sentence=f"missing: a required argument of {_call(options.target, signature)}",
                )


def _call(target: str, signature: inspect.Signature) -> str:
    return f"{target}{signature}".replace(" -> None", "")


def source_record(options: Any) -> dict[str, str] | None:
    """For a user's module (``type: custom``): {"target", "file", "sha256"} of its source file, recorded with
    every run and part of each cell's key (``ablation.experiment.schema.config_hash``); None for the built-in types."""
    if not isinstance(options, CustomOptions):
        return None
    return source_digest(resolve_target(options.target), TARGET_KEY, options.target)


def module_source(options: Any) -> dict[str, str] | None:
    """``source_record``, after checking the constructor arguments (one-line ConfigErrors): what an experiment's
    expansion calls for every arm, before any job starts."""
    if isinstance(options, CustomOptions):
        check_arguments(options)
    return source_record(options)
