"""A user's own attention module (``model.attention: {type: custom, target: ...}``), defined in a temporary
package: built and placed like a built-in, its constructor mistakes one line before anything starts, its source
file part of each cell's key, counted by the profile, and swept, tabled and Grad-CAM'd end to end."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import runner
from ablation.attention.adapter import AttentionAdapter
from ablation.attention.base import Attention, NoAttention
from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.schema import load_experiment
from ablation.models import build_model
from ablation.models.measure import count_params
from ablation.report.profile import profile_arms, render
from ablation.scheduler.local import prepare_sweep
from tests.support.folders import in_folder
from tests.support.tiny import sweep_in
from tests.support.user_code import user_package

# The user's module: a plain nn.Module (wrapped to get forward_add), one that subclasses our Attention (placed as
# it is), and the mistakes a user makes.
MODULE = '''
import torch
from torch import nn

from ablation.attention.base import Attention


class MyAttention(nn.Module):
    """x * sigmoid(conv_k(relu(conv_1x1(x)))): C -> C / reduction -> C."""

    def __init__(self, channels, reduction=4, kernel=3):
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"reduction {reduction} leaves no hidden channel of {channels}")
        self.squeeze = nn.Conv2d(channels, hidden, 1, bias=False)
        self.excite = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        return x * torch.sigmoid(self.excite(torch.relu(self.squeeze(x))))


class Gain(Attention):
    def __init__(self, channels, *, gain):
        super().__init__()
        self.gain = nn.Parameter(torch.full((channels,), float(gain)))

    def forward(self, x):
        return x * self.gain[:, None, None]


def not_a_module(channels):
    return channels


CONSTANT = 3
'''

BASE = """
name: custom
base:
  model: {{arch: resnet18, width: 0.125, stem: cifar, attention: {attention}}}
  data: {data}
  train: {{epochs: 1, batch_size: 25, lr: 0.05, schedule: cosine}}
grid:
{grid}
seeds: [0]
"""


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package of the user's with the module above (``attn``) and one that fails to import (``broken``)."""
    files = {"attn": MODULE, "broken": "raise RuntimeError('boom at import')\n"}
    with user_package(tmp_path, monkeypatch, files) as name:
        yield name


def custom(target: str, **fields) -> dict:
    return {"type": "custom", "target": target, **fields}


def experiment_text(attention: str, grid: str = "  - train.lr: [0.05]", data: str = "{dataset: cifar10-micro}") -> str:
    return BASE.format(attention=attention, grid=grid, data=data)


