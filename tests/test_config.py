"""Experiment files: strict parsing, one-line errors, grid expansion, descriptions and hashing."""

import pytest

from ablation.config import config_hash, load_experiment, load_yaml, parse_run_config
from ablation.errors import ConfigError
from ablation.grid import check_buildable, expand_arms, expand_cells
from tests.conftest import EXPERIMENTS

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
        ("model.attention: [{type: eca}]", "model.attention.type", "eca", "cbam"),
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


def test_reduction_that_leaves_no_hidden_channel_fails_before_training(write_experiment):
    message = one_line_error(write_experiment, BASE + "grid:\n  model.attention.reduction: [128]\n", build=True)
    assert message.startswith("model.attention.reduction: 128")
    assert "64" in message and "allowed" in message


def test_unknown_top_level_and_section_keys(write_experiment):
    assert "unknown top-level key" in one_line_error(write_experiment, BASE + "sedds: [0]\n")
    message = one_line_error(write_experiment, BASE.replace("epochs: 1", "epoch: 1"))
    assert message.startswith("train.epoch:") and "epochs" in message


def test_grid_value_must_be_a_list(write_experiment):
    message = one_line_error(write_experiment, BASE + "grid:\n  model.attention.kernel_size: 3\n")
    assert message.startswith("grid[0].model.attention.kernel_size: 3")


def test_yaml_syntax_error_is_one_line(write_experiment):
    message = one_line_error(write_experiment, BASE + "grid: {model.arch: [resnet18\n")
    assert "YAML" in message


def test_floats_without_a_dot_are_floats():
    assert load_yaml("lr: 1e-4")["lr"] == pytest.approx(1e-4)
    config = parse_run_config({"train": {"weight_decay": load_yaml("5e-4")}})
    assert config.train.weight_decay == pytest.approx(5e-4)


def test_grid_is_a_union_of_products_times_seeds(write_experiment):
    text = (
        BASE
        + """
grid:
  - model.attention: [{type: none}, {type: se}]
  - model.attention.kernel_size: [1, 3, 7]
    model.attention.order: [channel-first, parallel]
seeds: [0, 1]
"""
    )
    experiment = load_experiment(write_experiment(text))
    arms = expand_arms(experiment)
    assert len(arms) == 2 + 3 * 2
    assert [a.config.model.attention.type for a in arms[:2]] == ["none", "se"]
    # Later keys vary fastest, as in itertools.product.
    assert [(a.config.model.attention.kernel_size, a.config.model.attention.order) for a in arms[2:4]] == [
        (1, "channel-first"),
        (1, "parallel"),
    ]
    assert arms[2].axes == {"model.attention.kernel_size": 1, "model.attention.order": "channel-first"}
    cells = expand_cells(experiment, arms)
    assert len(cells) == 16
    assert len({c.hash for c in cells}) == 16
    assert {c.seed for c in cells} == {0, 1}


def test_mapping_value_replaces_the_whole_section(write_experiment):
    text = BASE.replace("{type: cbam}", "{type: cbam, kernel_size: 3}") + "grid:\n  model.attention: [{type: se}]\n"
    (arm,) = expand_arms(load_experiment(write_experiment(text)))
    assert arm.config.model.attention.model_dump() == {"type": "se", "reduction": 16, "mlp_bias": True, "impl": "fast"}


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


def test_duplicate_arms_are_rejected(write_experiment):
    text = BASE + "grid:\n  model.attention.kernel_size: [7, 7]\n"
    assert "same config" in one_line_error(write_experiment, text)


def test_hash_ignores_data_location_but_not_the_recipe():
    a = parse_run_config({"data": {"dataset": "npz", "root": "/a/x.npz"}})
    b = parse_run_config({"data": {"dataset": "npz", "root": "/b/x.npz"}})
    c = parse_run_config({"data": {"dataset": "npz", "root": "/a/x.npz"}, "train": {"lr": 0.05}})
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_hash(a) != config_hash(a.model_copy(update={"seed": 1}))


def test_descriptions_read_like_the_papers_rows(write_experiment):
    table1 = expand_arms(load_experiment(EXPERIMENTS / "table1_channel_pooling.yaml"), check_paths=False)
    assert [a.description for a in table1] == [
        "ResNet50 (baseline)",
        "ResNet50 + AvgPool (SE-like)",
        "ResNet50 + MaxPool",
        "ResNet50 + AvgPool & MaxPool",
    ]
    text = (
        BASE
        + """
grid:
  - model.attention: [{type: none}]
  - model.attention.order: [spatial-first]
    model.attention.kernel_size: [3]
  - description: "CBAM k={model.attention.kernel_size}, pools {model.attention.channel_pool}"
    model.attention.kernel_size: [5]
  - train.lr: [0.05]
"""
    )
    labels = [a.description for a in expand_arms(load_experiment(write_experiment(text)))]
    assert labels == [
        "ResNet18",
        "ResNet18 + CBAM (spatial + channel, k=3)",
        "CBAM k=5, pools AvgPool & MaxPool",
        "ResNet18 + CBAM, lr=0.05",
    ]


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


def test_missing_or_unfetchable_data_is_one_line_before_any_job(tmp_path):
    from ablation.config import DataConfig
    from ablation.data.sources import check_data

    cases = [
        (DataConfig(dataset="npz", root=str(tmp_path / "none.npz")), "does not exist"),
        (DataConfig(dataset="npz"), "needs data.root"),
        (DataConfig(dataset="imagenet", root=str(tmp_path)), "has no train/ folder"),
        # Offline (as here and in CI), torchvision cannot fetch CIFAR: one line saying so.
        (DataConfig(dataset="cifar10", root=str(tmp_path / "cifar")), "could not be downloaded"),
    ]
    for data, expected in cases:
        with pytest.raises(ConfigError) as info:
            check_data(data)
        assert expected in str(info.value) and "\n" not in str(info.value)
        assert str(info.value).startswith("data.root:")
