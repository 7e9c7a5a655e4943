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
