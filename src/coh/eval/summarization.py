"""``coh eval feedback summarization``, on summarize_from_feedback validation comparisons: a summary
generated after the positive phrase, ROUGE-1/2/L F1 (``rouge-score``, stemmed) against the
preferred summaries of that post (the best-matching one counts when a post has several)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from coh.data.feedback import FeedbackExample, Turn
from coh.data.phrases import DEFAULT_PHRASES
from coh.eval.config import Sampling
from coh.eval.examples import unique_contexts
from coh.eval.generations import generate, prompt_ids, write_generations
from coh.models import LoadedModel


def eval_summarization(lm: LoadedModel, examples: Sequence[FeedbackExample], sampling: Sampling,
                       feedback: str = "good", task_phrase: str | None = None, output_dir: Path | None = None,
                       progress: bool = False) -> tuple[dict, dict, dict]:
    """ROUGE-1/2/L F1 of summaries generated after ``feedback`` against the preferred summaries of
    each post. Returns ``(metrics, ci95, counts)``; writes ``generations.jsonl`` to ``output_dir``."""
    from rouge_score import rouge_scorer

    task = DEFAULT_PHRASES["summary"].task[0] if task_phrase is None else task_phrase
    references: dict[tuple[Turn, ...], list[str]] = {}
    for ex in examples:
        refs = references.setdefault(ex.context, [])
        if ex.candidates[0].text not in refs:
            refs.append(ex.candidates[0].text)
    posts = unique_contexts(examples)
    contexts = [(Turn("user", task + ex.context[0].text), *ex.context[1:]) for ex in posts]
    summaries = generate(lm, prompt_ids(lm, contexts, feedback), sampling, progress, "summarize")
    rouge = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [rouge.score_multi(references[ex.context], s) for ex, s in zip(posts, summaries)]
    metrics = {key: sum(s[key].fmeasure for s in scores) / len(scores) for key in ("rouge1", "rouge2", "rougeL")}
    metrics["summary_words"] = sum(len(s.split()) for s in summaries) / len(summaries)
    if output_dir is not None:
        write_generations(output_dir / "generations.jsonl", [ex.id for ex in posts], contexts, feedback, summaries,
                          [{"references": references[ex.context]} for ex in posts])
    return metrics, {}, {"posts": len(posts), "empty_summaries": sum(not s for s in summaries)}
