"""Grid expansion (ablation/experiment/grid.py): a union of products times seeds, mapping values, duplicate arms, grid
values that are not lists, and networks that cannot be built, all before any job."""

from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.schema import load_experiment
from tests.support.base_experiment import BASE, one_line_error


def test_reduction_that_leaves_no_hidden_channel_fails_before_training(write_experiment):
    message = one_line_error(write_experiment, BASE + "grid:\n  model.attention.reduction: [128]\n", build=True)
    assert message.startswith("model.attention.reduction: 128")
    assert "64" in message and "allowed" in message


def test_grid_value_must_be_a_list(write_experiment):
    message = one_line_error(write_experiment, BASE + "grid:\n  model.attention.kernel_size: 3\n")
    assert message.startswith("grid[0].model.attention.kernel_size: 3")


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


def test_duplicate_arms_are_rejected(write_experiment):
    text = BASE + "grid:\n  model.attention.kernel_size: [7, 7]\n"
    assert "same config" in one_line_error(write_experiment, text)
