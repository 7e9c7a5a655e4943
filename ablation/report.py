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

from ablation.mlflow_store import SweepStore
from ablation.names import TABLE_FORMATS
from ablation.paper import sources_footnote
from ablation.prepared import PreparedSweep
from ablation.stats import describe_test, mean_std, welch
from ablation.tracking_names import (
    CONFIG_HASH,
    FINAL_GMACS,
    FINAL_PARAMS,
    FINAL_TOP1_ERR_BEST,
    FINAL_TOP1_ERR_LAST,
    FINAL_TOP5_ERR_LAST,
    FINAL_TRAIN_TIME,
    RESULTS_DIR,
    ROLE_CELL,
    THROUGHPUT,
    VAL_TOP1_ERR,
)

# Column of the runs frame -> the run's metric (a run's metrics hold each one's last value: for the throughput,
# the last epoch's).
RUN_METRICS = {
    "top1_err": FINAL_TOP1_ERR_LAST,
    "top5_err": FINAL_TOP5_ERR_LAST,
    "top1_err_best": FINAL_TOP1_ERR_BEST,
    "params": FINAL_PARAMS,
    "gmacs": FINAL_GMACS,
    "img_per_s": THROUGHPUT,
    "train_time_s": FINAL_TRAIN_TIME,
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
                "arm": cell.arm.index,
                "description": cell.arm.description,
                "seed": cell.seed,
                "run_id": run.info.run_id,
                **{name: metrics.get(key, math.nan) for name, key in RUN_METRICS.items()},
            }
        )
    columns = ["arm", "description", "seed", "run_id", *RUN_METRICS]
    frame = pd.DataFrame(rows, columns=columns)
    # Two finished runs of one cell (e.g. a cell rerun by hand): keep the newest, never count a seed twice.
    return frame.drop_duplicates(subset=["arm", "seed"], keep="first").sort_values(["arm", "seed"], ignore_index=True)


def baseline_arm(prepared: PreparedSweep) -> int:
    """The row significance is tested against: the paper's baseline row if the table has one, else the first."""
    return prepared.baseline


def summarize(prepared: PreparedSweep, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: n, params, GMACs, mean and std of the errors, the test against the baseline, and the
    paper's numbers with our difference to them."""
    base = baseline_arm(prepared)
    base_top1 = runs.loc[runs["arm"] == base, "top1_err"].tolist()
    rows = []
    for arm in prepared.arms:
        mine = runs[runs["arm"] == arm.index]
        top1, top5 = mine["top1_err"].tolist(), mine["top5_err"].tolist()
        top1_mean, top1_std = mean_std(top1)
        top5_mean, top5_std = mean_std(top5)
        test = None if arm.index == base else welch(top1, base_top1)
        row = arm.paper_row
        paper_top1 = row.top1 if row else math.nan
        rows.append(
            {
                "description": arm.description,
                "n": len(mine),
                "params": mine["params"].iloc[0] if len(mine) else math.nan,
                "gmacs": mine["gmacs"].iloc[0] if len(mine) else math.nan,
                "top1_err_mean": top1_mean,
                "top1_err_std": top1_std,
                "top5_err_mean": top5_mean,
                "top5_err_std": top5_std,
                "img_per_s_mean": mine["img_per_s"].mean() if len(mine) else math.nan,
                "vs_baseline": describe_test(test, arm.index == base),
                "vs_baseline_p": test.p if test else math.nan,
                "paper_top1_err": paper_top1,
                "paper_top5_err": row.top5 if row else math.nan,
                "delta_top1_vs_paper": top1_mean - paper_top1,
                "paper_params_m": row.params_m if row and row.params_m else math.nan,
                "paper_gflops": row.gflops if row and row.gflops else math.nan,
                # As a table prints them: the source's mark, and a disputed number's other reading.
                "paper_top1_shown": row.shown("top1", ".2f") if row else "-",
                "paper_top5_shown": row.shown("top5", ".2f") if row else "-",
                "paper_params_shown": row.shown("params_m", ".2f", "M") if row else "-",
                "paper_gflops_shown": row.shown("gflops", ".3f") if row else "-",
            }
        )
    return pd.DataFrame(rows)


# Columns a tuned or seed-rule sweep's summary adds (``ablation.planned_report``), shown after the test column.
EXTRA_COLUMNS = (
    ("tuned_values", "Tuned values"),
    ("tuning_trials", "Trials (pruned)"),
    ("tuning_cost", "Tuning cost"),
    ("seeds_rule", "Seeds (rule)"),
)


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
    extra = [(column, title) for column, title in EXTRA_COLUMNS if column in summary.columns]
    header += [title for _, title in extra]
    if with_paper:
        header += ["Paper top-1", "Paper top-5", "Δ top-1", "Paper params", "Paper GFLOPs"]
    best1 = summary["top1_err_mean"].min(skipna=True)
    best5 = summary["top5_err_mean"].min(skipna=True)
    body = []
    for r in summary.itertuples(index=False):
        top1 = _mean_std(r.top1_err_mean, r.top1_err_std, pm)
        top5 = _mean_std(r.top5_err_mean, r.top5_err_std, pm)
        cells = [
            r.description,
            str(r.n),
            "-" if math.isnan(r.params) else f"{r.params / 1e6:.2f}M",
            _num(r.gmacs, ".3f"),
            bold.format(top1) if r.top1_err_mean == best1 else top1,
            bold.format(top5) if r.top5_err_mean == best5 else top5,
            r.vs_baseline if r.n else "-",
        ]
        cells += [str(getattr(r, column)) for column, _ in extra]
        if with_paper:
            cells += [
                r.paper_top1_shown,
                r.paper_top5_shown,
                _num(r.delta_top1_vs_paper, "+.2f"),
                r.paper_params_shown,
                r.paper_gflops_shown,
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
    from ablation.planned_report import render_comparison

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


# The table's formats (``runner.py table --format``), declared torch- and pandas-free in ablation.names for the
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
    for row in runs.itertuples(index=False):
        history = sorted(client.get_metric_history(row.run_id, VAL_TOP1_ERR), key=lambda m: (m.step, m.timestamp))
        by_epoch = {m.step: m.value for m in history}  # a resumed epoch logged twice counts once (the last)
        curves.setdefault(row.description, []).append([by_epoch[e] for e in sorted(by_epoch)])
    return curves


def write_outputs(
    summary: pd.DataFrame, prepared: PreparedSweep, out_dir: Path, curves: dict[str, list[list[float]]] | None = None
) -> list[Path]:
    """table.{md,tex,csv,html} and the figures (PNG and PDF) under ``out_dir``: top-1 error bars, learning
    curves per arm (when ``curves`` are given), and cost (GMACs, throughput) against error."""
    from ablation.plots import arm_curves, cost_plot, error_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, (_, name) in _FORMATS.items():
        (out_dir / name).write_text(render(summary, prepared, fmt))
        written.append(out_dir / name)
    done = summary[summary["n"] > 0]
    title = prepared.experiment.title or prepared.experiment.name
    if len(done):
        bars = pd.DataFrame(
            {
                "description": done["description"],
                "mean": done["top1_err_mean"],
                "std": done["top1_err_std"],
                "n": done["n"],
                "paper": done["paper_top1_err"],
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
