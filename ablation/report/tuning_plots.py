"""Optuna's own plots of each arm's tuning, drawn from the trial records the results store holds.

After a sweep the table command rebuilds each arm's study in memory from its trial records (``study_from_records``:
the plots then show what MLflow recorded, whatever Optuna storage the sweep ran on or whether it still exists) and
draws, per arm, Optuna's optimisation history, intermediate values (what pruning stopped, and when) and parameter
importances with ``optuna.visualization.matplotlib`` (``tuning_plots``).

Optuna draws through pyplot, unlike ``ablation.report.plots``. A process that has not chosen a backend (the table
command, a headless node) gets Agg; one that has (a notebook) keeps its own, and nothing is shown there either:
the figures are drawn with interactive mode off and closed once saved, whatever happens in between. Optuna's
``plt.style.use("ggplot")`` would restyle every later figure of the process, so its rcParams are restored after
each plot. Files are saved as ``ablation.report.plots.save_figure`` saves them (150 dpi PNG, TrueType fonts in the PDF)
with a tight bounding box: the history's legend sits outside its axes.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from ablation.report.plots import save_figure

STATES = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}
RUNNING = "RUNNING"
KINDS = ("history", "intermediate", "importance")
FORMATS = ("png", "pdf")
OBJECTIVE_LABEL = "holdout top-1 error (%)"
_SLUG_CHARS = 48
_TITLES = {
    "history": "Optimisation history",
    "intermediate": "Holdout error per epoch (pruned trials end early)",
    "importance": "Parameter importances",
}


@dataclass(frozen=True)
class TrialRecord:
    """One tuning trial of an arm as the results store holds it."""

    number: int  # the trial's number in its arm's study
    state: str  # "COMPLETE", "PRUNED", "FAIL" or "RUNNING"
    params: dict[str, Any] = field(default_factory=dict)  # dotted key -> value
    value: float | None = None  # the objective (holdout top-1 error, %) for COMPLETE
    intermediate: dict[int, float] = field(default_factory=dict)  # epoch -> holdout top-1 error reported so far


# --------------------------------------------------------------------------------------------------------------
# Records -> study
# --------------------------------------------------------------------------------------------------------------


def _param_value(dist: BaseDistribution, value: Any) -> Any:
    """``value`` in the distribution's own type: a store may give back "0.1" for 0.1, or "64" for the choice 64."""
    if isinstance(dist, CategoricalDistribution):
        if value in dist.choices:
            return value
        matches = [c for c in dist.choices if str(c) == str(value)]
        if len(matches) == 1:
            return matches[0]
        raise ValueError(f"{value!r} is not one of the choices {list(dist.choices)}")
    return dist.to_external_repr(dist.to_internal_repr(value))


def _frozen_trial(record: TrialRecord, dists: dict[str, BaseDistribution], name: str) -> FrozenTrial:
    where = f"study {name!r}, trial {record.number}"
    state = STATES.get(str(record.state).upper())
    if state is None:
        raise ValueError(f"{where}: state {record.state!r} is not one of {[*STATES, RUNNING]}")
    unknown = sorted(set(record.params) - set(dists))
    if unknown:
        raise ValueError(f"{where}: parameter(s) {unknown} are not in the search space {list(dists)}")
    params, used = {}, {}
    for key, value in record.params.items():
        try:
            params[key] = _param_value(dists[key], value)
        except ValueError as exc:
            raise ValueError(f"{where}: parameter {key}: {exc}") from None
        used[key] = dists[key]
    value = None
    if state == TrialState.COMPLETE:
        if record.value is None or not math.isfinite(float(record.value)):
            raise ValueError(f"{where}: a COMPLETE trial needs a finite value (it has {record.value!r})")
        value = float(record.value)
    try:
        return optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions=used,
            intermediate_values={int(step): float(v) for step, v in record.intermediate.items()},
            # Kept as an attribute: the study renumbers its trials 0, 1, ... and RUNNING records leave gaps.
            user_attrs={"number": record.number},
        )
    except ValueError as exc:  # e.g. a value outside its distribution's range
        raise ValueError(f"{where}: {exc}") from None


def study_from_records(records: list[TrialRecord], dists: dict[str, BaseDistribution], name: str) -> optuna.Study:
    """An in-memory study (minimize) holding one finished trial per record, in number order.

    RUNNING records are left out (a plot of them would show an unfinished trial as if it were done); PRUNED and
    FAIL ones keep their intermediate values, with no value. The study numbers its trials 0, 1, ...; each keeps
    its record's number as the user attribute ``number``. A record that Optuna would not accept (an unknown state
    or parameter, a value outside its distribution, a COMPLETE trial without a finite value, two records with the
    same number) raises a ValueError that names the study and the trial.
    """
    numbers = [r.number for r in records]
    duplicated = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicated:
        raise ValueError(f"study {name!r}: trial number(s) {duplicated} appear more than once")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))  # no "A new study created" per arm
    try:
        study = optuna.create_study(storage=None, study_name=name, direction="minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for record in sorted(records, key=lambda r: r.number):
        if str(record.state).upper() == RUNNING:
            continue
        study.add_trial(_frozen_trial(record, dists, name))
    return study


# --------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------


def slug(label: str) -> str:
    """A filesystem-safe name for an arm's label: its words in lower case (at most 48 characters) and 8 hex
    digits of the label's SHA-256, so labels that differ only in case or punctuation get different names."""
    words = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:_SLUG_CHARS].strip("-") or "arm"
    return f"{words}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"


