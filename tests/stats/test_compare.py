"""Statistics on hand-made numbers with known answers, and the table's handling of n."""

import math

import pytest

from ablation.stats.compare import describe_test, mean_std, welch


def test_mean_and_sample_std():
    mean, std = mean_std([22.5, 22.7, 22.9])
    assert mean == pytest.approx(22.7)
    assert std == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert math.isnan(mean_std([22.5])[1])  # one seed: no spread, not a made-up one
    assert all(math.isnan(v) for v in mean_std([]))


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    # mean 2 vs 5; variances 1 and 20/3; se^2 = 1/3 + 5/3 = 2; t = -3 / sqrt(2)
    result = welch(a, b)
    assert result.difference == pytest.approx(-3.0)
    assert result.t == pytest.approx(-3 / math.sqrt(2))
    # Welch-Satterthwaite: 2^2 / ((1/3)^2 / 2 + (5/3)^2 / 3) = 4 / (1/18 + 25/27)
    assert result.df == pytest.approx(4 / (1 / 18 + 25 / 27))
    assert result.p == pytest.approx(0.0999, abs=5e-4)


def test_welch_needs_two_values_per_arm_and_spread():
    assert welch([1.0], [2.0, 3.0]) is None
    flat = welch([2.0, 2.0], [2.0, 2.0])
    assert math.isnan(flat.p) and describe_test(flat, False) == "no spread"
    assert describe_test(None, False) == "n < 2"
    assert describe_test(None, True) == "baseline"
    clear = welch([20.0, 20.1, 19.9], [25.0, 25.1, 24.9])
    assert clear.p < 1e-4 and describe_test(clear, False).endswith("*")
    assert describe_test(welch([1.0, 3.0], [2.0, 4.0]), False) == "-1.00, p=0.553"
