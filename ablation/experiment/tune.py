"""The schema of an experiment's ``tune:`` section and of its adaptive ``seeds:`` rule. Pydantic only (torch-free):
a mistake in either is a one-line error in well under a second, before any store is touched.

    tune:
      trials: 8             # per arm: every arm gets exactly this many Optuna trials
      epochs: 3             # per trial (may be fewer than the final runs')
      holdout: 0.1          # trials train on 90% of the training set and are scored on the other 10%
      space:
        train.lr: {type: float, low: 0.02, high: 0.5, log: true}
        train.weight_decay: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
        train.label_smoothing: {type: float, low: 0.0, high: 0.2}
        train.batch_size: {type: categorical, choices: [64, 128]}
      sampler: {type: tpe, seed: 0, startup_trials: 3}
      pruner: {type: successive_halving, min_epochs: 1, reduction_factor: 3}

    seeds: {min: 3, max: 10}                       # until: sequential (the default), alpha: 0.05
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ablation.core.strict import StrictModel, check_level

ParamType = Literal["float", "int", "categorical"]
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "successive_halving", "hyperband", "median")
# "sequential": resolved when the difference is declared at level ``alpha`` under the repeated looks (alpha spent
# over the planned looks, ablation.stats.seed_rule); "ci95 excludes 0": the rule before it, which looks at 95%
# after every round and so declares more than 5% of null differences (kept for sweeps that used it, and labelled).
SEED_RULES = ("sequential", "ci95 excludes 0")
# Keys a search space may not hold: what identifies the data, the seed, and the trial budget itself.
UNTUNABLE = ("seed", "data.dataset", "data.root", "data.holdout", "train.epochs")


class SearchParam(StrictModel):
    """One dimension of the search space: a float or int range (``log`` for log-uniform), or categorical."""

    type: ParamType
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("a categorical parameter takes a non-empty 'choices' list and nothing else")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low / high (log, step), not choices")
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs low < high (it has low={self.low}, high={self.high})")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            raise ValueError("an int parameter's low, high and step must be integers")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform parameter needs low > 0 (it has low={self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot both be set (Optuna samples one or the other)")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0 (it is {self.step})")
        return self

    def values_to_check(self) -> list[Any]:
        """The values a config must accept for this dimension to be valid: its bounds, or every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


class SamplerConfig(StrictModel):
    """Optuna's sampler, seeded: TPE (default) or random search. ``startup_trials``: TPE's random trials
    before it models (Optuna's default 10 is more than a small budget holds)."""

    type: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    startup_trials: int | None = None

    @field_validator("startup_trials")
    @classmethod
    def _startup(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be an integer >= 1 (or absent: Optuna's default)")
        return value


class PrunerConfig(StrictModel):
    """Early stopping of poor trials over epochs: successive halving, Hyperband, median, or none."""

    type: Literal["none", "successive_halving", "hyperband", "median"] = "none"
    min_epochs: int = 1  # the first rung (successive halving / Hyperband) or the warm-up (median)
    reduction_factor: int = 3

    @field_validator("min_epochs")
    @classmethod
    def _min_epochs(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be an integer >= 1")
        return value

    @field_validator("reduction_factor")
    @classmethod
    def _factor(cls, value: int) -> int:
        if value < 2:
            raise ValueError("must be an integer >= 2")
        return value


class TuneConfig(StrictModel):
    """Per-arm hyper-parameter tuning with an equal budget, scored on a held-out part of the training set."""

    space: dict[str, SearchParam]
    trials: int
    epochs: int | None = None  # per trial; None: the experiment's own epochs
    holdout: float = 0.1  # fraction of the training set held out (class-stratified) to score trials
    split_seed: int = 0  # which stratified split (fixed for every arm and trial)
    seed: int | None = None  # every trial's training seed (None: the experiment's first seed)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    # Trials of one arm in flight at once. 1 (the default): each arm's next trial is asked once its previous one
    # has ended, so its suggestions and pruning see a fixed history and a rerun (or a kill and resume) reproduces
    # them; several arms still tune side by side. More keep more devices busy, and then, as with any parallel
    # Optuna run, what a trial is suggested depends on which others happened to have finished.
    parallel: int = 1
    # Also train every arm with the base recipe, so the table can put "default" beside "tuned".
    compare_default: bool = True

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, SearchParam]) -> dict[str, SearchParam]:
        if not value:
            raise ValueError("must name at least one dotted key to tune, e.g. train.lr: {type: float, ...}")
        for key in value:
            if key.split(".")[0] not in ("model", "data", "train"):
                raise ValueError(f"{key} is not a config key; tunable keys start with model., data. or train.")
            untunable = next((u for u in UNTUNABLE if key == u or key.startswith(u + ".")), None)
            if untunable:
                raise ValueError(f"{key} cannot be tuned (it is the data, the seed or the budget)")
        return value

    @field_validator("trials")
    @classmethod
    def _trials(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be an integer >= 1 (trials per arm)")
        return value

    @field_validator("parallel")
    @classmethod
    def _parallel(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be an integer >= 1 (trials of one arm running at once)")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be an integer >= 1 (or absent: the experiment's epochs)")
        return value

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: float) -> float:
        if not 0 < value <= 0.5:
            raise ValueError("must be a fraction in (0, 0.5] of the training set")
        return value


class SeedRule(StrictModel):
    """Seeds added one round at a time to the arms whose difference to the baseline is unresolved: from ``min``
    seeds (``start``, ``start + 1``, ...) until the difference is resolved (``until``: at level ``alpha`` under
    the repeated looks, or, the old rule, when a 95% interval first excludes 0), or ``max``."""

    min: int = 3
    max: int = 10
    until: Literal["sequential", "ci95 excludes 0"] = "sequential"
    alpha: float = 0.05
    start: int = 0

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float) -> float:
        return check_level(value)

    @model_validator(mode="after")
    def _bounds(self) -> SeedRule:
        if self.min < 2:
            raise ValueError(f"min must be >= 2 (a confidence interval needs two seeds; it is {self.min})")
        if self.max < self.min:
            raise ValueError(f"max must be >= min ({self.min}; it is {self.max})")
        if self.start < 0:
            raise ValueError(f"start must be >= 0 (it is {self.start})")
        return self

    def seeds(self, n: int) -> list[int]:
        """The first ``n`` seeds of the rule."""
        return list(range(self.start, self.start + n))
