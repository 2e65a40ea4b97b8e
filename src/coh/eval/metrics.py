"""A metric with its 95 % interval into a run's ``metrics`` and ``ci95`` (``coh.eval.report.EvalResult``):
accuracies with Wilson intervals, win rates of scored replies with bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence

from coh.stats import wilson_interval, win_rate


def add_accuracy(name: str, hits: Sequence[bool], metrics: dict, ci95: dict) -> None:
    """The share of ``hits`` that are true (nan for none) and its Wilson interval."""
    n = len(hits)
    metrics[name] = sum(hits) / n if n else float("nan")
    ci95[name] = wilson_interval(sum(hits), n)


def add_win_rate(name: str, scores_a: Sequence[float], scores_b: Sequence[float], seed: int, metrics: dict,
                 ci95: dict, counts: dict) -> None:
    """How often A's score beats B's on the same prompt (ties count half), its percentile-bootstrap
    interval (seeded), and the wins, ties and losses in ``counts``."""
    w = win_rate(scores_a, scores_b, seed)
    metrics[name] = w.rate
    ci95[name] = (w.low, w.high)
    counts.update(wins=w.wins, ties=w.ties, losses=w.losses)
