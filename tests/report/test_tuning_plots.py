"""Tuning plots (ablation/report/tuning_plots.py): each arm's study rebuilt in memory from hand-made trial records, and
Optuna's own plots of it saved as files that open, with a note for each plot that was skipped."""

from __future__ import annotations

import re
import warnings

import matplotlib
import optuna
import pytest
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from ablation.experiment.search_space import distributions
from ablation.experiment.tune import TuneConfig
from ablation.report.tuning_plots import TrialRecord, slug, study_from_records, tuning_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
K3, K7, NONE_DONE = "ResNet18 + CBAM (k=3)", "ResNet18 + CBAM (k=7)", "ResNet18 (all pruned)"


@pytest.fixture(scope="module")
def dists():
    tune = TuneConfig(
        trials=6,
        space={
            "train.lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
            "train.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "train.batch_size": {"type": "categorical", "choices": [64, 128]},
        },
    )
    return distributions(tune)


def params(lr: float, wd: float, bs: int) -> dict:
    return {"train.lr": lr, "train.weight_decay": wd, "train.batch_size": bs}


# Arm k=3: four COMPLETE (one with its values as a store gives them back: strings), one PRUNED after epoch 1,
# one FAIL, one RUNNING in the middle of the numbers; listed out of order.
K3_RECORDS = [
    TrialRecord(5, "FAIL", params(0.3, 1e-5, 64), None, {}),
    TrialRecord(0, "COMPLETE", params(0.1, 1e-4, 64), 30.0, {1: 45.0, 2: 36.0, 3: 30.0}),
    TrialRecord(1, "COMPLETE", params(0.02, 5e-4, 128), 34.5, {1: 50.0, 2: 40.0, 3: 34.5}),
    TrialRecord(3, "RUNNING", params(0.05, 2e-4, 64), None, {1: 47.0}),
    TrialRecord(2, "COMPLETE", params(0.2, 2e-5, 64), 28.25, {1: 44.0, 2: 33.0, 3: 28.25}),
    TrialRecord(4, "PRUNED", params(0.45, 1e-3, 128), None, {1: 80.0}),
    TrialRecord(6, "COMPLETE", {"train.lr": "0.08", "train.weight_decay": "3e-4", "train.batch_size": "128"}, 31.0),
]
# Arm k=7: a single COMPLETE trial (no importances), one PRUNED, one FAIL.
K7_RECORDS = [
    TrialRecord(0, "COMPLETE", params(0.1, 1e-4, 64), 29.0, {1: 44.0, 2: 29.0}),
    TrialRecord(1, "PRUNED", params(0.4, 1e-3, 128), None, {1: 75.0}),
    TrialRecord(2, "FAIL", params(0.3, 1e-5, 64), None, {}),
]
# An arm whose trials were all pruned: intermediate values only.
NONE_DONE_RECORDS = [TrialRecord(0, "PRUNED", params(0.4, 1e-3, 128), None, {1: 75.0, 2: 70.0})]


@pytest.fixture(scope="module")
def studies(dists):
    return {
        K3: study_from_records(K3_RECORDS, dists, "k3"),
        K7: study_from_records(K7_RECORDS, dists, "k7"),
        NONE_DONE: study_from_records(NONE_DONE_RECORDS, dists, "none-done"),
    }


@pytest.fixture(scope="module")
def drawn(studies, tmp_path_factory):
    """The plots of all three arms, drawn once: (out_dir, paths, notes, warnings caught, rcParams before)."""
    out_dir = tmp_path_factory.mktemp("tuning") / "figures"
    rc_before = dict(matplotlib.rcParams)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths, notes = tuning_plots(studies, out_dir, title="cifar10-micro, 6 trials per arm")
    return out_dir, paths, notes, caught, rc_before


