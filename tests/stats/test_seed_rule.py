"""The adaptive seed rule on hand-made numbers: the interval against scipy's own, the level each look spends, when
the rule stops, and its error rate under repeated looks by simulation."""

import math

import pytest
from scipy import stats as scipy_stats

from ablation.experiment.tune import SeedRule
from ablation.stats.seed_rule import Verdict, ci95, interval, look_level, next_round, nominal_levels, verdicts

RULE = SeedRule(min=3, max=10)  # sequential, alpha 0.05
OLD = SeedRule(min=3, max=10, until="ci95 excludes 0")
BASE = [25.0, 25.4, 24.8]  # baseline arm 0, seeds 0-2


@pytest.mark.parametrize(
    ("arm", "baseline"),
    [
        ([1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]),
        ([20.0, 20.1, 19.9], [25.0, 25.1, 24.9]),
        ([1.0, 3.0], [2.0, 4.0]),
        ([22.3, 22.9, 23.4, 22.1, 22.8], [23.0, 23.2]),
        pytest.param(  # no spread in one sample only (scipy warns about the constant sample; the answer is exact)
            [5.0, 5.0, 5.0], [4.0, 6.5, 5.5, 4.8], marks=pytest.mark.filterwarnings("ignore:Precision loss")
        ),
    ],
)
def test_ci_matches_scipy(arm, baseline):
    interval = ci95(arm, baseline)
    reference = scipy_stats.ttest_ind(arm, baseline, equal_var=False)
    low, high = reference.confidence_interval(0.95)
    assert interval.low == pytest.approx(low, rel=1e-9, abs=1e-12)
    assert interval.high == pytest.approx(high, rel=1e-9, abs=1e-12)
    assert interval.df == pytest.approx(reference.df, rel=1e-9)
    assert interval.difference == pytest.approx(sum(arm) / len(arm) - sum(baseline) / len(baseline))
    assert interval.excludes_zero == (low > 0 or high < 0)


def test_ci_by_hand():
    # Means 2 and 5; va + vb = 1/3 + 5/3 = 2; df = 4 / (1/18 + 25/27); diff ± t * sqrt(2).
    interval = ci95([1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0])
    df = 4 / (1 / 18 + 25 / 27)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(2)
    got = (interval.difference, interval.low, interval.high, interval.df)
    assert got == pytest.approx((-3.0, -3.0 - half, -3.0 + half, df))
    assert not interval.excludes_zero  # p ~ 0.1: 0 lies inside


def test_ci_needs_two_values_each():
    assert ci95([1.0], [2.0, 3.0]) is None
    assert ci95([1.0, 2.0], [3.0]) is None
    assert ci95([], []) is None


def test_zero_spread_is_a_point():
    point = ci95([20.0, 20.0, 20.0], [25.0, 25.0])
    assert (point.difference, point.low, point.high) == (-5.0, -5.0, -5.0)
    assert math.isnan(point.df) and point.excludes_zero
    same = ci95([20.0, 20.0], [20.0, 20.0, 20.0])
    assert (same.low, same.high) == (0.0, 0.0) and not same.excludes_zero


def test_resolved_results_stop():
    results = {0: BASE, 1: [20.0, 20.3, 19.8], 2: [30.1, 29.7, 30.4]}
    enqueued = {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2]}
    states = verdicts(results, enqueued, baseline=0, rule=RULE)
    assert set(states) == {1, 2}  # the baseline has no verdict
    assert all(v.state == "resolved" and v.n == 3 for v in states.values())
    assert states[1].interval.high < 0 < states[2].interval.low
    assert next_round(results, enqueued, baseline=0, rule=RULE) == {}


def test_unresolved_results_keep_going():
    # Arm 1 overlaps the baseline; arm 2 is clearly better; arm 3 overlaps and has a failed seed (1: queued, no result).
    results = {0: BASE, 1: [25.2, 24.7, 25.6], 2: [20.0, 20.3, 19.8], 3: [24.9, 25.5]}
    enqueued = {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}
    states = verdicts(results, enqueued, baseline=0, rule=RULE)
    assert {arm: v.state for arm, v in states.items()} == {1: "unresolved", 2: "resolved", 3: "unresolved"}
    assert states[3].n == 2
    assert next_round(results, enqueued, baseline=0, rule=RULE) == {0: 3, 1: 3, 3: 3}
    # Seeds fill the smallest gap >= start: a seed queued out of order is not queued again.
    gappy = {0: [0, 1, 2, 4], 1: [0, 2, 3], 2: [0, 1, 2], 3: [0, 1, 2]}
    assert next_round(results, gappy, baseline=0, rule=RULE) == {0: 3, 1: 1, 3: 3}
    shifted = SeedRule(min=3, max=10, start=5)
    assert next_round(results, {a: [5, 6, 7] for a in range(4)}, baseline=0, rule=shifted) == {0: 8, 1: 8, 3: 8}


def test_max_seeds_stops():
    rule = SeedRule(min=3, max=4)
    results = {0: [25.0, 25.4, 24.8, 25.1], 1: [25.2, 24.7, 25.6, 25.0]}
    enqueued = {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}
    verdict = verdicts(results, enqueued, baseline=0, rule=rule)[1]
    assert verdict.state == "max seeds" and verdict.interval is not None and not verdict.interval.excludes_zero
    assert verdict.describe() == "unresolved at max n=4"
    assert next_round(results, enqueued, baseline=0, rule=rule) == {}
    # The baseline at max does not stop an arm that is not: the arm alone gets its seed.
    short = {0: [0, 1, 2, 3], 1: [0, 1, 2]}
    assert next_round({0: results[0], 1: results[1][:3]}, short, baseline=0, rule=rule) == {1: 3}


