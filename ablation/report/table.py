"""``runner.py table``: the paper-style table of a sweep, read back from MLflow.

Description | Params | GMACs | Top-1 err (%) | Top-5 err (%), as mean +- std over seeds with n, one row per arm
in the experiment's order, with the paper's printed numbers beside ours when the experiment names a paper table.
Errors are the last epoch's (the best epoch is chosen on the validation set itself, an optimistic pick). The
standard deviation is the sample one (ddof=1); with n = 1 there is none, and the table shows "-", not a number.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from ablation.experiment.paper import sources_footnote
from ablation.experiment.prepared import PreparedSweep
from ablation.report import columns as C
from ablation.report.formats import TABLE_FORMATS
from ablation.stats.compare import describe_test, mean_std, welch
from ablation.tracking.mlflow_store import SweepStore
from ablation.tracking.names import (
    CONFIG_HASH,
    FINAL_GMACS,
    FINAL_PARAMS,
    FINAL_TOP1_ERR_BEST,
    FINAL_TOP5_ERR_LAST,
    FINAL_TRAIN_TIME,
    RESULTS_DIR,
    ROLE_CELL,
    THROUGHPUT,
    VAL_TOP1_ERR,
)
from ablation.tracking.results import OBJECTIVE

# Column of the runs frame -> the run's metric (a run's metrics hold each one's last value: for the throughput,
# the last epoch's). The objective is the one every comparison uses (``ablation.tracking.results``).
RUN_METRICS = {
    C.TOP1: OBJECTIVE,
    C.TOP5: FINAL_TOP5_ERR_LAST,
    C.TOP1_BEST: FINAL_TOP1_ERR_BEST,
    C.PARAMS: FINAL_PARAMS,
    C.GMACS: FINAL_GMACS,
    C.IMG_PER_S: THROUGHPUT,
    C.TRAIN_TIME: FINAL_TRAIN_TIME,
}


def collect_runs(prepared: PreparedSweep, tracking_uri: str) -> pd.DataFrame:
    """One row per finished cell of the experiment (matched by config hash), with its final metrics."""
    store = SweepStore(tracking_uri, prepared.experiment)
    by_hash = {cell.hash: cell for cell in prepared.cells}
    rows = []
    for run in store.runs(ROLE_CELL):
        cell = by_hash.get(run.data.tags.get(CONFIG_HASH))
        if cell is None or run.info.status != "FINISHED":
            continue
        metrics = run.data.metrics
        rows.append(
            {
                C.ARM: cell.arm.index,
                C.DESCRIPTION: cell.arm.description,
                C.SEED: cell.seed,
                C.RUN_ID: run.info.run_id,
                **{name: metrics.get(key, math.nan) for name, key in RUN_METRICS.items()},
            }
        )
    frame = pd.DataFrame(rows, columns=list(C.RUN_COLUMNS))
    # Two finished runs of one cell (e.g. a cell rerun by hand): keep the newest, never count a seed twice.
    return frame.drop_duplicates(subset=[C.ARM, C.SEED], keep="first").sort_values([C.ARM, C.SEED], ignore_index=True)


def baseline_arm(prepared: PreparedSweep) -> int:
    """The row significance is tested against: the paper's baseline row if the table has one, else the first."""
    return prepared.baseline


