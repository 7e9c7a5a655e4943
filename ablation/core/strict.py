"""The base of every config section, below both the config schema (``ablation.experiment.schema``) and the attention
options it holds (``ablation.attention.options``), so that neither imports the other for it. Pydantic only."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

# The error type of a check across the keys of a section: its context names the key and the value at fault, so the
# one-line message names that key (ablation.experiment.schema), not the whole section.
CROSS_KEY = "cross_key"


class StrictModel(BaseModel):
    """Base of every config section: unknown keys and wrong types (e.g. "3" for an int) are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def __hash__(self) -> int:
        # Frozen sections are dict keys and set members (one data set per experiment, caches); pydantic's own hash
        # fails on a dict-valued field (a user's options), the content's JSON does not, and is equal where the
        # sections are.
        return hash((type(self).__name__, self.model_dump_json()))


def wrong_key(key: str, value: Any, message: str) -> PydanticCustomError:
    """The error a section's check across keys raises for ``key`` (None: a key that is missing)."""
    return PydanticCustomError(CROSS_KEY, message.replace("{", "(").replace("}", ")"), {"key": key, "value": value})


def check_level(value: float) -> float:
    """A significance level: in (0, 0.5) (``stats.alpha``, a seed rule's ``alpha``)."""
    if not 0 < value < 0.5:
        raise ValueError("must be a level in (0, 0.5), e.g. 0.05")
    return value


def check_custom_choice(chosen: str, key: str, target: Any, options: dict[str, Any], maker: str) -> None:
    """A section's ``target`` and ``options`` (a user's own network or data): required with ``key: custom``, and
    meaningless with anything else. ``maker`` names what the target is ("the data's maker, 'package.module:make'")."""
    if chosen == "custom":
        if target is None:
            raise wrong_key("target", None, f"required with {key} custom: {maker}")
    elif target is not None:
        raise wrong_key("target", target, f"is for {key} custom only ({key} is {chosen})")
    elif options:
        raise wrong_key("options", options, f"is for {key} custom only ({key} is {chosen})")
