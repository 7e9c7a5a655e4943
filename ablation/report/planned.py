"""The table of a tuned or seed-rule sweep, read from the results record alone (``ablation.tracking.results``).

A planned sweep's final runs are not known from the experiment file alone (their values are each arm's best
trial's, their seeds as many as the rule needed). Every cell run carries the spec the plan made it from, so the
table rebuilds each final cell from its run's spec (``ablation.experiment.grid.cell_of_spec``) and keeps the runs
whose key is that cell's: what any table does, matched by the cell's key. It never opens the sweep's Optuna storage:
the table is the same whatever became of it. Per recipe (the experiment's default values, each arm's tuned values)
it is the usual summary: mean ± std over seeds, Welch against the baseline. The tuned rows add the values each
arm's tuning chose, its trials (how many pruned or failed, from the trial runs and the parent run's record of the
trials that ended untrained), the device-hours its tuning took, and how far the seed rule got; when both recipes
ran, a second table puts them side by side, with each arm's rank under each.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient

from ablation.experiment.grid import Cell, cell_of_spec
from ablation.experiment.prepared import PreparedSweep
from ablation.experiment.search_space import distributions
from ablation.experiment.tune import SeedRule
from ablation.report import columns as C
from ablation.report.table import collect_runs, summarize, write_comparison
from ablation.report.tuning_plots import TrialRecord, study_from_records, tuning_plots
from ablation.stats.seed_rule import verdicts
from ablation.tracking.mlflow_store import SweepStore
from ablation.tracking.names import (
    DEVICE,
    EPOCH_TIME,
    FINAL_TRAIN_TIME,
    PHASE_FINAL,
    PHASE_TUNE,
    RECIPE_DEFAULT,
    RECIPE_TUNED,
)
from ablation.tracking.results import EPOCH_OBJECTIVE, CellRecord, cell_records, untrained_trials

RUNNING = "RUNNING"


@dataclasses.dataclass
class PlannedView:
    """A planned sweep as its table shows it."""

    main: PreparedSweep  # the rows the table reports: the tuned recipe if the sweep tuned, else the default
    summary: pd.DataFrame  # table.summarize of ``main``, plus the tuning and seed-rule columns
    runs: pd.DataFrame  # table.collect_runs of ``main``
    comparison: pd.DataFrame | None  # default vs tuned per arm, when both ran
    studies: dict[str, optuna.Study]  # arm label -> its study rebuilt from its trial records, for Optuna's plots


@dataclasses.dataclass
class _Trial:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL or RUNNING
    record: CellRecord | None  # None: ended FAIL without a run


def _cells(prepared: PreparedSweep, records: list[CellRecord], phase: str, recipe: str | None = None) -> list[Cell]:
    """The cells of ``phase`` (and ``recipe``) the records hold, each rebuilt from its spec and kept only where the
    run's key is the rebuilt cell's (a run of other data, or of another experiment, is not this sweep's)."""
    cells: dict[str, Cell] = {}
    tune = prepared.experiment.tune
    for record in records:
        spec = record.spec
        if spec is None or spec.phase != phase or (recipe is not None and spec.recipe != recipe):
            continue
        if not 0 <= spec.arm < len(prepared.arms):
            continue
        cell = cell_of_spec(prepared.arms[spec.arm], spec, tune)
        if cell.hash == record.key:
            cells.setdefault(cell.hash, cell)
    return list(cells.values())


def _tuned_cells_run_as_default(
    prepared: PreparedSweep, records: list[CellRecord], trials: dict[int, list[_Trial]]
) -> list[Cell]:
    """The tuned final cells of the arms whose tuning chose the default recipe's own values (its first trial is that
    recipe, so a common outcome): such a cell's config, and so its key, is the default cell's of the same seed, and
    the queue ran it once, as that cell. Rebuilt from the default runs, so the tuned row counts them: without this it
    showed no run at all. Every seed the default recipe ran counts, as runs of exactly the tuned config."""
    tune = prepared.experiment.tune
    cells = []
    for cell in _cells(prepared, records, PHASE_FINAL, RECIPE_DEFAULT):
        arm = cell.spec.arm
        best = _best(trials.get(arm, []), tune) if _tuning_ended(trials.get(arm, []), tune) else None
        if best is None:
            continue
        spec = dataclasses.replace(cell.spec, recipe=RECIPE_TUNED, values=best)
        tuned = cell_of_spec(prepared.arms[arm], spec, tune)
        if tuned.hash == cell.hash:
            cells.append(tuned)
    return cells


def _trials(prepared: PreparedSweep, records: list[CellRecord], parent) -> dict[int, list[_Trial]]:
    """Each arm's tuning trials by number: how each ended (its run's tune state), running, or ended untrained."""
    keys = {cell.hash for cell in _cells(prepared, records, PHASE_TUNE)}
    by_arm: dict[int, dict[int, _Trial]] = {arm.index: {} for arm in prepared.arms}
    for record in records:  # oldest first: a trial's newest run wins
        if record.key not in keys or record.spec.trial is None:
            continue
        state = record.tune_state or (RUNNING if record.status == RUNNING else "FAIL")
        by_arm[record.spec.arm][record.spec.trial] = _Trial(record.spec.trial, state, record)
    for arm, numbers in untrained_trials(parent).items():
        for number in numbers:
            if arm in by_arm and number not in by_arm[arm]:
                by_arm[arm][number] = _Trial(number, "FAIL", None)
    return {arm: sorted(trials.values(), key=lambda t: t.number) for arm, trials in by_arm.items()}


def planned_view(prepared: PreparedSweep, tracking_uri: str) -> PlannedView | None:
    """The view of the sweep from ``tracking_uri``'s results, or None when the store holds none of its runs."""
    store = SweepStore(tracking_uri, prepared.experiment)
    if not store.exists:
        return None
    records = cell_records(store)
    parent = store.find_parent(prepared.key)
    if parent is None and not records:
        return None
    groups = {
        recipe: dataclasses.replace(prepared, cells=_cells(prepared, records, PHASE_FINAL, recipe))
        for recipe in (RECIPE_DEFAULT, RECIPE_TUNED)
    }
    trials = _trials(prepared, records, parent) if prepared.experiment.tune is not None else {}
    if trials:
        tuned = groups[RECIPE_TUNED].cells
        known = {cell.hash for cell in tuned}
        shared = [c for c in _tuned_cells_run_as_default(prepared, records, trials) if c.hash not in known]
        groups[RECIPE_TUNED] = dataclasses.replace(groups[RECIPE_TUNED], cells=[*tuned, *shared])
    main_recipe = RECIPE_TUNED if prepared.experiment.tune is not None else RECIPE_DEFAULT
    frames = {recipe: collect_runs(group, tracking_uri) for recipe, group in groups.items()}
    summaries = {recipe: summarize(groups[recipe], frames[recipe]) for recipe in groups}
    main = groups[main_recipe]
    summary = summaries[main_recipe].copy()
    studies: dict[str, optuna.Study] = {}
    if prepared.experiment.tune is not None:
        tuning = _tuning_columns(prepared, trials, store)
        for column in (C.TUNED_VALUES, C.TUNING_TRIALS, C.TUNING_COST):
            summary[column] = [tuning[arm.index][column] for arm in prepared.arms]
        studies = _studies(prepared, trials, store)
    if isinstance(prepared.experiment.seeds, SeedRule):
        summary[C.SEEDS_RULE] = _rule_column(prepared, groups[main_recipe], frames[main_recipe])
    comparison = None
    if prepared.experiment.tune is not None and groups[RECIPE_DEFAULT].cells:
        comparison = _comparison(summaries[RECIPE_DEFAULT], summaries[RECIPE_TUNED])
        summary.attrs["comparison"] = comparison  # the renderers put it under the main table
    return PlannedView(main, summary, frames[main_recipe], comparison, studies)


def planned_outputs(view: PlannedView, out_dir: Path) -> list[Path]:
    """What a planned sweep adds to the table's files: recipes.csv and Optuna's plots per arm (PNG + PDF)."""
    written = [write_comparison(view.comparison, out_dir)] if view.comparison is not None else []
    if view.studies:
        paths, notes = tuning_plots(view.studies, out_dir, view.main.experiment.title or view.main.experiment.name)
        written += paths
        for note in notes:
            print(f"[table] {note}", file=sys.stderr)
    return written


def _best(trials: list[_Trial], tune) -> tuple[tuple[str, object], ...] | None:
    """The values of the arm's best trial: the lowest objective of its COMPLETE trials (the earliest on a tie), as
    its study picks it."""
    complete = [t for t in trials if t.state == "COMPLETE" and t.record is not None]
    if not complete:
        return None
    best = min(complete, key=lambda t: (t.record.objective, t.number))
    values = dict(best.record.spec.values)
    return tuple((key, values[key]) for key in tune.space)


def _tuning_ended(trials: list[_Trial], tune) -> bool:
    return len(trials) >= tune.trials and all(t.state != RUNNING for t in trials)


def _tuning_columns(prepared: PreparedSweep, trials: dict[int, list[_Trial]], store: SweepStore) -> dict[int, dict]:
    """Per arm: the tuned values, 'trials (pruned, failed)', and the device-hours of its trials' cells (a cell
    two trials share, the same values suggested twice, trained once and counts once)."""
    tune = prepared.experiment.tune
    client = MlflowClient(store.tracking_uri)
    out = {}
    for arm in prepared.arms:
        mine = trials[arm.index]
        states = [t.state for t in mine]
        pruned, failed, running = states.count("PRUNED"), states.count("FAIL"), states.count(RUNNING)
        text = f"{len(mine)} ({pruned} pruned" + (f", {failed} failed" if failed else "") + ")"
        if running:
            text += f", {running} running"
        seconds, devices = 0.0, set()
        runs = {t.record.key: t.record for t in mine if t.record is not None}
        for record in runs.values():
            devices.add(store.client.get_run(record.run_id).data.tags.get(DEVICE, "cpu"))
            time_s = record.metrics.get(FINAL_TRAIN_TIME)
            if time_s is None:  # a trial that failed or was pruned: the epochs it ran
                time_s = sum(m.value for m in client.get_metric_history(record.run_id, EPOCH_TIME))
            seconds += time_s or 0.0
        values = _best(mine, tune) if _tuning_ended(mine, tune) else None
        out[arm.index] = {
            C.TUNED_VALUES: ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in values) if values else "-",
            C.TUNING_TRIALS: text,
            "seconds": seconds,
            "devices": devices,
        }
    # One unit for the whole column: hours, or minutes when no arm's tuning took a tenth of an hour (a demo).
    devices = set().union(*(row.pop("devices") for row in out.values()))
    kind = {frozenset({"cuda"}): "GPU", frozenset({"cpu"}): "CPU"}.get(frozenset(devices), "device")
    hours = max((row["seconds"] for row in out.values()), default=0.0) >= 360
    for row in out.values():
        seconds = row.pop("seconds")
        row[C.TUNING_COST] = f"{seconds / 3600:.2f} {kind}-h" if hours else f"{seconds / 60:.2f} {kind}-min"
    return out