def test_builds_and_places_per_block(package: str) -> None:
    model = build_model("resnet18", num_classes=10, stem="cifar", attention=custom(f"{package}.attn:MyAttention"))
    blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    assert all(isinstance(block.attention, AttentionAdapter) for block in blocks)  # not an Attention: wrapped
    assert [type(block.attention.module).__name__ for block in blocks] == ["MyAttention"] * 8
    assert [block.attention.module.excite.out_channels for block in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(isinstance(m, NoAttention) for m in model.stage_attention)
    # The wrapper's one consequence: the user's parameters sit one level deeper in the state_dict.
    assert "layer1.0.attention.module.squeeze.weight" in model.state_dict()
    out = model(torch.randn(2, 3, 32, 32))
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_builds_and_places_per_stage(package: str) -> None:
    attention = custom(f"{package}.attn:Gain", options={"gain": 2.0}, placement="stage")
    model = build_model("resnet18", num_classes=10, stem="cifar", attention=attention)
    gains = [m for m in model.stage_attention if type(m).__name__ == "Gain"]
    assert len(gains) == 3 and all(g.gain.shape == (c,) for g, c in zip(gains, (64, 128, 256), strict=True))
    assert all(isinstance(block.attention, NoAttention) for stage in (model.layer1, model.layer4) for block in stage)
    assert "stage_attention.0.gain" in model.state_dict()  # an Attention subclass is placed as it is: no wrapper
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenet_places_it_like_cbam(package: str) -> None:
    with torch.device("meta"):
        model = build_model(
            "mobilenet_v1", num_classes=10, attention=custom(f"{package}.attn:Gain", options={"gain": 1})
        )
    assert sum(type(m).__name__ == "Gain" for m in model.modules()) == 26
    assert all(isinstance(m, Attention) for m in model.modules() if type(m).__name__ == "Gain")


# (target attribute, options, words the one line must hold); "{t}" is the full target.
MISTAKES = [
    ("MyAttention", {"foo": 1}, ["model.attention.options.foo: unknown argument of {t}; allowed: reduction, kernel"]),
    ("Gain", {}, ["model.attention.options.gain: missing", "{t}(channels, *, gain)"]),
    ("MyAttention", {"channels": 3}, ["model.attention.options.channels", "channel count"]),
    ("Missing", {}, ["model.attention.target", "has no attribute 'Missing'"]),
    ("CONSTANT", {}, ["model.attention.target", "is a int, not a class or callable"]),
    ("not_a_module", {}, ["model.attention.target", "not a torch.nn.Module"]),
    ("MyAttention", {"reduction": 64}, ["model.attention.options", "raised ValueError: reduction 64 leaves no hidden"]),
]


@pytest.mark.parametrize(("name", "options", "words"), MISTAKES, ids=[f"{m[0]}-{'-'.join(m[1])}" for m in MISTAKES])
def test_a_constructor_mistake_is_one_line(package, name, options, words, tmp_path, monkeypatch, capsys) -> None:
    target = f"{package}.attn:{name}"
    attention = f"{{type: custom, target: '{target}', options: {options or {}}}}"
    path = tmp_path / "bad.yaml"
    path.write_text(experiment_text(attention))
    monkeypatch.chdir(tmp_path)
    assert runner.main(["profile", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word.format(t=target) in lines[0]


def test_an_import_error_is_one_line_before_any_store(package, tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(experiment_text(f"{{type: custom, target: '{package}.broken:Gate'}}"))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert runner.main(["sweep", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.attention.target" in lines[0], lines
    assert "cannot be imported (RuntimeError: boom at import)" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no state, no checkpoint folder


def test_editing_the_module_gives_new_cells(package, write_experiment) -> None:
    grid = f"  - model.attention: [{{type: none}}, {{type: custom, target: '{package}.attn:MyAttention'}}]"
    experiment = load_experiment(write_experiment(experiment_text("{type: none}", grid)))
    cells = expand_cells(experiment, expand_arms(experiment, check_paths=False))
    source = Path(sys.modules[f"{package}.attn"].__file__)
    assert cells[1].arm.module_source == {
        "target": f"{package}.attn:MyAttention",
        "file": str(source.resolve()),
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
    }
    assert cells[0].arm.module_source is None

    source.write_text(source.read_text() + "\n# a comment is an edit too: the results are keyed by the file\n")
    edited = expand_cells(experiment, expand_arms(experiment, check_paths=False))
    assert edited[0].hash == cells[0].hash  # a built-in arm keeps its key
    assert edited[1].hash != cells[1].hash and edited[1].legacy_hash != cells[1].legacy_hash
    assert edited[1].arm.module_source["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_labels(package, write_experiment) -> None:
    target = f"{package}.attn:MyAttention"
    one, two, labelled = (
        f"{{type: custom, target: '{target}'}}",
        f"{{type: custom, target: '{target}', options: {{reduction: 2}}}}",
        f"{{type: custom, target: '{target}', label: Mine}}",
    )
    grid = f"  - model.attention: [{one}, {two}]\n  - model.attention: [{labelled}]\n    model.width: [0.25]"
    arms = expand_arms(load_experiment(write_experiment(experiment_text("{type: none}", grid))), check_paths=False)
    assert [a.description for a in arms] == [
        "ResNet18 (width=0.125) + MyAttention",
        "ResNet18 (width=0.125) + MyAttention (reduction=2)",
        "ResNet18 (width=0.25) + Mine",
    ]


def test_profile_counts_its_params_and_macs(package, write_experiment) -> None:
    grid = f"  - model.attention: [{{type: none}}, {{type: custom, target: '{package}.attn:MyAttention'}}]"
    arms = expand_arms(load_experiment(write_experiment(experiment_text("{type: none}", grid))), check_paths=False)
    frame = profile_arms(arms)
    plain, mine = frame.itertuples(index=False)
    # Eighth-width ResNet-18 on 32 px: two blocks per stage of C = 8, 16, 32, 64 channels on 32, 16, 8, 4 px maps;
    # each module: a 1x1 conv C -> C/4 and a 3x3 conv C/4 -> C, no bias.
    weights = {c: c * (c // 4) + (c // 4) * c * 9 for c in (8, 16, 32, 64)}
    assert mine.params - plain.params == 2 * sum(weights.values())
    macs = 2 * sum(w * size * size for w, size in zip(weights.values(), (32, 16, 8, 4), strict=True))
    assert round((mine.gmacs - plain.gmacs) * 1e9) == pytest.approx(macs, abs=1e5)  # gmacs is rounded to 4 digits
    with torch.device("meta"):
        module = build_model(
            "resnet18", num_classes=10, width=0.125, stem="cifar", attention=arms[1].config.model.attention
        )
    assert count_params(module) == mine.params
    assert mine.attention == "custom" and mine.description.endswith("+ MyAttention")
    # No paper table: the paper's columns hold None throughout, and the text table renders them empty.
    assert "+ MyAttention" in render(frame, "table") and "+ MyAttention" in render(frame, "md")


@pytest.mark.slow
def test_sweep_table_and_gradcam_end_to_end(package, tmp_path, tiny_npz, write_experiment, capsys, monkeypatch) -> None:
    """On 100 of the bundled CIFAR-10 images (tests/support/tiny.py), one epoch: seconds per cell."""
    grid = f"  - model.attention: [{{type: none}}, {{type: custom, target: '{package}.attn:MyAttention'}}]"
    path = write_experiment(experiment_text("{type: none}", grid, data=f"{{dataset: npz, root: {tiny_npz}}}"))
    prepared = prepare_sweep(load_experiment(path))
    report, options = sweep_in(tmp_path / "run", prepared)
    assert (report.done, report.failed) == (2, {})

    client = MlflowClient(options.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("custom").experiment_id], "tags.`ablation.role` = 'cell'")
    by_type = {r.data.params["model.attention.type"]: r for r in runs}
    sha = prepared.arms[1].module_source["sha256"]
    assert by_type["custom"].data.tags["ablation.attention_source_sha256"] == sha
    assert "ablation.attention_source_sha256" not in by_type["none"].data.tags
    assert by_type["custom"].data.params["model.attention.target"] == f"{package}.attn:MyAttention"
    local = client.download_artifacts(by_type["custom"].info.run_id, "config.yaml", str(tmp_path / "artifact"))
    assert sha in Path(local).read_text()

    uri = ["--tracking-uri", options.tracking_uri]
    monkeypatch.chdir(tmp_path / "run")
    capsys.readouterr()
    assert runner.main(["table", str(path), *uri, "--format", "md", "--out", str(tmp_path / "table")]) == 0
    table = capsys.readouterr().out
    assert "ResNet18 (width=0.125) + MyAttention" in table and "| baseline |" in table
    gradcam = ["gradcam", str(path), *uri, "--checkpoint-dir", str(options.cell.checkpoint_dir), "--images", "2"]
    with in_folder(tmp_path / "run"):
        assert runner.main([*gradcam, "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "gradcam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
