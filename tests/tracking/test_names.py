"""The names that reach MLflow: declared once (ablation.tracking.names), spelled nowhere else in the package, and
pinned here to the layout that existing stores hold (a renamed metric would orphan every run logged before)."""

from __future__ import annotations

import ast
from pathlib import Path

from ablation.tracking import names

PACKAGE = Path(names.__file__).resolve().parents[1]

# The MLflow layout, as stores already hold it: the one place the tests spell these names.
LAYOUT = {
    "EPOCH": "epoch",
    "EPOCH_METRICS": (
        "train/loss",
        "train/top1_err",
        "val/loss",
        "val/top1_err",
        "val/top5_err",
        "lr",
        "throughput/img_per_s",
        "time/epoch_s",
    ),
    "FINAL_TOP1_ERR_LAST": "final/top1_err_last",
    "FINAL_TOP5_ERR_LAST": "final/top5_err_last",
    "FINAL_TOP1_ERR_BEST": "final/top1_err_best",
    "FINAL_TOP5_ERR_BEST": "final/top5_err_best",
    "FINAL_VAL_LOSS_LAST": "final/val_loss_last",
    "FINAL_EPOCHS": "final/epochs",
    "FINAL_PARAMS": "final/params",
    "FINAL_GMACS": "final/gmacs",
    "FINAL_TRAIN_TIME": "final/train_time_s",
    "TITLE": "ablation.title",
    "SOURCE": "ablation.source",
    "ROLE": "ablation.role",
    "ROLE_SWEEP": "sweep",
    "ROLE_CELL": "cell",
    "SWEEP_KEY": "ablation.sweep_key",
    "CELLS": "ablation.cells",
    "CONFIG_HASH": "ablation.config_hash",
    "LEGACY_HASH": "ablation.legacy_config_hash",
    "DATA_IDENTITY": "ablation.data_identity",
    "EXPERIMENT": "ablation.experiment",
    "ARM": "ablation.arm",
    "DESCRIPTION": "ablation.description",
    "SEED": "ablation.seed",
    "ATTENTION": "ablation.attention",
    "ATTENTION_SOURCE": "ablation.attention_source_sha256",
    "FAILURE": "ablation.failure",
    "AXIS_PREFIX": "axis.",
    "DEVICE": "ablation.device",
    "PHASE": "ablation.phase",
    "PHASE_TUNE": "tune",
    "PHASE_FINAL": "final",
    "RECIPE": "ablation.recipe",
    "RECIPE_DEFAULT": "default",
    "RECIPE_TUNED": "tuned",
    "CELL_SPEC": "ablation.cell_spec",
    "TUNE_STUDY": "ablation.tune.study",
    "TUNE_TRIAL": "ablation.tune.trial",
    "TUNE_STATE": "ablation.tune.state",
    "TUNE_PRUNED_AT": "tune/pruned_at_epoch",
    "PARENT_RUN": "mlflow.parentRunId",
    "NOTE": "mlflow.note.content",
    "DATASET_CONTEXT": "mlflow.data.context",
    "EXPERIMENT_KIND": ("mlflow.experimentKind", "custom_model_development"),
    "CONFIG_FILE": "config.yaml",
    "ENVIRONMENT_FILE": "environment.json",
    "CURVE_FILE": "learning_curve.png",
    "CHECKPOINT_DIR": "checkpoint",
    "RESULTS_DIR": "results",
    "GRADCAM_DIR": "gradcam",
}


def test_the_names_are_the_layout_existing_stores_hold() -> None:
    for constant, value in LAYOUT.items():
        assert getattr(names, constant) == value, constant
    assert names.axis_tag("model.attention.order") == "axis.model.attention.order"
    assert names.role_filter(names.ROLE_CELL) == "tags.`ablation.role` = 'cell'"


def test_the_names_module_imports_nothing_but_the_spec_words() -> None:
    """Torch-free and near the bottom of the package: anything above experiment may import it. The PHASE and RECIPE
    tags' values are the words of a planned cell's spec, declared there once."""
    tree = ast.parse(Path(names.__file__).read_text())
    imported = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert {n.module for n in imported if isinstance(n, ast.ImportFrom)} == {"__future__", "ablation.experiment.spec"}
    assert all(isinstance(n, ast.ImportFrom) for n in imported), imported


def test_no_other_module_spells_a_name() -> None:
    """Metric and tag names (the ones no other string of the package could mean) appear only as constants."""
    spelled = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)} | {names.EXPERIMENT_KIND[0]}
    distinctive = {v for v in spelled if "/" in v or v.startswith(("ablation.", "mlflow.", "axis."))}
    found = []
    for path in [*sorted(PACKAGE.rglob("*.py")), PACKAGE.parent / "runner.py"]:
        if path == Path(names.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in distinctive:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not found, found
