"""The table of a tuned or seed-rule sweep: which cells it ran comes from its state, what they scored from MLflow.

A planned sweep's final runs are not known from the experiment file alone (their values are each arm's best
trial's, their seeds as many as the rule needed), so the table reads which cells the sweep queued from its
storage (the queue and each arm's study, as ``runner.py status`` does) and each cell's results from the tracking
store, matched by the cell's key as any table is. Per recipe (the experiment's default values, each arm's tuned
values) it is the usual summary: mean ± std over seeds, Welch against the baseline. The tuned rows add the values
each arm's tuning chose, its trials (how many pruned or failed), the device-hours its tuning took, and how far
the seed rule got; when both recipes ran, a second table puts them side by side, with each arm's rank under each.
"""

from __future__ import annotations

import dataclasses
import html
import math
import sys
from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient
from optuna.trial import TrialState

from ablation.mlflow_store import SweepStore
from ablation.plan import SweepPlan
from ablation.prepared import PreparedSweep
from ablation.queue import CELL
from ablation.report import collect_runs, latex_escape, summarize
from ablation.seed_rule import verdicts
from ablation.sweep_state import find_sweep
from ablation.tracking_names import (
    DEVICE,
    EPOCH_TIME,
    FINAL_TRAIN_TIME,
    PHASE_FINAL,
    PHASE_TUNE,
    RECIPE_DEFAULT,
    RECIPE_TUNED,
)
from ablation.tune_config import SeedRule


@dataclasses.dataclass
class PlannedView:
    """A planned sweep as its table shows it."""

    main: PreparedSweep  # the rows the table reports: the tuned recipe if the sweep tuned, else the default
    summary: pd.DataFrame  # report.summarize of ``main``, plus the tuning and seed-rule columns
    runs: pd.DataFrame  # report.collect_runs of ``main``
    comparison: pd.DataFrame | None  # default vs tuned per arm, when both ran
    studies: dict[str, optuna.Study]  # arm label -> its study, for Optuna's plots


def _group(prepared: PreparedSweep, plan: SweepPlan, entries, recipe: str) -> PreparedSweep:
    """The sweep's final cells of one recipe as a sweep of their own (arms keep their index and label)."""
    cells = [plan.cell(e.spec) for e in entries if e.spec.phase == PHASE_FINAL and e.spec.recipe == recipe]
    return dataclasses.replace(prepared, cells=cells)


def planned_view(prepared: PreparedSweep, storage_url: str, tracking_uri: str) -> PlannedView | None:
    """The view of the sweep, or None when ``storage_url`` holds no state of it for this tracking store."""
    found = find_sweep(prepared, storage_url, tracking_uri)
    if found is None:
        return None
    queue, store = found
    plan = SweepPlan(prepared, say=lambda line: None)
    entries = plan.entries(queue)
    recipes = {e.spec.recipe for e in entries if e.spec.phase == PHASE_FINAL}
    main_recipe = RECIPE_TUNED if prepared.experiment.tune is not None else RECIPE_DEFAULT
    groups = {recipe: _group(prepared, plan, entries, recipe) for recipe in (RECIPE_DEFAULT, RECIPE_TUNED)}
    frames = {recipe: collect_runs(group, tracking_uri) for recipe, group in groups.items()}
    summaries = {recipe: summarize(groups[recipe], frames[recipe]) for recipe in groups}
    main = groups[main_recipe]
    summary = summaries[main_recipe].copy()
    studies: dict[str, optuna.Study] = {}
    if prepared.experiment.tune is not None:
        tuning = _tuning_columns(prepared, plan, queue, store, entries)
        for column in ("tuned_values", "tuning_trials", "tuning_cost"):
            summary[column] = [tuning[arm.index][column] for arm in prepared.arms]
        studies = {arm.description: plan.study(queue, arm).load() for arm in prepared.arms}
    if isinstance(prepared.experiment.seeds, SeedRule):
        summary["seeds_rule"] = _rule_column(prepared, plan, entries, main_recipe, frames[main_recipe])
    comparison = None
    if prepared.experiment.tune is not None and RECIPE_DEFAULT in recipes:
        comparison = _comparison(summaries[RECIPE_DEFAULT], summaries[RECIPE_TUNED])
        summary.attrs["comparison"] = comparison  # the renderers put it under the main table
    return PlannedView(main, summary, frames[main_recipe], comparison, studies)


def planned_outputs(view: PlannedView, out_dir: Path) -> list[Path]:
    """What a planned sweep adds to the table's files: recipes.csv and Optuna's plots per arm (PNG + PDF)."""
    from ablation.tuning_plots import tuning_plots

    written = [write_comparison(view.comparison, out_dir)] if view.comparison is not None else []
    if view.studies:
        paths, notes = tuning_plots(view.studies, out_dir, view.main.experiment.title or view.main.experiment.name)
        written += paths
        for note in notes:
            print(f"[table] {note}", file=sys.stderr)
    return written


