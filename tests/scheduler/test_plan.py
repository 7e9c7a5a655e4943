"""A tuned sweep end to end on real images, real SQLite stores: every arm's budget, pruning, the final runs of the
best values, the seed rule, the MLflow layout, and the table's new columns."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from ablation.experiment.prepared import prepare_sweep
from ablation.experiment.schema import load_experiment
from ablation.experiment.spec import CellSpec
from ablation.report import columns as C
from ablation.report.planned import planned_view
from ablation.report.table import render
from ablation.scheduler.plan import SweepPlan
from ablation.scheduler.queue import SPEC
from ablation.scheduler.state import find_sweep
from ablation.stats.seed_rule import next_round
from ablation.tracking.names import (
    ARM,
    CELL_SPEC,
    CONFIG_HASH,
    DEVICE,
    FINAL_TOP1_ERR_LAST,
    PHASE,
    PHASE_FINAL,
    PHASE_TUNE,
    RECIPE,
    RECIPE_DEFAULT,
    RECIPE_TUNED,
    ROLE_CELL,
    TUNE_PRUNED_AT,
    TUNE_STATE,
    TUNE_STUDY,
    TUNE_TRIAL,
    VAL_TOP1_ERR,
    role_filter,
)
from tests.support.tiny import sweep_in

pytestmark = pytest.mark.slow

TRIALS, TUNE_EPOCHS = 4, 3


def tuned_experiment(npz, trials: int = TRIALS, seeds: str = "{min: 2, max: 3}", extra: str = "") -> str:
    return f"""
name: tiny
title: Tiny tuned sweep
base:
  model: {{arch: resnet18, width: 0.125, stem: cifar, attention: {{type: cbam, reduction: 4}}}}
  data: {{dataset: npz, root: {npz}, augment: false}}
  train: {{epochs: 2, batch_size: 20, lr: 0.05, schedule: cosine}}
grid:
  - model.attention: [{{type: none}}]
  - model.attention.order: [channel-first]
