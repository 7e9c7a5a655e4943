"""Figures (ablation/report/plots.py): files that open, fonts that journals accept, error bars only where seeds give a
spread."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablation.report.plots import error_bar_figure, error_bars, errorbar_container, learning_curve
from ablation.tracking.names import EPOCH, LR, TRAIN_LOSS, TRAIN_TOP1_ERR, VAL_LOSS, VAL_TOP1_ERR, VAL_TOP5_ERR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def history(epochs: int = 5) -> list[dict]:
    return [
        {
            EPOCH: e,
            TRAIN_LOSS: 2.0 / e,
            VAL_LOSS: 2.2 / e + 0.1,
            TRAIN_TOP1_ERR: 60.0 / e,
            VAL_TOP1_ERR: 65.0 / e + 5,
            VAL_TOP5_ERR: 30.0 / e + 2,
            LR: 0.1 * 0.9**e,
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
    from ablation.report.plots import arm_curves_figure, cost_figure, learning_curve_figure

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
