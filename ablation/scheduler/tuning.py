"""Each arm's own Optuna study: asking its trials, pruning them over epochs, recording how they ended.

Every arm of a tuned sweep has a study of its own in the sweep's storage, named after the sweep's queue and the
arm's key, so that all arms get exactly the same budget (``tune.trials`` trials of ``tune.epochs`` epochs each)
and one arm's results never steer another arm's sampler. The studies only record trials; the trials run as cells
of the sweep's queue (``ablation.scheduler.plan`` adds them), so workers, machines, SIGKILL recovery and ``status``
treat them like any other cell.

Samplers are rebuilt for every ask with a seed derived from ``tune.sampler.seed``, the arm and the trial's number:
whichever process asks, after whatever restarts, the same history gives the same suggestion (a sampler seeded once
per process would repeat its first suggestion in every new worker process). Pruners hold no state of their own
(Optuna's successive halving, Hyperband and median pruners read the study), so any worker can ask one whether
its trial should stop.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ablation.core.faults import kill_point
from ablation.experiment.search_space import distributions
from ablation.experiment.tune import TuneConfig
from ablation.tracking.names import EPOCH
from ablation.tracking.results import EPOCH_OBJECTIVE

# Optuna warns that storage heartbeats are meant for Study.optimize; here they keep the queue's cells alive, and
# the arm studies share the storage without using them.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def arm_study_name(queue_study: str, arm_index: int, arm_key: str) -> str:
    """The study of one arm's trials: the sweep's queue (which holds its key and the tracking store's) + the arm."""
    return f"{queue_study}:tune:arm{arm_index}:{arm_key}"


def derived_seed(base: int, *parts: Any) -> int:
    """A 32-bit seed from ``base`` and ``parts``, the same in every process."""
    digest = hashlib.sha256(":".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def make_sampler(tune: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    if tune.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = tune.sampler.startup_trials
    kwargs = {"n_startup_trials": startup} if startup is not None else {}
    return optuna.samplers.TPESampler(seed=seed, **kwargs)


def make_pruner(tune: TuneConfig) -> optuna.pruners.BasePruner:
    """The pruner over epochs (one epoch = one unit of Optuna's resource)."""
    pruner = tune.pruner
    epochs = tune.epochs
    if pruner.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_epochs, reduction_factor=pruner.reduction_factor
        )
    if pruner.type == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_epochs,
            max_resource=epochs if epochs is not None else "auto",
            reduction_factor=pruner.reduction_factor,
        )
    if pruner.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=pruner.min_epochs)
    return optuna.pruners.NopPruner()


class ArmStudy:
    """One arm's study in the sweep's storage (created when missing)."""

    def __init__(self, storage: RDBStorage, name: str, tune: TuneConfig, arm_index: int) -> None:
        self.storage, self.name, self.tune, self.arm_index = storage, name, tune, arm_index
        study = optuna.create_study(
            study_name=name, storage=storage, direction="minimize", load_if_exists=True, pruner=make_pruner(tune)
        )
        self.study_id = study._study_id
        self._trials: list[FrozenTrial] | None = None

    def load(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        return optuna.load_study(
            study_name=self.name, storage=self.storage, sampler=sampler, pruner=make_pruner(self.tune)
        )

    def trials(self) -> list[FrozenTrial]:
        """The study's trials, read once until ``forget`` (or this object's own ask or tell): a plan's refill asks
        for them many times, and each read is a query."""
        if self._trials is None:
            self._trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        return self._trials

    def forget(self) -> None:
        """Read the trials afresh next time (other processes ask and tell too)."""
        self._trials = None

    def ask(self, first: dict[str, Any] | None = None) -> FrozenTrial:
        """A new trial of this arm, its values suggested by the seeded sampler (the caller holds the plan's lock,
        so that the budget is never exceeded). ``first``: the values of the study's first trial (the arm's default
        recipe, ``search_space.default_point``), so that the chosen values are never worse than the default on
        the holdout. Queued in the study before it is asked: a worker that dies between the two leaves it waiting,
        and the next ask takes it."""
        number = len(self.trials())
        sampler = make_sampler(self.tune, derived_seed(self.tune.sampler.seed, self.arm_index, number))
        study = self.load(sampler)
        if number == 0 and first is not None:
            study.enqueue_trial(first, skip_if_exists=True)
        trial = study.ask(distributions(self.tune))
        self.forget()
        return self.storage.get_trial(trial._trial_id)

    def tell(self, trial: FrozenTrial, state: TrialState, value: float | None = None) -> bool:
        """Record how ``trial`` ended; False when it was recorded already (by another worker)."""
        self.forget()
        try:
            values = [value] if state == TrialState.COMPLETE else None
            return self.storage.set_trial_state_values(trial._trial_id, state, values)
        except UpdateFinishedTrialError:
            return False

    def trial(self, number: int) -> FrozenTrial:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return self.storage.get_trial(trial_id)

    def best(self) -> FrozenTrial | None:
        """The completed trial with the lowest objective (the earliest of equals), or None."""
        done = [t for t in self.trials() if t.state == TrialState.COMPLETE and t.values]
        return min(done, key=lambda t: (t.values[0], t.number), default=None)


def pruning_callback(study: ArmStudy, number: int) -> Callable[[list[dict[str, float]], bool], bool]:
    """``train_job``'s ``on_epoch`` for one trial: reports each epoch's holdout top-1 error to the trial and says
    whether to stop now (the pruner's verdict, told to the study at once so that a resumed attempt stops too)."""
    pruner = make_pruner(study.tune)

    def on_epoch(history: list[dict[str, float]], last: bool) -> bool:
        trial = study.trial(number)
        if trial.state == TrialState.PRUNED:
            return True  # decided before this attempt was interrupted
        if trial.state.is_finished():
            return False
        for epoch in history:  # again after a resume: values are set per step, so nothing is doubled
            study.storage.set_trial_intermediate_value(trial._trial_id, int(epoch[EPOCH]), epoch[EPOCH_OBJECTIVE])
        if last or isinstance(pruner, optuna.pruners.NopPruner):
            return False  # the last epoch is the trial's result, not a reason to stop
        loaded = study.load()
        if loaded.pruner.prune(loaded, study.storage.get_trial(trial._trial_id)):
            study.tell(trial, TrialState.PRUNED)
            kill_point("tune.pruned")  # told, the run not closed: a resumed attempt stops at once
            return True
        return False

    return on_epoch
