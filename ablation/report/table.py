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

from ablation.core.errors import ConfigError
from ablation.experiment.paper import sources_footnote
from ablation.experiment.prepared import PreparedSweep
from ablation.report import columns as C
from ablation.report.formats import TABLE_FORMATS
from ablation.stats.compare import CORRECTION_NAMES, SeedsDoNotPair, compare_arms, describe, family_size, mean_std
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
    """One row per arm: n, params, GMACs, mean and std of the errors, the comparison with the baseline (the
    experiment's test and correction: ``stats``), and the paper's numbers with our difference to them. The family's
    size is kept in ``summary.attrs["comparisons"]`` for the note."""
    base = baseline_arm(prepared)
    stats = prepared.experiment.stats
    errors = {
        arm.index: dict(zip(mine[C.SEED], mine[C.TOP1], strict=True))
        for arm in prepared.arms
        for mine in [runs[runs[C.ARM] == arm.index]]
    }
    try:
        comparisons = compare_arms(errors, base, test=stats.test, correction=stats.correction)
    except SeedsDoNotPair as exc:
        raise ConfigError(
            "stats.test",
            "paired",
            f"is not allowed for these runs: '{prepared.arms[exc.arm].description}' finished seeds {exc.only_first} "
            f"that the baseline '{prepared.arms[base].description}' did not, and lacks {exc.only_second}; seeds "
            "pair only where every arm finished the same seeds; allowed: welch",
        ) from None
    rows = []
    for arm in prepared.arms:
        mine = runs[runs[C.ARM] == arm.index]
        top1, top5 = mine[C.TOP1].tolist(), mine[C.TOP5].tolist()
        top1_mean, top1_std = mean_std(top1)
        top5_mean, top5_std = mean_std(top5)
        test = comparisons.get(arm.index)
        row = arm.paper_row
        paper_top1 = row.top1 if row else math.nan
        adjusted = stats.correction != "none"
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
                C.VS_BASELINE: describe(test, arm.index == base, stats.alpha, adjusted),
                C.VS_BASELINE_P: test.p if test else math.nan,
                C.DIFF: test.difference if test else math.nan,
                C.DIFF_LOW: test.low if test else math.nan,
                C.DIFF_HIGH: test.high if test else math.nan,
                C.TEST: test.test if test else "",
                C.T: test.t if test else math.nan,
                C.DF: test.df if test else math.nan,
                C.P_ADJUSTED: test.p_adjusted if test else math.nan,
                C.EFFECT: test.effect if test else math.nan,
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
    summary = pd.DataFrame(rows, columns=list(C.SUMMARY_COLUMNS))
    summary.attrs["comparisons"] = family_size(comparisons)
    summary.attrs["stats"] = stats
    return summary


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
    # Text from users and from the paper's records, escaped for the format (the description is escaped by the
    # renderer, which also escapes the header).
    text = {"latex": latex_escape, "html": html.escape}.get(style, str)
    header = ["Description", "n", "Params", "GMACs", "Top-1 err (%)", "Top-5 err (%)", comparison_title(summary)]
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
        cells += [text(r[column]) for column, _ in extra]
        if with_paper:
            cells += [
                text(r[C.PAPER_TOP1_SHOWN]),
                text(r[C.PAPER_TOP5_SHOWN]),
                _num(r[C.DELTA_TOP1_VS_PAPER], "+.2f"),
                text(r[C.PAPER_PARAMS_SHOWN]),
                text(r[C.PAPER_GFLOPS_SHOWN]),
            ]
        body.append(cells)
    return header, body


TEST_NAMES = {"welch": "Welch", "paired": "paired"}
CORRECTION_SHORT = {"holm": "Holm", "bh": "BH"}


def comparison_title(summary: pd.DataFrame) -> str:
    """The comparison column's title: which test and which correction, e.g. "Δ top-1 [95% CI], p (Welch, Holm)"."""
    stats = summary.attrs.get("stats")
    if stats is None:
        return "Δ top-1 [95% CI], p"
    correction = "" if stats.correction == "none" else f", {CORRECTION_SHORT[stats.correction]}"
    return f"Δ top-1 [95% CI], p ({TEST_NAMES[stats.test]}{correction})"


def comparison_note(prepared: PreparedSweep, summary: pd.DataFrame | None) -> str:
    """How to read the comparison column: the test, the correction and the size of its family."""
    stats = prepared.experiment.stats
    base = prepared.arms[baseline_arm(prepared)].description
    family = summary.attrs.get("comparisons", 0) if summary is not None else 0
    test = (
        "Welch's t-test over seeds (unequal variances)"
        if stats.test == "welch"
        else "the paired t-test over seeds (a pair: the same seed in both arms, which fixes their data order and "
        "augmentation)"
    )
    if stats.correction == "none":
        p = f"p not adjusted for the {family} comparisons with the baseline"
    else:
        p = f"p {CORRECTION_NAMES[stats.correction]}-adjusted over the {family} comparisons with the baseline"
    return (
        f"'Δ top-1': the arm's mean top-1 error minus '{base}''s, in points, with its 95% confidence interval, and the "
        f"two-sided p of {test}, {p} (* p < {stats.alpha:g}; raw p, t, df and Hedges' g in table.csv and "
        "table.html). It needs n >= 2 per arm, and three or more seeds to mean much."
    )


