"""What a seed fixes in every arm, so that arms pair by seed (``stats: {test: paired}``): the same seed gives every
arm the same data order, the same augmentation and the same initial weights in every layer the arms share, whatever
attention the arm adds (built after the backbone's own initialisation); another seed changes all three."""

from __future__ import annotations

import pytest
import torch

from ablation.data.catalog import dataset_info
from ablation.data.loaders import make_loaders
from ablation.engine.train import seed_everything
from ablation.experiment.schema import parse_run_config
from ablation.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

ARMS = [
    {"type": "none"},
    {"type": "se", "reduction": 4},
    {"type": "cbam", "reduction": 4},
    {"type": "cbam", "reduction": 4, "order": "parallel"},
    {"type": "eca"},
    {"type": "bam", "reduction": 4},
]
CPU = torch.device("cpu")


def _weights(attention: dict, seed: int, arch: str = "resnet18") -> dict[str, torch.Tensor]:
    seed_everything(seed, CPU)  # what a cell does before it builds its network
    return build_model(arch, num_classes=10, attention=attention, width=0.5, stem="cifar").state_dict()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v1"])
def test_a_seed_gives_every_arm_the_same_initial_weights_in_the_layers_they_share(arch):
    plain = _weights(ARMS[0], 0, arch)
    for attention in ARMS[1:]:
        other = _weights(attention, 0, arch)
        shared = [key for key in plain if key in other]
        assert len(shared) == len(plain)  # attention only adds
        assert all(torch.equal(plain[key], other[key]) for key in shared), attention
    again = _weights(ARMS[0], 1, arch)
    first = next(key for key in plain if key.endswith("weight"))  # the stem's conv
    assert not torch.equal(plain[first], again[first])  # another seed, other weights


def _batches(npz, attention: dict, seed: int, epochs=(1, 2), batches: int = 2) -> list[tuple[torch.Tensor, ...]]:
    """The first training batches of each epoch, as a cell of this arm would draw them (its network built first)."""
    config = parse_run_config(
        {
            "model": {"arch": "resnet18", "width": 0.25, "stem": "cifar", "attention": attention},
            "data": {"dataset": "npz", "root": str(npz)},
            "train": {"batch_size": 20},
            "seed": seed,
        }
    )
    seed_everything(seed, CPU)
    build_model("resnet18", num_classes=10, attention=attention, width=0.25, stem="cifar")  # consumes the RNG
    train, _ = make_loaders(config.data, dataset_info(config.data), batch_size=20, seed=seed, device=CPU)
    out = []
    for epoch in epochs:
        train.set_epoch(epoch)
        for index, (images, labels) in enumerate(train):
            if index == batches:
                break
            out.append((images.clone(), labels.clone()))
    return out


def test_a_seed_gives_every_arm_the_same_data_order_and_augmentation(tiny_npz):
    plain = _batches(tiny_npz, ARMS[0], seed=0)
    for attention in ARMS[1:]:
        other = _batches(tiny_npz, attention, seed=0)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, other, strict=True))
    other_seed = _batches(tiny_npz, ARMS[0], seed=1)
    assert not torch.equal(plain[0][1], other_seed[0][1])  # another order
    assert not torch.equal(plain[0][0], other_seed[0][0])
    assert not torch.equal(plain[0][0], plain[2][0])  # and each epoch its own
