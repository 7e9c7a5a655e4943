"""The small experiment the config, grid and description tests start from, and their check that an experiment
fails with one line."""

import pytest

from ablation.core.errors import ConfigError
from ablation.experiment.grid import check_buildable, expand_arms
from ablation.experiment.schema import load_experiment

BASE = """
base:
  model: {arch: resnet18, stem: cifar, attention: {type: cbam}}
  data: {dataset: cifar10-micro}
  train: {epochs: 1}
"""


def one_line_error(write_experiment, text, build=False):
    with pytest.raises(ConfigError) as info:
        arms = expand_arms(load_experiment(write_experiment(text)))
        if build:
            check_buildable(arms)
    message = str(info.value)
    assert "\n" not in message
    return message