def table_note(prepared: PreparedSweep, summary: pd.DataFrame | None = None) -> str:
    """What produced the numbers: dataset, recipe, epochs, seeds, and how to read them."""
    experiment = prepared.experiment
    config = prepared.arms[0].config
    train, data = config.train, config.data
    seeds = experiment.seeds
    identities = sorted({arm.data.identity for arm in prepared.arms if arm.data.identity})
    identity = f", {', '.join(identities)}" if identities else ""
    if isinstance(seeds, list):
        seeds_text = f"seeds {', '.join(map(str, seeds))}"
    elif seeds.until == "sequential":
        seeds_text = (
            f"seeds from {seeds.start}, {seeds.min} per arm, then one more per round to each arm whose difference to "
            f"the baseline is unresolved, and to the baseline, up to {seeds.max}; 'resolved': declared at level "
            f"{seeds.alpha:g} under the repeated looks (the level spent linearly over the looks at n = {seeds.min}.."
            f"{seeds.max} seeds, a Welch interval at each)"
        )
    else:
        seeds_text = (
            f"seeds from {seeds.start}, {seeds.min} per arm, then one more per round to each arm whose difference to "
            f"the baseline has a 95% CI (Welch) containing 0, and to the baseline, up to {seeds.max} (the old rule, "
            "uncorrected for its repeated looks: its 'resolved' declares noise far more often than 5%; see "
            "benchmarks/README.md)"
        )
    tune = experiment.tune
    recipe = "" if tune is None else " (the default recipe; each tuned row trains its 'Tuned values' instead)"
    note = (
        f"Dataset {data.dataset} ({prepared.arms[0].data.image_size} px{identity}); SGD lr {train.lr:g}, momentum "
        f"{train.momentum:g}, weight decay {train.weight_decay:g}, batch {train.batch_size}, {train.epochs} epochs, "
        f"{train.schedule} schedule{recipe}; {seeds_text}. Errors: last epoch, mean ± sample std over "
        "the n seeds that finished ('-': n = 1 has no spread); bold: the lowest mean. "
        + comparison_note(prepared, summary)
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
    return f"**{title}**\n\n" + "\n".join(lines) + f"\n\n{table_note(prepared, summary)}\n" + _comparison(summary, "md")


def _comparison(summary: pd.DataFrame, style: str) -> str:
    """The default-vs-tuned table a tuned sweep's summary carries (``summary.attrs["comparison"]``), or ""."""
    comparison = summary.attrs.get("comparison")
    if comparison is None:
        return ""
    return "\n" + render_comparison(comparison, style)


# Every character LaTeX gives a meaning to, and the symbols the tables and notes print, as LaTeX writes them; mapped
# in one pass (a chain of replacements would escape the braces of an earlier replacement).
LATEX = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$",
    "±": r"$\pm$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "·": r"$\cdot$",
    "→": r"$\rightarrow$",
    "†": r"\textdagger{}",
    "‡": r"\textdaggerdbl{}",
    "–": "--",
    "—": "---",
    "’": "'",
    "…": r"\ldots{}",
}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX typesets it literally: all ten special characters escaped, the tables' symbols mapped."""
    return "".join(LATEX.get(char, char) for char in str(text))


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
    lines += [rf"\par\smallskip\footnotesize {latex_escape(table_note(prepared, summary))}", r"\end{table}"]
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
        f"<p>{html.escape(table_note(prepared, summary))}</p>\n"
        + _comparisons_html(summary)
        + _comparison(summary, "html")
    )


def _comparisons_html(summary: pd.DataFrame) -> str:
    """Every comparison with the baseline in full: difference, interval, test statistic, df, raw and adjusted p,
    standardised effect."""
    header = ["Description", "Test", "Δ top-1", "95% CI", "t", "df", "p (raw)", "p (adjusted)", "Hedges' g"]
    rows = []
    for r in summary.to_dict("records"):
        if not r[C.TEST]:
            continue
        cells = [
            html.escape(r[C.DESCRIPTION]),
            r[C.TEST],
            _num(r[C.DIFF], "+.3f"),
            f"[{_num(r[C.DIFF_LOW], '+.3f')}, {_num(r[C.DIFF_HIGH], '+.3f')}]",
            _num(r[C.T], ".3f"),
            _num(r[C.DF], ".2f"),
            _num(r[C.VS_BASELINE_P], ".4f"),
            _num(r[C.P_ADJUSTED], ".4f"),
            _num(r[C.EFFECT], "+.3f"),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f'<table class="comparisons">\n<thead><tr>{head}</tr></thead>\n<tbody>{"".join(rows)}</tbody>\n</table>\n'


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
    lost = comparison[comparison[C.TUNED_MINUS_DEFAULT] > 0]
    if len(lost):
        names = ", ".join(
            f"{d} ({x:+.2f})" for d, x in zip(lost[C.DESCRIPTION], lost[C.TUNED_MINUS_DEFAULT], strict=True)
        )
        verdict += (
            f" Tuned values lost to the default recipe on the test set for {names}: on the tuning holdout they were "
            "at least as good (the default was each study's first trial), so the holdout, or the trials' epochs, "
            "were too small to tell the recipes apart; read those rows' tuning with care."
        )
    verdict = label(verdict) if style != "md" else verdict
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
