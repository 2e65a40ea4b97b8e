"""The intervals every stage reports, in one place.

- :func:`wilson_interval`: a 95 % Wilson score interval for a proportion of yes/no outcomes
  (accuracies, vote shares). Closed-form and deterministic (no resampling seed, the same table
  every time), and it keeps its coverage at the small counts and the shares near 0 or 1 that
  evaluations and human studies produce, where the normal (Wald) interval shrinks to nothing.
- :func:`win_rate`: A over B on the same prompts, ties worth half a win, with a seeded 95 %
  percentile-bootstrap interval over prompts (scipy). A half-win tie makes the win rate no
  binomial proportion, hence the bootstrap.
- :func:`ratio_interval`: a seeded 95 % percentile-bootstrap interval of a ratio of sums over
  items (a loss in nats per token over documents), the items resampled with both their parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class WinRate:
    """Outcome of comparing A with B on the same prompts: ``rate`` = (wins + ties / 2) / n, with a
    95 % percentile-bootstrap interval ``[low, high]`` over prompts."""

    wins: int
    ties: int
    losses: int
    rate: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], seed: int = 0) -> WinRate:
    """How often A scores above B, prompt by prompt (equal scores are ties, worth half a win)."""
    import numpy as np
    from scipy.stats import bootstrap

    if len(scores_a) != len(scores_b):
        raise ValueError(f"win rate needs one score of A and one of B per prompt, got {len(scores_a)} and {len(scores_b)}")
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    outcome = np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))
    wins, ties = int((outcome == 1.0).sum()), int((outcome == 0.5).sum())
    if len(outcome) == 0:
        return WinRate(0, 0, 0, float("nan"), float("nan"), float("nan"))
    rate = float(outcome.mean())
    if len(outcome) == 1 or np.all(outcome == outcome[0]):  # no spread to resample: the interval is the point
        return WinRate(wins, ties, len(outcome) - wins - ties, rate, rate, rate)
    ci = bootstrap((outcome,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return WinRate(wins, ties, len(outcome) - wins - ties, rate, float(ci.low), float(ci.high))


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float], seed: int = 0,
                   n_resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of ``sum(numerators) / sum(denominators)``, item ``k``
    contributing ``numerators[k]`` and ``denominators[k]`` (resampled together): a token-weighted
    mean such as a loss in nats per token over documents. Fewer than two items: the point."""
    import numpy as np
    from scipy.stats import bootstrap

    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if len(num) < 2:
        point = float(num.sum() / den.sum())
        return point, point
    ci = bootstrap((num, den), lambda n, d, axis=-1: n.sum(axis) / d.sum(axis), paired=True, vectorized=True,
                   confidence_level=CONFIDENCE, n_resamples=n_resamples, method="percentile",
                   rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)
