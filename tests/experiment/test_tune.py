"""The tune section and the seed rule: what they accept, and one line naming the key and value for what they do not."""

import pytest

from ablation.core.errors import ConfigError
from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.schema import load_experiment
from ablation.experiment.search_space import distributions, trial_config
from ablation.experiment.tune import SeedRule
from tests.support.folders import EXPERIMENTS

BASE = """
base:
  model: {arch: resnet18, width: 0.25, stem: cifar, attention: {type: none}}
  data: {dataset: cifar10-micro}
  train: {epochs: 4, batch_size: 100, warmup_epochs: 1}
grid:
  - model.attention: [{type: none}, {type: se}]
"""


def load(write_experiment, text: str, *overrides: str):
    experiment = load_experiment(write_experiment(BASE + text), list(overrides))
    return experiment, expand_arms(experiment)


def test_a_tune_section_and_seed_rule_load_into_a_planned_experiment(write_experiment):
    experiment, arms = load(
        write_experiment,
        "seeds: {min: 3, max: 5}\ntune:\n  trials: 4\n  epochs: 2\n  space:\n"
        "    train.lr: {type: float, low: 0.01, high: 0.5, log: true}\n"
        "    train.batch_size: {type: categorical, choices: [50, 100]}\n",
    )
    assert experiment.planned and experiment.initial_seeds == [0, 1, 2]
    assert isinstance(experiment.seeds, SeedRule) and experiment.seeds.max == 5
    assert [c.seed for c in expand_cells(experiment, arms)] == [0, 1, 2, 0, 1, 2]
    dists = distributions(experiment.tune)
    assert dists["train.lr"].log and dists["train.batch_size"].choices == (50, 100)
    trial = trial_config(arms[1].config, experiment.tune, {"train.lr": 0.2}, seed=7)
    assert (trial.train.lr, trial.train.epochs, trial.seed) == (0.2, 2, 7)
    assert trial.data.holdout.fraction == 0.1 and arms[1].config.data.holdout is None


def test_plain_seed_lists_keep_working_and_are_not_planned(write_experiment):
    experiment, _ = load(write_experiment, "seeds: [3, 4]\n")
    assert not experiment.planned and experiment.initial_seeds == [3, 4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tune:\n  trials: 0\n  space: {train.lr: {type: float, low: 0.1, high: 0.2}}\n", "tune.trials: 0"),
        ("tune:\n  trials: 2\n  space: {}\n", "tune.space"),
        ("tune:\n  trials: 2\n  space: {train.lr: {type: float, low: 0.5, high: 0.2}}\n", "needs low < high"),
        ("tune:\n  trials: 2\n  space: {train.lr: {type: float, low: 0.0, high: 0.2, log: true}}\n", "low > 0"),
        ("tune:\n  trials: 2\n  space: {train.lr: {type: cat, choices: [1]}}\n", "type"),
        ("tune:\n  trials: 2\n  space: {train.epochs: {type: int, low: 1, high: 3}}\n", "cannot be tuned"),
        ("tune:\n  trials: 2\n  space: {seed: {type: int, low: 1, high: 3}}\n", "tunable keys start with"),
        ("tune:\n  trials: 2\n  space: {train.lrr: {type: float, low: 0.1, high: 0.2}}\n", "not a key of the run"),
        ("tune:\n  trials: 2\n  space: {model.attention: {type: categorical, choices: [1]}}\n", "varied by the grid"),
        ("tune:\n  trials: 2\n  space: {train.momentum: {type: float, low: 0.5, high: 1.5}}\n", "invalid trial config"),
        ("tune:\n  trials: 2\n  epochs: 1\n  space: {train.lr: {type: float, low: 0.1, high: 0.2}}\n", "tune.epochs"),
        ("tune:\n  trials: 2\n  holdout: 0.9\n  space: {train.lr: {type: float, low: 0.1, high: 0.2}}\n", "(0, 0.5]"),
        (
            "tune:\n  trials: 2\n  pruner: {type: asha}\n  space: {train.lr: {type: float, low: 0.1, high: 0.2}}\n",
            "asha",
        ),
        ("tune:\n  trials: 2\n  colour: red\n  space: {train.lr: {type: float, low: 0.1, high: 0.2}}\n", "colour"),
        ("seeds: {min: 1, max: 4}\n", "min must be >= 2"),
        ("seeds: {min: 4, max: 3}\n", "max must be >= min"),
        ("seeds: {min: 3, max: 5, until: forever}\n", "seeds"),
        ("seeds: {min: 3, maximum: 5}\n", "unknown key maximum"),
    ],
)
def test_a_bad_tune_section_or_seed_rule_is_one_line_naming_it(write_experiment, text, message):
    with pytest.raises(ConfigError) as raised:
        load(write_experiment, text)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_set_changes_a_tune_value_and_refuses_what_it_cannot(write_experiment):
    text = "tune:\n  trials: 4\n  space: {train.lr: {type: float, low: 0.1, high: 0.2}}\n"
    experiment, _ = load(write_experiment, text, "tune.trials=2", "tune.pruner.type=median")
    assert experiment.tune.trials == 2 and experiment.tune.pruner.type == "median"
    for override, message in [
        ("tune.trials=-1", "--set tune.trials"),
        ("tune.space.train.lr.high=3", "edit the file"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load(write_experiment, text, override)
    with pytest.raises(ConfigError, match="no tune section"):
        load(write_experiment, "", "tune.trials=2")


def test_the_shipped_tuned_experiments_expand(write_experiment):
    for name in ("demo_tuned", "table1_tuned"):
        experiment = load_experiment(EXPERIMENTS / f"{name}.yaml")
        arms = expand_arms(experiment, check_paths=False)
        assert experiment.planned and len(arms) >= 3


@pytest.mark.parametrize(
    ("param", "value", "inside"),
    [
        ({"type": "float", "low": 0.01, "high": 0.5, "log": True}, 0.1, True),
        ({"type": "float", "low": 0.01, "high": 0.5}, 0.6, False),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25}, 0.5, True),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25}, 0.3, False),
        ({"type": "int", "low": 1, "high": 9, "step": 2}, 5, True),
        ({"type": "int", "low": 1, "high": 9, "step": 2}, 4, False),
        ({"type": "categorical", "choices": [0.0, 0.1]}, 0.1, True),
        ({"type": "categorical", "choices": [0.0, 0.1]}, 0.2, False),
    ],
)
def test_the_default_recipe_is_a_first_trial_only_where_it_lies_in_the_space(param, value, inside):
    from ablation.experiment.schema import parse_run_config
    from ablation.experiment.search_space import default_point
    from ablation.experiment.tune import TuneConfig

    key = "train.label_smoothing" if param["type"] != "int" else "train.warmup_epochs"
    config = parse_run_config({"train": {key.split(".")[1]: value, "epochs": 20}})
    tune = TuneConfig.model_validate({"trials": 3, "space": {key: param}})
    assert default_point(config, tune) == ({key: value} if inside else None)
