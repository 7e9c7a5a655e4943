"""The base of every config section, below both the config schema (``ablation.experiment.schema``) and the attention
options it holds (``ablation.attention.options``), so that neither imports the other for it. Pydantic only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of every config section: unknown keys and wrong types (e.g. "3" for an int) are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