def test_study_holds_one_trial_per_finished_record_in_number_order(studies):
    study = studies[K3]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trials = study.get_trials()
    assert [t.user_attrs["number"] for t in trials] == [0, 1, 2, 4, 5, 6]  # RUNNING 3 left out
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert [t.value for t in trials] == [30.0, 34.5, 28.25, None, None, 31.0]
    assert trials[0].params == params(0.1, 1e-4, 64)
    assert trials[3].params == params(0.45, 1e-3, 128)
    assert trials[0].intermediate_values == {1: 45.0, 2: 36.0, 3: 30.0}
    assert trials[3].intermediate_values == {1: 80.0}  # what pruning stopped, and when
    assert trials[4].intermediate_values == {}
    # Values a store gives back as strings come back in the distribution's own type.
    assert trials[5].params == params(0.08, 3e-4, 128)
    assert isinstance(trials[5].params["train.batch_size"], int)
    assert study.best_trial.user_attrs["number"] == 2 and study.best_value == 28.25
    assert set(trials[0].distributions) == {"train.lr", "train.weight_decay", "train.batch_size"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (TrialRecord(0, "COMPLETE", params(0.1, 1e-4, 64), None), "needs a finite value"),
        (TrialRecord(0, "WAITING", params(0.1, 1e-4, 64), None), "state 'WAITING'"),
        (TrialRecord(0, "COMPLETE", {"train.momentum": 0.9}, 30.0), r"\['train.momentum'\] are not in the search"),
        (TrialRecord(0, "COMPLETE", params(0.1, 1e-4, 32), 30.0), "train.batch_size: 32 is not one of"),
        (TrialRecord(0, "COMPLETE", params(5.0, 1e-4, 64), 30.0), "study 'bad', trial 0"),  # lr above its high
    ],
)
def test_a_record_optuna_would_refuse_is_a_one_line_error(dists, record, message):
    with pytest.raises(ValueError, match=message):
        study_from_records([record], dists, "bad")


def test_duplicate_trial_numbers_are_refused(dists):
    with pytest.raises(ValueError, match=r"trial number\(s\) \[1\] appear more than once"):
        study_from_records([K7_RECORDS[0], K7_RECORDS[1], TrialRecord(1, "FAIL")], dists, "dup")


def test_plots_are_written_as_png_and_pdf_per_arm_and_kind(drawn):
    out_dir, paths, _, _, _ = drawn
    expected = [
        out_dir / f"tuning_{kind}_{slug(label)}.{fmt}"
        for label, kinds in (
            (K3, ("history", "intermediate", "importance")),
            (K7, ("history", "intermediate")),
            (NONE_DONE, ("intermediate",)),
        )
        for kind in kinds
        for fmt in ("png", "pdf")
    ]
    assert paths == expected
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in expected)
    for path in paths:
        head = path.read_bytes()[:8]
        assert head == PNG_MAGIC if path.suffix == ".png" else head.startswith(b"%PDF"), path.name
        assert path.stat().st_size > 1000, path.name


def test_skipped_plots_are_noted_with_their_reason(drawn):
    _, _, notes, _, _ = drawn
    assert notes == [
        f"{K7}: no importance plot (needs >= 2 completed trials, has 1)",
        f"{NONE_DONE}: no history plot (no completed trial)",
        f"{NONE_DONE}: no importance plot (needs >= 2 completed trials, has 0)",
    ]


def test_no_figure_left_open_no_style_leaked_no_experimental_warning(drawn):
    import matplotlib.pyplot as plt

    _, _, _, caught, rc_before = drawn
    assert plt.get_fignums() == []
    # Optuna's plt.style.use("ggplot") would restyle every later figure of the table command.
    assert {k: v for k, v in matplotlib.rcParams.items() if rc_before.get(k) != v} == {}
    assert not [w for w in caught if issubclass(w.category, ExperimentalWarning)]


def test_importances_skipped_when_no_parameter_varied(dists, tmp_path):
    same = params(0.1, 1e-4, 64)
    study = study_from_records(
        [TrialRecord(0, "COMPLETE", same, 30.0), TrialRecord(1, "COMPLETE", same, 31.0)], dists, "flat"
    )
    paths, notes = tuning_plots({"flat": study}, tmp_path)
    assert notes == [
        "flat: no intermediate plot (no trial reported an intermediate value)",
        "flat: no importance plot (no parameter took more than one value over the completed trials)",
    ]
    assert [p.name for p in paths] == [f"tuning_history_{slug('flat')}.png", f"tuning_history_{slug('flat')}.pdf"]


def test_slugs_are_filesystem_safe_and_distinct():
    labels = [K3, K7, "ResNet18 + CBAM (k=3) ", "ResNet18+CBAM(k=3)", "resnet18 + cbam (k=3)", "a/b", "a\\b", "", "…"]
    slugs = [slug(label) for label in labels]
    assert len(set(slugs)) == len(labels)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", s) for s in slugs), slugs
    assert slug(K3).startswith("resnet18-cbam-k-3-") and slug(K3) == slug(K3)  # readable, and stable across runs
    assert len(slug("x" * 500)) <= 48 + 9
