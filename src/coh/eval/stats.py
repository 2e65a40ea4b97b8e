"""Win rates under a judge, with ties counted as half a win (pairwise, controllability), and their
95 % percentile-bootstrap interval over prompts (scipy), seeded, so the same outcomes always give
the same interval. (Proportions of yes/no outcomes use ``coh.judge.stats.wilson_interval``; a
half-win tie makes the win rate no binomial proportion, hence the bootstrap here.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
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
