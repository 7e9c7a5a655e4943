"""A planned sweep's cell as data: what a cell is made from (``CellSpec``) and the words of that vocabulary. Kept
with the cell in the queue and, as tags, on its MLflow run (``ablation.tracking.names`` spells the same words), so a
table reads which cells are final from the results alone. Imports nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# A cell's phase: a tuning trial (scored on the training set's holdout) or a final run (what a table reports).
PHASE_TUNE, PHASE_FINAL = "tune", "final"
# A final run's recipe: the experiment's own values, or its arm's best tuned values.
RECIPE_DEFAULT, RECIPE_TUNED = "default", "tuned"


@dataclass(frozen=True)
class CellSpec:
    """What a planned sweep (``ablation.scheduler.plan``) makes a cell from, kept with it in the queue and on its MLflow
    run: which arm and seed, its phase (a tuning trial, or a final run the table reports), its recipe (the experiment's
    default or the arm's tuned values), the values it sets (dotted key -> value) and, for a trial, its number in the
    arm's Optuna study. The cell's key is still its config's: the spec says how the config was made."""

    arm: int
    seed: int
    phase: str = PHASE_FINAL  # PHASE_TUNE or PHASE_FINAL
    recipe: str = RECIPE_DEFAULT  # RECIPE_DEFAULT or RECIPE_TUNED
    values: tuple[tuple[str, Any], ...] = ()
    trial: int | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "arm": self.arm,
                "seed": self.seed,
                "phase": self.phase,
                "recipe": self.recipe,
                "values": [list(pair) for pair in self.values],
                "trial": self.trial,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        raw = json.loads(text)
        values = tuple((key, value) for key, value in raw.pop("values"))
        return cls(values=values, **raw)
