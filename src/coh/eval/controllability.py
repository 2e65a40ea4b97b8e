"""``coh eval feedback controllability``: replies generated under the positive and under the
negative phrase, both scored by a scorer (``coh.eval.scorers``); the positive should win."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from coh.data.feedback import FeedbackExample
from coh.eval.config import Sampling
from coh.eval.examples import unique_contexts
from coh.eval.generations import generate, prompt_ids, write_generations
from coh.eval.metrics import add_win_rate
from coh.eval.scorers import Scorer
from coh.models import LoadedModel


def eval_controllability(lm: LoadedModel, examples: Sequence[FeedbackExample], scorer: Scorer, sampling: Sampling,
                         output_dir: Path | None = None, progress: bool = False) -> tuple[dict, dict, dict]:
    """Replies under the positive and the negative phrase, scored by ``scorer``: mean scores, and
    the win rate of positive over negative with its 95 % bootstrap interval. Returns
    ``(metrics, ci95, counts)``; writes ``generations_good.jsonl`` and ``generations_bad.jsonl``
    (each reply with its score) to ``output_dir``."""
    posts = unique_contexts(examples)
    contexts = [ex.context for ex in posts]
    replies = {fb: generate(lm, prompt_ids(lm, contexts, fb), sampling, progress, f"generate ({fb})")
               for fb in ("good", "bad")}
    scores = {fb: scorer.score(contexts, replies[fb]) for fb in ("good", "bad")}
    # "judge_*": the metric names of results files written so far
    metrics = {"judge_good_mean": sum(scores["good"]) / len(posts), "judge_bad_mean": sum(scores["bad"]) / len(posts)}
    metrics["judge_gap_mean"] = metrics["judge_good_mean"] - metrics["judge_bad_mean"]
    ci95: dict = {}
    counts = {"prompts": len(posts)}
    add_win_rate("good_over_bad_win_rate", scores["good"], scores["bad"], sampling.seed, metrics, ci95, counts)
    if output_dir is not None:
        for fb in ("good", "bad"):
            write_generations(output_dir / f"generations_{fb}.jsonl", [ex.id for ex in posts], contexts, fb,
                              replies[fb], [{"score": s} for s in scores[fb]])
    return metrics, ci95, counts
