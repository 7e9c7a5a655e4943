"""Grad-CAM: the maps against a hand-written computation, a case whose answer is known, and the experiment figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablation.core.errors import ConfigError
from ablation.engine.checkpoint import save_checkpoint
from ablation.experiment.grid import Cell, build_network, expand_arms, expand_cells
from ablation.experiment.schema import Experiment
from ablation.models import build_model
from ablation.report.gradcam import grad_cam, gradcam_for_experiment, pick_images, target_layer
from ablation.tracking.names import GRADCAM_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _small_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "resnet18", width=0.125, stem="cifar", num_classes=10, attention={"type": "cbam", "reduction": 4}
    )
    # Random, non-trivial BN statistics, so that eval mode (running stats) differs from train mode (batch stats):
    # a Grad-CAM run in train mode would then not match the reference below.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.train()  # grad_cam must switch to eval itself, and restore this


def _reference(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Grad-CAM without hooks: the ResNet's forward written out, A and dY_c/dA from torch.autograd.grad."""
    model.eval()
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for layer, attention in zip((model.layer1, model.layer2, model.layer3), model.stage_attention, strict=True):
        h = attention(layer(h))
    a = model.layer4(h)
    logits = model.fc(model.avgpool(a).flatten(1))
    targets = logits.argmax(1) if targets is None else targets
    (grad,) = torch.autograd.grad(logits[torch.arange(len(x)), targets].sum(), a)
    alpha = grad.mean(dim=(2, 3))
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, a))
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values
    return torch.stack([c / p if p > 0 else torch.zeros_like(c) for c, p in zip(cam, peak, strict=True)]).detach()


@pytest.mark.parametrize("given", [True, False], ids=["true-labels", "predicted"])
def test_grad_cam_matches_hand_computation(given: bool) -> None:
    model = _small_resnet()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([3, 0, 7, 9])
    maps = grad_cam(model, x, labels if given else None)
    assert model.training, "the model's mode is restored"
    assert all(p.grad is None for p in model.parameters()), "no parameter gradient is computed"
    assert not target_layer(model)._forward_hooks, "the hook is removed"

    expected = _reference(model, x, labels if given else None)
    assert maps.shape == (4, 32, 32)
    assert (maps - expected).abs().max().item() < 1e-5
    assert maps.min() >= 0 and maps.max() <= 1
    peaks = maps.flatten(1).max(1).values
    assert torch.all((peaks == 1) | (peaks == 0))
    assert (peaks == 1).any(), "a random network has positive evidence somewhere"


def test_grad_cam_removes_hook_on_error() -> None:
    model = _small_resnet()
    with pytest.raises(ValueError, match="target classes"):
        grad_cam(model, torch.randn(2, 3, 32, 32), [0, 10])
    assert not target_layer(model)._forward_hooks
    assert model.training


def test_target_layer_is_last_stage() -> None:
    resnet = build_model("resnet18", width=0.125, stem="cifar", num_classes=10, attention={"type": "none"})
    assert target_layer(resnet) is resnet.layer4
    mobilenet = build_model("mobilenet_v1", width=0.25, stem="cifar", num_classes=10, attention={"type": "none"})
    assert target_layer(mobilenet) is mobilenet.stages[-1][-1]
    maps = grad_cam(mobilenet, torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 32, 32)


