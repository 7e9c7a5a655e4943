"""Grad-CAM maps (Selvaraju et al., ICCV 2017) of a sweep's trained arms, side by side as in CBAM's Figure 4.

The CBAM paper (Woo et al., ECCV 2018, Sec. 4.3 and Fig. 4) argues qualitatively that CBAM makes a network
look at the object: it draws the Grad-CAM map of the last convolutional outputs of ResNet50, +SE and +CBAM for
the same validation images, with the softmax score of the true class under each. ``gradcam_for_experiment``
draws that figure for the arms of any experiment, from the checkpoints its sweep left.

Grad-CAM of class c at a layer with activations A (B x K x h x w): alpha_k = mean over (h, w) of dY_c / dA_k,
where Y_c is the class *logit* (before softmax, as in the paper); map = ReLU(sum_k alpha_k A_k), upsampled
bilinearly to the input size. Each map is divided by its own maximum, so maps are compared by where they look,
not by how large the gradients of one network are; an all-zero map (no positive evidence) stays zero.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor, nn

from ablation.core.errors import ConfigError
from ablation.data.memory import InMemoryLoader
from ablation.data.registry import dataset_entry, dataset_names
from ablation.data.sources import load_arrays, normalization
from ablation.engine.checkpoint import cell_checkpoint, load_checkpoint, load_error
from ablation.engine.train import resolve_device
from ablation.experiment.grid import Arm, Cell, build_network
from ablation.experiment.prepared import PreparedSweep
from ablation.models.mobilenet import MobileNetV1
from ablation.models.resnet import ResNet
from ablation.report.plots import save_figure
from ablation.tracking.mlflow_store import MlflowTracker, SweepStore
from ablation.tracking.names import GRADCAM_DIR

# Datasets held as uint8 arrays (ablation.data.sources.load_arrays): the only ones whose test images can be
# picked by index and drawn as they are.
ARTIFACT_PATH = GRADCAM_DIR  # folder of the figure among the sweep's parent-run artifacts
FIGURE_NAME = "gradcam"
OVERLAY_ALPHA = 0.5
CMAP = "jet"  # the colormap of the Grad-CAM paper and of CBAM's Figure 4


# --------------------------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------------------------


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM explains: the network's last convolutional stage.

    The last stage has the richest semantics while keeping some spatial resolution (Grad-CAM paper, Sec. 3), and
    it is what CBAM's Figure 4 uses. For the ResNets that is ``layer4`` (after its last block's residual add and
    ReLU, right before global pooling); for MobileNet v1 the last depthwise-separable block, whose output is the
    last stage's. Attention sits inside those blocks, so the map shows the features after CBAM has reweighted them.
    """
    if isinstance(model, ResNet):
        return model.layer4
    if isinstance(model, MobileNetV1):
        return model.stages[-1][-1]
    raise TypeError(f"no Grad-CAM target layer known for {type(model).__name__}; pass layer= explicitly")


def grad_cam(
    model: nn.Module,
    images: Tensor,
    target_classes: Tensor | Sequence[int] | None = None,
    *,
    layer: nn.Module | None = None,
) -> Tensor:
    """Grad-CAM maps (B x H x W, each in [0, 1], max 1 unless all zero) of ``images`` (B x C x H x W, normalised).

    ``target_classes``: the class explained per image, typically the true labels; None explains the predicted
    class. ``layer`` defaults to ``target_layer(model)``.
    """
    maps, _ = grad_cam_with_logits(model, images, target_classes, layer=layer)
    return maps


