"""Comparisons over seeds on hand-made numbers with known answers, checked against SciPy's own tests and against the
correction procedures written out as their textbooks state them, and the table's handling of n."""

import itertools
import math
import random

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ablation.stats.compare import SeedsDoNotPair, adjust, compare_arms, describe, family_size, mean_std, paired, welch


def test_mean_and_sample_std():
    mean, std = mean_std([22.5, 22.7, 22.9])
    assert mean == pytest.approx(22.7)
    assert std == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert math.isnan(mean_std([22.5])[1])  # one seed: no spread, not a made-up one
    assert all(math.isnan(v) for v in mean_std([]))


def test_welch_by_hand_and_against_scipy():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    # mean 2 vs 5; variances 1 and 20/3; se^2 = 1/3 + 5/3 = 2; t = -3 / sqrt(2)
    result = welch(a, b)
    assert result.difference == pytest.approx(-3.0)
    assert result.t == pytest.approx(-3 / math.sqrt(2))
    # Welch-Satterthwaite: 2^2 / ((1/3)^2 / 2 + (5/3)^2 / 3) = 4 / (1/18 + 25/27)
    assert result.df == pytest.approx(4 / (1 / 18 + 25 / 27))
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert result.p == pytest.approx(reference.pvalue) and result.p == pytest.approx(0.0999, abs=5e-4)
    assert (result.low, result.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    # Hedges' g: the difference over the pooled sd (sqrt((2*1 + 3*20/3) / 5) = sqrt(22/5)), times 1 - 3/(4*5 - 1).
    assert result.effect == pytest.approx(-3 / math.sqrt(22 / 5) * (1 - 3 / 19))


def test_paired_against_scipy_and_refused_where_seeds_do_not_pair():
    arm = {0: 22.1, 1: 22.9, 2: 22.4, 3: 23.0}
    base = {0: 22.6, 1: 23.1, 2: 23.0, 3: 23.2}
    result = paired(arm, base)
    reference = scipy_stats.ttest_rel([arm[s] for s in range(4)], [base[s] for s in range(4)])
    interval = reference.confidence_interval(0.95)
    assert (result.t, result.df, result.p) == (pytest.approx(reference.statistic), 3, pytest.approx(reference.pvalue))
    assert (result.low, result.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    differences = np.array([arm[s] - base[s] for s in range(4)])
    assert result.effect == pytest.approx(differences.mean() / differences.std(ddof=1) * (1 - 3 / (4 * 3 - 1)))
    with pytest.raises(SeedsDoNotPair) as raised:
        paired({**arm, 7: 22.0}, base)
    assert (raised.value.only_first, raised.value.only_second) == ([7], [])


def test_pairing_is_sharper_when_a_seed_moves_every_arm():
    """Seed effects shared by both arms (what a seed fixes: data order, augmentation) cancel in the pairs."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1.0, 6)  # each seed's luck, the same in both arms
    base = {s: 25.0 + shared[s] + rng.normal(0, 0.1) for s in range(6)}
    arm = {s: 24.6 + shared[s] + rng.normal(0, 0.1) for s in range(6)}
    sharp, blunt = paired(arm, base), welch(list(arm.values()), list(base.values()))
    assert sharp.p < 0.01 < 0.05 < blunt.p
    assert sharp.high - sharp.low < (blunt.high - blunt.low) / 3


def _holm_rejects(pvalues, alpha):
    """Holm's procedure as stated: sort ascending; reject while p_(k) <= alpha / (m - k + 1) (k from 1)."""
    m, rejected = len(pvalues), set()
    for k, (p, i) in enumerate(sorted((p, i) for i, p in enumerate(pvalues)), start=1):
        if p > alpha / (m - k + 1):
            break
        rejected.add(i)
    return rejected


def _bh_rejects(pvalues, alpha):
    """Benjamini-Hochberg as stated: the largest k with p_(k) <= k alpha / m; reject the k smallest."""
    m = len(pvalues)
    ordered = sorted((p, i) for i, p in enumerate(pvalues))
    largest = max((k for k, (p, _) in enumerate(ordered, start=1) if p <= k * alpha / m), default=0)
    return {i for _, i in ordered[:largest]}


def test_adjusted_p_values_reject_exactly_what_the_procedures_reject():
    random.seed(0)
    for _ in range(300):
        m = random.randint(1, 8)
        pvalues = [random.choice([random.random(), random.random() ** 4, 0.01, 0.02]) for _ in range(m)]
        for alpha in (0.01, 0.05, 0.1):
            holm, bh = adjust(pvalues, "holm"), adjust(pvalues, "bh")
            assert {i for i, p in enumerate(holm) if p <= alpha} == _holm_rejects(pvalues, alpha)
            assert {i for i, p in enumerate(bh) if p <= alpha} == _bh_rejects(pvalues, alpha)
            assert all(b <= h + 1e-12 for b, h in zip(bh, holm, strict=True))  # BH never stricter than Holm
    assert adjust([0.01, 0.04, 0.03], "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust([0.01, 0.04, 0.03], "bh") == pytest.approx([0.03, 0.04, 0.04])
    assert adjust([0.2, math.nan], "holm")[0] == 0.2 and math.isnan(adjust([0.2, math.nan], "holm")[1])


def test_compare_arms_corrects_the_family_and_names_the_arm_whose_seeds_do_not_pair():
    errors = {
        0: {0: 25.0, 1: 25.4, 2: 24.8},
        1: {0: 24.0, 1: 24.3, 2: 23.9},
        2: {0: 25.1, 1: 25.2, 2: 24.7},
        3: {0: 20.0},  # one seed: no test, not in the family
    }
    found = compare_arms(errors, baseline=0, correction="holm")
    assert family_size(found) == 2 and found[3] is None
    raw = [found[1].p, found[2].p]
    assert [found[1].p_adjusted, found[2].p_adjusted] == pytest.approx(adjust(raw, "holm"))
    with pytest.raises(SeedsDoNotPair) as raised:
        compare_arms({**errors, 3: {0: 20.0, 5: 21.0}}, baseline=0, test="paired")
    assert raised.value.arm == 3 and raised.value.only_first == [5]


def test_the_table_cell_is_compact_and_never_invents_a_spread():
    assert describe(None, True) == "baseline"
    assert describe(None, False) == "n < 2"
    flat = welch([2.0, 2.0], [2.0, 2.0])
    assert math.isnan(flat.p) and describe(flat, False) == "+0.00 [+0.00, +0.00], no spread"
    clear = compare_arms({0: {0: 25.0, 1: 25.1, 2: 24.9}, 1: {0: 20.0, 1: 20.1, 2: 19.9}}, 0)[1]
    assert clear.p < 1e-4 and describe(clear, False).endswith("*")
    cell = describe(compare_arms({0: {0: 2.0, 1: 4.0}, 1: {0: 1.0, 1: 3.0}}, 0)[1], False)
    assert cell.startswith("-1.00 [") and cell.endswith(", p=0.553")


@pytest.mark.parametrize(("n", "m"), itertools.product((3, 5), (4,)))
def test_holm_keeps_the_family_wise_error_at_alpha_when_nothing_differs(n, m):
    """Simulated: m arms that do not differ from the baseline, n seeds each; Welch + Holm declares any of them in at
    most about alpha of the tables (uncorrected, far more)."""
    rng = np.random.default_rng(1)
    tables, any_holm, any_raw = 1500, 0, 0
    for _ in range(tables):
        errors = {arm: dict(enumerate(rng.normal(25.0, 0.3, n))) for arm in range(m + 1)}
        found = compare_arms(errors, 0, correction="holm")
        any_holm += any(c.p_adjusted < 0.05 for c in found.values())
        any_raw += any(c.p < 0.05 for c in found.values())
    assert any_holm / tables <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / tables)
    assert any_raw / tables > 0.1
