"""The ``data`` section of a run config: which dataset (any registered one), where, at what resolution, augmented or
not, and the training set's holdout a tuning trial is scored on. Torch-free."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from ablation.core.strict import StrictModel, check_custom_choice, wrong_key
from ablation.core.targets import TARGET_FORMAT, TARGET_PATTERN
from ablation.data.registry import CUSTOM, dataset_names


class Holdout(StrictModel):
    """A fixed split of the training set: ``fraction`` of each class held out, chosen by ``seed``
    (``ablation.data.holdout``)."""

    fraction: float
    seed: int = 0

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be a fraction in (0, 1) of the training set")
        return value


class DataConfig(StrictModel):
    """Which images. ``cifar10-micro`` ships with the package, so demos and tests need no download."""

    dataset: str = "cifar10-micro"  # any registered dataset (ablation.data.registry)
    # A folder for cifar10 / cifar100 (torchvision's layout) and imagenet (train/ and val/ ImageFolders);
    # the .npz file for npz. Not part of the config hash, the data's identity is: moving the data changes nothing.
    root: str | None = None
    # Training / evaluation resolution; None: 224 for imagenet, the stored size for the others.
    image_size: int | None = None
    # Random crop (with 4-pixel zero padding for 32 px data, RandomResizedCrop for imagenet) and flip.
    augment: bool = True
    # Train on a class-stratified part of the training set and evaluate on the rest of it, never on the test
    # set: what a tuning trial does (``tune.holdout``). None (the default): train on all of it, test on the test set.
    holdout: Holdout | None = None
    # dataset custom: the user's data, made by target(**options) (ablation.data.custom); not with another dataset.
    target: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not TARGET_PATTERN.fullmatch(value):
            raise ValueError(f"must be {TARGET_FORMAT.replace('mypkg.attn:MyAttention', 'mypkg.data:make')}")
        return value

    @model_validator(mode="after")
    def _custom(self) -> DataConfig:
        # Checks across keys, each reported on the key that is wrong (wrong_key: ablation.core.strict).
        check_custom_choice(
            self.dataset, "dataset", self.target, self.options, "the data's maker, 'package.module:make'"
        )
        if self.dataset == CUSTOM and self.root is not None:
            raise wrong_key("root", self.root, "is not read for dataset custom; its maker's options say where")
        return self

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if value not in dataset_names():  # read when validated: a dataset registered at any time counts
            raise ValueError(f"allowed: {', '.join(dataset_names())}")
        return value

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be an integer >= 1 (or absent: the dataset's own size)")
        return value