def grad_cam_with_logits(
    model: nn.Module,
    images: Tensor,
    target_classes: Tensor | Sequence[int] | None = None,
    *,
    layer: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """``grad_cam`` plus the logits (B x num_classes) of the same forward pass, so that the predicted class and
    the softmax score shown beside a map come from exactly the network state that produced it.

    The model runs in eval mode (BatchNorm on its running statistics, so images do not influence each other and
    one backward of the summed scores gives every image its own gradient); its previous mode is restored. Only
    dY/dA is computed (``torch.autograd.grad``), so no parameter's ``.grad`` is touched and the input needs no
    gradient. The hook is removed whatever happens.
    """
    layer = target_layer(model) if layer is None else layer
    if images.ndim != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
    parameter = next(model.parameters(), None)
    if parameter is not None:
        images = images.to(parameter.device)
    captured: list[Tensor] = []

    def keep_output(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"Grad-CAM needs a layer that returns a tensor; {type(layer).__name__} returned {output!r}")
        if not output.requires_grad:
            # Frozen parameters and a plain input leave the activations outside the graph; a tensor with no history
            # is a leaf, so it can join it here, and everything computed from it afterwards is tracked.
            output.requires_grad_(True)
        captured.append(output)

    was_training = model.training
    handle = layer.register_forward_hook(keep_output)
    try:
        model.eval()
        # inference_mode(False): a caller inside torch.inference_mode() still gets a graph (enable_grad alone does
        # not leave inference mode); the clone makes an inference-mode input an ordinary tensor.
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(images.clone())
            if len(captured) != 1:
                raise RuntimeError(f"the target layer ran {len(captured)} times in one forward pass; expected once")
            activations = captured[0]
            if activations.ndim != 4:
                raise ValueError(f"the target layer must output B x K x h x w, got {tuple(activations.shape)}")
            targets = _targets(target_classes, logits)
            # The logit, not the softmax: the softmax gradient would mix in every other class's evidence.
            score = logits.gather(1, targets.view(-1, 1)).sum()
            (gradients,) = torch.autograd.grad(score, activations)
    finally:
        handle.remove()
        model.train(was_training)

    with torch.no_grad():
        weights = gradients.mean(dim=(2, 3), keepdim=True)  # alpha_k: global-average-pooled gradients
        cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
        peak = cam.amax(dim=(1, 2), keepdim=True)
        cam = torch.where(peak > 0, cam / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(cam))
    return cam.detach(), logits.detach()


def _targets(target_classes: Tensor | Sequence[int] | None, logits: Tensor) -> Tensor:
    """The explained class per image: the given ones (checked), else the predicted ones."""
    if target_classes is None:
        return logits.argmax(dim=1)
    targets = torch.as_tensor(target_classes, dtype=torch.int64, device=logits.device).reshape(-1)
    batch, classes = logits.shape
    if targets.numel() != batch:
        raise ValueError(f"{targets.numel()} target classes for {batch} images")
    if targets.numel() and not (int(targets.min()) >= 0 and int(targets.max()) < classes):
        raise ValueError(f"target classes must lie in [0, {classes}), got {targets.tolist()}")
    return targets


# --------------------------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------------------------


def gradcam_figure(
    images_uint8: np.ndarray | Tensor,
    maps_by_arm: Mapping[str, Tensor | np.ndarray],
    labels: Sequence[int] | np.ndarray | Tensor,
    classes: Sequence[str],
    predictions_by_arm: Mapping[str, Tensor | np.ndarray],
    *,
    row_labels: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """CBAM's Figure 4 for any arms: one row per image, the input first, then each arm's map over the image.

    ``images_uint8``: N x H x W x C (C = 1 or 3), as stored. ``maps_by_arm``: column title (the arm's description)
    -> N x h x w maps in [0, 1]; a map whose size differs from the image's (a resized input) is stretched over it.
    ``predictions_by_arm``: the same keys -> the arm's logits (N x num_classes) on these images, from which each
    panel's subtitle is read: the predicted class and the softmax probability of the true class (the paper's P).
    ``row_labels`` (default: the true class) name each row.
    """
    images = np.asarray(images_uint8.cpu() if isinstance(images_uint8, Tensor) else images_uint8)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be N x H x W x C with C = 1 or 3, got shape {images.shape}")
    labels = [int(v) for v in np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)]
    rows, arms = len(images), list(maps_by_arm)
    if rows == 0 or not arms:
        raise ValueError("gradcam_figure: no images or no arms; nothing to draw")
    if len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for {rows} images")
    missing = [arm for arm in arms if arm not in predictions_by_arm]
    if missing:
        raise ValueError(f"no predictions for arm(s) {missing}")
    row_labels = list(row_labels) if row_labels is not None else [_class_name(classes, y) for y in labels]

    maps = {arm: _as_numpy(maps_by_arm[arm]) for arm in arms}
    probabilities = {arm: torch.softmax(torch.as_tensor(_as_numpy(predictions_by_arm[arm])), dim=1) for arm in arms}
    for arm in arms:
        if len(maps[arm]) != rows or len(probabilities[arm]) != rows:
            raise ValueError(f"arm {arm!r}: {len(maps[arm])} maps and {len(probabilities[arm])} predictions for {rows}")

    # Inches per panel: a 32-pixel image and two lines of 7-pt text stay legible; rows are a little shorter than
    # columns are wide because the square images leave the columns' extra width empty anyway.
    fig = Figure(figsize=(1.7 * (len(arms) + 1) + 0.8, 1.5 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, len(arms) + 1, squeeze=False)
    height, width = images.shape[1:3]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # the image's pixel grid: a map of any size covers it exactly
    for i in range(rows):
        image = images[i, ..., 0] if images.shape[-1] == 1 else images[i]
        cmap = "gray" if images.shape[-1] == 1 else None
        axes[i, 0].imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
        for j, arm in enumerate(arms, start=1):
            ax = axes[i, j]
            ax.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            ax.imshow(maps[arm][i], cmap=CMAP, alpha=OVERLAY_ALPHA, vmin=0, vmax=1, extent=extent)
            prob = probabilities[arm][i]
            predicted = int(prob.argmax())
            true_p = float(prob[labels[i]]) if 0 <= labels[i] < len(prob) else float("nan")
            ax.set_title(
                f"pred: {_class_name(classes, predicted)}\nP(true) = {true_p:.3f}",
                fontsize=7,
                color="black" if predicted == labels[i] else "C3",  # a wrong prediction reads at a glance
            )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    # Column headers above the first row's subtitles; descriptions are long ("ResNet50 + CBAM (k=7, avg & max)").
    axes[0, 0].annotate("input", **_header_style())
    for j, arm in enumerate(arms, start=1):
        axes[0, j].annotate(textwrap.fill(arm, 24), **_header_style())
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap=CMAP),
        ax=axes,
        shrink=min(1.0, 3.0 / rows),
        label="Grad-CAM (each map / its max)",
    )
    title = title or "Grad-CAM of the true class (red subtitle: wrong prediction)"
    fig.suptitle(textwrap.fill(title, max(40, int(14 * (len(arms) + 1)))), fontsize=10)
    return fig


