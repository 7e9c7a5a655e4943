"""Figures for runs and sweeps: a learning curve per run, an error-bar chart per table.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot: no display, no global figure
registry, no backend choice, so the harness draws the same figures on a headless training node, in a test, or
inside a notebook that has chosen another backend. Fonts are embedded as TrueType (Type 42) in PDFs because
Type 3 fonts are rejected by many conference submission checkers and do not stay editable in vector editors.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from ablation.report import columns as C
from ablation.tracking.names import EPOCH, TRAIN_LOSS, TRAIN_TOP1_ERR, VAL_LOSS, VAL_TOP1_ERR, VAL_TOP5_ERR

DPI = 150
ERROR_NOTE = "whiskers: ±1 std over seeds (n per row)"
ERRORBAR_LABEL = "±1 std"
MEAN_LABEL = "mean over seeds"
PAPER_LABEL = "paper"
AXIS_NOTE = "axis range chosen from the data, not from 0"
TITLE_SIZE = 10
_SOFTWARE = "cbam-ablation"
# Room right of the rightmost whisker for its "n=…" label, as a fraction of the data range (on top of the 10% pad).
_LABEL_ROOM = 0.12


def save_figure(fig: Figure, path: Path, formats: Iterable[str] = ("png",)) -> list[Path]:
    """Write ``fig`` at ``path`` with each suffix in ``formats``; return the paths written.

    PNG goes out at 150 dpi (sharp on slides, small in the MLflow UI); PDF embeds TrueType fonts. The font type is
    set in an ``rc_context`` around the save, so the caller's rcParams are left as they were.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        for fmt in formats:
            fmt = fmt.lower().lstrip(".")
            target = path.with_suffix(f".{fmt}")
            if fmt == "pdf":
                metadata: dict[str, Any] = {"Creator": _SOFTWARE, "Producer": _SOFTWARE}
            elif fmt == "png":
                metadata = {"Software": _SOFTWARE}
            else:
                metadata = {}
            fig.savefig(target, format=fmt, dpi=DPI, metadata=metadata or None)
            written.append(target)
    return written


def fit_title(fig: Figure, title: str, fontsize: float = TITLE_SIZE) -> None:
    """The figure's title, wrapped to its width: a constrained layout makes room above the axes for a title's
    height but never shrinks a line that is wider than the figure, which is then cut off at both edges."""
    if not title:
        return
    # ~0.6 em per character of DejaVu Sans on average, with a margin on both sides.
    per_line = max(20, int((fig.get_figwidth() * 72 - 24) / (0.6 * fontsize)))
    lines = [textwrap.fill(part, per_line, break_long_words=True) for part in title.splitlines() or [title]]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


# --------------------------------------------------------------------------------------------------------------
# Learning curve
# --------------------------------------------------------------------------------------------------------------


