"""Figures (files that open, fonts that journals accept, error bars only where seeds give a spread) and the
environment record (keys present, honest versions, never an exception)."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ablation import environment as env_module
from ablation.environment import environment, git_state
from ablation.plots import error_bar_figure, error_bars, errorbar_container, learning_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def history(epochs: int = 5) -> list[dict]:
    return [
        {
            "epoch": e,
            "train/loss": 2.0 / e,
            "val/loss": 2.2 / e + 0.1,
            "train/top1_err": 60.0 / e,
            "val/top1_err": 65.0 / e + 5,
            "val/top5_err": 30.0 / e + 2,
            "lr": 0.1 * 0.9**e,
        }
        for e in range(1, epochs + 1)
    ]


def frame() -> pd.DataFrame:
    """Arms whose errors differ by tenths of a percent, two of them single-seed (std NaN)."""
    return pd.DataFrame(
        {
            "description": [
                "ResNet50 (baseline)",
                "ResNet50 + SE",
                "ResNet50 + CBAM channel + spatial, AvgPool & MaxPool, kernel 7, r=16",
                "ResNet50 + CBAM channel only",
            ],
            "mean": [24.56, 23.14, 22.66, 22.80],
            "std": [0.12, math.nan, 0.08, math.nan],
            "n": [3, 1, 3, 1],
            "paper": [24.56, 23.14, 22.66, math.nan],
        }
    )


def assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000  # a blank canvas of this size compresses far smaller


def bar_labels(fig) -> list[str]:
    """y tick labels from top to bottom of the axes (whatever the y direction)."""
    ax = fig.axes[0]
    ticks = sorted(zip(ax.get_yticks(), ax.get_yticklabels(), strict=True), key=lambda t: t[0])
    if not ax.yaxis_inverted():
        ticks.reverse()
    return [label.get_text() for _, label in ticks]


# --------------------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------------------


def test_learning_curve_writes_a_png(tmp_path):
    out = learning_curve(history(), tmp_path / "curves" / "run.png", title="resnet18 cbam seed 0")
    assert out == tmp_path / "curves" / "run.png"
    assert_png(out)


def test_error_bars_writes_png_and_pdf_with_truetype_fonts(tmp_path):
    paths = error_bars(frame(), tmp_path / "table", title="Pooling", formats=("png", "pdf"))
    assert paths == [tmp_path / "table.png", tmp_path / "table.pdf"]
    assert_png(paths[0])
    pdf = paths[1].read_bytes()
    assert pdf.startswith(b"%PDF")
    assert b"/FontFile2" in pdf  # TrueType (Type 42) fonts embedded
    assert b"/Type3" not in pdf


def test_error_bars_default_format_is_png_only(tmp_path):
    assert error_bars(frame(), tmp_path / "t.png") == [tmp_path / "t.png"]
    assert not (tmp_path / "t.pdf").exists()


def test_single_seed_rows_get_no_error_bar():
    df = frame()
    fig = error_bar_figure(df)
    container = errorbar_container(fig)
    (xerr_lines,) = container.lines[2]  # horizontal error bars only: one LineCollection
    segments = xerr_lines.get_segments()
    assert len(segments) == 2  # rows 0 and 2; rows 1 and 3 have n == 1

    labels = bar_labels(fig)
    ax = fig.axes[0]
    tick_y = dict(zip((t.get_text() for t in ax.get_yticklabels()), ax.get_yticks(), strict=True))
    for segment, row in zip(segments, (0, 2), strict=True):
        (x0, y0), (x1, y1) = segment
        assert y0 == y1 == tick_y[df["description"][row]]
        assert x0 == pytest.approx(df["mean"][row] - df["std"][row])
        assert x1 == pytest.approx(df["mean"][row] + df["std"][row])
        assert np.isfinite(segment).all()
    assert labels == list(df["description"])


def test_all_single_seed_draws_no_error_bar_at_all():
    df = frame().assign(std=math.nan, n=1)
    segments = [seg for lines in errorbar_container(error_bar_figure(df)).lines[2] for seg in lines.get_segments()]
    assert segments == []


def test_means_are_dots_in_frame_order_first_row_on_top_and_no_bars():
    df = frame().iloc[[3, 0, 2, 1]].reset_index(drop=True)
    fig = error_bar_figure(df)
    assert bar_labels(fig) == list(df["description"])
    ax = fig.axes[0]
    assert len(ax.patches) == 0  # no bar: on an axis fitted to the data a bar's length would exaggerate differences
    (dots,) = [line for line in ax.lines if line.get_marker() == "o"]
    # the dots, top to bottom on screen, carry the means in frame order
    screen_y = [ax.transData.transform((x, y))[1] for x, y in zip(dots.get_xdata(), dots.get_ydata(), strict=True)]
    order = np.argsort(screen_y)[::-1]
    assert list(np.asarray(dots.get_xdata())[order]) == pytest.approx(list(df["mean"]))
    assert "axis range chosen from the data" in ax.get_xlabel()


def test_axis_is_zoomed_to_the_data_and_paper_markers_drawn():
    fig = error_bar_figure(frame())
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert 22.0 < lo < 22.66 - 0.08  # not 0: differences of tenths stay visible
    assert hi > 24.56 + 0.12
    diamonds = [line for line in ax.lines if line.get_marker() == "D"]
    assert len(diamonds) == 1 and len(diamonds[0].get_xdata()) == 3  # the row without a paper number has none
    texts = [t.get_text() for t in ax.texts]
    assert sum(t.startswith("n=") for t in texts) == 4
    assert any("±1 std over seeds" in t for t in texts)


def _title_inside(fig) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    title = fig._suptitle
    assert title is not None and title.get_text()
    box, frame_box = title.get_window_extent(canvas.get_renderer()), fig.bbox
    assert frame_box.x0 <= box.x0 and box.x1 <= frame_box.x1, (box, frame_box)
    assert frame_box.y0 <= box.y0 and box.y1 <= frame_box.y1, (box, frame_box)


LONG_TITLE = (
    "Table 1: channel attention pooling with AvgPool, MaxPool and both (ResNet-50, ImageNet-1K, 90 epochs, "
    "the official recipe), every arm with three seeds"
)


def test_no_figure_clips_its_title():
    from ablation.plots import arm_curves_figure, cost_figure, learning_curve_figure

    _title_inside(error_bar_figure(frame(), title=LONG_TITLE))
    _title_inside(error_bar_figure(frame().iloc[:1], title=LONG_TITLE))  # one narrow row, the same long title
    _title_inside(learning_curve_figure(history(), title=LONG_TITLE))
    _title_inside(arm_curves_figure({"a": [[30.0, 20.0]], "b": [[31.0, 21.0], [32.0, 22.0]]}, title=LONG_TITLE))
    costs = frame().assign(top1_err_mean=frame()["mean"], top1_err_std=frame()["std"], gmacs=4.0, img_per_s_mean=300.0)
    _title_inside(cost_figure(costs, title=LONG_TITLE))


def test_many_long_rows_grow_the_figure(tmp_path):
    rows = 35
    df = pd.DataFrame(
        {
            "description": [
                f"ResNet50 + CBAM arm {i:02d}: channel + spatial, AvgPool & MaxPool, k=7" for i in range(rows)
            ],
            "mean": 22 + 0.3 * np.sin(np.arange(rows)),
            "std": 0.1,
            "n": 3,
        }
    )
    small = error_bar_figure(df.head(3)).get_size_inches()
    big = error_bar_figure(df).get_size_inches()
    assert big[1] > 3 * small[1]
    assert_png(error_bars(df, tmp_path / "big.png")[0])


def test_error_bars_rejects_a_frame_without_the_columns(tmp_path):
    with pytest.raises(ValueError, match="std"):
        error_bars(frame().drop(columns="std"), tmp_path / "x.png")


# --------------------------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------------------------

KEYS = {
    "python",
    "platform",
    "hostname",
    "cpu_count",
    "torch_num_threads",
    "torch_build",
    "packages",
    "cuda_available",
    "cuda_version",
    "cudnn_version",
    "cuda_devices",
    "device",
    "git_commit",
    "git_dirty",
}


def test_environment_keys_versions_and_json():
    env = environment("cpu")
    assert env.keys() >= KEYS
    assert env["device"] == "cpu"
    assert env["torch_build"] == torch.__version__
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    assert torch.__version__.startswith(env["packages"]["torch"])
    assert set(env["packages"]) >= {"torchvision", "numpy", "mlflow", "optuna", "pandas", "pydantic", "cbam-ablation"}
    assert env["torch_num_threads"] == torch.get_num_threads()
    assert env["cuda_available"] == torch.cuda.is_available()
    assert len(env["cuda_devices"]) == (torch.cuda.device_count() if env["cuda_available"] else 0)
    commit = env["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    assert (env["git_dirty"] is None) == (commit is None)
    json.dumps(env)  # an MLflow artifact: must serialise as is


def test_environment_commit_matches_git_when_available():
    root = env_module.PROJECT_ROOT
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except OSError:
        pytest.skip("git is not installed")
    if done.returncode != 0:
        pytest.skip("the project is not a git checkout")
    assert environment()["git_commit"] == done.stdout.strip()


def test_environment_never_raises_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "")
    env = environment()
    assert env["git_commit"] is None and env["git_dirty"] is None
    assert env["device"] is None


def test_git_state_outside_a_checkout_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even if tmp lies inside a repository
    (tmp_path / "pyproject.toml").write_text("")
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}
    assert git_state(tmp_path / "missing") == {"git_commit": None, "git_dirty": None}


def test_missing_package_reads_not_installed():
    assert env_module.package_version("surely-not-a-real-distribution-xyz") == "not installed"


def test_waiting_threads_sleep_unless_the_user_chose_otherwise(monkeypatch):
    from ablation.threads import configure_threads, thread_state

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("ABLATION_SET_OMP_WAIT_POLICY", raising=False)
    configure_threads()
    state = thread_state()
    assert (state["omp_wait_policy"], state["omp_wait_policy_set_by"]) == ("PASSIVE", "harness")
    assert state["torch_num_threads"] == torch.get_num_threads()

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("ABLATION_SET_OMP_WAIT_POLICY")
    configure_threads()
    assert thread_state()["omp_wait_policy"] == "ACTIVE" and thread_state()["omp_wait_policy_set_by"] == "user"


def test_runner_sets_the_wait_policy_before_torch_starts_its_threads():
    """In a fresh process: importing the command line imports no torch, and its first act sets the policy, so the
    OpenMP runtime that torch starts later reads it."""
    import os
    import sys

    from tests.conftest import EXPERIMENTS, ROOT

    probe = (
        "import os, sys, runner; before = 'torch' in sys.modules; "
        f"runner.main(['profile', r'{EXPERIMENTS / 'demo.yaml'}', '--format', 'csv']); "
        "print(before, 'torch' in sys.modules, os.environ['OMP_WAIT_POLICY'], file=sys.stderr)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "ABLATION_SET_OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.stderr.split()[-3:] == ["False", "True", "PASSIVE"], done.stderr
