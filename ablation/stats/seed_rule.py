"""The adaptive seed rule ``seeds: {min: 3, max: 10}``, as plain arithmetic (no torch).

The rule: every arm first runs ``min`` seeds (``start``, ``start + 1``, ...). Then, one round at a time, each arm
whose difference to the baseline arm is still unresolved gets one more seed, and so does the baseline (its
variance is part of every difference). An arm stops getting seeds when its difference is resolved or when it has
``max`` seeds queued; the rule is done when no arm gets a seed.

When a difference is resolved (``until``):

- ``sequential`` (the default): the difference is declared at level ``alpha`` (0.05) under the repeated looks,
  through a group-sequential boundary with alpha spending (Lan and DeMets, 1983). The rule looks at an arm once per
  number of its finished seeds, n = min, min + 1, ..., max, and spends the level linearly over those planned looks:
  by the look at n it has spent alpha * n / max (Lan-DeMets' power family with rho = 1). Each look's boundary is
  the one that spends exactly that increment given that no earlier look crossed (``nominal_levels``: the recursion
  of Armitage, McPherson and Rowe, integrated numerically for the sequence of z statistics of nested samples), and
  the look declares the difference when its Welch test's p is at most that nominal level, i.e. when the Welch
  interval at confidence 1 - nominal level excludes 0. Why this: the looks are nested samples, highly correlated,
  so a boundary that accounts for the correlation gives every later look a far larger nominal level than splitting
  alpha by the union bound would (alpha / max each), and with it the power to resolve real differences; an
  anytime-valid confidence sequence is made for unplanned looks, which this rule does not need, and is much wider
  at 2-10 seeds. The boundary is exact for z statistics; the looks use t statistics
  (the variance is estimated), which the spending does not model, so ``benchmarks/seed_rule_error.py`` measures
  the real rate with this very code, below alpha for the default rule (figures in ``benchmarks/README.md``, beside
  the old rule's). Linear spending rather than O'Brien-Fleming-like (rho = 2 or 3): their nominal levels sit later,
  and once t replaces z their real rates measured right at or above alpha, for a few points of power.
- ``ci95 excludes 0``: the rule before it, kept for sweeps that used it and labelled as what it is: it looks at a
  95% interval after every round and stops when one first excludes 0, so it declares noise far more often than 5%
  (each look is another chance). A stopping rule for spending seeds, not a test.

Either way the rule controls each comparison with the baseline; the table corrects the family of comparisons
(Holm by default, ``ablation.stats.compare``). An arm that stops at ``max`` unresolved is reported as such, not as
"no difference".

``next_round`` is meant to be called when a round has finished (nothing of the arms still running): a running
seed counts as queued, so it is neither queued twice nor counted as a result.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats as scipy_stats

from ablation.stats.compare import MIN_N, mean_std

if TYPE_CHECKING:
    from ablation.experiment.tune import SeedRule

RESOLVED = "resolved"
MAX_SEEDS = "max seeds"
UNRESOLVED = "unresolved"
LEVEL = 0.95
SEQUENTIAL, UNCORRECTED = "sequential", "ci95 excludes 0"


@dataclass(frozen=True)
class Interval:
    """Welch's confidence interval for mean(arm) - mean(baseline)."""

    difference: float  # mean(arm) - mean(baseline)
    low: float
    high: float
    df: float  # Welch-Satterthwaite degrees of freedom (NaN when neither sample has any spread)

    @property
    def excludes_zero(self) -> bool:
        """Whether 0 lies outside [low, high] (False for a NaN interval)."""
        return self.low > 0 or self.high < 0


def spent(n: int, rule: SeedRule) -> float:
    """The level the sequential rule has spent on an arm once it has looked at ``n`` seeds: alpha * n / max."""
    return rule.alpha * min(n, rule.max) / rule.max


# Points of the grid the boundary's recursion integrates on: the nominal levels agree with 1,601 points to five
# significant digits (and with a Monte Carlo of the z statistics: tests/stats/test_seed_rule.py).
_GRID = 801


