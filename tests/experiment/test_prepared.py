"""A sweep ready to run (ablation/experiment/prepared.py): every arm measured before any store is touched, and the
read-only form that reading commands use, which measures nothing, over the very same cells."""

from ablation.experiment.grid import build_network
from ablation.experiment.prepared import prepare_sweep, read_only_sweep
from ablation.experiment.schema import load_experiment
from ablation.models.measure import count_params
from tests.support.tiny import tiny_experiment


def test_prepare_measures_every_arm_and_read_only_the_same_cells(tiny_npz, write_experiment):
    grid = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"
    experiment = load_experiment(write_experiment(tiny_experiment(tiny_npz, grid, "[0, 1]")))
    args = ("exp.yaml", "--set", "seeds=[0, 1]")
    prepared = prepare_sweep(experiment, args)
    assert [cell.arm.index for cell in prepared.cells] == [0, 0, 1, 1] and prepared.command_args == args
    assert sorted(prepared.costs) == [0, 1]
    for arm in prepared.arms:
        params, macs = prepared.costs[arm.index]
        assert params == count_params(build_network(arm)) and macs > 0
    assert prepared.costs[1][0] > prepared.costs[0][0]  # CBAM adds parameters to the plain network

    reading = read_only_sweep(experiment)
    assert reading.costs == {} and reading.command_args == ()
    assert [cell.hash for cell in reading.cells] == [cell.hash for cell in prepared.cells]
