"""Kill a tuned sweep anywhere: a rerun finishes with every arm's budget exact, nothing lost, duplicated or changed.

Each scenario SIGKILLs the sweep (``ABLATION_KILL_AT``) at one point of the tuning machinery, on fresh stores, then
runs the same command to the end: between asking a trial and queueing it, mid-epoch of a trial, between telling a
trial PRUNED and closing its run, between a trial's run closing and the storage hearing of it, and in a final run.
Afterwards every arm's study holds exactly ``tune.trials`` trials, all ended; every queued cell has one FINISHED run
and none is left RUNNING; and, since each arm's trials are asked one after another (``tune.parallel: 1``), the
trials' values, states and the tuned values are those of a sweep that was never interrupted.
"""

import shutil
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from mlflow import MlflowClient

from ablation.tracking.names import CONFIG_HASH, PHASE, PHASE_TUNE, RECIPE, RECIPE_TUNED, ROLE_CELL, role_filter
from tests.scheduler.test_plan import tuned_experiment
from tests.support import processes

pytestmark = pytest.mark.slow

TRIALS = 3
KILL_POINTS = [
    "plan.asked@2",  # the second trial asked in its arm's study, not yet queued
    "train.batch@5",  # mid-epoch 2 of the first trial
    "tune.pruned",  # a trial told PRUNED, its run not closed
    "final.finished@2",  # the second trial's run FINISHED in MLflow, the storage not told
    "final.finished@7",  # a final run FINISHED, the storage not told
]


@pytest.fixture(scope="module")
def setting(tiny_npz, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tuned-faults")
    experiment = folder / "exp.yaml"
    extra = "  compare_default: false"
    experiment.write_text(tuned_experiment(tiny_npz, trials=TRIALS, seeds="[0]", extra=extra))
    template, reference = processes.reference_sweep(experiment, folder)
    return experiment, template, _state(reference)


def _state(folder, storage=None):
    """(each arm study's trials as (number, state, params, value), the tuned final runs' lr, the cell runs)."""
    storage = storage or f"sqlite:///{folder / 'sweeps.db'}"
    studies = {}
    for summary in optuna.get_all_study_summaries(storage):
        if ":tune:" in summary.study_name:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            arm = summary.study_name.split(":tune:")[1].split(":")[0]
            studies[arm] = [(t.number, t.state.name, t.params, t.values) for t in study.trials]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL), max_results=1000)
    tuned = sorted(
        (r.data.tags["ablation.arm"], r.data.params["train.lr"])
        for r in runs
        if r.data.tags.get(RECIPE) == RECIPE_TUNED
    )
    return studies, tuned, runs


def test_a_tuned_sweep_killed_anywhere_keeps_every_budget_exact_and_its_results(setting, tmp_path):
    experiment, template, (ref_studies, ref_tuned, ref_runs) = setting
    assert any(state == "PRUNED" for trials in ref_studies.values() for _, state, _, _ in trials)
    folders = {point: tmp_path / point.replace("@", "-") for point in KILL_POINTS}
    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(
            zip(
                KILL_POINTS,
                pool.map(lambda p: processes.kill_and_rerun(experiment, template, folders[p], p), KILL_POINTS),
                strict=True,
            )
        )
    problems = []
    for point, (killed, rerun) in outcomes.items():
        assert processes.was_killed(killed), f"{point} was never reached:\n{killed.log[-3000:]}"
        assert rerun.exitcode == 0, f"after {point}:\n{rerun.log[-3000:]}"
        studies, tuned, runs = _state(folders[point])
        budgets = {arm: len(trials) for arm, trials in studies.items()}
        if budgets != {arm: TRIALS for arm in ref_studies}:
            problems.append(f"{point}: budgets {budgets}")
        if studies != ref_studies:
            problems.append(f"{point}: trials {studies} != {ref_studies}")
        if tuned != ref_tuned:
            problems.append(f"{point}: tuned values {tuned} != {ref_tuned}")
        hashes = [r.data.tags[CONFIG_HASH] for r in runs if r.info.status == "FINISHED"]
        if len(hashes) != len(set(hashes)) or set(hashes) != {r.data.tags[CONFIG_HASH] for r in ref_runs}:
            problems.append(f"{point}: finished runs {sorted(hashes)} differ from the uninterrupted sweep's")
        if any(r.info.status == "RUNNING" for r in runs):
            problems.append(f"{point}: a run was left RUNNING")
        tune_runs = [r for r in runs if r.data.tags.get(PHASE) == PHASE_TUNE and r.info.status == "FINISHED"]
        if len(tune_runs) != len({r.data.tags[CONFIG_HASH] for r in ref_runs if r.data.tags.get(PHASE) == PHASE_TUNE}):
            problems.append(f"{point}: {len(tune_runs)} finished tuning runs")
    assert problems == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_workers_tuning_side_by_side_never_exceed_a_budget(setting, tmp_path, database, request):
    """Two worker processes asking trials of the same arms at once, on one machine's SQLite file or on the
    PostgreSQL server several machines would share (its advisory locks serialise the plan's refills)."""
    experiment, template, (ref_studies, _, _) = setting
    folder = tmp_path / "two"
    shutil.copytree(template, folder)
    storage = f"sqlite:///{folder / 'sweeps.db'}"
    if database == "postgresql":
        storage = request.getfixturevalue("postgres_url")()
    argv = [*processes.sweep_argv(experiment), "--workers", "2", "--storage", storage]
    done = processes.run(argv, folder, folder / "log.txt", processes.ONE_THREAD)
    assert done.exitcode == 0, done.log[-3000:]
    studies, _, runs = _state(folder, storage)
    assert {arm: len(trials) for arm, trials in studies.items()} == {arm: TRIALS for arm in ref_studies}
    assert all(state in ("COMPLETE", "PRUNED") for trials in studies.values() for _, state, _, _ in trials)
    hashes = [r.data.tags[CONFIG_HASH] for r in runs]
    assert len(hashes) == len(set(hashes)) and all(r.info.status == "FINISHED" for r in runs)
