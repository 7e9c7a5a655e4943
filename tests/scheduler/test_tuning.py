"""Each arm's Optuna study: asks that any process reproduces, the budget's bookkeeping, pruning over epochs."""

import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from ablation.experiment.tune import TuneConfig
from ablation.scheduler.queue import open_storage
from ablation.scheduler.tuning import ArmStudy, arm_study_name, derived_seed, make_pruner, pruning_callback
from ablation.tracking.names import EPOCH, VAL_TOP1_ERR
from tests.support.folders import ROOT


def tune(pruner: str = "successive_halving", **extra) -> TuneConfig:
    return TuneConfig.model_validate(
        {
            "trials": 6,
            "epochs": 4,
            "space": {
                "train.lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
                "train.batch_size": {"type": "categorical", "choices": [32, 64]},
            },
            "sampler": {"type": "tpe", "seed": 5, "startup_trials": 2},
            "pruner": {"type": pruner, "min_epochs": 1, "reduction_factor": 2},
            **extra,
        }
    )


def study_in(tmp_path, name="s", arm=0, config=None) -> ArmStudy:
    storage = open_storage(f"sqlite:///{tmp_path / 'sweeps.db'}")
    return ArmStudy(storage, arm_study_name("exp:key:store", arm, name), config or tune(), arm)


def history(*errors: float) -> list[dict]:
    return [{EPOCH: float(i + 1), VAL_TOP1_ERR: e} for i, e in enumerate(errors)]


def ask_and_finish(study: ArmStudy, n: int) -> list[dict]:
    asked = []
    for i in range(n):
        trial = study.ask()
        asked.append(trial.params)
        study.tell(trial, TrialState.COMPLETE, 50.0 - i)
    return asked


def test_the_same_history_gives_the_same_suggestions_in_any_storage(tmp_path):
    first = ask_and_finish(study_in(tmp_path / "a"), 4)
    again = ask_and_finish(study_in(tmp_path / "b"), 4)
    other_arm = ask_and_finish(study_in(tmp_path / "c", arm=1), 4)
    assert first == again
    assert first != other_arm  # each arm's sampler is seeded apart
    assert len({p["train.lr"] for p in first}) == 4  # a new process's sampler does not repeat its first draw


def test_derived_seeds_are_the_same_in_another_process():
    code = "from ablation.scheduler.tuning import derived_seed; print(derived_seed(5, 1, 3))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert int(out.stdout) == derived_seed(5, 1, 3) != derived_seed(5, 1, 4)


def test_best_is_the_lowest_completed_value_the_earliest_of_equals(tmp_path):
    study = study_in(tmp_path)
    values = [30.0, 20.0, None, 20.0]
    for value in values:
        trial = study.ask()
        study.tell(trial, TrialState.PRUNED if value is None else TrialState.COMPLETE, value)
    assert study.best().number == 1
    assert study.tell(study.trial(1), TrialState.COMPLETE, 1.0) is False  # an ended trial is never told again


def pruned_setting(tmp_path, pruner="successive_halving"):
    study = study_in(tmp_path, config=tune(pruner))
    for errors in ((40.0, 30.0, 25.0, 20.0), (38.0, 28.0, 22.0, 18.0)):
        trial = study.ask()
        on_epoch = pruning_callback(study, trial.number)  # as a worker would: the pruner sees each epoch
        for epoch in range(1, len(errors) + 1):
            assert on_epoch(history(*errors[:epoch]), last=epoch == len(errors)) is False
        study.tell(trial, TrialState.COMPLETE, errors[-1])
    return study, study.ask()


def test_a_trial_worse_than_its_rung_is_pruned_and_told_so_at_once(tmp_path):
    study, trial = pruned_setting(tmp_path)
    on_epoch = pruning_callback(study, trial.number)
    assert on_epoch(history(90.0), last=False) is True
    assert study.trial(trial.number).state == TrialState.PRUNED
    assert study.trial(trial.number).intermediate_values == {1: 90.0}
    # A resumed attempt of the same trial stops at once, whatever it would report now.
    assert pruning_callback(study, trial.number)(history(10.0), last=False) is True


def test_a_good_trial_goes_on_and_the_last_epoch_never_prunes(tmp_path):
    study, trial = pruned_setting(tmp_path)
    on_epoch = pruning_callback(study, trial.number)
    assert on_epoch(history(35.0), last=False) is False
    assert on_epoch(history(35.0, 99.0, 99.0, 99.0), last=True) is False
    assert study.trial(trial.number).state == TrialState.RUNNING
    assert study.trial(trial.number).intermediate_values == {1: 35.0, 2: 99.0, 3: 99.0, 4: 99.0}


@pytest.mark.parametrize("kind", ["none", "median", "hyperband"])
def test_every_pruner_kind_reports_and_decides(tmp_path, kind):
    study, trial = pruned_setting(tmp_path, kind)
    stop = pruning_callback(study, trial.number)(history(95.0, 95.0), last=False)
    if kind != "hyperband":  # Hyperband compares within the trial's bracket (by its number's hash), maybe alone
        assert stop is (kind == "median")  # the median pruner stops a trial worse than every finished one
    assert (study.trial(trial.number).state == TrialState.PRUNED) is stop
    assert study.trial(trial.number).intermediate_values == {1: 95.0, 2: 95.0}
    assert isinstance(make_pruner(tune(kind)), optuna.pruners.BasePruner)


def test_the_first_trial_is_the_default_recipe_where_it_lies_in_the_space(tmp_path):
    """So that the chosen values are never worse than the default on the holdout: the default is trial 0."""
    from ablation.experiment.schema import parse_run_config
    from ablation.experiment.search_space import default_point

    config = parse_run_config({"train": {"lr": 0.05, "batch_size": 64}})
    first = default_point(config, tune())
    assert first == {"train.lr": 0.05, "train.batch_size": 64}
    study = study_in(tmp_path)
    trial = study.ask(first=first)
    assert trial.number == 0 and trial.params == first
    second = study.ask(first=first)  # only the first trial
    assert second.number == 1 and second.params != first
    # Outside the space (a range that excludes it, a value not among the choices): no such first trial.
    assert default_point(parse_run_config({"train": {"lr": 0.9, "batch_size": 64}}), tune()) is None
    assert default_point(parse_run_config({"train": {"lr": 0.05, "batch_size": 256}}), tune()) is None


def test_a_default_queued_by_a_worker_that_died_before_asking_is_asked_next(tmp_path):
    from optuna.trial import TrialState as State

    study = study_in(tmp_path)
    first = {"train.lr": 0.05, "train.batch_size": 32}
    study.load().enqueue_trial(first)  # queued, never asked: the worker died
    trial = study.ask(first=first)
    assert trial.params == first and trial.state == State.RUNNING
    assert [t.number for t in study.trials()] == [0]  # not queued twice
