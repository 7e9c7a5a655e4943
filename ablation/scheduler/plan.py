"""A planned sweep: cells added as results come in, in the same queue as every other cell.

An experiment with a ``tune:`` section or a seed rule (``seeds: {min, max, until}``) cannot list its cells up
front: its tuning trials' values come from each arm's sampler, its final runs from each arm's best trial, its
later seeds from whether the earlier ones resolved the difference to the baseline. ``SweepPlan.refill`` adds
what the plan needs next; a worker calls it whenever it finds nothing to claim, under a lock in the storage, so
that of several workers on several machines exactly one adds each cell. In order:

1. **Tuning** (each arm its own Optuna study, ``ablation.scheduler.tuning``): trials that a study holds but the queue
   does not (its asker died between the two) are queued; trials whose cell finished are told to their study (COMPLETE
   with the holdout top-1 error of the last epoch, PRUNED as the run recorded, FAIL for a diverged loss); then, if
   the queue had nothing for this worker, one new trial is asked, of the arm with the fewest, so that the arms'
   budgets fill in lockstep, and only of an arm with fewer than ``tune.parallel`` trials in flight (by default
   one: each arm's next trial sees all its earlier ones, so a rerun reproduces its suggestions). No arm ever gets
   more than ``tune.trials``, whatever was killed where.
2. **Final runs**: once all of an arm's trials have ended, its best trial's values are trained on the full
   training set with the experiment's seeds and evaluated on the test set, as any final run.
3. **Seed rounds** (``ablation.stats.seed_rule``): once a recipe's final runs have all ended, every arm whose
   difference to the baseline is unresolved (and the baseline) gets one more seed, until resolved or ``max``.

The default recipe's final runs (every arm with the experiment's own values, for the "default vs tuned" table)
are known up front and queued when the sweep is set up. Everything the plan decides is derived from the two
stores (the studies, the queue, the MLflow runs), never kept beside them, so a rerun after a kill anywhere
decides the same again and adds only what is missing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from optuna.trial import FrozenTrial, TrialState

from ablation.core.console import say
from ablation.core.faults import kill_point
from ablation.experiment.grid import Arm, Cell, cell_of_spec
from ablation.experiment.prepared import PreparedSweep
from ablation.experiment.schema import config_hash
from ablation.experiment.search_space import default_point
from ablation.experiment.spec import CellSpec
from ablation.experiment.tune import SeedRule
from ablation.scheduler.queue import CELL, FAILURE, SPEC, SweepQueue
from ablation.scheduler.tuning import ArmStudy, arm_study_name
from ablation.stats.seed_rule import next_round
from ablation.tracking.names import (
    PHASE_FINAL,
    PHASE_TUNE,
    RECIPE_DEFAULT,
    RECIPE_TUNED,
    TUNE_STATE,
    UNTRAINED_TRIALS,
)
from ablation.tracking.results import objective, untrained_trials_tag
from ablation.tracking.stores import exclusive

DIVERGED = "NonFiniteLossError"  # a trial whose loss diverged ended (FAIL), and counts in its arm's budget


@dataclasses.dataclass
class Entry:
    """A cell of the queue as the plan sees it: its spec and its newest queue trial."""

    spec: CellSpec
    trial: FrozenTrial

    @property
    def state(self) -> TrialState:
        return self.trial.state

    @property
    def value(self) -> float:
        return self.trial.values[0] if self.trial.values else math.nan


class SweepPlan:
    """The cells of one planned sweep and the rules that add them."""

    def __init__(self, prepared: PreparedSweep, say: Callable[[str], None] = say) -> None:
        self.prepared, self.say = prepared, say
        self.experiment = prepared.experiment
        self.tune = self.experiment.tune
        self.rule = self.experiment.seeds if isinstance(self.experiment.seeds, SeedRule) else None
        self.seeds = self.experiment.initial_seeds
        self.baseline = prepared.baseline
        self._said: set[str] = set()
        self._studies: dict[str, ArmStudy] = {}

    # ---- cells

    @property
    def trial_seed(self) -> int:
        """Every tuning trial's training seed: the same for all trials, so they differ only in their values."""
        return self.tune.seed if self.tune and self.tune.seed is not None else self.seeds[0]

    def initial_cells(self) -> list[Cell]:
        """What the sweep's state starts with: the default recipe at the first seeds, unless a tuned experiment
        leaves it out (``tune.compare_default: false``)."""
        if self.tune is not None and not self.tune.compare_default:
            return []
        return [self.cell(CellSpec(arm.index, seed)) for arm in self.prepared.arms for seed in self.seeds]

    def cell(self, spec: CellSpec) -> Cell:
        """The cell a spec describes (any worker, on any machine, rebuilds the same one)."""
        return cell_of_spec(self.prepared.arms[spec.arm], spec, self.tune)

    def study(self, queue: SweepQueue, arm: Arm) -> ArmStudy:
        """The arm's study in the queue's storage (created when missing)."""
        key = config_hash(arm.config, arm.data.identity, arm.module_sha256)
        name = arm_study_name(queue.study_name, arm.index, key)
        if name not in self._studies:
            self._studies[name] = ArmStudy(queue.storage, name, self.tune, arm.index)
        return self._studies[name]

    def entries(self, queue: SweepQueue) -> list[Entry]:
        """Every spec the queue holds, with the newest queue trial of that spec."""
        newest: dict[str, FrozenTrial] = {}
        for trial in queue.trials():
            text = trial.user_attrs.get(SPEC)
            if text is not None and (text not in newest or trial.number > newest[text].number):
                newest[text] = trial
        return [Entry(CellSpec.from_json(text), trial) for text, trial in newest.items()]

    # ---- adding what is needed next

    def refill(self, queue: SweepQueue, store=None) -> int:
        """Add the cells the plan needs now (see the module docstring); returns how many were queued."""
        with exclusive(queue.url, f"plan:{queue.study_name}", "adding this sweep's next cells"):
            for study in self._studies.values():
                study.forget()  # other workers asked and told since this one last looked
            entries = self.entries(queue)
            busy = {
                e.trial.user_attrs.get(CELL) for e in entries if e.state in (TrialState.WAITING, TrialState.RUNNING)
            }
            added = 0
            if self.tune is not None:
                added += self._tuning(queue, store, entries, busy)
                added += self._tuned_finals(queue, entries, busy)
                if store is not None:
                    self._record_untrained(queue, store)
            if self.rule is not None:
                for recipe in (RECIPE_DEFAULT, RECIPE_TUNED):
                    added += self._seed_round(queue, entries, busy, recipe)
            return added

    def _enqueue(self, queue: SweepQueue, spec: CellSpec, busy: set[str]) -> bool:
        """Queue the cell of ``spec`` unless the same cell (same key) is waiting or running already: two queue
        entries of one cell must never run at once (a later refill queues it once the first has ended)."""
        cell = self.cell(spec)
        if cell.hash in busy:
            return False
        queue.enqueue(cell)
        busy.add(cell.hash)
        return True

    def _tuning(self, queue: SweepQueue, store, entries: list[Entry], busy: set[str]) -> int:
        added = 0
        counts: dict[int, int] = {}
        in_flight: dict[int, int] = {}
        diverged = {e.trial.user_attrs.get(CELL) for e in entries if _diverged(e)}
        for arm in self.prepared.arms:
            study = self.study(queue, arm)
            trials = study.trials()
            counts[arm.index] = len(trials)
            queued = {e.spec.trial: e for e in entries if e.spec.phase == PHASE_TUNE and e.spec.arm == arm.index}
            for trial in trials:
                if trial.state != TrialState.RUNNING:
                    continue
                entry = queued.get(trial.number)
                if entry is None:
                    spec = self._trial_spec(arm, trial)
                    if self.cell(spec).hash in diverged:  # values suggested again that diverged before
                        study.tell(trial, TrialState.FAIL)
                    else:
                        added += self._enqueue(queue, spec, busy)
                elif entry.state == TrialState.COMPLETE:
                    self._tell_finished(study, trial, entry, store)
                elif _diverged(entry):
                    study.tell(trial, TrialState.FAIL)
            in_flight[arm.index] = sum(not t.state.is_finished() for t in study.trials())
        if added:
            return added
        while True:
            # The arm with the fewest trials, among those with budget left and fewer than tune.parallel in flight.
            open_arms = [i for i, n in counts.items() if n < self.tune.trials and in_flight[i] < self.tune.parallel]
            if not open_arms:
                return 0
            index = min(open_arms, key=lambda i: (counts[i], i))
            arm = self.prepared.arms[index]
            study = self.study(queue, arm)
            trial = study.ask(first=default_point(arm.config, self.tune))
            kill_point("plan.asked")  # asked, not queued: the next refill queues it (the budget holds it already)
            counts[index] += 1
            spec = self._trial_spec(arm, trial)
            if self.cell(spec).hash not in diverged:
                return int(self._enqueue(queue, spec, busy))
            study.tell(trial, TrialState.FAIL)  # values that diverged before: the trial ends untrained

    def _trial_spec(self, arm: Arm, trial: FrozenTrial) -> CellSpec:
        values = tuple((key, trial.params[key]) for key in self.tune.space)
        return CellSpec(arm.index, self.trial_seed, PHASE_TUNE, RECIPE_TUNED, values, trial.number)

    def _tell_finished(self, study: ArmStudy, trial: FrozenTrial, entry: Entry, store) -> None:
        """A trial whose cell is done: COMPLETE with its objective, or PRUNED as its MLflow run records."""
        pruned = False
        if store is not None:
            run = store.find_cell(entry.trial.user_attrs.get(CELL))
            pruned = run is not None and run.data.tags.get(TUNE_STATE) == TrialState.PRUNED.name
            value = objective(run, entry.value) if run is not None else entry.value
        else:
            value = entry.value
        if pruned or math.isnan(value):
            study.tell(trial, TrialState.PRUNED if pruned else TrialState.FAIL)
        else:
            study.tell(trial, TrialState.COMPLETE, value)

    def _record_untrained(self, queue: SweepQueue, store) -> None:
        """Keep the parent run's record of the trials that ended FAIL without a run (values that had diverged
        before: ``ablation.tracking.results``) in step with the studies, so a table counts every trial of the
        budget from the results alone. Derived from the studies and the queue each time, so a kill between telling
        a trial and recording it is made good by the next refill."""
        queued: dict[int, set[int]] = {}
        for entry in self.entries(queue):
            if entry.spec.phase == PHASE_TUNE:
                queued.setdefault(entry.spec.arm, set()).add(entry.spec.trial)
        untrained = {
            arm.index: {
                t.number
                for t in self.study(queue, arm).trials()
                if t.state == TrialState.FAIL and t.number not in queued.get(arm.index, set())
            }
            for arm in self.prepared.arms
        }
        parent = queue.get_attr("parent_run_id")
        if not parent or not any(untrained.values()):
            return
        tag = untrained_trials_tag(untrained)
        if store.client.get_run(parent).data.tags.get(UNTRAINED_TRIALS) != tag:
            store.log_tags(parent, {UNTRAINED_TRIALS: tag})

    def tuning_ended(self, study: ArmStudy) -> bool:
        trials = study.trials()
        return len(trials) >= self.tune.trials and all(t.state.is_finished() for t in trials)

    def best_values(self, study: ArmStudy) -> tuple[tuple[str, object], ...] | None:
        best = study.best()
        return None if best is None else tuple((key, best.params[key]) for key in self.tune.space)

    def _tuned_finals(self, queue: SweepQueue, entries: list[Entry], busy: set[str]) -> int:
        added = 0
        for arm in self.prepared.arms:
            if any(
                e.spec.recipe == RECIPE_TUNED and e.spec.phase == PHASE_FINAL and e.spec.arm == arm.index
                for e in entries
            ):
                continue
            study = self.study(queue, arm)
            if not self.tuning_ended(study):
                continue
            values = self.best_values(study)
            if values is None:
                self._say_once(
                    f"[plan] {arm.description}: none of its {self.tune.trials} trials completed (all pruned or "
                    "failed); it has no tuned row"
                )
                continue
            shown = ", ".join(f"{key}={value}" for key, value in values)
            self.say(f"[plan] {arm.description}: tuning ended, best {shown}; final runs with seeds {self.seeds}")
            for seed in self.seeds:
                added += self._enqueue(queue, CellSpec(arm.index, seed, PHASE_FINAL, RECIPE_TUNED, values), busy)
        return added

    def _seed_round(self, queue: SweepQueue, entries: list[Entry], busy: set[str], recipe: str) -> int:
        """One more seed for the unresolved arms of ``recipe``, once all of its final runs have ended."""
        finals = [e for e in entries if e.spec.phase == PHASE_FINAL and e.spec.recipe == recipe]
        if not finals or any(e.state in (TrialState.WAITING, TrialState.RUNNING) for e in finals):
            return 0
        arms = {e.spec.arm for e in finals}
        if recipe == RECIPE_TUNED and self.tune is not None:
            waiting = [a for a in self.prepared.arms if a.index not in arms and not self._no_tuned_row(queue, a)]
            if waiting:
                return 0  # other arms' tuning still runs: the round compares all arms at once
        if self.baseline not in arms:
            self._say_once(f"[plan] the baseline has no {recipe} runs; the seed rule cannot compare to it")
            return 0
        results: dict[int, list[float]] = {a: [] for a in arms}
        enqueued: dict[int, list[int]] = {a: [] for a in arms}
        values: dict[int, tuple] = {}
        for e in finals:
            enqueued[e.spec.arm].append(e.spec.seed)
            values[e.spec.arm] = e.spec.values
            if e.state == TrialState.COMPLETE and not math.isnan(e.value):
                results[e.spec.arm].append(e.value)
        added = 0
        for arm, seed in next_round(results, enqueued, self.baseline, self.rule).items():
            spec = CellSpec(arm, seed, PHASE_FINAL, recipe, values[arm])
            added += self._enqueue(queue, spec, busy)
        if added:
            self.say(f"[plan] {recipe} recipe: {added} more seeds for the arms whose difference is unresolved")
        return added

    def _no_tuned_row(self, queue: SweepQueue, arm: Arm) -> bool:
        study = self.study(queue, arm)
        return self.tuning_ended(study) and study.best() is None

    def _say_once(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.say(line)

    def retryable(self, queue: SweepQueue, failed: list[str]) -> list[str]:
        """Of the failed cells (keys), those ``--retry-failed`` should run again: not the tuning trials whose loss
        diverged, which ended as FAIL in their arm's budget (the same values would diverge again)."""
        diverged = {e.trial.user_attrs.get(CELL) for e in self.entries(queue) if _diverged(e)}
        if diverged & set(failed):
            self.say(f"[plan] {len(diverged & set(failed))} diverged tuning trials ended in their budgets; not retried")
        return [key for key in failed if key not in diverged]

    # ---- what is left

    def expected_total(self, queue: SweepQueue) -> int:
        """Cells queued so far plus those the plan will surely add (tuning trials not yet asked, final runs of
        arms still tuning): the denominator of progress lines, which a seed rule may still raise."""
        entries = self.entries(queue)
        queued = len({e.trial.user_attrs.get(CELL) for e in entries})
        if self.tune is None:
            return queued
        asked = sum(1 for e in entries if e.spec.phase == PHASE_TUNE)
        tuned = {e.spec.arm for e in entries if e.spec.phase == PHASE_FINAL and e.spec.recipe == RECIPE_TUNED}
        budget = self.tune.trials * len(self.prepared.arms)
        return queued + max(budget - asked, 0) + len(self.seeds) * (len(self.prepared.arms) - len(tuned))


def _diverged(entry: Entry) -> bool:
    """A tuning trial's cell that failed because its loss diverged: an outcome of its values, not an accident."""
    return (
        entry.spec.phase == PHASE_TUNE
        and entry.state == TrialState.FAIL
        and entry.trial.user_attrs.get(FAILURE, "").startswith(DIVERGED)
    )