seeds: {seeds}
tune:
  trials: {trials}
  epochs: {TUNE_EPOCHS}
  holdout: 0.2
  space:
    train.lr: {{type: float, low: 1.0e-4, high: 0.5, log: true}}
    train.label_smoothing: {{type: categorical, choices: [0.0, 0.1]}}
  sampler: {{type: tpe, seed: 3, startup_trials: 2}}
  pruner: {{type: successive_halving, min_epochs: 1, reduction_factor: 2}}
{extra}
"""


@pytest.fixture(scope="module")
def swept(tiny_npz, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tuned")
    path = folder / "exp.yaml"
    path.write_text(tuned_experiment(tiny_npz))
    prepared = prepare_sweep(load_experiment(path))
    report, options = sweep_in(folder / "run", prepared)
    client = MlflowClient(options.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL), max_results=1000)
    queue, _ = find_sweep(prepared, options.storage_url, options.tracking_uri)
    return prepared, report, options, queue, client, runs


def arm_studies(prepared, queue):
    plan = SweepPlan(prepared)
    return {arm.index: plan.study(queue, arm) for arm in prepared.arms}


def test_every_arm_gets_exactly_the_same_budget_and_every_trial_ends(swept):
    prepared, report, _, queue, _, _ = swept
    assert report.failed == {} and report.pending == 0
    for study in arm_studies(prepared, queue).values():
        trials = study.trials()
        assert len(trials) == TRIALS
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        # Each trial's intermediate values are its holdout errors, one per epoch it ran.
        for t in trials:
            assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
            assert len(t.intermediate_values) == (
                TUNE_EPOCHS if t.state == TrialState.COMPLETE else len(t.intermediate_values)
            )


def test_pruned_trials_stop_early_and_are_recorded_as_pruned(swept):
    prepared, _, _, queue, client, runs = swept
    pruned = [t for s in arm_studies(prepared, queue).values() for t in s.trials() if t.state == TrialState.PRUNED]
    assert pruned, "the budget and seeds of this fixture are chosen so that successive halving prunes"
    tune_runs = {(r.data.tags[ARM], r.data.tags[TUNE_TRIAL]): r for r in runs if r.data.tags.get(PHASE) == PHASE_TUNE}
    for study in arm_studies(prepared, queue).values():
        for trial in study.trials():
            run = tune_runs[(str(study.arm_index), str(trial.number))]
            assert run.info.status == "FINISHED"
            assert run.data.tags[TUNE_STATE] == trial.state.name
            assert run.data.tags[TUNE_STUDY] == study.name
            epochs = [m.step for m in client.get_metric_history(run.info.run_id, VAL_TOP1_ERR)]
            if trial.state == TrialState.PRUNED:
                assert len(epochs) < TUNE_EPOCHS  # stopped early: fewer epochs trained than a trial has
                assert run.data.metrics[TUNE_PRUNED_AT] == len(epochs)
                assert "pruned at epoch" in run.info.run_name
            else:
                assert epochs == list(range(1, TUNE_EPOCHS + 1))
                assert run.data.metrics[FINAL_TOP1_ERR_LAST] == pytest.approx(trial.values[0])


def test_the_final_runs_train_each_arms_best_values_on_the_whole_training_set(swept):
    prepared, _, _, queue, _, runs = swept
    studies = arm_studies(prepared, queue)
    finals = [r for r in runs if r.data.tags.get(PHASE) == PHASE_FINAL and r.data.tags.get(RECIPE) == RECIPE_TUNED]
    assert finals
    for run in finals:
        study = studies[int(run.data.tags[ARM])]
        best = min((t for t in study.trials() if t.state == TrialState.COMPLETE), key=lambda t: (t.values[0], t.number))
        assert float(run.data.params["train.lr"]) == pytest.approx(best.params["train.lr"])
        assert float(run.data.params["train.label_smoothing"]) == best.params["train.label_smoothing"]
        assert run.data.params["train.epochs"] == "2"  # the final recipe's epochs, not the trials'
        assert run.data.params["data.holdout"] == "null"  # the whole training set, scored on the test set
        spec = CellSpec.from_json(run.data.tags[CELL_SPEC])
        assert SweepPlan(prepared).cell(spec).hash == run.data.tags[CONFIG_HASH]
    # Every tuning trial trained on the holdout split and was scored there, never on the test set.
    for run in runs:
        if run.data.tags.get(PHASE) == PHASE_TUNE:
            assert run.data.params["data.holdout.fraction"] == "0.2"
            assert "holdout" in run.inputs.dataset_inputs[0].tags[0].value
            assert run.data.tags[DEVICE] == "cpu"


def test_the_seed_rule_added_seeds_only_while_a_difference_was_unresolved(swept):
    prepared, _, _, queue, _, _ = swept
    plan = SweepPlan(prepared)
    entries = plan.entries(queue)
    for recipe in (RECIPE_DEFAULT, RECIPE_TUNED):
        finals = [e for e in entries if e.spec.phase == PHASE_FINAL and e.spec.recipe == recipe]
        enqueued = {a.index: sorted(e.spec.seed for e in finals if e.spec.arm == a.index) for a in prepared.arms}
        results = {a.index: [e.value for e in finals if e.spec.arm == a.index] for a in prepared.arms}
        assert all(2 <= len(seeds) <= 3 for seeds in enqueued.values())
        assert all(seeds == list(range(len(seeds))) for seeds in enqueued.values())
        # The rule, asked again on what the sweep ended with, has nothing left to add.
        assert next_round(results, enqueued, prepared.baseline, plan.rule) == {}


def test_runs_are_tagged_so_the_dashboard_filters_tuning_from_final_runs(swept):
    _, _, _, _, client, runs = swept
    experiment = client.get_experiment_by_name("tiny")
    tune = client.search_runs([experiment.experiment_id], f"tags.`{PHASE}` = '{PHASE_TUNE}'", max_results=1000)
    final = client.search_runs([experiment.experiment_id], f"tags.`{PHASE}` = '{PHASE_FINAL}'", max_results=1000)
    assert len(tune) == 2 * TRIALS and len(tune) + len(final) == len(runs)
    assert {r.data.tags[RECIPE] for r in final} == {RECIPE_DEFAULT, RECIPE_TUNED}


def test_every_queued_cell_ran_once_into_one_finished_run(swept):
    _, _, _, queue, _, runs = swept
    hashes = [r.data.tags[CONFIG_HASH] for r in runs]
    assert len(hashes) == len(set(hashes))
    assert all(r.info.status == "FINISHED" for r in runs)
    queued = {t.user_attrs["cell_hash"] for t in queue.trials() if SPEC in t.user_attrs}
    assert queued == set(hashes)


def test_the_table_shows_tuned_values_trials_cost_the_rule_and_default_vs_tuned(swept):
    prepared, _, options, queue, _, _ = swept
    view = planned_view(prepared, options.tracking_uri)
    summary = view.summary
    studies = arm_studies(prepared, queue)
    for arm, row in zip(prepared.arms, summary.to_dict("records"), strict=True):
        states = [t.state for t in studies[arm.index].trials()]
        assert row[C.TUNING_TRIALS].startswith(f"{TRIALS} ({states.count(TrialState.PRUNED)} pruned")
        assert row[C.TUNED_VALUES].startswith("lr=") and "label_smoothing=" in row[C.TUNED_VALUES]
        assert row[C.TUNING_COST].endswith(("CPU-h", "CPU-min")) and float(row[C.TUNING_COST].split()[0]) > 0
        assert row[C.N] >= 2 and not math.isnan(row[C.TOP1_MEAN])
    assert summary.loc[prepared.baseline, C.SEEDS_RULE] == "baseline"
    text = render(summary, view.main, "md")
    for header in ("Tuned values", "Trials (pruned)", "Tuning cost", "Seeds (rule)", "Default recipe vs tuned"):
        assert header in text
    assert "the test set was never read while tuning" in text
    assert set(view.comparison["description"]) == {arm.description for arm in prepared.arms}
    assert render(summary, view.main, "latex").count(r"\begin{tabular}") == 2
    assert isinstance(next(iter(view.studies.values())), optuna.Study)
    # Read from the results alone, the tuning agrees with what the scheduler's studies hold: every trial, how each
    # ended, its values and score, and the values the plan trained the tuned runs with.
    plan = SweepPlan(prepared)
    for arm, row in zip(prepared.arms, summary.to_dict("records"), strict=True):
        real = studies[arm.index].trials()
        rebuilt = view.studies[arm.description].trials
        assert [(t.state, t.params, t.values) for t in rebuilt] == [(t.state, t.params, t.values) for t in real]
        best = plan.best_values(studies[arm.index])
        assert row[C.TUNED_VALUES] == ", ".join(
            f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
            for k, v in best
        )


def test_the_table_reads_the_results_alone_and_is_the_same_without_the_sweep_storage(swept, tmp_path):
    """Reporting never asks the scheduler: with the sweep's Optuna storage deleted, the table is the same."""
    import shutil

    prepared, _, options, _, _, _ = swept
    before = render(planned_view(prepared, options.tracking_uri).summary, prepared, "csv")
    moved = tmp_path / "sweeps.db.moved"
    storage = Path(options.storage_url.removeprefix("sqlite:///"))
    shutil.move(storage, moved)
    try:
        view = planned_view(prepared, options.tracking_uri)
        assert render(view.summary, view.main, "csv") == before
    finally:
        shutil.move(moved, storage)