def summarize(prepared: PreparedSweep, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: n, params, GMACs, mean and std of the errors, the test against the baseline, and the
    paper's numbers with our difference to them."""
    base = baseline_arm(prepared)
    base_top1 = runs.loc[runs[C.ARM] == base, C.TOP1].tolist()
    rows = []
    for arm in prepared.arms:
        mine = runs[runs[C.ARM] == arm.index]
        top1, top5 = mine[C.TOP1].tolist(), mine[C.TOP5].tolist()
        top1_mean, top1_std = mean_std(top1)
        top5_mean, top5_std = mean_std(top5)
        test = None if arm.index == base else welch(top1, base_top1)
        row = arm.paper_row
        paper_top1 = row.top1 if row else math.nan
        rows.append(
            {
                C.DESCRIPTION: arm.description,
                C.N: len(mine),
                C.PARAMS: mine[C.PARAMS].iloc[0] if len(mine) else math.nan,
                C.GMACS: mine[C.GMACS].iloc[0] if len(mine) else math.nan,
                C.TOP1_MEAN: top1_mean,
                C.TOP1_STD: top1_std,
                C.TOP5_MEAN: top5_mean,
                C.TOP5_STD: top5_std,
                C.IMG_PER_S_MEAN: mine[C.IMG_PER_S].mean() if len(mine) else math.nan,
                C.VS_BASELINE: describe_test(test, arm.index == base),
                C.VS_BASELINE_P: test.p if test else math.nan,
                C.PAPER_TOP1: paper_top1,
                C.PAPER_TOP5: row.top5 if row else math.nan,
                C.DELTA_TOP1_VS_PAPER: top1_mean - paper_top1,
                C.PAPER_PARAMS_M: row.params_m if row and row.params_m else math.nan,
                C.PAPER_GFLOPS: row.gflops if row and row.gflops else math.nan,
                C.PAPER_TOP1_SHOWN: row.shown("top1", ".2f") if row else "-",
                C.PAPER_TOP5_SHOWN: row.shown("top5", ".2f") if row else "-",
                C.PAPER_PARAMS_SHOWN: row.shown("params_m", ".2f", "M") if row else "-",
                C.PAPER_GFLOPS_SHOWN: row.shown("gflops", ".3f") if row else "-",
            }
        )
    return pd.DataFrame(rows, columns=list(C.SUMMARY_COLUMNS))


def _mean_std(mean: float, std: float, plus_minus: str = " ± ") -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f}{plus_minus}{std:.2f}"


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def display_rows(summary: pd.DataFrame, with_paper: bool, style: str = "md") -> tuple[list[str], list[list[str]]]:
    """Header and cells as text; the best (lowest) mean error of each column is marked bold."""
    pm = {"latex": r" $\pm$ ", "html": " &plusmn; "}.get(style, " ± ")
    bold = {"latex": r"\textbf{{{}}}", "html": "<b>{}</b>"}.get(style, "**{}**")
    header = ["Description", "n", "Params", "GMACs", "Top-1 err (%)", "Top-5 err (%)", "vs baseline (Welch)"]
    extra = [(column, title) for column, title in C.EXTRA_COLUMNS if column in summary.columns]
    header += [title for _, title in extra]
    if with_paper:
        header += ["Paper top-1", "Paper top-5", "Δ top-1", "Paper params", "Paper GFLOPs"]
    best1 = summary[C.TOP1_MEAN].min(skipna=True)
    best5 = summary[C.TOP5_MEAN].min(skipna=True)
    body = []
    for r in summary.to_dict("records"):
        top1 = _mean_std(r[C.TOP1_MEAN], r[C.TOP1_STD], pm)
        top5 = _mean_std(r[C.TOP5_MEAN], r[C.TOP5_STD], pm)
        cells = [
            r[C.DESCRIPTION],
            str(r[C.N]),
            "-" if math.isnan(r[C.PARAMS]) else f"{r[C.PARAMS] / 1e6:.2f}M",
            _num(r[C.GMACS], ".3f"),
            bold.format(top1) if r[C.TOP1_MEAN] == best1 else top1,
            bold.format(top5) if r[C.TOP5_MEAN] == best5 else top5,
            r[C.VS_BASELINE] if r[C.N] else "-",
        ]
        cells += [str(r[column]) for column, _ in extra]
        if with_paper:
            cells += [
                r[C.PAPER_TOP1_SHOWN],
                r[C.PAPER_TOP5_SHOWN],
                _num(r[C.DELTA_TOP1_VS_PAPER], "+.2f"),
                r[C.PAPER_PARAMS_SHOWN],
                r[C.PAPER_GFLOPS_SHOWN],
            ]
        body.append(cells)
    return header, body


