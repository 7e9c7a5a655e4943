"""The adaptive seed rule ``seeds: {min: 3, max: 10, until: ci95 excludes 0}``, as plain arithmetic (no torch).

The rule: every arm first runs ``min`` seeds (``start``, ``start + 1``, ...). Then, one round at a time, each arm
whose difference to the baseline arm is still unresolved gets one more seed, and so does the baseline (its
variance is part of every difference). A difference is resolved when Welch's 95% confidence interval for
mean(arm) - mean(baseline) of the per-seed final top-1 errors excludes 0. An arm stops getting seeds when its
difference is resolved or when it has ``max`` seeds queued; the rule is done when no arm gets a seed.

The caveat: this looks at the data again after every round and stops when the interval first excludes 0. Such
sequential testing inflates the false-positive rate above the nominal 5% (each look is another chance for noise
to push the interval off 0), so "resolved" is not a 5%-level significance claim. It is a stopping rule for
spending seeds where they are needed, not a corrected hypothesis test (no alpha spending, no Bonferroni across
arms). The table reports each interval with its n, so a reader can judge how much it rests on; an arm that
stops at ``max`` unresolved is reported as such, not as "no difference".

``next_round`` is meant to be called when a round has finished (nothing of the arms still running): a running
seed counts as queued, so it is neither queued twice nor counted as a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scipy import stats as scipy_stats

from ablation.stats.compare import MIN_N, mean_std

if TYPE_CHECKING:
    from ablation.experiment.tune import SeedRule

RESOLVED = "resolved"
MAX_SEEDS = "max seeds"
UNRESOLVED = "unresolved"
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Welch's 95% confidence interval for mean(arm) - mean(baseline)."""

    difference: float  # mean(arm) - mean(baseline)
    low: float
    high: float
    df: float  # Welch-Satterthwaite degrees of freedom (NaN when neither sample has any spread)

    @property
    def excludes_zero(self) -> bool:
        """Whether 0 lies outside [low, high] (False for a NaN interval)."""
        return self.low > 0 or self.high < 0


def ci95(arm: Sequence[float], baseline: Sequence[float]) -> Interval | None:
    """Welch's 95% confidence interval for mean(arm) - mean(baseline): diff ± t(0.975, df) * sqrt(va + vb),
    with va = var(arm) / n_arm, vb = var(baseline) / n_baseline (sample variances) and Welch-Satterthwaite df.

    None when either sample has fewer than two values (no variance, no interval). When neither sample has any
    spread (va + vb == 0, e.g. identical errors in every seed of both arms) there is no standard error to widen
    it by: the interval is the point [diff, diff] with df NaN, which excludes 0 exactly when diff != 0. That is
    what the numbers say, not a claim of certainty; with n >= 2 identical values it is rare in practice.
    """
    if len(arm) < MIN_N or len(baseline) < MIN_N:
        return None
    mean_a, sd_a = mean_std(arm)
    mean_b, sd_b = mean_std(baseline)
    difference = mean_a - mean_b
    va, vb = sd_a**2 / len(arm), sd_b**2 / len(baseline)
    if va + vb == 0:
        return Interval(difference, difference, difference, math.nan)
    df = (va + vb) ** 2 / (va**2 / (len(arm) - 1) + vb**2 / (len(baseline) - 1))
    half = float(scipy_stats.t.ppf(0.5 + LEVEL / 2, df)) * math.sqrt(va + vb)
    return Interval(difference, difference - half, difference + half, df)


@dataclass(frozen=True)
class Verdict:
    """Where one arm's difference to the baseline stands under the rule."""

    arm: int
    n: int  # finished seeds of the arm
    interval: Interval | None
    state: str  # "resolved", "max seeds" (unresolved, max reached) or "unresolved" (more seeds may come)

    def describe(self) -> str:
        """E.g. "resolved at n=4", "unresolved at max n=10", "unresolved at n=3"."""
        if self.state == RESOLVED:
            return f"resolved at n={self.n}"
        if self.state == MAX_SEEDS:
            return f"unresolved at max n={self.n}"
        return f"unresolved at n={self.n}"


def _arms(results: Mapping[int, Sequence[float]], enqueued: Mapping[int, Sequence[int]], baseline: int) -> list[int]:
    """The non-baseline arms named in either mapping, in index order; checks the two agree."""
    for arm, values in results.items():
        if len(values) > len(enqueued.get(arm, ())):
            raise ValueError(
                f"arm {arm} has {len(values)} finished results but only {len(enqueued.get(arm, ()))} seeds queued "
                "(every finished seed must be among the queued ones)"
            )
    return sorted((set(results) | set(enqueued)) - {baseline})


def verdicts(
    results: Mapping[int, Sequence[float]],
    enqueued: Mapping[int, Sequence[int]],
    baseline: int,
    rule: SeedRule,
) -> dict[int, Verdict]:
    """One verdict per non-baseline arm in ``results`` / ``enqueued``.

    ``results``: arm index -> the top-1 errors of its finished seeds; ``enqueued``: arm index -> the seeds already
    queued for it (finished, failed or running). An arm is "resolved" when its interval to the baseline excludes
    0 and both it and the baseline have at least ``rule.min`` seeds queued (the rule judges nothing before the
    first ``min`` seeds); otherwise "max seeds" when it has ``rule.max`` or more seeds queued, else "unresolved".
    """
    base_values = results.get(baseline, ())
    base_ready = len(enqueued.get(baseline, ())) >= rule.min
    out: dict[int, Verdict] = {}
    for arm in _arms(results, enqueued, baseline):
        values = results.get(arm, ())
        count = len(enqueued.get(arm, ()))
        interval = ci95(values, base_values)
        if interval is not None and interval.excludes_zero and base_ready and count >= rule.min:
            state = RESOLVED
        elif count >= rule.max:
            state = MAX_SEEDS
        else:
            state = UNRESOLVED
        out[arm] = Verdict(arm, len(values), interval, state)
    return out


def _next_seed(queued: Sequence[int], start: int) -> int:
    """The smallest seed >= ``start`` not yet queued."""
    taken = set(queued)
    seed = start
    while seed in taken:
        seed += 1
    return seed


def next_round(
    results: Mapping[int, Sequence[float]],
    enqueued: Mapping[int, Sequence[int]],
    baseline: int,
    rule: SeedRule,
) -> dict[int, int]:
    """Arm index -> the one next seed to queue this round; an empty dict means the rule is done.

    Every unresolved arm with fewer than ``rule.max`` seeds queued gets one; the baseline gets one too whenever
    any arm gets one and it has fewer than ``rule.max`` (its variance is part of every difference). An arm (or
    the baseline) with fewer than ``rule.min`` seeds queued, which the first round should have prevented, counts
    as unresolved, so it gets one seed per round until it has ``min``. A seed is the smallest one >= ``rule.start``
    not yet queued for that arm.
    """
    states = verdicts(results, enqueued, baseline, rule)
    plan = {
        arm: _next_seed(enqueued.get(arm, ()), rule.start)
        for arm, verdict in states.items()
        if verdict.state == UNRESOLVED
    }
    base_queued = enqueued.get(baseline, ())
    base_short = len(base_queued) < rule.min
    if (plan or base_short) and len(base_queued) < rule.max:
        plan[baseline] = _next_seed(base_queued, rule.start)
    return dict(sorted(plan.items()))
