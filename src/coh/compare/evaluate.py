"""The protocols every compared model goes through, on the same held-out rows.

- likelihood: ``coh.eval.dialogue.eval_dialogue`` (preferred vs dispreferred reply after the
  positive phrase, summed and per token; the authors' ``This dialogue is`` good/bad protocol),
  and for models trained without phrases (SFT, DPO, the base) the same preference accuracy after
  the plain prompt (``plain_preference``), which is their headline number;
- generation quality: greedy replies to held-out prompts (after the positive phrase or the plain
  prompt, as the model was trained), scored by the scorer (``coh.eval.scorers``: a reward model
  or a Python function); win rates are computed across models afterwards from the saved
  per-prompt scores;
- controllability (models trained with phrases): ``coh.eval.controllability.eval_controllability``;
- the regulariser's purpose: per-token loss on held-out plain text (``plain_text_loss``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from coh.data.records import FeedbackRecord, Segment


def reply_records(examples: Sequence, phrases, feedback: str | None) -> list[FeedbackRecord]:
    """Per example, the preferred then the dispreferred reply as loss segments after the inference
    prompt (``feedback`` None: no phrase; "good": the positive phrase): the pairs of
    ``coh.eval.preference``, flattened."""
    from coh.eval.preference import pairs_from_examples

    if feedback not in (None, "good"):
        raise ValueError(f"feedback must be None or 'good', got {feedback!r}")
    return [rec for pair in pairs_from_examples(examples, phrases, feedback is not None) for rec in pair]


def plain_preference(lm, examples: Sequence, batch_tokens: int = 8192, progress: bool = False
                     ) -> tuple[dict, dict]:
    """Preference accuracy after the plain prompt (no feedback phrase), summed and per token,
    ties as misses, 95 % Wilson intervals: ``coh.eval.preference`` without the phrase."""
    from coh.eval.likelihood import sequence_nll
    from coh.eval.preference import preference_accuracy
    from coh.stats import wilson_interval

    nll, count = sequence_nll(lm, reply_records(examples, lm.phrases, None), batch_tokens, progress)
    by_sum, by_token = preference_accuracy(nll, count)
    hits = {"plain_preference_accuracy": by_sum, "plain_preference_accuracy_per_token": by_token}
    metrics = {k: sum(v) / len(v) for k, v in hits.items()}
    return metrics, {k: wilson_interval(sum(v), len(v)) for k, v in hits.items()}


def plain_text_loss(lm, documents: Sequence[str], max_tokens: int, seed: int = 0) -> tuple[float, tuple, int]:
    """Token-weighted mean loss (nats per token) of the model on held-out plain text: whole
    documents in order until ``max_tokens`` tokens; the first token of each is not scored. Returns
    (loss, 95 % percentile-bootstrap interval over documents, tokens scored)."""
    from coh.eval.likelihood import sequence_nll
    from coh.stats import ratio_interval

    chosen, total = [], 0
    for doc, ids in zip(documents, lm.tokenizer(list(documents))["input_ids"]):
        if total >= max_tokens:
            break
        chosen.append(doc)
        total += len(ids)
    records = [FeedbackRecord(f"text/{i}", "text", "text", (Segment(d, True, "assistant"),), "eval")
               for i, d in enumerate(chosen)]
    nll, count = sequence_nll(lm, records)
    # 2,000 resamples: what the runs in docs/alignment.md were made with
    return float(sum(nll) / sum(count)), ratio_interval(nll, count, seed, n_resamples=2000), int(sum(count))


def scored_replies(lm, examples: Sequence, feedback: str, scorer, sampling, path: Path, progress: bool = False
                   ) -> dict[str, float]:
    """Greedy replies to the examples' prompts after ``feedback`` (``good`` or ``none``), scored by
    ``scorer`` and written to ``path`` (``coh eval``'s generations format, with the score)."""
    from coh.eval.examples import unique_contexts
    from coh.eval.generations import generate, prompt_ids, write_generations

    posts = unique_contexts(examples)
    contexts = [ex.context for ex in posts]
    replies = generate(lm, prompt_ids(lm, contexts, feedback), sampling, progress, f"generate ({feedback})")
    scores = scorer.score(contexts, replies)
    write_generations(path, [ex.id for ex in posts], contexts, feedback, replies, [{"score": s} for s in scores])
    return {ex.id: s for ex, s in zip(posts, scores)}


def read_scores(path: Path) -> dict[str, float]:
    """``id -> score`` of a generations file written with scores."""
    from coh.data.io import iter_json_lines

    return {row["id"]: float(row["score"]) for _, row in iter_json_lines(path)}


def evaluate_model(folder: str, feedback: str, controllable: bool, likelihood_examples: Sequence,
                   generation_examples: Sequence, scorer, sampling, documents: Sequence[str], plain_text_tokens: int,
                   out: Path, device: str | None, progress: bool = False) -> dict:
    """Every protocol on one model folder; writes ``out/results.json`` (``coh eval``'s format,
    readable by ``coh eval table``), ``out/generations*.jsonl`` and ``out/pairs.jsonl``."""
    from coh.eval.controllability import eval_controllability
    from coh.eval.dialogue import eval_dialogue
    from coh.eval.report import EvalResult, write_result
    from coh.models import load_for_inference

    lm = load_for_inference(folder, device)
    metrics, ci95 = eval_dialogue(lm, likelihood_examples, output_dir=out, progress=progress)
    if feedback == "none":
        m, c = plain_preference(lm, likelihood_examples, progress=progress)
        metrics.update(m)
        ci95.update(c)
    counts = {"pairs": len(likelihood_examples)}
    if controllable:
        m, c, n = eval_controllability(lm, generation_examples, scorer, sampling, out, progress)
        metrics.update(m)
        ci95.update(c)
        counts.update(prompts=n["prompts"])
        scores = read_scores(out / "generations_good.jsonl")
    else:
        scores = scored_replies(lm, generation_examples, feedback, scorer, sampling, out / "generations_none.jsonl",
                                progress)
        counts.update(prompts=len(scores))
    metrics["judge_mean"] = sum(scores.values()) / len(scores)  # the scorer's; the key of results written so far
    loss, interval, tokens = plain_text_loss(lm, documents, plain_text_tokens)
    metrics["plain_text_loss"] = loss
    ci95["plain_text_loss"] = interval
    counts["plain_text_tokens"] = tokens
    settings = {"feedback": feedback, "max_new_tokens": sampling.max_new_tokens,
                "phrases": {"user": lm.phrases.user, "good": lm.phrases.good, "bad": lm.phrases.bad}}
    write_result(EvalResult("compare", folder, None, metrics, ci95, counts, settings), out)
    (out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n", encoding="utf-8")
    del lm
    return {"metrics": metrics, "ci95": {k: list(v) for k, v in ci95.items()}, "counts": counts}


def scorer_accuracy(scorer, examples: Sequence) -> tuple[float, tuple[float, float], int]:
    """How often the scorer scores the preferred reply above the dispreferred one, on held-out
    pairs (ties as misses): its own accuracy, with a 95 % Wilson interval. The pairwise rule is
    ``coh.eval.preference.preference_accuracy``'s, on negated scores (lower wins there)."""
    from coh.eval.preference import preference_accuracy
    from coh.stats import wilson_interval

    contexts = [ex.context for ex in examples]
    chosen = scorer.score(contexts, [ex.candidates[0].text for ex in examples])
    rejected = scorer.score(contexts, [ex.candidates[-1].text for ex in examples])
    by_score, _ = preference_accuracy([-s for pair in zip(chosen, rejected) for s in pair], [1] * 2 * len(examples))
    hits = sum(by_score)
    return hits / len(examples), wilson_interval(hits, len(examples)), len(examples)
