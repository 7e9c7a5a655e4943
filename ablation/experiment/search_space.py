"""A ``tune.space`` as Optuna distributions, and the configs its points make: a trial's and a tuned final run's.

``distributions`` is the one translation of the experiment's space into Optuna's terms, used to ask trials and to
rebuild a study from the runs MLflow holds. ``check_space`` validates every dimension against every arm before any
store is touched: a key the config does not have, or a bound the config rejects, is a one-line ConfigError.
"""

from __future__ import annotations

import copy
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ablation.core.errors import ConfigError
from ablation.experiment.schema import Experiment, RunConfig, get_dotted, overlaps, parse_run_config, set_dotted
from ablation.experiment.tune import SearchParam, TuneConfig


def distribution(param: SearchParam) -> BaseDistribution:
    if param.type == "categorical":
        return CategoricalDistribution(param.choices)
    if param.type == "int":
        return IntDistribution(int(param.low), int(param.high), log=param.log, step=int(param.step or 1))
    return FloatDistribution(float(param.low), float(param.high), log=param.log, step=param.step)


def distributions(tune: TuneConfig) -> dict[str, BaseDistribution]:
    """Dotted key -> its Optuna distribution, in the space's order."""
    return {key: distribution(param) for key, param in tune.space.items()}


def default_point(config: RunConfig, tune: TuneConfig) -> dict[str, Any] | None:
    """The arm's own values (its default recipe) at the space's keys, when every one of them lies in the space:
    a study asks it as its first trial, so the tuned values are never worse than the default on the holdout.
    None when one of them lies outside (a range that excludes it, a value not among the choices)."""
    tree = config.model_dump(mode="json")
    point = {}
    for key, param in tune.space.items():
        value = get_dotted(tree, key)
        if not _in_space(value, param):
            return None
        point[key] = int(value) if param.type == "int" else value
    return point


def _in_space(value: Any, param: SearchParam) -> bool:
    """Whether the space's dimension ``param`` holds ``value`` (on its step's grid, where it has one)."""
    if param.type == "categorical":
        return value in param.choices
    if isinstance(value, bool) or not isinstance(value, int | float) or not param.low <= value <= param.high:
        return False
    if param.type == "int":
        return value == int(value) and (int(value) - int(param.low)) % int(param.step or 1) == 0
    if param.step:
        steps = (value - param.low) / param.step
        return abs(steps - round(steps)) < 1e-9
    return True


def with_values(config: RunConfig, values: dict[str, Any], **changes: Any) -> RunConfig:
    """``config`` with the dotted ``values`` set (and ``changes``: a dotted key -> value each), validated."""
    tree = config.model_dump(mode="json")
    for key, value in {**values, **changes}.items():
        set_dotted(tree, key, value)
    return parse_run_config(tree)


def trial_config(config: RunConfig, tune: TuneConfig, values: dict[str, Any], seed: int) -> RunConfig:
    """What a tuning trial trains: the arm's config with the trial's values, ``tune.epochs`` epochs, on the
    training set minus its stratified holdout, scored on that holdout (never the test set), with one seed."""
    changes: dict[str, Any] = {
        "data.holdout": {"fraction": tune.holdout, "seed": tune.split_seed},
        "seed": seed,
    }
    if tune.epochs is not None:
        changes["train.epochs"] = tune.epochs
    return with_values(config, values, **changes)


def check_space(experiment: Experiment, configs: list[RunConfig]) -> None:
    """Every dimension names a key of the config that the grid does not vary, and each of its bounds (or
    choices) makes a valid trial config for every arm; raises a one-line ConfigError otherwise."""
    tune = experiment.tune
    if tune is None:
        return
    grid_keys = {k for block in experiment.grid for k in block if k != "description"}
    for key in tune.space:
        where = f"tune.space.{key}"
        clash = next((g for g in grid_keys if overlaps(g, key)), None)
        if clash:
            raise ConfigError(where, key, f"is varied by the grid ('{clash}'); tune it or grid it, not both")
        for config in configs:
            tree = config.model_dump(mode="json")
            try:
                get_dotted(tree, key)
            except KeyError:
                raise ConfigError(where, key, "is not a key of the run config (e.g. train.lr)") from None
    seed = tune.seed if tune.seed is not None else experiment.initial_seeds[0]
    for config in configs:
        try:  # the trial recipe itself: e.g. the warm-up must fit in tune.epochs
            base = trial_config(config, tune, {}, seed)
        except ConfigError as exc:
            raise ConfigError("tune.epochs", tune.epochs, f"makes an invalid trial config ({exc})") from None
        for key, param in tune.space.items():
            for value in param.values_to_check():
                tree = copy.deepcopy(base.model_dump(mode="json"))
                set_dotted(tree, key, value)
                try:
                    parse_run_config(tree)
                except ConfigError as exc:
                    raise ConfigError(f"tune.space.{key}", value, f"makes an invalid trial config ({exc})") from None