class _ConvGap(nn.Module):
    """conv (stride 2) -> ReLU -> global average pool -> linear: the class score is a sum over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)))
            self.conv.bias.zero_()
            # Class 0 is positive evidence of every channel, class 1 negative evidence.
            self.fc.weight.copy_(torch.tensor([[1.0, 0.5, 2.0, 1.5], [-1.0, -0.5, -2.0, -1.5]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_localises_the_only_signal() -> None:
    # Non-zero pixels only in the top-right quadrant: the activations, hence the map, live there (plus the conv's
    # one-pixel reach across the border); the 16 x 16 conv output is upsampled back to 32 x 32.
    model = _ConvGap()
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, 2:14, 18:30] = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1)) + 0.5
    (cam,) = grad_cam(model, x, [0], layer=model.conv)
    assert cam.shape == (32, 32)
    row, col = divmod(int(cam.argmax()), 32)
    assert row < 16 and col >= 16
    assert cam[:16, 16:].sum() / cam.sum() > 0.95
    assert cam[18:, :14].sum() == 0, "the far quadrant gets nothing"
    # Class 1 has only negative evidence: ReLU leaves no map, and an all-zero map stays zero (not NaN).
    (negative,) = grad_cam(model, x, [1], layer=model.conv)
    assert torch.equal(negative, torch.zeros(32, 32))


def test_pick_images_is_class_balanced() -> None:
    labels = np.array([2, 0, 0, 1, 2, 1, 0])
    assert pick_images(labels, 4).tolist() == [1, 3, 0, 2]  # first of classes 0, 1, 2, then second of class 0
    assert sorted(pick_images(labels, 100).tolist()) == list(range(7))


def _experiment(seeds: list[int]) -> Experiment:
    return Experiment(
        name="gradcam-test",
        title="Grad-CAM test",
        base={
            "model": {"arch": "resnet18", "width": 0.125, "stem": "cifar"},
            "data": {"dataset": "cifar10-micro"},
            "train": {"epochs": 2},
        },
        grid=[{"model.attention": [{"type": "none"}, {"type": "cbam", "reduction": 4}]}],
        seeds=seeds,
    )


def test_gradcam_for_experiment_end_to_end(tmp_path: Path) -> None:
    from ablation.experiment.prepared import PreparedSweep
    from ablation.scheduler.cell import CellOptions, checkpoint_path

    experiment = _experiment([3, 5])
    arms = expand_arms(experiment)
    prepared = PreparedSweep(experiment, arms, expand_cells(experiment, arms))
    options = CellOptions(checkpoint_dir=tmp_path / "checkpoints")
    out = tmp_path / "figures"

    with pytest.raises(ConfigError, match="no trained arm has a checkpoint; run the sweep first") as caught:
        gradcam_for_experiment(prepared, options.checkpoint_dir, out, images=4)
    assert "\n" not in str(caught.value)

    torch.manual_seed(0)
    for arm in arms:  # seed 5 = seeds[1]: a checkpoint for every arm; seed 3 for the CBAM arm only
        for seed in (5, 3) if arm.index == 1 else (5,):
            cell = Cell(arm, seed)
            state = {"config_hash": cell.hash, "epoch": 1, "model": build_network(arm).state_dict()}
            save_checkpoint(checkpoint_path(options, experiment.name, cell), state)

    skipped: list[str] = []
    paths = gradcam_for_experiment(prepared, options.checkpoint_dir, out, images=4, seed_index=0, say=skipped.append)
    assert [p.name for p in paths] == ["gradcam.png", "gradcam.pdf"]
    assert len(skipped) == 1 and arms[0].description in skipped[0]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    assert paths[1].read_bytes()[:5] == b"%PDF-"

    paths = gradcam_for_experiment(prepared, options.checkpoint_dir, out, images=4, seed_index=1, formats=("png",))
    assert paths == [out / "gradcam.png"] and paths[0].read_bytes()[:8] == PNG_MAGIC

    # A damaged checkpoint is named and skipped; the other arms are still drawn.
    damaged = checkpoint_path(options, experiment.name, Cell(arms[0], 5))
    damaged.write_bytes(damaged.read_bytes()[:100])
    skipped.clear()
    paths = gradcam_for_experiment(prepared, options.checkpoint_dir, out, images=4, seed_index=1, say=skipped.append)
    assert len(paths) == 2 and len(skipped) == 1
    assert str(damaged) in skipped[0] and "does not load" in skipped[0] and "weights_only" not in skipped[0]


def test_gradcam_for_experiment_rejects_imagenet(tmp_path: Path) -> None:
    from ablation.experiment.prepared import PreparedSweep

    experiment = _experiment([0]).model_copy(
        update={"base": {"model": {"arch": "resnet18"}, "data": {"dataset": "imagenet", "root": str(tmp_path)}}}
    )
    arms = expand_arms(experiment, check_paths=False)
    prepared = PreparedSweep(experiment, arms, expand_cells(experiment, arms))
    with pytest.raises(ConfigError, match="datasets held as arrays") as caught:
        gradcam_for_experiment(prepared, tmp_path, tmp_path / "out")
    assert "\n" not in str(caught.value)


def test_log_gradcam_to_the_sweeps_parent_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ablation.experiment.prepared import PreparedSweep
    from ablation.report.gradcam import log_gradcam
    from ablation.tracking.mlflow_store import SweepStore

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    experiment = _experiment([0])
    arms = expand_arms(experiment)
    prepared = PreparedSweep(experiment, arms, expand_cells(experiment, arms))
    store = SweepStore(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment, create=True)
    figure = tmp_path / "gradcam.png"
    figure.write_bytes(PNG_MAGIC)
    assert log_gradcam(store, prepared, [figure]) is None, "no sweep yet: nothing to log to, nothing created"
    assert store.runs("sweep") == []

    parent = store.parent_run(prepared.key, len(prepared.cells))
    store.finish(parent, "FINISHED")
    assert log_gradcam(store, prepared, [figure]) == parent
    assert [a.path for a in store.client.list_artifacts(parent, GRADCAM_DIR)] == [f"{GRADCAM_DIR}/gradcam.png"]
    assert store.client.get_run(parent).info.status == "FINISHED", "drawing the figure does not reopen the sweep"
