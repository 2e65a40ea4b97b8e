from __future__ import annotations

import numpy as np
import pytest

from coh.stats import win_rate


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