@functools.lru_cache(maxsize=64)
def nominal_levels(minimum: int, maximum: int, alpha: float) -> tuple[float, ...]:
    """The nominal two-sided level of each look n = minimum..maximum of the sequential rule: the group-sequential
    boundary that spends alpha * n / maximum by look n (linear spending), for the z statistics of nested samples
    (information n). The first is the first increment itself; each later one is larger than its increment, since
    paths that would cross it have partly crossed earlier. Deterministic (no sampling), ~0.3 s, cached."""
    looks = list(range(minimum, maximum + 1))
    cumulative = [alpha * n / maximum for n in looks]
    increments = [cumulative[0]] + [b - a for a, b in itertools.pairwise(cumulative)]
    levels = [increments[0]]
    # The density of S_k (the sum of k standardised differences) over the paths that have not crossed, on a grid.
    bound = float(scipy_stats.norm.isf(increments[0] / 2)) * math.sqrt(looks[0])
    grid = np.linspace(-bound, bound, _GRID)
    density = scipy_stats.norm.pdf(grid, scale=math.sqrt(looks[0]))
    for k in range(1, len(looks)):
        sd = math.sqrt(looks[k] - looks[k - 1])
        weights = np.full(_GRID, grid[1] - grid[0])
        weights[[0, -1]] /= 2  # the trapezoid rule
        mass = density * weights

        def crossing(b: float, mass=mass, grid=grid, sd=sd) -> float:
            """The chance of crossing +-b at this look without having crossed before."""
            return float(np.sum(mass * (scipy_stats.norm.cdf((-b - grid) / sd) + scipy_stats.norm.sf((b - grid) / sd))))

        low, high = 0.0, 20.0 * math.sqrt(looks[k])
        for _ in range(50):  # bisection: crossing(b) falls as b grows
            middle = (low + high) / 2
            low, high = (middle, high) if crossing(middle) > increments[k] else (low, middle)
        bound = (low + high) / 2
        levels.append(float(2 * scipy_stats.norm.sf(bound / math.sqrt(looks[k]))))
        new_grid = np.linspace(-bound, bound, _GRID)
        density = (mass[None, :] * scipy_stats.norm.pdf((new_grid[:, None] - grid[None, :]) / sd) / sd).sum(axis=1)
        grid = new_grid
    return tuple(levels)


def look_level(n: int, rule: SeedRule) -> float:
    """The confidence level of the interval the rule judges at the look with ``n`` finished seeds of the arm: 0.95
    for the old rule; 1 - the look's nominal level for the sequential one (no look before ``min``, none after
    ``max``, where the rule gives no seeds)."""
    if rule.until == UNCORRECTED:
        return LEVEL
    if not rule.min <= n <= rule.max:
        return 1.0
    return 1.0 - nominal_levels(rule.min, rule.max, rule.alpha)[n - rule.min]


def ci95(arm: Sequence[float], baseline: Sequence[float]) -> Interval | None:
    """Welch's 95% confidence interval (``interval`` at 0.95)."""
    return interval(arm, baseline, LEVEL)


def interval(arm: Sequence[float], baseline: Sequence[float], level: float) -> Interval | None:
    """Welch's ``level`` confidence interval for mean(arm) - mean(baseline): diff ± t(1/2 + level/2, df) *
    sqrt(va + vb), with va = var(arm) / n_arm, vb = var(baseline) / n_baseline (sample variances) and
    Welch-Satterthwaite df.

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
    half = float(scipy_stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(va + vb)
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
    queued for it (finished, failed or running). An arm is "resolved" when its interval to the baseline at the
    look's level (``look_level`` of its finished seeds) excludes 0 and both it and the baseline have at least
    ``rule.min`` seeds queued (the rule judges nothing before the first ``min`` seeds); otherwise "max seeds" when
    it has ``rule.max`` or more seeds queued, else "unresolved".
    """
    base_values = results.get(baseline, ())
    base_ready = len(enqueued.get(baseline, ())) >= rule.min
    out: dict[int, Verdict] = {}
    for arm in _arms(results, enqueued, baseline):
        values = results.get(arm, ())
        count = len(enqueued.get(arm, ()))
        judged = interval(values, base_values, look_level(len(values), rule))
        if judged is not None and judged.excludes_zero and base_ready and count >= rule.min:
            state = RESOLVED
        elif count >= rule.max:
            state = MAX_SEEDS
        else:
            state = UNRESOLVED
        out[arm] = Verdict(arm, len(values), judged, state)
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