def test_fewer_than_min_is_topped_up():
    # Arm 1 "resolves" on two seeds, but the rule judges nothing before min seeds: it gets its third.
    results = {0: BASE, 1: [20.0, 20.3]}
    enqueued = {0: [0, 1, 2], 1: [0, 1]}
    assert verdicts(results, enqueued, baseline=0, rule=RULE)[1].state == "unresolved"
    assert next_round(results, enqueued, baseline=0, rule=RULE) == {0: 3, 1: 2}
    # A baseline short of min holds every arm back, and is topped up itself.
    assert next_round({0: BASE[:2], 1: [20.0, 20.3, 19.8]}, {0: [0, 1], 1: [0, 1, 2]}, 0, RULE) == {0: 2, 1: 3}
    assert next_round({}, {}, baseline=0, rule=RULE) == {0: 0}


def test_results_beyond_queue_are_an_error():
    with pytest.raises(ValueError, match="arm 1 has 3 finished results"):
        verdicts({0: BASE, 1: [1.0, 2.0, 3.0]}, {0: [0, 1, 2], 1: [0, 1]}, baseline=0, rule=RULE)


def test_describe():
    assert Verdict(1, 4, None, "resolved").describe() == "resolved at n=4"
    assert Verdict(1, 10, None, "max seeds").describe() == "unresolved at max n=10"
    assert Verdict(1, 3, None, "unresolved").describe() == "unresolved at n=3"


def test_the_sequential_boundary_spends_alpha_linearly_over_the_planned_looks():
    """Checked against an independent formulation: a Monte Carlo of the looks' z statistics (sums of standardised
    differences over nested samples), each look crossing its nominal level only where no earlier one did."""
    import numpy as np
    from scipy import stats as scipy_stats

    levels = nominal_levels(RULE.min, RULE.max, RULE.alpha)
    assert levels[0] == pytest.approx(0.05 * 3 / 10)  # the first look: its increment itself
    assert all(0.05 / 10 < level < 0.05 for level in levels[1:])  # above the union bound's split, below alpha
    paths = np.cumsum(np.random.default_rng(0).normal(size=(200_000, RULE.max)), axis=1)
    alive, crossed = np.ones(len(paths), bool), []
    for n, level in zip(range(RULE.min, RULE.max + 1), levels, strict=True):
        z = np.abs(paths[:, n - 1]) / np.sqrt(n)
        now = alive & (z > scipy_stats.norm.isf(level / 2))
        crossed.append(now.mean())
        alive &= ~now
    expected = [0.015] + [0.005] * 7  # linear spending: alpha * n / max by look n
    assert crossed == pytest.approx(expected, abs=0.0012)  # 4 standard errors of 200,000 paths
    assert sum(crossed) == pytest.approx(RULE.alpha, abs=0.002)
    assert look_level(2, RULE) == 1.0 and look_level(11, RULE) == 1.0  # no look outside min..max
    assert look_level(3, RULE) == pytest.approx(1 - levels[0])
    assert all(look_level(n, OLD) == 0.95 for n in range(2, 12))  # the old rule: 95% at every look


def test_a_difference_the_old_rule_calls_is_not_yet_resolved_at_the_sequential_level():
    arm, base = [24.0, 24.5, 24.2], [25.0, 25.4, 24.8]
    assert interval(arm, base, 0.95).excludes_zero  # what the old rule sees at its first look
    results, enqueued = {0: base, 1: arm}, {0: [0, 1, 2], 1: [0, 1, 2]}
    assert verdicts(results, enqueued, 0, OLD)[1].state == "resolved"
    sequential = verdicts(results, enqueued, 0, RULE)[1]
    assert sequential.state == "unresolved" and not sequential.interval.excludes_zero
    assert sequential.interval.high - sequential.interval.low > 0  # its interval: at level 1 - 0.015, wider


@pytest.mark.slow
def test_with_no_true_difference_the_sequential_rule_resolves_at_most_alpha_of_sweeps():
    """Repeated looks, simulated with the rule's own code (benchmarks/seed_rule_error.py runs more of them)."""
    import numpy as np

    rng = np.random.default_rng(3)
    sweeps, found = 1200, {"old": 0, "new": 0}
    for _ in range(sweeps):
        draws = {0: rng.normal(0, 1, 10), 1: rng.normal(0, 1, 10)}
        for name, rule in (("old", OLD), ("new", RULE)):
            queued = {0: [0, 1, 2], 1: [0, 1, 2]}
            while True:
                results = {arm: [float(draws[arm][s]) for s in seeds] for arm, seeds in queued.items()}
                plan = next_round(results, queued, 0, rule)
                if not plan:
                    found[name] += verdicts(results, queued, 0, rule)[1].state == "resolved"
                    break
                for arm, seed in plan.items():
                    queued[arm].append(seed)
    margin = 3 * math.sqrt(0.05 * 0.95 / sweeps)
    assert found["new"] / sweeps <= 0.05 + margin
    assert found["old"] / sweeps > 0.05 + margin  # the repeated looks of the old rule, as the README warns