def _studies(prepared: PreparedSweep, trials: dict[int, list[_Trial]], store: SweepStore) -> dict[str, optuna.Study]:
    """Each arm's study, rebuilt in memory from its trial records (``tuning_plots.study_from_records``): the
    objective per epoch each trial reported (its holdout error), its values and how it ended."""
    client = MlflowClient(store.tracking_uri)
    space = distributions(prepared.experiment.tune)
    studies = {}
    for arm in prepared.arms:
        records = []
        for trial in trials[arm.index]:
            record = trial.record
            intermediate = {}
            if record is not None:
                history = sorted(client.get_metric_history(record.run_id, EPOCH_OBJECTIVE), key=lambda m: m.timestamp)
                intermediate = {m.step: m.value for m in history}  # a resumed epoch logged twice counts once
            records.append(
                TrialRecord(
                    number=trial.number,
                    state=trial.state,
                    params=dict(record.spec.values) if record is not None else {},
                    value=record.objective if record is not None and trial.state == "COMPLETE" else None,
                    intermediate=intermediate,
                )
            )
        studies[arm.description] = study_from_records(records, space, arm.description)
    return studies


def _rule_column(prepared: PreparedSweep, main: PreparedSweep, runs: pd.DataFrame) -> list[str]:
    """Per arm, how far the seed rule got: its verdict over the finished seeds, every seed the plan queued that has
    a run (in any state) counted as enqueued."""
    results = {arm.index: runs.loc[runs[C.ARM] == arm.index, C.TOP1].tolist() for arm in prepared.arms}
    enqueued: dict[int, list[int]] = {arm.index: [] for arm in prepared.arms}
    for cell in main.cells:
        enqueued[cell.spec.arm].append(cell.spec.seed)
    found = verdicts(results, enqueued, prepared.baseline, prepared.experiment.seeds)
    return [
        "baseline" if arm.index == prepared.baseline else found[arm.index].describe() if arm.index in found else "-"
        for arm in prepared.arms
    ]


def _comparison(default: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean top-1 error and rank under each recipe, and tuned - default."""
    frame = pd.DataFrame(
        {
            C.DESCRIPTION: default[C.DESCRIPTION],
            C.DEFAULT_TOP1: default[C.TOP1_MEAN],
            C.DEFAULT_N: default[C.N],
            C.TUNED_TOP1: tuned[C.TOP1_MEAN],
            C.TUNED_N: tuned[C.N],
        }
    )
    frame[C.DEFAULT_RANK] = frame[C.DEFAULT_TOP1].rank(method="min")
    frame[C.TUNED_RANK] = frame[C.TUNED_TOP1].rank(method="min")
    frame[C.TUNED_MINUS_DEFAULT] = frame[C.TUNED_TOP1] - frame[C.DEFAULT_TOP1]
    return frame[list(C.COMPARISON_COLUMNS)]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
