"""Experiment files (ablation/experiment/schema.py): strict parsing, one-line errors, --set overrides, hashing,
and every shipped experiment."""

import pytest

from ablation.core.errors import ConfigError
from ablation.experiment.grid import check_buildable, expand_arms
from ablation.experiment.schema import config_hash, load_experiment, load_yaml, parse_run_config
from tests.support.base_experiment import BASE, one_line_error
from tests.support.folders import EXPERIMENTS


@pytest.mark.parametrize(
    ("snippet", "key", "value", "allowed"),
    [
        ("model.attention.kernel_size: [4]", "model.attention.kernel_size", "4", "odd"),
        ("model.attention.channel_pool: [[avg, median]]", "model.attention.channel_pool.1", "median", "lse"),
        ("model.attention.order: [sideways]", "model.attention.order", "sideways", "channel-first"),
        ("model.attention.kernal_size: [3]", "model.attention.kernal_size", "3", "kernel_size"),
        ("model.attention.reduction: ['16']", "model.attention.reduction", "'16'", "integer"),
        ("model.attention.spatial_bn: [1]", "model.attention.spatial_bn", "1", "boolean"),
        ("model.arch: [resnet42]", "model.arch", "resnet42", "resnet50"),
        ("model.attention: [{type: gcnet}]", "model.attention.type", "gcnet", "cbam"),
        ("model.attention: [{type: eca, kernel_size: 2}]", "model.attention.kernel_size", "2", "odd"),
        ("train.lr: [-0.1]", "train.lr", "-0.1", ">= 0"),
        ("train.epochs: [1.5]", "train.epochs", "1.5", "integer"),
        ("data.dataset: [mnist]", "data.dataset", "mnist", "imagenet"),
        ("model.attention.channel_pool: [[]]", "model.attention.channel_pool", "[]", "non-empty"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(write_experiment, snippet, key, value, allowed):
    message = one_line_error(write_experiment, BASE + "grid:\n  " + snippet + "\n")
    assert message.startswith(key + ":")
    assert value in message
    assert allowed in message


def test_unknown_top_level_and_section_keys(write_experiment):
    assert "unknown top-level key" in one_line_error(write_experiment, BASE + "sedds: [0]\n")
    message = one_line_error(write_experiment, BASE.replace("epochs: 1", "epoch: 1"))
    assert message.startswith("train.epoch:") and "epochs" in message


def test_yaml_syntax_error_is_one_line(write_experiment):
    message = one_line_error(write_experiment, BASE + "grid: {model.arch: [resnet18\n")
    assert "YAML" in message


def test_floats_without_a_dot_are_floats():
    assert load_yaml("lr: 1e-4")["lr"] == pytest.approx(1e-4)
    config = parse_run_config({"train": {"weight_decay": load_yaml("5e-4")}})
    assert config.train.weight_decay == pytest.approx(5e-4)


def test_set_overrides_base_and_seeds_and_refuses_grid_keys(write_experiment):
    path = write_experiment(BASE + "grid:\n  model.attention.kernel_size: [3, 7]\n")
    experiment = load_experiment(path, ["train.epochs=3", "seeds=[4, 5]", "model.attention.reduction=8"])
    arms = expand_arms(experiment)
    assert {a.config.train.epochs for a in arms} == {3}
    assert {a.config.model.attention.reduction for a in arms} == {8}
    assert experiment.seeds == [4, 5]
    with pytest.raises(ConfigError, match="varied by the grid"):
        load_experiment(path, ["model.attention.kernel_size=5"])
    with pytest.raises(ConfigError, match="varied by the grid"):
        load_experiment(path, ["model.attention={type: se}"])
    with pytest.raises(ConfigError, match="key=value"):
        load_experiment(path, ["train.epochs"])


def test_hash_ignores_data_location_but_not_the_recipe():
    a = parse_run_config({"data": {"dataset": "npz", "root": "/a/x.npz"}})
    b = parse_run_config({"data": {"dataset": "npz", "root": "/b/x.npz"}})
    c = parse_run_config({"data": {"dataset": "npz", "root": "/a/x.npz"}, "train": {"lr": 0.05}})
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_hash(a) != config_hash(a.model_copy(update={"seed": 1}))


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_experiment_expands_and_builds(path):
    experiment = load_experiment(path)
    arms = expand_arms(experiment, check_paths=False)
    check_buildable(arms)
    assert len({a.description for a in arms}) == len(arms)
    if experiment.paper and path.stem.startswith("table"):
        # Every arm of a paper-table file is one of the paper's rows (or labelled by hand).
        assert all(a.paper_row is not None or a.explicit_description for a in arms)


def test_full_grid_has_the_missions_product():
    arms = expand_arms(load_experiment(EXPERIMENTS / "full_grid.yaml"), check_paths=False)
    attentions = [a.config.model.attention for a in arms]
    combos = {
        (tuple(att.channel_pool), att.kernel_size, att.order)
        for att in attentions
        if att.type == "cbam" and att.spatial == "pool"
    }
    for pools in (("avg",), ("max",), ("avg", "max")):
        for k in (1, 3, 7):
            for order in ("channel-first", "spatial-first", "parallel"):
                assert (pools, k, order) in combos
    assert {"none", "se"} <= {a.config.model.attention.type for a in arms}
