from __future__ import annotations

import numpy as np
import pytest

from coh.stats import ratio_interval, win_rate


def test_win_rate_counts_ties_as_half():
    w = win_rate([3, 1, 2, 5, 0], [1, 1, 4, 2, 0])  # win, tie, loss, win, tie
    assert (w.wins, w.ties, w.losses, w.n) == (2, 2, 1, 5)
    assert w.rate == pytest.approx(3 / 5)
    assert w.low <= w.rate <= w.high


def test_win_rate_interval_matches_a_naive_bootstrap():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.3, 1, 300), rng.normal(0, 1, 300)
    w = win_rate(a, b, seed=5)
    outcome = np.where(a > b, 1.0, 0.0)
    means = [rng.choice(outcome, len(outcome)).mean() for _ in range(4000)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert w.rate == pytest.approx(outcome.mean())
    assert w.low == pytest.approx(lo, abs=0.015) and w.high == pytest.approx(hi, abs=0.015)
    assert win_rate(a, b, seed=5) == w  # seeded: the same interval every time


def test_win_rate_degenerate_and_mismatched():
    w = win_rate([1, 1, 1], [0, 0, 0])
    assert (w.rate, w.low, w.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="one score of A and one of B"):
        win_rate([1, 2], [1])


def test_ratio_interval_matches_a_naive_paired_bootstrap():
    """Items (documents) resampled with both parts: the ratio of sums, not the mean of ratios."""
    rng = np.random.default_rng(2)
    tokens = rng.integers(5, 200, 150).astype(float)
    nll = tokens * rng.normal(3.0, 0.4, 150)
    low, high = ratio_interval(nll, tokens, seed=3)
    picks = [rng.integers(0, 150, 150) for _ in range(4000)]
    ratios = [nll[k].sum() / tokens[k].sum() for k in picks]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    assert low == pytest.approx(lo, abs=0.02) and high == pytest.approx(hi, abs=0.02)
    assert low < nll.sum() / tokens.sum() < high
    assert ratio_interval(nll, tokens, seed=3) == (low, high)  # seeded
    assert ratio_interval([6.0], [2.0]) == (3.0, 3.0)  # one item: the point