def _pyplot() -> Any:
    """pyplot, on Agg unless the process chose a backend of its own (a notebook keeps its inline one)."""
    try:
        chosen = matplotlib.get_backend(auto_select=False)
    except TypeError:  # matplotlib < 3.10 resolves the backend only when asked for it
        chosen = matplotlib.rcParams._get_backend_or_none()
    if chosen is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]


def _varied(trials: list[FrozenTrial]) -> list[str]:
    """The parameters that took more than one value over ``trials``, in the order they first appear."""
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    return [k for k in names if len({t.params[k] for t in trials if k in t.params}) > 1]


def _skip_reason(kind: str, study: optuna.Study) -> str | None:
    """Why ``kind`` would be an empty or meaningless plot for ``study``, or None if it is worth drawing."""
    completed = _completed(study)
    if kind == "history":
        return None if completed else "no completed trial"
    if kind == "intermediate":
        reported = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
        return None if reported else "no trial reported an intermediate value"
    if len(completed) < 2:
        return f"needs >= 2 completed trials, has {len(completed)}"
    if not _varied(completed):
        return "no parameter took more than one value over the completed trials"
    if len({t.value for t in completed}) < 2:
        return "every completed trial scored the same"
    return None


def _draw(kind: str, study: optuna.Study) -> Any:
    """Optuna's matplotlib plot of ``kind`` for ``study``: its Axes."""
    from optuna.visualization import matplotlib as optuna_mpl

    if kind == "history":
        ax = optuna_mpl.plot_optimization_history(study, target_name=OBJECTIVE_LABEL)
        ax.set_ylabel(OBJECTIVE_LABEL)
    elif kind == "intermediate":
        ax = optuna_mpl.plot_intermediate_values(study)
        ax.set_xlabel("epoch")
        ax.set_ylabel(OBJECTIVE_LABEL)
    else:
        # Only the parameters that varied: one that never did has nothing to explain.
        ax = optuna_mpl.plot_param_importances(study, params=_varied(_completed(study)), target_name=OBJECTIVE_LABEL)
    return ax


def _plot_one(
    plt: Any, kind: str, study: optuna.Study, label: str, title: str, path: Path
) -> tuple[list[Path], str | None]:
    """Draw and save one plot; return the paths written, or a note of why none were. Every figure the plot opened
    is closed, whether it was saved or not."""
    reason = _skip_reason(kind, study)
    if reason:
        return [], f"{label}: no {kind} plot ({reason})"
    before = set(plt.get_fignums())
    try:
        # rc_context undoes Optuna's plt.style.use("ggplot"); savefig.bbox makes room for the outside legend.
        with matplotlib.rc_context({"savefig.bbox": "tight"}), plt.ioff():
            try:
                ax = _draw(kind, study)
            except (ValueError, RuntimeError) as exc:  # the importance evaluator's refusals (e.g. zero variance)
                return [], f"{label}: no {kind} plot (Optuna: {exc})"
            heading = f"{_TITLES[kind]}: {label}"
            ax.set_title("", loc="left")  # Optuna's own heading of the importances, in the place of ours
            ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=10)
            return save_figure(ax.figure, path, FORMATS), None
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)


def tuning_plots(studies: dict[str, optuna.Study], out_dir: Path, title: str = "") -> tuple[list[Path], list[str]]:
    """Per arm (``studies`` maps its table label to its study): the optimisation history, the intermediate values
    and the parameter importances, each as ``out_dir/tuning_<kind>_<slug>.png`` and ``.pdf`` (kind: history,
    intermediate, importance; slug: ``slug(label)``). Returns (the paths written, one line per plot skipped and
    why: no completed trial for a history, no intermediate value reported, or for importances fewer than two
    completed trials, no parameter that varied, or one score for all)."""
    out_dir = Path(out_dir)
    slugs: dict[str, str] = {}
    for label in studies:
        name = slug(label)
        if name in slugs.values():  # a SHA-256 prefix collision: never overwrite another arm's plots
            raise ValueError(f"arm labels {label!r} and {next(k for k, v in slugs.items() if v == name)!r} clash")
        slugs[label] = name
    plt = _pyplot()
    written: list[Path] = []
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"optuna\.visualization\.matplotlib\.", category=ExperimentalWarning)
        for label, study in studies.items():
            for kind in KINDS:
                paths, note = _plot_one(plt, kind, study, label, title, out_dir / f"tuning_{kind}_{slugs[label]}")
                written.extend(paths)
                if note:
                    notes.append(note)
    return written, notes
