"""A sweep ready to run: its experiment validated, its arms and cells expanded, its networks measured.

``prepare_sweep`` is everything that can be checked before a store is touched: the config of every arm, that every
network builds (on the meta device, which also counts its params and MACs) and that the data is there, readable
and what it claims (its identity is part of each cell's key). Both the ``sweep`` command and every worker start
from a ``PreparedSweep``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ablation.data.sources import check_data
from ablation.experiment.grid import Arm, Cell, build_network, expand_arms, expand_cells, sweep_key
from ablation.experiment.schema import Experiment
from ablation.experiment.tune import SeedRule


@dataclass(frozen=True)
class PreparedSweep:
    experiment: Experiment
    arms: list[Arm]
    cells: list[Cell]
    costs: dict[int, tuple[int, int]] = field(default_factory=dict)  # arm index -> (params, MACs)
    # The experiment file and its --set overrides, to start worker processes on the very same experiment.
    command_args: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The sweep's identity, which its state and parent run are keyed by: its set of cells; for a planned
        sweep (tuning, a seed rule), whose cells are added as it goes, the arms' cells and the plan itself."""
        if not self.experiment.planned:
            return sweep_key(self.cells)
        return plan_key(self)

    @property
    def baseline(self) -> int:
        """The arm differences are tested against: the paper's baseline row if the table has one, else the first."""
        return next((arm.index for arm in self.arms if arm.paper_row and arm.paper_row.baseline), 0)


def prepare_sweep(
    experiment: Experiment, command_args: tuple[str, ...] = (), arms: list[Arm] | None = None
) -> PreparedSweep:
    """Validate everything before any job: configs, data (``arms``, when already expanded), networks."""
    from ablation.models.measure import measure  # torch: after the configs, whose errors should not wait for it

    arms = expand_arms(experiment, check_paths=True) if arms is None else arms
    costs = {arm.index: measure(lambda arm=arm: build_network(arm), arm.data.image_size) for arm in arms}
    for data in {arm.config.data for arm in arms}:
        check_data(data)
    return PreparedSweep(experiment, arms, expand_cells(experiment, arms), costs, tuple(command_args))


def read_only_sweep(experiment: Experiment, arms: list[Arm] | None = None) -> PreparedSweep:
    """The arms and cells of an experiment for commands that read results (``table``, ``status``, ``gradcam``):
    the data must be here, because its identity is part of every cell's key, but nothing is measured."""
    arms = expand_arms(experiment, check_paths=True) if arms is None else arms
    return PreparedSweep(experiment, arms, expand_cells(experiment, arms))


def plan_key(prepared: PreparedSweep) -> str:
    """A planned sweep's identity: its arms' cells at the first seeds, its tune section and its seeds."""
    experiment = prepared.experiment
    seeds = experiment.seeds
    payload = {
        "cells": sweep_key(prepared.cells),
        "tune": experiment.tune.model_dump(mode="json") if experiment.tune else None,
        "seeds": seeds.model_dump(mode="json") if isinstance(seeds, SeedRule) else list(seeds),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
