"""The resolved configuration of one training job, and the strict loading of experiment files.

An experiment file (``experiments/*.yaml``) holds a ``base`` run config, a ``grid`` (a product over dotted keys,
or a list of such products), and ``seeds``. ``ablation.experiment.grid`` expands it into arms (table rows) and
cells (arm x seed). Everything here is strict: an unknown key, a wrong type or a value outside what is allowed is a
``ConfigError`` with one line naming the key, the bad value and what is allowed, raised before any job starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ablation.attention.custom import source_record
from ablation.attention.options import HOW_FIELDS
from ablation.attention.registry import ATTENTION_TYPES, OPTIONS
from ablation.core.errors import ConfigError
from ablation.core.strict import CROSS_KEY, StrictModel
from ablation.data.config import DataConfig
from ablation.experiment.bundled import experiment_path
from ablation.experiment.comparison import StatsConfig
from ablation.experiment.paper import TABLE_TITLES
from ablation.experiment.tune import SeedRule, TuneConfig
from ablation.models.config import ModelConfig
from ablation.models.custom import check_builder
from ablation.models.registry import CUSTOM


class TrainConfig(StrictModel):
    """The optimisation recipe. Defaults are the paper's ImageNet recipe (official train_imagenet.py)."""

    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # on all parameters, as the official script
    # "step": lr x gamma every step_size epochs (paper: x0.1 every 30); "cosine": to 0 over the epochs.
    schedule: Literal["step", "cosine", "constant"] = "step"
    step_size: int = 30
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up, counted in epochs, applied per step
    label_smoothing: float = 0.0
    # Mixed precision and memory format: "auto" turns them on where they pay (CUDA) and off on the CPU.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    # torch.compile the training forward/backward ("on"); CBAM then traces its straightforward formulation and the
    # compiler fuses it. Changes how, not what (up to rounding): excluded from the config hash.
    compile: Literal["off", "on"] = "off"

    @field_validator("epochs", "batch_size", "step_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be an integer >= 1")
        return value

    @field_validator("lr", "weight_decay", "gamma")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be a number >= 0")
        return value

    @field_validator("momentum", "label_smoothing")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError("must be a number in [0, 1)")
        return value

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be an integer >= 0")
        return value

    @model_validator(mode="after")
    def _warmup_within_training(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise PydanticCustomError(
                "warmup", "must be fewer than train.epochs ({epochs})", {"epochs": self.epochs, "key": "warmup_epochs"}
            )
        return self


class RunConfig(StrictModel):
    """Everything that determines one training job's result."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0


# Keys that locate, schedule or name a job without changing what it computes; left out of the config hash. The
# data's location is replaced by the data's identity (ablation.data.identity): moving the files changes nothing,
# other files are another result.
HASH_EXCLUDED = ("data.root", *(f"model.attention.{key}" for key in HOW_FIELDS), "train.compile")


def config_hash(
    config: RunConfig,
    data_identity: str | None = None,
    module_sha256: str | None = None,
    backbone_sha256: str | None = None,
) -> str:
    """A short stable digest of everything that determines a job's result: the config (seed included), for a
    cell's key the identity of the images it trains on, and for a user's own attention module (type custom) or
    network (arch custom) the SHA-256 of its source file (``ablation.attention.custom``, ``ablation.models.custom``),
    so an edited module keys new cells: the digest recorded when the experiment was expanded (``module_sha256``,
    ``backbone_sha256``), else the file's as it is now. Without ``data_identity`` it is the digest the cell key had
    before data identities were part of it."""
    flat = {k: v for k, v in flatten(config.model_dump(mode="json")).items() if k not in HASH_EXCLUDED}
    # Keys that did not exist when earlier cells were keyed, at their defaults: left out, so those keys still hold.
    for key in ("data.holdout", "model.target", "data.target"):
        if flat.get(key) is None:
            flat.pop(key, None)
    if backbone_sha256 is None and config.model.arch == CUSTOM:
        backbone_sha256 = check_builder(config.model.target, config.model.options)["sha256"]
    if backbone_sha256 is not None:
        flat["model.source_sha256"] = backbone_sha256
    if data_identity is not None:
        flat["data.identity"] = data_identity
    if module_sha256 is None:  # None for every built-in type: their keys are unchanged
        source = source_record(config.model.attention)
        module_sha256 = source["sha256"] if source else None
    if module_sha256 is not None:
        flat["model.attention.source_sha256"] = module_sha256
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def get_dotted(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, replacing the node there (a mapping value replaces a whole section)."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), child, f"is a value, so '{key}' cannot be set under it")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def parse_run_config(tree: Mapping[str, Any], where: str = "") -> RunConfig:
    """Validate a nested dict into a RunConfig; any problem is a one-line ConfigError."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise _as_config_error(exc, where) from None


def _as_config_error(exc: ValidationError, where: str) -> ConfigError:
    """The first pydantic error as one line: dotted key, bad value, what is allowed."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    # Discriminated unions put the tag in the location (model.attention.cbam.kernel_size): drop it, keep it.
    tag = None
    if len(loc) >= 3 and loc[:2] == ["model", "attention"] and loc[2] in OPTIONS:
        tag = loc.pop(2)
    section: Any = RunConfig  # the model that holds the offending key, for "allowed keys" messages
    for part in loc[:-1]:
        field = section.model_fields.get(part) if section is not None else None
        annotation = field.annotation if field else None
        if part == "attention" and section is ModelConfig:
            section = OPTIONS.get(tag)
        else:
            section = annotation if isinstance(annotation, type) and issubclass(annotation, StrictModel) else None
    key = where + ".".join(loc) if loc else where.rstrip(".") or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(f for f in section.model_fields if f != "type") if section else "none"
        return ConfigError(key, err["input"], f"unknown key; allowed here: {allowed}")
    if kind == "union_tag_invalid":
        return ConfigError(key + ".type", err["ctx"]["tag"], f"allowed: {', '.join(ATTENTION_TYPES)}")
    if kind == "union_tag_not_found":
        return ConfigError(key + ".type", None, f"required; allowed: {', '.join(ATTENTION_TYPES)}")
    message = err["msg"].removeprefix("Value error, ")
    if kind == "warmup":  # a check across two keys, reported on the one that is wrong
        given = err["input"]
        value = given.get("warmup_epochs") if isinstance(given, dict) else getattr(given, "warmup_epochs", None)
        key = f"{key}.warmup_epochs".lstrip(".")
        return ConfigError(key, value, message)
    if kind == CROSS_KEY:  # a check across keys of a section names the key at fault
        value = err["ctx"]["value"]
        sentence = message if value is None else None  # a key that is missing has no value to show
        return ConfigError(f"{key}.{err['ctx']['key']}".lstrip("."), value, message, sentence=sentence)
    if kind == "literal_error":
        message = "allowed: " + err["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
    elif kind.endswith("_type"):
        noun = message.removeprefix("Input should be ").removeprefix("a valid ")
        article = "an" if noun[:1] in "aeiou" else "a"
        message = f"must be {article} {noun} (it is {type(err['input']).__name__})"
    return ConfigError(key, err["input"], message)


# ---------------------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """The safe YAML loader, plus floats without a dot (``1e-4``), which YAML 1.1 would read as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source + at, None, "", sentence=f"this is not valid YAML ({problem})") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as YAML (``3``, ``true``, ``[avg, max]``, ``{type: se}``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected key=value, e.g. --set train.epochs=2")
    return key.strip(), load_yaml(raw, f"--set {key.strip()}")


# ---------------------------------------------------------------------------------------------------------
# Experiment files

GridBlock = dict[str, Any]
SEEDS_ALLOWED = (
    "must be a non-empty list of distinct integers >= 0, e.g. [0, 1, 2], or a rule such as "
    "{min: 3, max: 10} (until: sequential, alpha: 0.05)"
)


class Experiment(StrictModel):
    """An experiment file: a base config varied by a grid, times seeds."""

    name: str
    title: str = ""
    # Which of the paper's tables this experiment reproduces ("table1".."table5"); its printed numbers are
    # then shown beside ours. Several may be named for a grid that covers rows of several tables.
    paper: list[str] = Field(default_factory=list)
    base: dict[str, Any] = Field(default_factory=dict)
    grid: list[GridBlock] = Field(default_factory=lambda: [{}])
    # A list of seeds, or a rule that adds seeds until each arm's difference to the baseline is resolved.
    seeds: list[int] | SeedRule = Field(default_factory=lambda: [0])
    # Tune every arm with an equal Optuna budget before the final runs (``ablation.experiment.tune``).
    tune: TuneConfig | None = None
    # How the table compares each arm with the baseline: test, correction, level (``ablation.experiment.comparison``).
    stats: StatsConfig = Field(default_factory=StatsConfig)
    source: str = ""

    @property
    def initial_seeds(self) -> list[int]:
        """The seeds every arm starts with: the list, or the rule's first ``min``."""
        return self.seeds.seeds(self.seeds.min) if isinstance(self.seeds, SeedRule) else list(self.seeds)

    @property
    def planned(self) -> bool:
        """Whether cells are added as the sweep goes (tuning trials, final runs of tuned values, seed rounds)
        rather than all known up front."""
        return self.tune is not None or isinstance(self.seeds, SeedRule)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> list[int] | SeedRule:
        if isinstance(value, dict | SeedRule):
            return SeedRule.model_validate(value)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
            or len(set(value)) != len(value)
        ):
            raise ValueError(SEEDS_ALLOWED)
        return value

    @model_validator(mode="after")
    def _pairing(self) -> Experiment:
        if self.stats.test == "paired" and isinstance(self.seeds, SeedRule):
            raise PydanticCustomError(
                CROSS_KEY,
                "is not allowed with a seed rule, which gives arms different seeds; allowed: welch, or a seed list",
                {"key": "stats.test", "value": "paired"},
            )
        return self

    @field_validator("paper")
    @classmethod
    def _paper(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in TABLE_TITLES]
        if unknown:
            raise ValueError(f"{unknown[0]} is not one of the paper's tables; allowed: {', '.join(TABLE_TITLES)}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (it names a folder and an MLflow experiment)")
        return value


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Read an experiment file (or a bundled experiment, by name: ``ablation.experiment.bundled``) and apply
    ``--set key=value`` overrides to its base (``seeds=...`` too)."""
    path = experiment_path(path)
    raw = load_yaml(path.read_text(), str(path))
    if raw is None:
        raise ConfigError(
            str(path), None, "", sentence="the file is empty; an experiment needs at least a 'base' mapping"
        )
    if not isinstance(raw, dict):
        kind = {list: "a list", str: "a single value"}.get(type(raw), type(raw).__name__)
        raise ConfigError(
            str(path), None, "", sentence=f"the file holds {kind}; an experiment file is a mapping with a 'base' key"
        )
    raw.setdefault("name", path.stem)
    return apply_overrides(experiment_from_mapping(raw, str(path)), [parse_override(o) for o in overrides])


def experiment_from_mapping(raw: Mapping[str, Any], source: str) -> Experiment:
    """An experiment from the mapping a file holds (or a dict given to the Python API: ``source`` says which), checked
    with the same one-line errors; ``name`` is required (a file's defaults to its stem)."""
    raw = dict(raw)
    if "name" not in raw:
        raise ConfigError(
            "name", None, "", sentence="missing: an experiment needs a name (it names its MLflow experiment and folder)"
        )
    if isinstance(raw.get("grid"), dict):
        raw["grid"] = [raw["grid"]]
    if isinstance(raw.get("paper"), str):
        raw["paper"] = [raw["paper"]]
    raw["source"] = source
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"]) or "experiment"
        if err["loc"][:1] == ("seeds",):
            if isinstance(raw.get("seeds"), dict):  # the rule's own message names what is wrong with it
                message = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    message = f"unknown key {err['loc'][-1]}; allowed: {', '.join(SeedRule.model_fields)}"
                raise ConfigError("seeds", raw.get("seeds"), message) from None
            raise ConfigError("seeds", raw.get("seeds"), SEEDS_ALLOWED) from None
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(f for f in Experiment.model_fields if f != "source")
            if len(err["loc"]) > 1:  # inside a section: that section's own keys
                section_model = {"stats": StatsConfig, "tune": TuneConfig}.get(str(err["loc"][0]))
                allowed = ", ".join(section_model.model_fields) if section_model else allowed
                raise ConfigError(key, err["input"], f"unknown key; allowed here: {allowed}") from None
            raise ConfigError(key, err["input"], f"unknown top-level key; allowed: {allowed}") from None
        if err["type"] == CROSS_KEY:  # a check across keys names the key at fault
            raise ConfigError(err["ctx"]["key"], err["ctx"]["value"], err["msg"]) from None
        if err["type"] == "literal_error":
            allowed = err["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
            raise ConfigError(key, err["input"], f"allowed: {allowed}") from None
        raise ConfigError(key, err["input"], err["msg"].removeprefix("Value error, ")) from None


def apply_overrides(experiment: Experiment, overrides: list[tuple[str, Any]]) -> Experiment:
    base = copy.deepcopy(experiment.base)
    seeds = experiment.seeds
    grid_keys = {k for block in experiment.grid for k in block if k != "description"}
    tune = experiment.tune
    for key, value in overrides:
        if key.startswith("tune."):
            tune = _override_tune(tune, key, value)
            continue
        if key == "seeds":
            value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
            try:
                seeds = Experiment._seeds(value)
            except ValueError:
                raise ConfigError("--set seeds", value, SEEDS_ALLOWED) from None
            continue
        clash = next((g for g in grid_keys if overlaps(g, key)), None)
        if clash:
            raise ConfigError(
                f"--set {key}", value, f"'{clash}' is varied by the grid; edit the experiment's grid instead"
            )
        if key.split(".")[0] not in RunConfig.model_fields:
            allowed = "allowed keys start with model., data., train., or are seed / seeds"
            raise ConfigError(f"--set {key}", value, allowed)
        set_dotted(base, key, value)
    return experiment.model_copy(update={"base": base, "seeds": seeds, "tune": tune})


def _override_tune(tune: TuneConfig | None, key: str, value: Any) -> TuneConfig:
    """``--set tune.trials=2``, ``--set tune.pruner.type=none``: a value of the experiment's tune section."""
    if tune is None:
        raise ConfigError(f"--set {key}", value, "the experiment has no tune section to change")
    field = key.split(".")[1]
    if field not in TuneConfig.model_fields or field == "space":
        allowed = ", ".join(f"tune.{f}" for f in TuneConfig.model_fields if f != "space")
        raise ConfigError(f"--set {key}", value, f"allowed: {allowed} (edit the file to change the space)")
    tree = tune.model_dump()
    set_dotted(tree, key.removeprefix("tune."), value)
    try:
        return TuneConfig.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ConfigError(f"--set {key}", value, err["msg"].removeprefix("Value error, ")) from None


def overlaps(a: str, b: str) -> bool:
    """True when one dotted key is the other or lies under it (model.attention vs model.attention.order)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")
