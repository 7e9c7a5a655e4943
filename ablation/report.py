"""``runner.py table``: the paper-style table of a sweep, read back from MLflow.

Description | Params | GMACs | Top-1 err (%) | Top-5 err (%), as mean +- std over seeds with n, one row per arm
in the experiment's order, with the paper's printed numbers beside ours when the experiment names a paper table.
Errors are the last epoch's (the best epoch is chosen on the validation set itself, an optimistic pick). The
standard deviation is the sample one (ddof=1); with n = 1 there is none, and the table shows "-", not a number.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ablation.mlflow_store import HASH, SweepStore
from ablation.sweep import PreparedSweep

RUN_METRICS = {
    "top1_err": "final/top1_err_last",
    "top5_err": "final/top5_err_last",
    "top1_err_best": "final/top1_err_best",
    "params": "final/params",
    "gmacs": "final/gmacs",
    "img_per_s": "throughput/img_per_s",
    "train_time_s": "final/train_time_s",
}


def collect_runs(prepared: PreparedSweep, tracking_uri: str) -> pd.DataFrame:
    """One row per finished cell of the experiment (matched by config hash), with its final metrics."""
    store = SweepStore(tracking_uri, prepared.experiment)
    by_hash = {cell.hash: cell for cell in prepared.cells}
    rows = []
    for run in store.runs("cell"):
        cell = by_hash.get(run.data.tags.get(HASH))
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


def summarize(prepared: PreparedSweep, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: n, params, GMACs, mean and std of the errors, and the paper's numbers."""
    rows = []
    for arm in prepared.arms:
        mine = runs[runs["arm"] == arm.index]
        row = arm.paper_row
        rows.append(
            {
                "description": arm.description,
                "n": len(mine),
                "params": mine["params"].iloc[0] if len(mine) else math.nan,
                "gmacs": mine["gmacs"].iloc[0] if len(mine) else math.nan,
                "top1_err_mean": mine["top1_err"].mean() if len(mine) else math.nan,
                "top1_err_std": mine["top1_err"].std(ddof=1) if len(mine) > 1 else math.nan,
                "top5_err_mean": mine["top5_err"].mean() if len(mine) else math.nan,
                "top5_err_std": mine["top5_err"].std(ddof=1) if len(mine) > 1 else math.nan,
                "img_per_s_mean": mine["img_per_s"].mean() if len(mine) else math.nan,
                "paper_top1_err": row.top1 if row else math.nan,
                "paper_top5_err": row.top5 if row else math.nan,
                "paper_params_m": row.params_m if row and row.params_m else math.nan,
                "paper_gflops": row.gflops if row and row.gflops else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _mean_std(mean: float, std: float, plus_minus: str = " ± ") -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f}{plus_minus}{std:.2f}"


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def display_rows(summary: pd.DataFrame, with_paper: bool, latex: bool = False) -> tuple[list[str], list[list[str]]]:
    pm = r" $\pm$ " if latex else " ± "
    header = ["Description", "n", "Params", "GMACs", "Top-1 err (%)", "Top-5 err (%)"]
    if with_paper:
        header += ["Paper top-1", "Paper top-5", "Paper params", "Paper GFLOPs"]
    body = []
    for r in summary.itertuples(index=False):
        cells = [
            r.description,
            str(r.n),
            "-" if math.isnan(r.params) else f"{r.params / 1e6:.2f}M",
            _num(r.gmacs, ".3f"),
            _mean_std(r.top1_err_mean, r.top1_err_std, pm),
            _mean_std(r.top5_err_mean, r.top5_err_std, pm),
        ]
        if with_paper:
            cells += [
                _num(r.paper_top1_err, ".2f"),
                _num(r.paper_top5_err, ".2f"),
                "-" if math.isnan(r.paper_params_m) else f"{r.paper_params_m:.2f}M",
                _num(r.paper_gflops, ".3f"),
            ]
        body.append(cells)
    return header, body


def table_note(prepared: PreparedSweep) -> str:
    """What produced the numbers: dataset, recipe, epochs, seeds, and how to read them."""
    config = prepared.arms[0].config
    train, data = config.train, config.data
    seeds = prepared.experiment.seeds
    note = (
        f"Dataset {data.dataset} ({prepared.arms[0].data.image_size} px); SGD lr {train.lr:g}, momentum "
        f"{train.momentum:g}, weight decay {train.weight_decay:g}, batch {train.batch_size}, {train.epochs} epochs, "
        f"{train.schedule} schedule; seeds {', '.join(map(str, seeds))}. Errors: last epoch, mean ± sample std over "
        "the n seeds that finished ('-': n = 1 has no spread)."
    )
    if prepared.experiment.paper:
        note += " Paper columns: the numbers the paper prints (ImageNet-1K, 224 px), for reference."
    return note


def render_markdown(summary: pd.DataFrame, prepared: PreparedSweep) -> str:
    header, body = display_rows(summary, bool(prepared.experiment.paper))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    title = prepared.experiment.title or prepared.experiment.name
    return f"**{title}**\n\n" + "\n".join(lines) + f"\n\n{table_note(prepared)}\n"


def _latex_escape(text: str) -> str:
    for raw, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(raw, escaped)
    return text


def render_latex(summary: pd.DataFrame, prepared: PreparedSweep) -> str:
    header, body = display_rows(summary, bool(prepared.experiment.paper), latex=True)
    spec = "l" + "r" * (len(header) - 1)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(prepared.experiment.title or prepared.experiment.name)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join([_latex_escape(row[0]), *row[1:]]) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\smallskip\footnotesize {_latex_escape(table_note(prepared))}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_csv(summary: pd.DataFrame) -> str:
    return summary.to_csv(index=False, float_format="%.4f")


def write_outputs(summary: pd.DataFrame, prepared: PreparedSweep, out_dir: Path) -> list[Path]:
    """table.md, table.tex, table.csv and the bar chart (PNG and PDF) under ``out_dir``."""
    from ablation.plots import error_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("table.md", render_markdown(summary, prepared)),
        ("table.tex", render_latex(summary, prepared)),
        ("table.csv", render_csv(summary)),
    ):
        (out_dir / name).write_text(text)
        written.append(out_dir / name)
    done = summary[summary["n"] > 0]
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
        title = prepared.experiment.title or prepared.experiment.name
        written += error_bars(bars, out_dir / "top1_err.png", title=title, formats=("png", "pdf"))
    return written
