"""Statistics for comparing arms over seeds, stated plainly.

Test: Welch's two-sample t-test (unequal variances) on the per-seed final top-1 errors of an arm against the
table's baseline arm, two-sided. It needs n >= 2 seeds in both arms (a variance needs two values); with n = 2 it
has very little power, so three or more seeds per arm are what a claim should rest on. Nothing here invents a
spread: with n = 1 there is no standard deviation and no test, and the table says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

MIN_N = 2
ALPHA = 0.05


@dataclass(frozen=True)
class WelchResult:
    difference: float  # mean(a) - mean(b)
    t: float
    df: float  # Welch-Satterthwaite degrees of freedom
    p: float  # two-sided


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); the std is NaN for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def welch(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Welch's t-test of mean(a) != mean(b); None when either sample has fewer than two values."""
    if len(a) < MIN_N or len(b) < MIN_N:
        return None
    mean_a, sd_a = mean_std(a)
    mean_b, sd_b = mean_std(b)
    va, vb = sd_a**2 / len(a), sd_b**2 / len(b)
    if va + vb == 0:
        # Identical values within each arm: no spread to test against (the t statistic is undefined).
        return WelchResult(mean_a - mean_b, math.nan, math.nan, math.nan)
    result = scipy_stats.ttest_ind(a, b, equal_var=False)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return WelchResult(mean_a - mean_b, float(result.statistic), df, float(result.pvalue))


def describe_test(result: WelchResult | None, is_baseline: bool) -> str:
    """The significance cell of a table row."""
    if is_baseline:
        return "baseline"
    if result is None:
        return f"n < {MIN_N}"
    if math.isnan(result.p):
        return "no spread"
    star = "*" if result.p < ALPHA else ""
    return f"{result.difference:+.2f}, p={result.p:.3f}{star}"
