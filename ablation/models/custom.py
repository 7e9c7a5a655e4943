"""A user's own network as a backbone (``model: {arch: custom, target: "mypkg.nets:build", options: {...}}``), so that
every arm of a grid (none, SE, every CBAM variant, ECA, BAM, a custom attention module) runs in the user's network.

The builder is called as ``build(num_classes=..., attention=..., **options)``. ``attention`` is the arm's attention
factory, ``attention(channels) -> nn.Module``, which the builder calls wherever it wants the arm's attention, the way
torchvision's models take a ``norm_layer``: the identity for the plain arm, the arm's SE / CBAM / ... module for the
others. A module of the package's attention types maps a feature map to one of the same shape (``y = module(x)``).

Checked before any run exists (one-line ``ConfigError``s naming ``model.target`` or ``model.options.<name>``): the
target imports and is callable, it takes ``num_classes`` and ``attention`` by keyword, every option is one of its
arguments and every required argument is given; and, when the network is built on the meta device while the sweep
is prepared, that a builder asked for attention calls the factory and keeps what it made (a builder that ignores
it would otherwise train a plain network under a CBAM label). The SHA-256 of the builder's file is part of each
cell's key (``ablation.experiment.schema.config_hash``): an edited builder keys new cells.
"""

from __future__ import annotations

from typing import Any

from ablation.attention.registry import build_attention, parse_attention
from ablation.core.errors import ConfigError
from ablation.core.targets import keyword_arguments, resolve_user_target, source_digest

TARGET_KEY, OPTIONS_KEY = "model.target", "model.options"
EXPECTED = "a function (or class) taking (num_classes=..., attention=..., **options) and returning a torch.nn.Module"
# Arguments the harness passes; an option of the same name would be passed twice.
PASSED = ("num_classes", "attention")


def resolve_builder(target: str) -> Any:
    return resolve_user_target(target, TARGET_KEY, EXPECTED)


def check_builder(target: str, options: dict[str, Any]) -> dict[str, str]:
    """ConfigError (one line) unless ``target(num_classes=..., attention=..., **options)`` is a valid call; returns
    {"target", "file", "sha256"} of the builder's source file (part of each cell's key)."""
    builder = resolve_builder(target)
    accepted = keyword_arguments(builder)
    if accepted is not None:
        names, required, takes_kwargs = accepted
        for passed in PASSED:
            if passed not in names and not takes_kwargs:
                takes = ", ".join(names) or "none"
                raise ConfigError(TARGET_KEY, target, f"takes no {passed!r} argument ({takes}); allowed: {EXPECTED}")
        allowed = ", ".join(n for n in names if n not in PASSED) or "none"
        for key, value in options.items():
            if key in PASSED:
                raise ConfigError(
                    f"{OPTIONS_KEY}.{key}", value, "", sentence=f"is passed by the harness; allowed: {allowed}"
                )
            if key not in names and not takes_kwargs:
                raise ConfigError(
                    f"{OPTIONS_KEY}.{key}", value, "", sentence=f"unknown argument of {target}; allowed: {allowed}"
                )
        for name in required:
            if name not in PASSED and name not in options:
                raise ConfigError(
                    f"{OPTIONS_KEY}.{name}", None, "", sentence=f"missing: a required argument of {target}"
                )
    return source_digest(builder, TARGET_KEY, target)


def build_custom(*, target: str, options: dict[str, Any], num_classes: int, attention: Any) -> Any:
    """The user's network with the arm's ``attention`` wherever its builder asked for it."""
    # torch: imported with the first network built (reading and checking a config never imports it)
    from torch import nn

    parsed = parse_attention(attention)
    made: list[nn.Module] = []

    def factory(channels: int) -> nn.Module:
        module = build_attention(parsed, int(channels))
        made.append(module)
        return module

    model = resolve_builder(target)(num_classes=num_classes, attention=factory, **options)
    if not isinstance(model, nn.Module):
        raise ConfigError(TARGET_KEY, target, f"returned a {type(model).__name__}, not a torch.nn.Module")
    if parsed.type != "none":
        kept = {id(module) for module in model.modules()}
        if not any(id(module) in kept for module in made):
            raise ConfigError(
                TARGET_KEY,
                target,
                f"never places the arm's attention ({parsed.type}): it called attention(channels) {len(made)} times "
                "and kept none of the modules; allowed: a builder that calls attention(channels) where the attention "
                "goes and keeps the module it returns",
            )
    return model


def custom_label(target: str) -> str:
    """The table's name of a custom network: its builder's name (``mypkg.nets:build_tiny`` -> ``build_tiny``)."""
    return target.rpartition(":")[2].rpartition(".")[2]