def _tuning_columns(prepared, plan: SweepPlan, queue, store: SweepStore, entries) -> dict[int, dict[str, str]]:
    """Per arm: the tuned values, 'trials (pruned, failed)', and the device-hours of its trials' cells (a cell
    two trials share, the same values suggested twice, trained once and counts once)."""
    client = MlflowClient(store.tracking_uri) if store.exists else None
    out = {}
    for arm in prepared.arms:
        study = plan.study(queue, arm)
        trials = study.trials()
        states = [t.state for t in trials]
        pruned, failed = states.count(TrialState.PRUNED), states.count(TrialState.FAIL)
        running = sum(not s.is_finished() for s in states)
        text = f"{len(trials)} ({pruned} pruned" + (f", {failed} failed" if failed else "") + ")"
        if running:
            text += f", {running} running"
        seconds, devices = 0.0, set()
        hashes = {
            e.trial.user_attrs.get(CELL) for e in entries if e.spec.phase == PHASE_TUNE and e.spec.arm == arm.index
        }
        for key in hashes:
            run = store.find_cell(key) if key else None
            if run is None:
                continue
            devices.add(run.data.tags.get(DEVICE, "cpu"))
            time_s = run.data.metrics.get(FINAL_TRAIN_TIME)
            if time_s is None and client is not None:  # a failed trial: the epochs it ran
                time_s = sum(m.value for m in client.get_metric_history(run.info.run_id, EPOCH_TIME))
            seconds += time_s or 0.0
        values = plan.best_values(study) if plan.tuning_ended(study) else None
        out[arm.index] = {
            "tuned_values": ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in values) if values else "-",
            "tuning_trials": text,
            "seconds": seconds,
            "devices": devices,
        }
    # One unit for the whole column: hours, or minutes when no arm's tuning took a tenth of an hour (a demo).
    devices = set().union(*(row.pop("devices") for row in out.values()))
    kind = {frozenset({"cuda"}): "GPU", frozenset({"cpu"}): "CPU"}.get(frozenset(devices), "device")
    hours = max((row["seconds"] for row in out.values()), default=0.0) >= 360
    for row in out.values():
        seconds = row.pop("seconds")
        row["tuning_cost"] = f"{seconds / 3600:.2f} {kind}-h" if hours else f"{seconds / 60:.2f} {kind}-min"
    return out


def _rule_column(prepared, plan: SweepPlan, entries, recipe: str, runs: pd.DataFrame) -> list[str]:
    results = {arm.index: runs.loc[runs["arm"] == arm.index, "top1_err"].tolist() for arm in prepared.arms}
    enqueued: dict[int, list[int]] = {arm.index: [] for arm in prepared.arms}
    for e in entries:
        if e.spec.phase == PHASE_FINAL and e.spec.recipe == recipe:
            enqueued[e.spec.arm].append(e.spec.seed)
    found = verdicts(results, enqueued, prepared.baseline, plan.rule)
    return [
        "baseline" if arm.index == prepared.baseline else found[arm.index].describe() if arm.index in found else "-"
        for arm in prepared.arms
    ]


def _comparison(default: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean top-1 error and rank under each recipe, and tuned - default."""
    frame = pd.DataFrame(
        {
            "description": default["description"],
            "default_top1_err": default["top1_err_mean"],
            "default_n": default["n"],
            "tuned_top1_err": tuned["top1_err_mean"],
            "tuned_n": tuned["n"],
        }
    )
    frame["default_rank"] = frame["default_top1_err"].rank(method="min")
    frame["tuned_rank"] = frame["tuned_top1_err"].rank(method="min")
    frame["tuned_minus_default"] = frame["tuned_top1_err"] - frame["default_top1_err"]
    return frame


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def ranking_changed(comparison: pd.DataFrame) -> bool:
    ranked = comparison.dropna(subset=["default_top1_err", "tuned_top1_err"])
    return not ranked["default_rank"].equals(ranked["tuned_rank"])


def render_comparison(comparison: pd.DataFrame, style: str = "md") -> str:
    """The default-vs-tuned table in markdown (``md``), LaTeX rows (``latex``) or HTML (``html``)."""
    header = ["Description", "Default top-1 (rank)", "Tuned top-1 (rank)", "Tuned - default"]
    label = {"latex": latex_escape, "html": html.escape}.get(style, str)
    rows = []
    for r in comparison.itertuples(index=False):
        rows.append(
            [
                label(r.description),
                _cell(r.default_top1_err, r.default_rank, r.default_n),
                _cell(r.tuned_top1_err, r.tuned_rank, r.tuned_n),
                "-" if math.isnan(r.tuned_minus_default) else f"{r.tuned_minus_default:+.2f}",
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