def test_status_lists_every_queued_cell_with_its_phase(swept):
    from ablation.scheduler.status import render_status, sweep_status

    prepared, _, options, _, _, runs = swept
    frame = sweep_status(prepared, options.storage_url, options.tracking_uri)
    # A tuned cell whose values are the default recipe's is the default cell (one key): both list its one run.
    assert set(frame["mlflow_run_id"]) == {run.info.run_id for run in runs} and set(frame["state"]) == {"done"}
    phases = set(frame["phase"])
    assert {"final (default)", "final (tuned)", "tune #0", f"tune #{TRIALS - 1}"} <= phases
    assert f"{len(frame)} cells: 0 pending, 0 running, {len(frame)} done" in render_status(frame)


def test_a_deleted_sweep_storage_is_rebuilt_from_mlflow_without_training_again(swept, tmp_path, capsys):
    import shutil

    prepared, _, options, queue, _, _ = swept
    source = options.tracking_uri.removeprefix("sqlite:///")
    folder = tmp_path / "again"
    folder.mkdir()
    shutil.copy(source, folder / "mlflow.db")  # the results store, without the sweep's storage
    before = {arm: s.trials() for arm, s in arm_studies(prepared, queue).items()}
    report, again = sweep_in(folder, prepared)
    assert report.trained_now == 0 and report.failed == {}
    assert "already holds finished runs" in capsys.readouterr().err
    rebuilt, _ = find_sweep(prepared, again.storage_url, again.tracking_uri)
    after = {arm: s.trials() for arm, s in arm_studies(prepared, rebuilt).items()}
    for arm, trials in before.items():  # the same suggestions, told the same results the runs hold
        assert [(t.params, t.state, t.values) for t in trials] == [(t.params, t.state, t.values) for t in after[arm]]