def _series(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One metric over the history as floats, NaN where an epoch did not log it (lines then break, not lie)."""
    values = []
    for row in history:
        value = row.get(key)
        try:
            values.append(float(value) if value is not None else math.nan)
        except (TypeError, ValueError):
            values.append(math.nan)
    return np.asarray(values, dtype=float)


def learning_curve_figure(history: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Loss and top-1/top-5 error per epoch, side by side, so over-fitting and a stalled schedule show at a glance."""
    if not history:
        raise ValueError("learning_curve: the history is empty; nothing to draw")
    epochs = _series(history, EPOCH)
    if np.isnan(epochs).all():
        epochs = np.arange(1, len(history) + 1, dtype=float)

    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, err_ax = fig.subplots(1, 2)
    _plot_lines(loss_ax, epochs, history, [(TRAIN_LOSS, "train", "C0", "-"), (VAL_LOSS, "val", "C1", "-")])
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    _plot_lines(
        err_ax,
        epochs,
        history,
        [
            (TRAIN_TOP1_ERR, "train top-1", "C0", "-"),
            (VAL_TOP1_ERR, "val top-1", "C1", "-"),
            (VAL_TOP5_ERR, "val top-5", "C1", "--"),
        ],
    )
    err_ax.set_ylabel("error (%)")
    err_ax.set_title("Top-1 / top-5 error")
    for ax in (loss_ax, err_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(frameon=False)
    fit_title(fig, title)
    return fig


def _plot_lines(
    ax: Axes, epochs: np.ndarray, history: Sequence[Mapping[str, Any]], specs: list[tuple[str, str, str, str]]
) -> None:
    """Draw each (key, label, color, linestyle) that the history logged at least once; skip the others silently."""
    for key, label, color, style in specs:
        values = _series(history, key)
        if np.isnan(values).all():
            continue
        # A marker keeps a single-epoch run (or an isolated logged epoch) visible: a one-point line draws nothing.
        ax.plot(epochs, values, label=label, color=color, linestyle=style, marker="." if len(values) < 40 else None)


def learning_curve(history: list[dict], path: Path, title: str = "") -> Path:
    """Write a run's learning curve as PNG at ``path`` (the suffix is forced to .png) and return the path."""
    fig = learning_curve_figure(history, title)
    return save_figure(fig, Path(path), ("png",))[0]


# --------------------------------------------------------------------------------------------------------------
# Error bars
# --------------------------------------------------------------------------------------------------------------

_REQUIRED = ("description", "mean", "std", "n")


def _x_limits(means: np.ndarray, stds: np.ndarray, paper: np.ndarray) -> tuple[float, float]:
    """The data range (means ± std, paper markers) padded by 10%, plus room on the right for the n labels.

    Arms differ by tenths of a percent: an axis from 0 would draw them all the same length.
    """
    spread = np.nan_to_num(stds, nan=0.0)
    values = np.concatenate([means - spread, means + spread, paper[np.isfinite(paper)]])
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo
    if span <= 0:  # one row, or identical means without spread: pick a visible window around the value
        span = max(abs(hi) * 0.05, 0.5)
        lo, hi = lo - span / 2, hi + span / 2
    return lo - 0.1 * span, hi + (0.1 + _LABEL_ROOM) * span


def error_bar_figure(frame: pd.DataFrame, *, metric_label: str = "Top-1 error (%)", title: str = "") -> Figure:
    """A dot at each row's ``mean`` (first row at the top) with ±1 std whiskers and n at its end: a dot-and-whisker
    chart, not bars. Arms differ by tenths of a percent, so the axis is fitted to the data; a bar's length would
    then exaggerate every difference (a bar is read from 0), a dot's position does not, and the axis label says
    that its range was chosen from the data.

    Rows with one seed (std NaN) get no whisker at all: drawing a zero-width one would claim a spread of 0 that
    was never measured. The figure's axes hold exactly one ``ErrorbarContainer`` (label ``"±1 std"``) whose
    segments are those of the rows with a finite std, in frame order. The paper's number, when the frame has a
    ``paper`` column and the row has a value, is drawn as a hollow diamond on the row.
    """
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"error_bars: the frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError("error_bars: the frame has no rows; nothing to draw")

    labels = [str(d) for d in frame["description"]]
    means = pd.to_numeric(frame["mean"], errors="coerce").to_numpy(dtype=float)
    stds = pd.to_numeric(frame["std"], errors="coerce").to_numpy(dtype=float)
    counts = pd.to_numeric(frame["n"], errors="coerce").to_numpy(dtype=float)
    if "paper" in frame.columns:
        paper = pd.to_numeric(frame["paper"], errors="coerce").to_numpy(dtype=float)
    else:
        paper = np.full(len(frame), np.nan)
    if not np.isfinite(means).any():
        raise ValueError("error_bars: no row has a finite mean; nothing to draw")

    rows = len(frame)
    y = np.arange(rows, dtype=float)
    longest = max(len(label) for label in labels)
    # Width grows with the longest label (≈0.065 in per character at 9 pt) so a 60-character label leaves the
    # plotting area its 5 inches; height grows with the rows so 35 rows stay legible.
    width = min(6.0 + 0.065 * longest, 14.0)
    height = 1.6 + 0.28 * rows
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()

    finite = np.isfinite(means)
    ax.plot(
        means[finite], y[finite], linestyle="none", marker="o", markersize=6, color="C0", zorder=3, label=MEAN_LABEL
    )

    has_spread = finite & np.isfinite(stds) & ~(counts <= 1)  # NaN n: trust the std
    ax.errorbar(
        means[has_spread],
        y[has_spread],
        xerr=stds[has_spread],
        fmt="none",
        ecolor="black",
        elinewidth=1.0,
        capsize=3,
        zorder=3,
        label=ERRORBAR_LABEL,
    )

    has_paper = np.isfinite(paper)
    if has_paper.any():
        ax.plot(
            paper[has_paper],
            y[has_paper],
            linestyle="none",
            marker="D",
            markersize=6,
            markerfacecolor="none",
            markeredgecolor="C3",
            markeredgewidth=1.3,
            zorder=4,
            label=PAPER_LABEL,
        )

    for i in np.flatnonzero(finite):
        end = means[i] + (stds[i] if has_spread[i] else 0.0)
        if has_paper[i]:
            end = max(end, paper[i])
        n_text = f"n={int(counts[i])}" if np.isfinite(counts[i]) else "n=?"
        ax.annotate(
            n_text,
            xy=(end, y[i]),
            xytext=(8 if has_paper[i] and end == paper[i] else 5, 0),  # clear of the diamond's half-width
            textcoords="offset points",
            va="center",
            ha="left",
            fontsize=8,
            color="0.25",
        )

    ax.set_xlim(*_x_limits(means[finite], stds[finite], paper))
    ax.set_ylim(rows - 0.5, -0.5)  # first row at the top
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlabel(f"{metric_label}; {AXIS_NOTE}")
    ax.grid(True, axis="both", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    ax.annotate(
        ERROR_NOTE,
        xy=(1.0, 0.0),
        xycoords="axes fraction",
        xytext=(0, -30),
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize=8,
        style="italic",
        color="0.35",
    )
    # Outside the axes: inside, it would hide a whisker's end or its n label whichever corner it took.
    fig.legend(loc="outside lower left", ncols=3, fontsize=8, frameon=False)
    fit_title(fig, title)
    return fig


def errorbar_container(fig: Figure) -> ErrorbarContainer:
    """The ±1 std error-bar artist of a figure from ``error_bar_figure`` (for tests and post-hoc styling)."""
    for ax in fig.axes:
        for container in ax.containers:
            if isinstance(container, ErrorbarContainer) and container.get_label() == ERRORBAR_LABEL:
                return container
    raise LookupError("the figure has no ±1 std error-bar container")


def error_bars(
    frame: pd.DataFrame,
    path: Path,
    *,
    metric_label: str = "Top-1 error (%)",
    title: str = "",
    formats: Sequence[str] = ("png",),
) -> list[Path]:
    """Write the error-bar chart of ``frame`` at ``path`` with each suffix in ``formats``; return the paths."""
    fig = error_bar_figure(frame, metric_label=metric_label, title=title)
    return save_figure(fig, Path(path), formats)


# --------------------------------------------------------------------------------------------------------------
# Sweep-level figures: learning curves per arm, cost against error
# --------------------------------------------------------------------------------------------------------------


def arm_curves_figure(curves: Mapping[str, Sequence[Sequence[float]]], *, title: str = "") -> Figure:
    """Validation top-1 error per epoch, one line per arm: the mean over seeds with a ±1 std band.

    ``curves`` maps an arm's description to one error series per seed. A band needs two seeds: an arm with one
    seed is drawn as a plain line, and the legend gives each arm's n.
    """
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["tab10"] if len(curves) <= 10 else matplotlib.colormaps["tab20"]
    for i, (label, series) in enumerate(curves.items()):
        length = min(len(s) for s in series)
        values = np.array([list(s)[:length] for s in series], dtype=float)
        epochs = np.arange(1, length + 1)
        mean = values.mean(axis=0)
        color = colors(i % colors.N)
        ax.plot(epochs, mean, color=color, label=f"{label} (n={len(series)})")
        if len(series) > 1:
            std = values.std(axis=0, ddof=1)
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 error (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fit_title(fig, title or "Learning curves: mean ± 1 std over seeds")
    return fig


def arm_curves(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: Path,
    *,
    title: str = "",
    formats: Iterable[str] = ("png", "pdf"),
) -> list[Path]:
    return save_figure(arm_curves_figure(curves, title=title), Path(path), formats)


def cost_figure(frame: pd.DataFrame, *, title: str = "") -> Figure:
    """Top-1 error against GMACs and against measured training throughput, one point per arm (±1 std bars).

    ``frame``: a summary (``ablation.report.columns``). FLOPs hide the cost of memory traffic; the throughput panel
    shows what an arm costs on the machine that trained it.
    """
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    panels = ((C.GMACS, "GMACs per image (paper's 'GFLOPs')"), (C.IMG_PER_S_MEAN, "training throughput (images/s)"))
    colors = matplotlib.colormaps["tab10"] if len(frame) <= 10 else matplotlib.colormaps["tab20"]
    for position, (column, label) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, position)
        for i, row in enumerate(frame.to_dict("records")):
            std = row[C.TOP1_STD] if not math.isnan(row[C.TOP1_STD]) else None
            ax.errorbar(
                row[column],
                row[C.TOP1_MEAN],
                yerr=std,
                fmt="o",
                color=colors(i % colors.N),
                capsize=3,
                label=row[C.DESCRIPTION] if position == 1 else None,
            )
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 error (%)")
        ax.grid(True, alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    fit_title(fig, title or "Cost against error (bars: ±1 std over seeds where n > 1)")
    return fig


def cost_plot(
    frame: pd.DataFrame, path: Path, *, title: str = "", formats: Iterable[str] = ("png", "pdf")
) -> list[Path]:
    return save_figure(cost_figure(frame, title=title), Path(path), formats)
