"""Statistics for comparing arms over seeds, stated plainly.

Each arm is compared with the table's baseline arm on the per-seed final top-1 errors:

- **Welch's t-test** (``welch``, the default): two independent samples with unequal variances, two-sided. Right
  whenever the arms' seeds are not matched, and always valid.
- **The paired t-test over seeds** (``paired``): the per-seed differences arm - baseline. A seed fixes the data
  order and the augmentation of every arm (tests/engine/test_seed_pairing.py), so a seed's noise is partly shared,
  and pairing removes that share from the comparison: the sharper test when every arm ran the same seeds. It is
  refused where seeds do not pair (an arm with a seed another lacks).

Every comparison reports the difference in points with its 95% confidence interval, the test statistic and its
degrees of freedom, the raw two-sided p, the p adjusted for the number of comparisons (``adjust``: Holm's step-down,
the default, controls the family-wise error rate; Benjamini-Hochberg the false discovery rate; or none), and a
standardised effect: Hedges' g (Welch: the difference over the pooled standard deviation; paired: the mean
difference over the differences' standard deviation, d_z), each with the small-sample correction
J = 1 - 3 / (4 df - 1).

It needs n >= 2 seeds in both arms (a variance needs two values); with n = 2 it has very little power, so three or
more seeds per arm are what a claim should rest on. Nothing here invents a spread: with n = 1 there is no standard
deviation and no test, and the table says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from scipy import stats as scipy_stats

MIN_N = 2
ALPHA = 0.05
LEVEL = 0.95
TESTS = ("welch", "paired")
CORRECTIONS = ("holm", "bh", "none")
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no correction"}


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline: mean(arm) - mean(baseline) of the per-seed errors, in points."""

    test: str  # "welch" or "paired"
    n: int  # the arm's seeds (paired: the pairs)
    n_baseline: int
    difference: float
    low: float  # the 95% confidence interval of the difference
    high: float
    t: float  # NaN when neither sample has any spread
    df: float
    p: float  # raw, two-sided
    effect: float  # Hedges' g (welch) or g_z (paired)
    p_adjusted: float = math.nan  # set by ``compare_arms`` for the family

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); the std is NaN for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _hedges(d: float, df: float) -> float:
    return d * (1 - 3 / (4 * df - 1)) if df > 0.25 else math.nan


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Comparison | None:
    """Welch's t-test and interval for mean(a) - mean(b): diff ± t(df) * sqrt(va + vb), va = var(a) / n_a, with the
    Welch-Satterthwaite df. None when either sample has fewer than two values. When neither has any spread, the
    interval is the point [diff, diff] and t, df, p are NaN (no standard error: that is what the numbers say)."""
    if len(a) < MIN_N or len(b) < MIN_N:
        return None
    mean_a, sd_a = mean_std(a)
    mean_b, sd_b = mean_std(b)
    difference = mean_a - mean_b
    va, vb = sd_a**2 / len(a), sd_b**2 / len(b)
    pooled_df = len(a) + len(b) - 2
    pooled = math.sqrt(((len(a) - 1) * sd_a**2 + (len(b) - 1) * sd_b**2) / pooled_df)
    effect = _hedges(difference / pooled, pooled_df) if pooled > 0 else math.nan
    if va + vb == 0:
        return Comparison("welch", len(a), len(b), difference, difference, difference, *([math.nan] * 3), effect)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    se = math.sqrt(va + vb)
    t = difference / se
    half = float(scipy_stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * scipy_stats.t.sf(abs(t), df))
    return Comparison("welch", len(a), len(b), difference, difference - half, difference + half, t, df, p, effect)