def test_a_seed_rule_without_tuning_adds_seeds_to_the_default_recipe_until_resolved(tiny_npz, tmp_path):
    from tests.support.tiny import tiny_experiment

    grid = "  - model.attention: [{type: none}]\n  - model.attention.order: [channel-first]\n"
    path = tmp_path / "exp.yaml"
    path.write_text(tiny_experiment(tiny_npz, grid, seeds="{min: 2, max: 4}", epochs=1))
    prepared = prepare_sweep(load_experiment(path))
    report, options = sweep_in(tmp_path / "run", prepared)
    assert report.failed == {} and report.pending == 0
    view = planned_view(prepared, options.tracking_uri)
    runs = view.runs
    enqueued = {arm.index: sorted(runs.loc[runs["arm"] == arm.index, "seed"]) for arm in prepared.arms}
    results = {arm.index: runs.loc[runs[C.ARM] == arm.index, C.TOP1].tolist() for arm in prepared.arms}
    assert all(seeds == list(range(len(seeds))) and 2 <= len(seeds) <= 4 for seeds in enqueued.values())
    assert next_round(results, enqueued, prepared.baseline, prepared.experiment.seeds) == {}
    verdict = view.summary.loc[1, C.SEEDS_RULE]
    assert verdict.startswith(("resolved at n=", "unresolved at max n=4"))
    assert "Tuned values" not in render(view.summary, view.main, "md")
    assert report.total == len(runs) == sum(len(s) for s in enqueued.values())


def test_diverged_trials_count_in_the_budget_and_an_arm_with_no_completed_trial_has_no_tuned_row(
    tiny_npz, tmp_path, capsys
):
    # Every trial of the plain arm diverges (lr 1e6): its budget ends with FAIL trials, no tuned row, and the other
    # arm's tuning, final runs and the table go on.
    text = tuned_experiment(tiny_npz, trials=2, seeds="[0]", extra="  compare_default: false")
    text = text.replace(
        "train.lr: {type: float, low: 1.0e-4, high: 0.5, log: true}", "train.lr: {type: categorical, choices: [1.0e6]}"
    ).replace("choices: [0.0, 0.1]", "choices: [0.0]")  # one point: an arm's second trial repeats its first
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    prepared = prepare_sweep(load_experiment(path))
    report, options = sweep_in(tmp_path / "run", prepared)
    # One cell per arm trained and diverged; its second trial, suggested the same values, ended FAIL untrained.
    assert len(report.failed) == 2
    err = capsys.readouterr().err
    assert "none of its 2 trials completed (all pruned or failed); it has no tuned row" in err
    view = planned_view(prepared, options.tracking_uri)
    assert list(view.summary[C.TUNED_VALUES]) == ["-", "-"]
    assert list(view.summary[C.TUNING_TRIALS]) == ["2 (0 pruned, 2 failed)"] * 2
    queue, _ = find_sweep(prepared, options.storage_url, options.tracking_uri)
    for study in arm_studies(prepared, queue).values():
        assert [t.state for t in study.trials()] == [TrialState.FAIL, TrialState.FAIL]
    again, _ = sweep_in(tmp_path / "run", prepared, retry_failed=True)
    assert again.trained_now == 0  # diverged trials ended in their budgets: --retry-failed leaves them
    assert "diverged tuning trials ended in their budgets; not retried" in capsys.readouterr().err


