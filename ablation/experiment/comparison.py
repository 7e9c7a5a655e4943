"""The ``stats:`` section of an experiment: how its table compares each arm with the baseline. Pydantic only.

    stats: {test: welch, correction: holm, alpha: 0.05}

``test``: ``welch`` (two independent samples; the default, always valid) or ``paired`` (over seeds: sharper where
every arm ran the same seeds, since a seed fixes the data order and the augmentation of every arm; refused where
seeds cannot pair). ``correction``: ``holm`` (the default: the family-wise error over the arms' comparisons),
``bh`` (Benjamini-Hochberg: the false discovery rate) or ``none``. ``alpha``: the level the table's marks use.
The statistics themselves are ``ablation.stats.compare``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from ablation.core.strict import StrictModel, check_level


class StatsConfig(StrictModel):
    test: Literal["welch", "paired"] = "welch"
    correction: Literal["holm", "bh", "none"] = "holm"
    alpha: float = 0.05

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float) -> float:
        return check_level(value)