def table_note(prepared: PreparedSweep) -> str:
    """What produced the numbers: dataset, recipe, epochs, seeds, and how to read them."""
    experiment = prepared.experiment
    config = prepared.arms[0].config
    train, data = config.train, config.data
    seeds = experiment.seeds
    base = prepared.arms[baseline_arm(prepared)].description
    identities = sorted({arm.data.identity for arm in prepared.arms if arm.data.identity})
    identity = f", {', '.join(identities)}" if identities else ""
    if isinstance(seeds, list):
        seeds_text = f"seeds {', '.join(map(str, seeds))}"
    else:
        seeds_text = (
            f"seeds from {seeds.start}, {seeds.min} per arm, then one more per round to each arm whose difference to "
            f"the baseline has a 95% CI (Welch) containing 0, and to the baseline, up to {seeds.max} (a stopping "
            "rule for spending seeds: looking after every round makes 'resolved' weaker than a 5% test)"
        )
    tune = experiment.tune
    recipe = "" if tune is None else " (the default recipe; each tuned row trains its 'Tuned values' instead)"
    note = (
        f"Dataset {data.dataset} ({prepared.arms[0].data.image_size} px{identity}); SGD lr {train.lr:g}, momentum "
        f"{train.momentum:g}, weight decay {train.weight_decay:g}, batch {train.batch_size}, {train.epochs} epochs, "
        f"{train.schedule} schedule{recipe}; {seeds_text}. Errors: last epoch, mean ± sample std over "
        "the n seeds that finished ('-': n = 1 has no spread); bold: the lowest mean. 'vs baseline': difference "
        f"in top-1 error to '{base}' in points and the two-sided p of Welch's t-test over seeds (* p < 0.05; needs "
        "n >= 2 per arm, and three or more seeds to mean much)."
    )
    if tune is not None:
        space = ", ".join(
            f"{key} {'in ' + str(p.choices) if p.type == 'categorical' else f'{p.low:g}..{p.high:g}'}"
            + (" (log)" if p.log else "")
            for key, p in tune.space.items()
        )
        note += (
            f" Tuning: every arm its own Optuna study of exactly {tune.trials} trials of "
            f"{tune.epochs or train.epochs} epochs ({tune.sampler.type} sampler, seed {tune.sampler.seed}; pruner "
            f"{tune.pruner.type.replace('_', ' ')}) over {space}, each trial trained on a class-stratified "
            f"{1 - tune.holdout:.0%} of the training set and scored by the last epoch's top-1 error on the other "
            f"{tune.holdout:.0%} (split seed {tune.split_seed}); the test set was never read while tuning. The best "
            "trial's values were then trained on the whole training set with the seeds above. Tuning cost: the "
            "training + evaluation time of the arm's trials."
        )
    if prepared.experiment.paper:
        note += (
            " Paper columns: the numbers the paper prints (ImageNet-1K, 224 px, one run each); Δ top-1 = ours - "
            "paper's. The paper's Tables 1-3 params/GFLOPs disagree with its Table 4; see `runner.py profile`. "
            + sources_footnote([arm.paper_row for arm in prepared.arms])
        )
    return note


def render_markdown(summary: pd.DataFrame, prepared: PreparedSweep) -> str:
    header, body = display_rows(summary, bool(prepared.experiment.paper))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    title = prepared.experiment.title or prepared.experiment.name
    return f"**{title}**\n\n" + "\n".join(lines) + f"\n\n{table_note(prepared)}\n" + _comparison(summary, "md")


def _comparison(summary: pd.DataFrame, style: str) -> str:
    """The default-vs-tuned table a tuned sweep's summary carries (``summary.attrs["comparison"]``), or ""."""
    comparison = summary.attrs.get("comparison")
    if comparison is None:
        return ""
    return "\n" + render_comparison(comparison, style)


def latex_escape(text: str) -> str:
    for raw, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("Δ", r"$\Delta$"),
        ("±", r"$\pm$"),
    ):
        text = text.replace(raw, escaped)
    return text


def render_latex(summary: pd.DataFrame, prepared: PreparedSweep) -> str:
    header, body = display_rows(summary, bool(prepared.experiment.paper), style="latex")
    spec = "l" + "r" * (len(header) - 1)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(prepared.experiment.title or prepared.experiment.name)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join([latex_escape(row[0]), *row[1:]]) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip\footnotesize {latex_escape(table_note(prepared))}", r"\end{table}"]
    return "\n".join(lines) + "\n" + _comparison(summary, "latex")


def render_html(summary: pd.DataFrame, prepared: PreparedSweep) -> str:
    header, body = display_rows(summary, bool(prepared.experiment.paper), style="html")
    title = html.escape(prepared.experiment.title or prepared.experiment.name)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>" + f"<td>{html.escape(row[0])}</td>" + "".join(f"<td>{cell}</td>" for cell in row[1:]) + "</tr>"
        for row in body
    )
    return (
        f"<table>\n<caption>{title}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>{rows}</tbody>\n</table>\n"
        f"<p>{html.escape(table_note(prepared))}</p>\n" + _comparison(summary, "html")
    )


def render_csv(summary: pd.DataFrame) -> str:
    return summary.to_csv(index=False, float_format="%.4f")


# The table's formats (``table --format``), declared torch- and pandas-free in ablation.report.formats for the
# parser; here, in that order, each one's renderer and the file ``write_outputs`` writes it to.
FORMATS = TABLE_FORMATS
_FORMATS = dict(
    zip(
        FORMATS,
        (
            (render_markdown, "table.md"),
            (render_latex, "table.tex"),
            (lambda summary, prepared: render_csv(summary), "table.csv"),
            (render_html, "table.html"),
        ),
        strict=True,
    )
)


def render(summary: pd.DataFrame, prepared: PreparedSweep, fmt: str) -> str:
    """The table in one of ``FORMATS``."""
    return _FORMATS[fmt][0](summary, prepared)