def _header_style() -> dict:
    # Placed in points above the axes so the two-line subtitle below it never overlaps, whatever the panel size.
    return dict(
        xy=(0.5, 1.0),
        xycoords="axes fraction",
        xytext=(0, 26),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=8,
        fontweight="bold",
    )


def _as_numpy(values: Tensor | np.ndarray) -> np.ndarray:
    return values.detach().float().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=float)


def _class_name(classes: Sequence[str], index: int) -> str:
    return str(classes[index]) if 0 <= index < len(classes) else str(index)


# --------------------------------------------------------------------------------------------------------------
# An experiment's arms
# --------------------------------------------------------------------------------------------------------------


def pick_images(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` test images, class-balanced and fixed: the first image of each class in class order,
    then the second of each, and so on, so the figure always shows the same images and as many classes as it can.
    """
    labels = np.asarray(labels).reshape(-1)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    picked: list[int] = []
    for rank in range(max((len(members) for members in by_class), default=0)):
        for members in by_class:
            if rank < len(members):
                picked.append(int(members[rank]))
                if len(picked) == count:
                    return np.asarray(picked, dtype=np.int64)
    return np.asarray(picked, dtype=np.int64)


@dataclass(frozen=True)
class _TrainedArm:
    arm: Arm
    checkpoint: Path
    model: nn.Module
    note: str  # "" for a finished run; "epoch 3/6" for an interrupted one


def gradcam_for_experiment(
    prepared: PreparedSweep,
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    images: int = 8,
    seed_index: int = 0,
    device: str | torch.device = "cpu",
    formats: Sequence[str] = ("png", "pdf"),
    say: Callable[[str], None] | None = None,
) -> list[Path]:
    """Draw the Grad-CAM figure of every trained arm of ``prepared`` into ``out_dir``; return the files written.

    Each arm contributes the network of its cell with the experiment's ``seeds[seed_index]``, as the sweep left
    it in ``checkpoint_dir`` (``runner.py sweep --checkpoint-dir``); arms without a checkpoint are skipped with a
    line to ``say`` (default: stderr). All arms see the same ``images`` test images (``pick_images``), normalised
    by the loader the evaluation uses, and each explains the true class. Raises ConfigError (one line) for an
    ImageNet experiment, arms on different datasets, a bad ``seed_index``, or no checkpoint at all.
    """
    say = say or (lambda line: print(line, file=sys.stderr))
    experiment, arms = prepared.experiment, prepared.arms
    if images < 1:
        raise ConfigError("--images", images, "allowed: an integer >= 1")
    if not 0 <= seed_index < len(experiment.initial_seeds):
        raise ConfigError(
            "--seed-index", seed_index, f"allowed: 0..{len(experiment.initial_seeds) - 1} ({experiment.initial_seeds})"
        )
    data = arms[0].config.data
    if dataset_entry(data.dataset).kind != "arrays":
        held = ", ".join(name for name in dataset_names() if dataset_entry(name).kind == "arrays")
        raise ConfigError(
            "data.dataset", data.dataset, f"Grad-CAM figures are drawn only for datasets held as arrays ({held})"
        )
    # load_arrays ignores augmentation and resolution, so arms that differ only there share their images.
    same_images = {arm.config.data.model_copy(update={"augment": True, "image_size": None}) for arm in arms}
    if len(same_images) > 1:
        raise ConfigError("data", sorted({d.dataset for d in same_images}), "Grad-CAM compares arms on one dataset")
    device = resolve_device(str(device))
    seed = experiment.initial_seeds[seed_index]

    trained: list[_TrainedArm] = []
    for arm in arms:
        cell = Cell(arm, seed)
        path = cell_checkpoint(Path(checkpoint_dir), experiment.name, cell.hash)
        try:
            state = load_checkpoint(path, map_location=device)
        except Exception as exc:  # a damaged file: say which, draw the others
            say(f"[gradcam] {arm.description}: the checkpoint {path} does not load ({load_error(exc)}); skipped")
            continue
        if state is None:
            say(f"[gradcam] {arm.description}: no checkpoint for seed {seed} at {path}; skipped")
            continue
        # A cell finished before data identities were part of its key keeps its old key (the sweep moved its
        # checkpoint here only after matching its data's digest: ablation.scheduler.state).
        if state.get("config_hash", cell.hash) not in (cell.hash, cell.legacy_hash):
            raise RuntimeError(f"{path} belongs to config {state['config_hash']}, not {cell.name} ({cell.hash})")
        model = build_network(arm)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise RuntimeError(
                f"{path}: does not fit {arm.description}'s network: {str(exc).splitlines()[0]}"
            ) from None
        epoch, epochs = state.get("epoch"), arm.config.train.epochs
        note = f"epoch {epoch}/{epochs}" if isinstance(epoch, int) and epoch < epochs else ""
        trained.append(_TrainedArm(arm, path, model.to(device), note))
    if not trained:
        raise ConfigError(
            "checkpoint",
            str(Path(checkpoint_dir) / experiment.name),
            "no trained arm has a checkpoint; run the sweep first",
        )

    arrays = load_arrays(data)
    index = pick_images(arrays.y_test, images)
    chosen, labels = arrays.x_test[index], arrays.y_test[index]
    maps_by_arm: dict[str, Tensor] = {}
    logits_by_arm: dict[str, Tensor] = {}
    for entry in trained:
        arm = entry.arm
        # The evaluation loader itself (train=False: no augmentation), so the inputs are exactly what validation
        # saw: /255, resized to the arm's resolution if it has one, (x - mean) / std, 3 channels, NCHW.
        mean, std = normalization(arm.config.data, arrays)
        loader = InMemoryLoader(
            torch.from_numpy(chosen),
            torch.from_numpy(labels),
            batch_size=len(chosen),
            train=False,
            mean=mean,
            std=std,
            image_size=arm.data.image_size,
            device=device,
        )
        ((batch, targets),) = list(loader)
        cam, logits = grad_cam_with_logits(entry.model, batch, targets)
        column = arm.description + (f" [{entry.note}]" if entry.note else "")
        maps_by_arm[column], logits_by_arm[column] = cam.cpu(), logits.cpu()

    title = f"{experiment.title or experiment.name}: Grad-CAM of the true class, seed {seed}"
    fig = gradcam_figure(
        chosen,
        maps_by_arm,
        labels,
        arrays.classes,
        logits_by_arm,
        row_labels=[
            f"{_class_name(arrays.classes, int(y))}\n(test #{int(i)})" for y, i in zip(labels, index, strict=True)
        ],
        title=title,
    )
    return save_figure(fig, Path(out_dir) / FIGURE_NAME, formats)


# --------------------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------------------


def log_gradcam(store: SweepStore, prepared: PreparedSweep, paths: Sequence[Path]) -> str | None:
    """Log the figure files as artifacts (folder ``gradcam/``) of the sweep's parent run; return its id, or None
    (nothing logged) when the sweep has no parent run in this tracking store."""
    parent = store.find_parent(prepared.key)
    if parent is None:
        return None
    run_id = parent.info.run_id
    tracker = MlflowTracker(store.client, run_id)
    for path in paths:
        tracker.log_artifact(Path(path), ARTIFACT_PATH)
    return run_id
