"""Expand an experiment into arms (one per table row) and cells (arm x seed, one training job each).

A grid is a product over dotted keys, or a list of such products (a union, like scikit-learn's ParameterGrid),
so that a table mixing a baseline with a product of options is one file:

    grid:
      - model.attention: [{type: none}]
      - model.attention.channel_pool: [[avg], [max], [avg, max]]

A mapping value replaces the whole section at its key. A block may carry ``description``, a template such as
``"ResNet50 + CBAM (k={model.attention.kernel_size})"``; otherwise an arm that is one of the paper's rows takes
the paper's label, and any other arm is described from its config.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ablation.attention.custom import module_source
from ablation.core.errors import ConfigError
from ablation.data.catalog import DatasetInfo, dataset_info
from ablation.experiment.describe import describe_attention, format_value, render_template
from ablation.experiment.paper import PaperRow, find_row
from ablation.experiment.schema import Experiment, RunConfig, config_hash, flatten, parse_run_config, set_dotted
from ablation.experiment.spec import PHASE_TUNE, RECIPE_TUNED, CellSpec
from ablation.experiment.tune import TuneConfig
from ablation.models import build_model
from ablation.models.custom import check_builder, custom_label
from ablation.models.registry import CUSTOM, MIN_IMAGE_SIZE, display_name


@dataclass(frozen=True)
class Arm:
    """One configuration of the grid: one row of the results table."""

    index: int
    description: str
    axes: dict[str, Any]  # the grid keys that define this arm, with their values
    config: RunConfig  # seed is the experiment's first seed; cells replace it
    data: DatasetInfo
    paper_row: PaperRow | None
    explicit_description: bool = False  # set by the grid block's description template
    # A user's own attention module (type custom): {"target", "file", "sha256"} of its source file, recorded
    # with every run and part of each cell's key; None for the built-in types.
    module_source: dict[str, str] | None = None
    # A user's own network (arch custom): the same record of its builder's source file.
    backbone_source: dict[str, str] | None = None

    @property
    def module_sha256(self) -> str | None:
        """The digest of a user's attention module's source file as expanded, which keys its cells."""
        return self.module_source["sha256"] if self.module_source else None

    @property
    def backbone_sha256(self) -> str | None:
        """The digest of a user's network builder's source file as expanded, which keys its cells."""
        return self.backbone_source["sha256"] if self.backbone_source else None

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes or self.data.num_classes


@dataclass(frozen=True)
class Cell:
    """One training job: an arm with one seed (a planned sweep's cells also carry the spec they were made from)."""

    arm: Arm
    seed: int
    spec: CellSpec | None = None

    @cached_property
    def config(self) -> RunConfig:
        return self.arm.config.model_copy(update={"seed": self.seed})

    @cached_property
    def hash(self) -> str:
        """The cell's key: its config, seed and the identity of its data (``ablation.data.identity``); for a
        user's own attention module also its source file's digest (an edited module is a new cell)."""
        return config_hash(self.config, self.arm.data.identity, self.arm.module_sha256, self.arm.backbone_sha256)

    @cached_property
    def legacy_hash(self) -> str:
        """The key this cell had before data identities were part of it (runs logged then carry it). A user's
        module keeps its source digest here too: no run of an older version of it is ever taken for this cell."""
        return config_hash(self.config, None, self.arm.module_sha256, self.arm.backbone_sha256)

    @property
    def name(self) -> str:
        spec = self.spec
        if spec is not None and spec.phase == "tune":
            return f"{self.arm.description} | tune trial {spec.trial}"
        if spec is not None and spec.recipe == "tuned":
            return f"{self.arm.description} | tuned | seed {self.seed}"
        return f"{self.arm.description} | seed {self.seed}"


def _block_points(block: dict[str, Any], index: int) -> list[dict[str, Any]]:
    axes = {k: v for k, v in block.items() if k != "description"}
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid[{index}].{key}", values, "must be a non-empty list of values to try")
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def expand_arms(experiment: Experiment, check_paths: bool = True) -> list[Arm]:
    """Every arm of the grid, validated; raises ConfigError (one line) for any bad value before any job."""
    arms: list[Arm] = []
    seen: dict[str, int] = {}
    for block_index, block in enumerate(experiment.grid):
        template = block.get("description")
        if template is not None and not isinstance(template, str):
            raise ConfigError(f"grid[{block_index}].description", template, "must be a string template")
        for point in _block_points(block, block_index):
            tree = copy.deepcopy(experiment.base)
            for key, value in point.items():
                set_dotted(tree, key, value)
            tree["seed"] = experiment.initial_seeds[0]
            config = parse_run_config(tree)
            data = dataset_info(config.data, check_paths=check_paths)
            _check_fit(config, data)
            model = config.model
            source = module_source(model.attention)  # imports a user's module (type custom) and checks its arguments
            # A user's network (arch custom): its builder imported and its arguments checked, its file's digest kept.
            network = check_builder(model.target, model.options) if model.arch == CUSTOM else None
            row = find_row(
                experiment.paper,
                model.arch,
                model.width,
                model.attention.model_dump(),
                model.stem,
                model.num_classes or data.num_classes,
            )
            if template is not None:
                description = render_template(template, config.model_dump(mode="json"))
            else:
                description = _describe(config, point)
            key = config_hash(
                config, data.identity, source["sha256"] if source else None, network["sha256"] if network else None
            )
            if key in seen:
                raise ConfigError(
                    f"grid[{block_index}]", point, f"resolves to the same config as arm {seen[key]}; drop one"
                )
            seen[key] = len(arms)
            arms.append(Arm(len(arms), description, point, config, data, row, template is not None, source, network))
    # A table of the paper's rows reads best in the paper's words; a grid that only partly covers the paper
    # keeps one consistent, generated style for every arm.
    if all(arm.paper_row is not None or arm.explicit_description for arm in arms):
        arms = [
            arm if arm.explicit_description else dataclasses.replace(arm, description=arm.paper_row.label)
            for arm in arms
        ]
    labels = [a.description for a in arms]
    duplicate = next((label for label in labels if labels.count(label) > 1), None)
    if duplicate is not None:
        raise ConfigError("grid.description", duplicate, "labels two arms; give the grid block a description template")
    if experiment.tune is not None:
        from ablation.experiment.search_space import check_space  # optuna's distributions: only for a tuned experiment

        check_space(experiment, [arm.config for arm in arms])
    return arms


def _check_fit(config: RunConfig, data: DatasetInfo) -> None:
    """What no single key can check alone: the resolution against the stem, the batch against the data."""
    smallest = MIN_IMAGE_SIZE[config.model.stem]
    if config.model.arch != CUSTOM and data.image_size < smallest:  # a user's network has no stem of ours
        raise ConfigError(
            "data.image_size",
            data.image_size,
            f"the {config.model.stem} stem halves the resolution down to nothing below it; allowed: >= {smallest}",
        )
    batch, images = config.train.batch_size, data.train_size
    if images is not None and batch > images:
        raise ConfigError(
            "train.batch_size", batch, f"exceeds the {images} training images of {data.name}; allowed: 1..{images}"
        )


def sweep_key(cells: list[Cell]) -> str:
    """Identifies a sweep by its set of cells: the same experiment with the same grid and seeds."""
    return hashlib.sha256(",".join(sorted(c.hash for c in cells)).encode()).hexdigest()[:12]


def expand_cells(experiment: Experiment, arms: list[Arm] | None = None) -> list[Cell]:
    """Arms x seeds, seed-major within each arm (all seeds of arm 0 first); a seed rule's first ``min`` seeds."""
    arms = expand_arms(experiment) if arms is None else arms
    return [Cell(arm, seed) for arm in arms for seed in experiment.initial_seeds]


def _describe(config: RunConfig, point: dict[str, Any]) -> str:
    """Network label plus any varied non-model key (', lr=0.05')."""
    model = config.model
    network = custom_label(model.target) if model.arch == CUSTOM else display_name(model.arch, model.width)
    label = network + describe_attention(model.attention)
    extras = [
        f"{key.split('.')[-1]}={format_value(value)}"
        for key, value in flatten(point).items()
        if not key.startswith("model.attention") and key not in ("model.arch", "model.width")
    ]
    return label + (", " + ", ".join(extras) if extras else "")


def build_network(arm: Arm):
    """The arm's network, untrained, on the current default device."""
    model = arm.config.model
    return build_model(
        model.arch,
        num_classes=arm.num_classes,
        attention=model.attention,
        width=model.width,
        stem=model.stem,
        layout=model.layout,
        target=model.target,
        options=model.options,
    )


def check_buildable(arms: list[Arm]) -> None:
    """Build every arm's network on the meta device (no memory, no arithmetic) so that a value only a real
    network can reject, e.g. a reduction that leaves no hidden channel in a 64-channel block, fails now."""
    import torch

    for arm in arms:
        with torch.device("meta"):
            build_network(arm)


def cell_of_spec(arm: Arm, spec: CellSpec, tune: TuneConfig | None) -> Cell:
    """The cell a planned sweep's spec describes: a tuning trial (``tune``'s trial recipe, on the training set's
    holdout), a tuned final run (the arm's config with the spec's values) or a default one (the arm's own config).
    Any worker on any machine, and a table read from the results, rebuild the same cell, with the same key."""
    from ablation.experiment.search_space import trial_config, with_values  # Optuna's distributions: deferred

    values = dict(spec.values)
    if spec.phase == PHASE_TUNE:
        config = trial_config(arm.config, tune, values, spec.seed)
    elif spec.recipe == RECIPE_TUNED:
        config = with_values(arm.config, values, seed=spec.seed)
    else:
        config = arm.config.model_copy(update={"seed": spec.seed})
    return Cell(dataclasses.replace(arm, config=config), spec.seed, spec)
