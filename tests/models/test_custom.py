"""A user's own network (``model: {arch: custom, target: ..., options: ...}``): every arm's attention placed where the
builder asks for it, the parameters it adds equal to the paper's formulas (not to our modules), mistakes one line
before anything starts, its source file part of each cell's key, and swept end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ablation.core.errors import ConfigError
from ablation.experiment.grid import expand_arms, expand_cells
from ablation.experiment.schema import experiment_from_mapping, parse_run_config
from ablation.models import build_model
from ablation.models.measure import count_params
from tests.support.folders import in_folder
from tests.support.user_code import user_package

# The user's networks: one that takes attention like a norm layer, and the mistakes a user makes.
NETS = '''
from torch import nn


def tiny(num_classes, attention, width=16, blocks=2):
    """conv-BN-ReLU stages, the arm's attention after each; halves the resolution from the second on."""
    layers, channels = [], 3
    for i in range(blocks):
        out = width * 2**i
        layers += [nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(out),
                   nn.ReLU(inplace=True), attention(out)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def ignores_attention(num_classes, attention):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def drops_it(num_classes, attention):
    attention(8)  # made, then not kept
    return ignores_attention(num_classes, attention)


def no_attention_argument(num_classes):
    return nn.Linear(3, num_classes)


def needs_depth(num_classes, attention, depth):
    return tiny(num_classes, attention, blocks=depth)


def not_a_network(num_classes, attention):
    return "a network"
'''


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    with user_package(tmp_path, monkeypatch, {"nets": NETS}) as name:
        yield f"{name}.nets"


def _model(target: str, attention: dict, **fields) -> dict:
    return {"arch": "custom", "target": target, "attention": attention, **fields}


def _build(target: str, attention: dict, options: dict | None = None):
    return build_model("custom", num_classes=10, attention=attention, target=target, options=options or {})


def test_every_arm_is_placed_where_the_builder_asks_and_adds_the_papers_parameters(nets):
    """CBAM adds, per placed C-channel map: the shared MLP 2*C*(C/r) + C/r + C (weights and biases), the spatial
    conv 2*k*k (no bias) and its BN's 2 (Woo et al., Eq. 2-3; SPEC.md); SE the MLP alone."""
    options, r, k = {"width": 16, "blocks": 2}, 4, 7
    plain = count_params(_build(f"{nets}:tiny", {"type": "none"}, options))
    se = count_params(_build(f"{nets}:tiny", {"type": "se", "reduction": r}, options))
    cbam_model = _build(f"{nets}:tiny", {"type": "cbam", "reduction": r}, options)
    placed = (16, 32)  # the builder's two stages
    mlp = sum(2 * c * (c // r) + c // r + c for c in placed)
    assert se - plain == mlp
    assert count_params(cbam_model) - plain == mlp + len(placed) * (2 * k * k + 2)
    assert [type(m).__name__ for m in cbam_model if "CBAM" in type(m).__name__] == ["CBAM", "CBAM"]
    out = cbam_model(torch.randn(2, 3, 16, 16))
    out.square().mean().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in cbam_model.parameters())


def test_a_builder_that_never_places_the_attention_is_refused_in_one_line(nets):
    for target in (f"{nets}:ignores_attention", f"{nets}:drops_it"):
        refused = r"^model\.target: .* never places the arm's attention \(cbam\)"
        with pytest.raises(ConfigError, match=refused), torch.device("meta"):
            _build(target, {"type": "cbam", "reduction": 4})
        _build(target, {"type": "none"})  # the plain arm needs none


# (model fields beside arch/target, the start of the one line)
MISTAKES = [
    (
        {"target": "{m}:no_attention_argument"},
        "model.target: '{m}:no_attention_argument' takes no 'attention' argument",
    ),
    ({"target": "{m}:tiny", "options": {"depht": 3}}, "model.options.depht: unknown argument of {m}:tiny; allowed: "),
    ({"target": "{m}:tiny", "options": {"num_classes": 3}}, "model.options.num_classes: is passed by the harness"),
    ({"target": "{m}:needs_depth"}, "model.options.depth: missing: a required argument of {m}:needs_depth"),
    ({"target": "{m}:nowhere"}, "model.target: '{m}:nowhere' does not exist"),
    ({"target": "nopkg_at_all.nets:tiny"}, "model.target: 'nopkg_at_all.nets:tiny' cannot be imported"),
    ({"target": "no colon"}, "model.target: 'no colon' is not allowed; must be 'package.module:Name'"),
    ({"target": "{m}:tiny", "stem": "cifar"}, "model.stem: 'cifar' is a built-in backbone's"),
    ({}, "model.target: required with arch custom"),
]


@pytest.mark.parametrize(("fields", "message"), MISTAKES, ids=[m for _, m in MISTAKES])
def test_mistakes_are_one_line_before_anything_starts(nets, fields, message):
    fields = {k: v.format(m=nets) if isinstance(v, str) else v for k, v in fields.items()}
    experiment = {
        "name": "mine",
        "base": {"model": _model(None, {"type": "cbam"}) | fields, "data": {"dataset": "cifar10-micro"}},
    }
    if "target" not in fields:
        del experiment["base"]["model"]["target"]
    with pytest.raises(ConfigError) as raised:
        expand_arms(experiment_from_mapping(experiment, "<test>"), check_paths=False)
    assert str(raised.value).startswith(message.format(m=nets)), str(raised.value)
    assert "\n" not in str(raised.value)


def test_target_and_options_belong_to_arch_custom_only():
    with pytest.raises(ConfigError, match=r"^model\.target: 'a\.b:c' is for arch custom only \(arch is resnet18\)"):
        parse_run_config({"model": {"arch": "resnet18", "target": "a.b:c"}})
    with pytest.raises(ConfigError, match=r"^model\.options: .* is for arch custom only"):
        parse_run_config({"model": {"arch": "resnet18", "options": {"x": 1}}})


def test_the_builders_source_file_is_part_of_each_cells_key(nets, tmp_path):
    experiment = {
        "name": "mine",
        "base": {
            "model": _model(f"{nets}:tiny", {"type": "cbam", "reduction": 4}),
            "data": {"dataset": "cifar10-micro"},
        },
        "grid": [{"model.attention": [{"type": "none"}, {"type": "cbam", "reduction": 4}]}],
    }
    first = [c.hash for c in expand_cells(experiment_from_mapping(experiment, "<test>"))]
    again = [c.hash for c in expand_cells(experiment_from_mapping(experiment, "<test>"))]
    assert first == again and len(set(first)) == 2
    source = next((tmp_path / "site").glob("userpkg_*/nets.py"))
    source.write_text(source.read_text() + "\n# an edit\n")
    edited = [c.hash for c in expand_cells(experiment_from_mapping(experiment, "<test>"))]
    assert not set(edited) & set(first)  # an edited builder: new cells, never "already done"


def test_built_in_backbones_keep_their_keys():
    """Adding model.target / model.options (and data.target / data.options) changed no existing cell's key: the demo's
    first cell keeps the key it had before they existed (computed on commit 6987d18), so no finished run is orphaned."""
    experiment = yaml.safe_load((Path(__file__).parents[2] / "experiments" / "demo.yaml").read_text())
    cells = expand_cells(experiment_from_mapping({**experiment, "name": "demo"}, "<test>"))
    assert (cells[0].hash, cells[0].legacy_hash) == ("d35d6d1aa560", "5312ee4c7a9a")


@pytest.mark.slow
def test_none_se_and_cbam_train_in_the_users_network(nets, tmp_path, tiny_npz, monkeypatch):
    import ablation
    from ablation.report import columns as C

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    experiment = {
        "name": "mine",
        "base": {
            "model": _model(f"{nets}:tiny", {"type": "cbam", "reduction": 4}, options={"width": 8}),
            "data": {"dataset": "npz", "root": str(tiny_npz)},
            "train": {"epochs": 1, "batch_size": 25},
        },
        "grid": [
            {"model.attention": [{"type": "none"}, {"type": "se", "reduction": 4}, {"type": "cbam", "reduction": 4}]}
        ],
    }
    stores = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "storage": f"sqlite:///{tmp_path / 's.db'}"}
    with in_folder(tmp_path):
        result = ablation.sweep(experiment, checkpoint_dir=tmp_path / "ck", progress=False, workers=2, **stores)
    assert (result.done, result.failed) == (3, {})
    runs = result.runs()
    assert list(runs[C.DESCRIPTION]) == ["tiny", "tiny + SE (r=4)", "tiny + CBAM (r=4)"]
    plain, se, cbam = runs[C.PARAMS]
    mlp = sum(2 * c * (c // 4) + c // 4 + c for c in (8, 16))
    assert (se - plain, cbam - plain) == (mlp, mlp + 2 * (2 * 49 + 2))