@pytest.mark.parametrize("interleaving", ["completed after the plan looked", "another worker queued it"])
def test_the_last_worker_still_queues_what_the_plan_needs_next(tiny_npz, tmp_path, monkeypatch, interleaving):
    # A one-arm, one-trial tuned sweep: when its trial ends, the plan must queue the arm's tuned final run. The
    # worker's last cell completes on its finalizer thread, so a refill can look while it is still in flight.
    # Forced here: the trial completes only once a refill has looked and added nothing, and that refill returns
    # only after it completed (the worker then finds nothing unfinished). In the second case, the refill that
    # queues the final run reports 0 too, as one does when another worker's refill queued it first. Either
    # way the worker must end up running the final run, not end the sweep as if it were complete.
    import threading
    import time

    from ablation.scheduler.queue import SweepQueue

    looked, hidden = threading.Event(), []
    refill, complete = SweepPlan.refill, SweepQueue.complete

    def complete_once_a_refill_looked(self, claim, top1_err):
        looked.wait(60)
        looked.clear()
        complete(self, claim, top1_err)

    def refill_racing_the_completion(self, queue, store=None):
        in_flight = queue.unfinished()
        added = refill(self, queue, store)
        finals = [e for e in self.entries(queue) if e.spec.phase == PHASE_FINAL]
        if added and finals and interleaving == "another worker queued it" and not hidden:
            hidden.append(finals)
            return 0
        if not added and in_flight:
            looked.set()
            deadline = time.monotonic() + 60
            while queue.unfinished() and time.monotonic() < deadline:
                time.sleep(0.05)
        return added

    monkeypatch.setattr(SweepQueue, "complete", complete_once_a_refill_looked)
    monkeypatch.setattr(SweepPlan, "refill", refill_racing_the_completion)
    path = tmp_path / "exp.yaml"
    text = tuned_experiment(tiny_npz, trials=1, seeds="[0]", extra="  compare_default: false")
    path.write_text(text.replace("  - model.attention.order: [channel-first]\n", ""))  # one arm, one trial
    prepared = prepare_sweep(load_experiment(path))
    assert len(prepared.arms) == 1
    report, options = sweep_in(tmp_path / "run", prepared)
    assert report.failed == {} and report.pending == 0
    assert report.trained_now == 2  # the trial, then the tuned final run
    assert len(planned_view(prepared, options.tracking_uri).runs) == 1
    assert bool(hidden) == (interleaving == "another worker queued it")


def test_an_arm_whose_tuning_keeps_the_default_recipe_reports_the_default_runs_as_tuned(tiny_npz, tmp_path):
    """Tuning may choose the default recipe itself (its first trial is that recipe): the tuned cells are then the
    default cells (one config, one key), run once. The tuned row counts those runs, and the comparison shows the
    two recipes equal; before, the tuned row had no run at all. A budget of one trial makes it so here."""
    text = tuned_experiment(tiny_npz, trials=1, seeds="[0, 1]")
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    prepared = prepare_sweep(load_experiment(path))
    report, options = sweep_in(tmp_path / "run", prepared)
    assert report.failed == {} and report.pending == 0
    view = planned_view(prepared, options.tracking_uri)
    for row in view.summary.to_dict("records"):
        assert row[C.TUNED_VALUES] == "lr=0.05, label_smoothing=0" and row[C.N] == 2, row
    for row in view.comparison.to_dict("records"):
        assert row[C.TUNED_N] == row[C.DEFAULT_N] == 2 and row[C.TUNED_MINUS_DEFAULT] == 0, row
