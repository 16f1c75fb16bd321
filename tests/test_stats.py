"""pipeline/stats.py on numbers chosen here, with answers worked out by hand (t quantiles from the standard
table: t(0.975, 2) = 4.303, t(0.975, 1) = 12.706)."""

import math

import pytest

from pipeline import stats


def test_summary_is_the_mean_sample_std_and_t_interval():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    half = 4.303 / math.sqrt(3)  # t(0.975, 2) x s / sqrt(n)
    assert (s.low, s.high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-3)
    two = stats.summarize([70.0, 72.0])  # std sqrt(2); half-width 12.706 x sqrt(2) / sqrt(2)
    assert (two.low, two.high) == pytest.approx((71.0 - 12.706, 71.0 + 12.706), abs=1e-3)


def test_one_seed_has_no_interval():
    s = stats.summarize([76.5])
    assert (s.mean, s.std, s.low, s.high) == (76.5, None, None, None)
    assert stats.difference([76.5], [70.0, 71.0]).better() is None


def test_welch_interval_of_a_difference():
    # a = [10, 12], b = [1, 3]: difference 9, variances 2/2 + 2/2 -> se sqrt(2), df (1+1)^2 / (1/1 + 1/1) = 2.
    d = stats.difference([10.0, 12.0], [1.0, 3.0])
    assert d.mean == 9.0 and d.df == pytest.approx(2.0)
    assert (d.low, d.high) == pytest.approx((9 - 4.303 * math.sqrt(2), 9 + 4.303 * math.sqrt(2)), abs=1e-3)
    assert d.better() == "a" and d.better(higher_is_better=False) == "b"
    # Unequal spreads: a = [0, 2, 4] (var 4), b = [1, 1.5] (var 0.125): se^2 = 4/3 + 0.0625, Welch df ~2.1.
    d = stats.difference([0.0, 2.0, 4.0], [1.0, 1.5])
    va, vb = 4 / 3, 0.125 / 2
    assert d.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1))
    assert d.better() is None  # 0.75 apart, the interval spans 0


def test_ranks_claim_an_order_only_where_intervals_allow():
    rows = {"A": [80.0, 80.2, 80.1], "B": [79.0, 79.1, 78.9], "C": [79.05, 78.95, 79.0], "D": [70.0, 75.0, 80.0]}
    r = stats.ranks(rows)
    # A beats B and C (0.1 spreads, ~1 apart): places 1-2, D may be above it; B and C cannot be told apart; D's
    # spread overlaps everyone.
    assert r == {"A": (1, 2), "B": (2, 4), "C": (2, 4), "D": (1, 4)}
    assert stats.ranks({"A": [80.0, 80.2, 80.1], "B": [79.0, 79.1, 78.9]}) == {"A": (1, 1), "B": (2, 2)}
    # Lower is better (an error rate): the order flips.
    assert stats.ranks({"A": [80.0, 80.2, 80.1], "B": [79.0, 79.1, 78.9]}, higher_is_better=False) == \
        {"A": (2, 2), "B": (1, 1)}


def test_pairwise_lists_every_pair_once_with_the_winner():
    found = stats.pairwise({"A": [10.0, 12.0], "B": [1.0, 3.0], "C": [11.0, 11.5]})
    # B and C are 9.25 apart, but with B's spread and C's far smaller one Welch's df is near 1 (t = 12.7 and up):
    # two seeds do not resolve it, where A - B (equal spreads, df 2) is resolved.
    assert [(p["a"], p["b"], p["better"]) for p in found] == [("A", "B", "A"), ("A", "C", None), ("B", "C", None)]
    assert found[2]["df"] == pytest.approx((2 / 2 + 0.125 / 2) ** 2 / ((2 / 2) ** 2 + (0.125 / 2) ** 2))