def collect_curves(runs: pd.DataFrame, tracking_uri: str) -> dict[str, list[list[float]]]:
    """Arm description -> validation top-1 error per epoch, one series per finished seed."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    curves: dict[str, list[list[float]]] = {}
    for row in runs.to_dict("records"):
        history = sorted(client.get_metric_history(row[C.RUN_ID], VAL_TOP1_ERR), key=lambda m: (m.step, m.timestamp))
        by_epoch = {m.step: m.value for m in history}  # a resumed epoch logged twice counts once (the last)
        curves.setdefault(row[C.DESCRIPTION], []).append([by_epoch[e] for e in sorted(by_epoch)])
    return curves


def write_outputs(
    summary: pd.DataFrame, prepared: PreparedSweep, out_dir: Path, curves: dict[str, list[list[float]]] | None = None
) -> list[Path]:
    """table.{md,tex,csv,html} and the figures (PNG and PDF) under ``out_dir``: top-1 error bars, learning
    curves per arm (when ``curves`` are given), and cost (GMACs, throughput) against error."""
    # matplotlib: only when the figures are drawn (a table alone never imports it)
    from ablation.report.plots import arm_curves, cost_plot, error_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, (_, name) in _FORMATS.items():
        (out_dir / name).write_text(render(summary, prepared, fmt))
        written.append(out_dir / name)
    done = summary[summary[C.N] > 0]
    title = prepared.experiment.title or prepared.experiment.name
    if len(done):
        bars = pd.DataFrame(
            {
                "description": done[C.DESCRIPTION],
                "mean": done[C.TOP1_MEAN],
                "std": done[C.TOP1_STD],
                "n": done[C.N],
                "paper": done[C.PAPER_TOP1],
            }
        )
        written += error_bars(bars, out_dir / "top1_err.png", title=title, formats=("png", "pdf"))
        written += cost_plot(done, out_dir / "cost.png", title=title)
    if curves:
        written += arm_curves(curves, out_dir / "learning_curves.png", title=title)
    return written


def log_to_parent(prepared: PreparedSweep, tracking_uri: str, paths: list[Path]) -> str | None:
    """Attach the table and figures to the sweep's parent run (under results/); its run id, or None."""
    store = SweepStore(tracking_uri, prepared.experiment)
    parent = store.find_parent(prepared.key)
    if parent is None:
        return None
    for path in paths:
        store.client.log_artifact(parent.info.run_id, str(path), RESULTS_DIR)
    return parent.info.run_id


# ---- a tuned sweep's second table: each arm under the default recipe and under its tuned values


def ranking_changed(comparison: pd.DataFrame) -> bool:
    ranked = comparison.dropna(subset=[C.DEFAULT_TOP1, C.TUNED_TOP1])
    return not ranked[C.DEFAULT_RANK].equals(ranked[C.TUNED_RANK])


def render_comparison(comparison: pd.DataFrame, style: str = "md") -> str:
    """The default-vs-tuned table in markdown (``md``), LaTeX rows (``latex``) or HTML (``html``)."""
    header = ["Description", "Default top-1 (rank)", "Tuned top-1 (rank)", "Tuned - default"]
    label = {"latex": latex_escape, "html": html.escape}.get(style, str)
    rows = []
    for r in comparison.to_dict("records"):
        change = r[C.TUNED_MINUS_DEFAULT]
        rows.append(
            [
                label(r[C.DESCRIPTION]),
                _cell(r[C.DEFAULT_TOP1], r[C.DEFAULT_RANK], r[C.DEFAULT_N]),
                _cell(r[C.TUNED_TOP1], r[C.TUNED_RANK], r[C.TUNED_N]),
                "-" if math.isnan(change) else f"{change:+.2f}",
            ]
        )
    verdict = "The ranking changed with tuning." if ranking_changed(comparison) else "The ranking is the same."
    if style == "latex":
        lines = [r"\begin{tabular}{lrrr}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
        lines += [" & ".join(row) + r" \\" for row in rows]
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", verdict]) + "\n"
    if style == "html":
        head = "".join(f"<th>{h}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>\n<p>{verdict}</p>\n"
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "**Default recipe vs tuned** (mean top-1 error over seeds, %)\n\n" + "\n".join(lines) + f"\n\n{verdict}\n"


def _cell(mean: float, rank: float, n: int) -> str:
    return "-" if math.isnan(mean) else f"{mean:.2f} ({int(rank)}), n={n}"


def write_comparison(comparison: pd.DataFrame, out_dir: Path) -> Path:
    path = out_dir / "recipes.csv"
    comparison.to_csv(path, index=False, float_format="%.4f")
    return path