def paired(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Comparison | None:
    """The paired t-test over seeds: seed -> error in each arm, the same seeds in both (``SeedsDoNotPair``
    otherwise). None with fewer than two pairs."""
    if set(a) != set(b):
        raise SeedsDoNotPair(sorted(set(a) - set(b)), sorted(set(b) - set(a)))
    if len(a) < MIN_N:
        return None
    differences = [a[seed] - b[seed] for seed in sorted(a)]
    n = len(differences)
    mean, sd = mean_std(differences)
    df = n - 1
    effect = _hedges(mean / sd, df) if sd > 0 else math.nan
    if sd == 0:
        return Comparison("paired", n, n, mean, mean, mean, *([math.nan] * 3), effect)
    se = sd / math.sqrt(n)
    t = mean / se
    half = float(scipy_stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * scipy_stats.t.sf(abs(t), df))
    return Comparison("paired", n, n, mean, mean - half, mean + half, t, float(df), p, effect)


class SeedsDoNotPair(ValueError):
    """Two arms did not run the same seeds: a paired comparison has nothing to pair some of them with."""

    def __init__(self, only_first: list[int], only_second: list[int], arm: int | None = None) -> None:
        self.only_first, self.only_second, self.arm = only_first, only_second, arm
        super().__init__(f"seeds only in the arm {only_first}, only in the baseline {only_second}")


def adjust(pvalues: Sequence[float], method: str) -> list[float]:
    """``pvalues`` adjusted for their number (NaN ones are left out of the family and stay NaN): Holm's step-down
    (family-wise error), Benjamini-Hochberg's step-up (false discovery rate), or as they are."""
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; allowed: {', '.join(CORRECTIONS)}")
    indexed = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    m = len(indexed)
    if method == "none":
        for p, i in indexed:
            out[i] = p
        return out
    ordered = sorted(indexed)
    if method == "holm":
        running = 0.0
        for rank, (p, i) in enumerate(ordered):
            running = max(running, min(1.0, (m - rank) * p))
            out[i] = running
        return out
    running = 1.0  # Benjamini-Hochberg, from the largest p down
    for rank in range(m - 1, -1, -1):
        p, i = ordered[rank]
        running = min(running, p * m / (rank + 1))
        out[i] = min(running, 1.0)
    return out


def family_size(comparisons: Mapping[int, Comparison | None]) -> int:
    """How many comparisons the correction counted: those with a p."""
    return sum(c is not None and not math.isnan(c.p) for c in comparisons.values())


def compare_arms(
    errors: Mapping[int, Mapping[int, float]],
    baseline: int,
    *,
    test: str = "welch",
    correction: str = "holm",
) -> dict[int, Comparison | None]:
    """Every arm of ``errors`` (arm -> seed -> error) but the baseline against it, p adjusted over the family.
    ``test="paired"`` raises ``SeedsDoNotPair`` naming the first arm whose seeds differ from the baseline's."""
    base = errors.get(baseline, {})
    out: dict[int, Comparison | None] = {}
    for arm in sorted(errors):
        if arm == baseline:
            continue
        mine = errors[arm]
        if test == "paired":
            try:
                out[arm] = paired(mine, base)
            except SeedsDoNotPair as exc:
                raise SeedsDoNotPair(exc.only_first, exc.only_second, arm) from None
        else:
            out[arm] = welch(list(mine.values()), list(base.values()))
    arms = [arm for arm, c in out.items() if c is not None]
    adjusted = adjust([out[arm].p for arm in arms], correction)
    for arm, p in zip(arms, adjusted, strict=True):
        out[arm] = replace(out[arm], p_adjusted=p)
    return out


def describe(comparison: Comparison | None, is_baseline: bool, alpha: float = ALPHA, adjusted: bool = True) -> str:
    """The comparison cell of a table row, compact: "+0.52 [-0.31, +1.35], p=0.210*" (p adjusted unless the
    correction is none; * below ``alpha``)."""
    if is_baseline:
        return "baseline"
    if comparison is None:
        return f"n < {MIN_N}"
    interval = f"{comparison.difference:+.2f} [{comparison.low:+.2f}, {comparison.high:+.2f}]"
    if math.isnan(comparison.p):
        return f"{interval}, no spread"
    p = comparison.p_adjusted if adjusted and not math.isnan(comparison.p_adjusted) else comparison.p
    return f"{interval}, p={p:.3f}{'*' if p < alpha else ''}"
