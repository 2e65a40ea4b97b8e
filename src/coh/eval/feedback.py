"""The paper's own evaluations, on a model loaded in this process.

- ``dialogue`` (hh-rlhf test pairs): preference accuracy, how often the model gives the chosen
  reply a higher likelihood than the rejected one, both after the positive phrase and the same
  context (rendered as training renders it); and the authors' protocol, the likelihood of
  ``good`` against ``bad`` after ``The following is a dialogue: {dialogue}. This dialogue is``.
- ``summarization`` (summarize_from_feedback validation): a summary generated after the positive
  phrase, ROUGE-1/2/L F1 (``rouge-score``, stemmed) against the preferred summaries of that post
  (the best-matching one counts when a post has several).
- ``controllability``: replies generated under the positive and under the negative phrase, both
  scored by a judge; the positive should win.
- ``pairwise``: win rate of model A over model B under a judge.

Likelihoods go through the training code (``coh.train.loss.target_loss`` on packed
rows), so evaluation scores exactly what training optimises. Generation is greedy by default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coh.data.errors import DataError, RowError
from coh.data.feedback import FeedbackExample, Turn
from coh.data.io import JSON_SUFFIXES
from coh.data.phrases import DEFAULT_PHRASES
from coh.data.records import FeedbackRecord, Segment
from coh.eval.judges import Judge, conversation_text
from coh.eval.preference import preference_accuracy
from coh.judge.sources import SetAside
from coh.models import LoadedModel, load_for_inference
from coh.stats import wilson_interval, win_rate

DIALOGUE_PROMPT = "The following is a dialogue: {dialogue}. This dialogue is"
DIALOGUE_VERDICTS = (" good", " bad")
DEFAULT_KIND = {"dialogue": "dialogue", "summarization": "summary", "controllability": "dialogue",
                "pairwise": "dialogue"}


# -- data -------------------------------------------------------------------------------------------
def read_examples(kind: str, data: str | None, limit: int | None = None, set_aside: SetAside | None = None
                  ) -> tuple[list[FeedbackExample], dict]:
    """Evaluation examples of a source kind from a local file in the dataset's raw schema (jsonl,
    json or parquet, gzip allowed), or with ``data`` None from the paper dataset's test /
    validation split on the hub. Stops after ``limit`` examples. Rows the method leaves out
    (WebGPT ties) are counted in ``skipped``. A row that cannot be evaluated (an empty reply, a
    missing field, a line that is not JSON) stops with its file, line and field, or with
    ``set_aside`` is recorded there, counted in ``invalid`` and left out."""
    from coh.data.build import SourceSpec, read_source_rows
    from coh.data.sources import CONVERTERS, Skip

    spec = SourceSpec(kind, files={"eval": data}) if data else SourceSpec(kind)
    examples: list[FeedbackExample] = []
    skipped: dict[str, int] = {}
    rows = 0
    mine = None if set_aside is None else SetAside()  # this file's rows, counted apart from others'
    for split, where, line, row, _ in _hinted(read_source_rows(spec), data is None):
        if split == "train":  # a hub dataset's training split: not for evaluation
            continue
        rows += 1
        if isinstance(row, DataError):  # a line that could not be read as JSON
            if mine is None:
                raise row
            mine.add(row)
            continue
        try:
            if not isinstance(row, dict):
                raise RowError(None, f"expected a JSON object, got {type(row).__name__}")
            ex = CONVERTERS[kind](row, f"{kind}/{line}", "eval")
        except RowError as e:
            if mine is None:
                raise e.at(where, line) from None
            mine.add(e.at(where, line))
            continue
        if isinstance(ex, Skip):
            skipped[ex.reason] = skipped.get(ex.reason, 0) + 1
            continue
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    if set_aside is not None:
        set_aside.rows.extend(mine.rows)
    if not examples:
        why = f"; {mine.summary()}; is the kind '{kind}' right for this file?" if mine else ""
        raise ValueError(f"{data or spec.hub}: no {kind} examples to evaluate ({rows} rows read{why})")
    counts = {"rows": rows, "examples": len(examples), "skipped": sum(skipped.values()),
              **{f"skipped: {k}": v for k, v in skipped.items()}}
    if mine is not None:
        counts["invalid"] = len(mine)
        counts.update({f"invalid: {k}": v for k, v in mine.reasons().items()})
    return examples, counts


def _hinted(rows, from_hub: bool):
    """``rows``, with a hint on a hub dataset that cannot be had (offline, say): give a file."""
    try:
        yield from rows
    except DataError as e:
        if not from_hub:
            raise
        raise DataError(e.where, e.line, e.field, f"{e.problem}; give --data FILE to use a local copy") from None


def unique_contexts(examples: Sequence[FeedbackExample]) -> list[FeedbackExample]:
    """One example per distinct context (summarize_from_feedback holds many comparisons per post)."""
    seen: dict[tuple[Turn, ...], FeedbackExample] = {}
    for ex in examples:
        seen.setdefault(ex.context, ex)
    return list(seen.values())


# -- likelihoods ------------------------------------------------------------------------------------
def sequence_nll(lm: LoadedModel, records: Sequence[FeedbackRecord], batch_tokens: int = 8192,
                 progress: bool = False) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood of each record's loss tokens, and their count, in order.
    Records are packed into micro-batches of at most ``batch_tokens`` tokens (a longer record
    gets a row of its own) and scored by the training loss."""
    import torch
    from tqdm import tqdm

    from coh.data.tokenize import tokenize_many
    from coh.train.loss import target_loss
    from coh.train.packing import collate_packed, dense_attention, pack_documents

    tokenized = tokenize_many(records, lm.record_tokenizer)
    lengths = [len(t.input_ids) for t in tokenized]
    bins = pack_documents(lengths, max([batch_tokens, *lengths])) if lm.packs else [[i] for i in range(len(lengths))]
    nll = [0.0] * len(records)
    split_rows = dense_attention(lm.model)
    with torch.no_grad():
        for b in tqdm(bins, desc="likelihoods", unit=" rows", disable=not progress):
            batch = collate_packed([(tokenized[i].input_ids, tokenized[i].loss_mask) for i in b], split_rows)
            result = target_loss(lm.model, {k: v.to(lm.device) for k, v in batch.items()})
            for i, value in zip(b, result.per_record.tolist()):
                nll[i] = value
    return nll, [sum(t.loss_mask[1:]) for t in tokenized]


# -- generation -------------------------------------------------------------------------------------
@dataclass
class Sampling:
    """Generation settings: ``temperature`` 0 is greedy; ``seed`` seeds sampling."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0


def prompt_ids(lm: LoadedModel, contexts: Sequence[Sequence[Turn]], feedback: str) -> list[list[int]]:
    """Token ids of the inference prompt of each context, ending with the ``feedback`` phrase
    (``good``, ``bad``, literal text, or ``none`` for no phrase: an ``sft``-mode model), exactly as
    training rendered context."""
    from coh.data.render import prompt_record

    phrase = None if feedback == "none" else feedback
    records = [prompt_record(tuple(c), lm.phrases, phrase) for c in contexts]
    return [t.input_ids for t in lm.record_tokenizer.batch(records)]


def generate(lm: LoadedModel, prompts: Sequence[list[int]], sampling: Sampling, progress: bool = False,
             desc: str = "generate") -> list[str]:
    """Continue each token-id prompt until EOS, the next ``User:`` marker or ``max_new_tokens``
    (through :func:`coh.generation.generate`, the path ``coh serve`` takes too); the new text, stripped."""
    from coh.generation import generate as generate_texts

    texts = generate_texts(lm.model, lm.tokenizer, prompts, sampling.max_new_tokens, temperature=sampling.temperature,
                           top_p=sampling.top_p, seed=sampling.seed, stop=(lm.phrases.user,),
                           batch_size=sampling.batch_size, progress=progress, desc=desc)
    return [t.strip() for t in texts]


def write_generations(path: Path, ids: Sequence[str], contexts: Sequence[Sequence[Turn]], feedback: str,
                      replies: Sequence[str], extra: Sequence[dict] | None = None) -> None:
    """One JSON line per prompt: ``id``, ``context`` (turns), ``feedback`` (the phrase asked for) and
    ``reply``; ``pairwise`` reads these files back."""
    from coh.data.io import atomic_writer

    with atomic_writer(path) as f:
        for k, (ex_id, turns, reply) in enumerate(zip(ids, contexts, replies)):
            row = {"id": ex_id, "context": [{"role": t.role, "text": t.text} for t in turns], "feedback": feedback,
                   "reply": reply, **(extra[k] if extra else {})}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\\ud83d" in JSON): no file could hold it
        return False
    return True


def _generation_problem(row: object) -> tuple[str | None, str] | None:
    """(field, problem) of a malformed generations row, or None."""
    if not isinstance(row, dict):
        return None, "expected a JSON object with id, context and reply"
    if not isinstance(row.get("id"), str):
        return "id", "expected a string"
    if not isinstance(row.get("reply"), str):
        return "reply", "expected a string"
    turns = row.get("context")
    if not isinstance(turns, list) or not turns or not all(
            isinstance(t, dict) and isinstance(t.get("text"), str) and t.get("role") in ("system", "user", "assistant")
            for t in turns):
        return "context", 'expected a non-empty list of {"role": system|user|assistant, "text": ...} objects'
    if turns[-1]["role"] != "user":
        return "context", "expected the context to end with a user turn"
    for name, text in (("id", row["id"]), ("reply", row["reply"]), *(("context", t["text"]) for t in turns)):
        if not _encodable(text):
            return name, "text holds a lone surrogate"
    return None


def read_generations(path: str | Path, set_aside: SetAside | None = None) -> dict[str, tuple[tuple[Turn, ...], str]]:
    """``id -> (context, reply)`` from a generations file (see ``write_generations``). A malformed
    row (a line that is not JSON included) stops with its file, line and field, or with
    ``set_aside`` is recorded there and left out (an id given twice always stops: which reply is
    meant cannot be told)."""
    from coh.data.io import iter_json_rows

    out: dict[str, tuple[tuple[Turn, ...], str]] = {}
    for line, row, _ in iter_json_rows(path):
        problem = None if isinstance(row, DataError) else _generation_problem(row)
        error = row if isinstance(row, DataError) else None if problem is None else DataError(str(path), line, *problem)
        if error is not None:
            if set_aside is None:
                raise error
            set_aside.add(error)
            continue
        if row["id"] in out:
            raise DataError(str(path), line, "id", f"id {row['id']!r} appears twice")
        out[row["id"]] = (tuple(Turn(t["role"], t["text"]) for t in row["context"]), row["reply"])
    if not out:
        raise ValueError(f"{path}: no generations" + (f" ({set_aside.summary()})" if set_aside else "")
                         + "; expected one JSON object per line with id, context and reply")
    return out


# -- protocols --------------------------------------------------------------------------------------
def _accuracy(name: str, hits: Sequence[bool], metrics: dict, ci95: dict) -> None:
    n = len(hits)
    metrics[name] = sum(hits) / n if n else float("nan")
    ci95[name] = wilson_interval(sum(hits), n)


@dataclass
class DialogueScores:
    """Per pair: summed log-likelihood of the chosen and the rejected reply (after the positive
    phrase) and their token counts; ``verdict_chosen`` / ``verdict_rejected``: log p(' good') -
    log p(' bad') after ``DIALOGUE_PROMPT`` for the whole chosen / rejected dialogue."""

    chosen_logprob: list[float]
    rejected_logprob: list[float]
    chosen_tokens: list[int]
    rejected_tokens: list[int]
    verdict_chosen: list[float]
    verdict_rejected: list[float]


def dialogue_scores(lm: LoadedModel, examples: Sequence[FeedbackExample], batch_tokens: int = 8192,
                    progress: bool = False) -> DialogueScores:
    """Score hh-rlhf pairs for ``eval_dialogue``: replies rendered after the positive phrase and the
    shared context exactly as training renders them, and the authors' verdict prompts."""
    from coh.eval.preference import pairs_from_examples

    pairs = pairs_from_examples(examples, lm.phrases)
    if len(pairs) != len(examples):  # every converted dialogue example has a pn record with both outputs
        raise ValueError(f"{len(examples) - len(pairs)} example(s) gave no preference pair")
    records = [rec for pair in pairs for rec in pair]
    for ex in examples:
        for cand in (ex.candidates[0], ex.candidates[-1]):
            prompt = DIALOGUE_PROMPT.format(dialogue=conversation_text(ex.transcript(cand)))
            for verdict in DIALOGUE_VERDICTS:
                records.append(FeedbackRecord(f"{ex.id}/verdict", ex.source, "verdict",
                                              (Segment(prompt, False, "prompt"), Segment(verdict, True, "assistant")),
                                              "eval"))
    nll, count = sequence_nll(lm, records, batch_tokens, progress)
    n = len(examples)
    pref, verdict = nll[: 2 * n], nll[2 * n:]
    # verdict holds, per pair: chosen+good, chosen+bad, rejected+good, rejected+bad (as NLLs).
    margin = [verdict[j + 1] - verdict[j] for j in range(0, 4 * n, 2)]
    return DialogueScores([-x for x in pref[0::2]], [-x for x in pref[1::2]], count[0 : 2 * n : 2],
                          count[1 : 2 * n : 2], margin[0::2], margin[1::2])


def eval_dialogue(lm: LoadedModel, examples: Sequence[FeedbackExample], batch_tokens: int = 8192,
                  output_dir: Path | None = None, progress: bool = False) -> tuple[dict, dict]:
    """Preference accuracy (summed and per-token log-likelihood; ties count as misses) and the
    authors' ``This dialogue is good/bad`` protocol, with 95 % Wilson intervals. Returns
    ``(metrics, ci95)``; writes per-pair scores to ``output_dir/pairs.jsonl``."""
    s = dialogue_scores(lm, examples, batch_tokens, progress)
    metrics: dict[str, float] = {}
    ci95: dict[str, tuple[float, float]] = {}
    pairs = list(zip(s.chosen_logprob, s.rejected_logprob, s.chosen_tokens, s.rejected_tokens))
    nll = [x for c, r, _, _ in pairs for x in (-c, -r)]
    by_sum, by_token = preference_accuracy(nll, [n for _, _, nc, nr in pairs for n in (nc, nr)])
    _accuracy("preference_accuracy", by_sum, metrics, ci95)
    _accuracy("preference_accuracy_per_token", by_token, metrics, ci95)
    _accuracy("dialogue_is_good_accuracy", [c > r for c, r in zip(s.verdict_chosen, s.verdict_rejected)],
              metrics, ci95)
    _accuracy("chosen_judged_good", [c > 0 for c in s.verdict_chosen], metrics, ci95)
    _accuracy("rejected_judged_bad", [r < 0 for r in s.verdict_rejected], metrics, ci95)
    metrics["chosen_logprob_per_token"] = sum(s.chosen_logprob) / max(1, sum(s.chosen_tokens))
    metrics["rejected_logprob_per_token"] = sum(s.rejected_logprob) / max(1, sum(s.rejected_tokens))
    if output_dir is not None:
        from coh.data.io import atomic_writer

        with atomic_writer(output_dir / "pairs.jsonl") as f:
            for k, ex in enumerate(examples):
                f.write(json.dumps({"id": ex.id, "chosen_logprob": s.chosen_logprob[k],
                                    "rejected_logprob": s.rejected_logprob[k], "chosen_tokens": s.chosen_tokens[k],
                                    "rejected_tokens": s.rejected_tokens[k], "verdict_chosen": s.verdict_chosen[k],
                                    "verdict_rejected": s.verdict_rejected[k]}) + "\n")
    return metrics, ci95


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
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score_multi(references[ex.context], s) for ex, s in zip(posts, summaries)]
    metrics = {key: sum(s[key].fmeasure for s in scores) / len(scores) for key in ("rouge1", "rouge2", "rougeL")}
    metrics["summary_words"] = sum(len(s.split()) for s in summaries) / len(summaries)
    if output_dir is not None:
        write_generations(output_dir / "generations.jsonl", [ex.id for ex in posts], contexts, feedback, summaries,
                          [{"references": references[ex.context]} for ex in posts])
    return metrics, {}, {"posts": len(posts), "empty_summaries": sum(not s for s in summaries)}


def _judged_win(name: str, scores_a: Sequence[float], scores_b: Sequence[float], seed: int, metrics: dict,
                ci95: dict, counts: dict) -> None:
    w = win_rate(scores_a, scores_b, seed)
    metrics[name] = w.rate
    ci95[name] = (w.low, w.high)
    counts.update(wins=w.wins, ties=w.ties, losses=w.losses)


def eval_controllability(lm: LoadedModel, examples: Sequence[FeedbackExample], judge: Judge, sampling: Sampling,
                         output_dir: Path | None = None, progress: bool = False) -> tuple[dict, dict, dict]:
    """Replies under the positive and the negative phrase, scored by ``judge``: mean scores, and
    the win rate of positive over negative with its 95 % bootstrap interval."""
    posts = unique_contexts(examples)
    contexts = [ex.context for ex in posts]
    replies = {fb: generate(lm, prompt_ids(lm, contexts, fb), sampling, progress, f"generate ({fb})")
               for fb in ("good", "bad")}
    scores = {fb: judge.score(contexts, replies[fb]) for fb in ("good", "bad")}
    metrics = {"judge_good_mean": sum(scores["good"]) / len(posts), "judge_bad_mean": sum(scores["bad"]) / len(posts)}
    metrics["judge_gap_mean"] = metrics["judge_good_mean"] - metrics["judge_bad_mean"]
    ci95: dict = {}
    counts = {"prompts": len(posts)}
    _judged_win("good_over_bad_win_rate", scores["good"], scores["bad"], sampling.seed, metrics, ci95, counts)
    if output_dir is not None:
        for fb in ("good", "bad"):
            write_generations(output_dir / f"generations_{fb}.jsonl", [ex.id for ex in posts], contexts, fb,
                              replies[fb], [{"score": s} for s in scores[fb]])
    return metrics, ci95, counts


def generate_http(base_url: str, contexts: Sequence[Sequence[Turn]], feedback: str, sampling: Sampling,
                  api_key_env: str | None = None, progress: bool = False, desc: str = "generate",
                  name: str = "server") -> list[str]:
    """Replies from an OpenAI-compatible server's chat completions (``coh judge``'s client), with
    ``feedback`` in the body: ``coh serve`` conditions the reply on that phrase; servers that do not
    know the field, such as vLLM, ignore it. ``api_key_env`` names the variable holding the key;
    ``name`` the server in error messages."""
    from tqdm import tqdm

    from coh.judge.sources import Generation, Prompt, SystemSpec
    from coh.judge.sources import generate as generate_remote

    system = SystemSpec(name, url=base_url, feedback=feedback, api_key_env=api_key_env)
    prompts = [Prompt(str(i), [{"role": t.role, "content": t.text} for t in turns]) for i, turns in enumerate(contexts)]
    gen = Generation(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                     seed=sampling.seed)
    with tqdm(total=len(prompts), desc=desc, unit=" prompts", disable=not progress) as bar:
        replies, _ = generate_remote(system, prompts, gen, bar)
    return replies


@dataclass
class Side:
    """One side of a pairwise comparison: a model folder to generate with here, an
    OpenAI-compatible server (``http://HOST:PORT/v1``) to ask, or a generations file."""

    source: str
    replies: dict[str, tuple[tuple[Turn, ...], str]] | None = None  # from a file: id -> (context, reply)
    invalid: int = 0  # rows of that file set aside

    @property
    def is_server(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    @staticmethod
    def open(source: str, set_aside: SetAside | None = None) -> Side:
        """A side from its command-line text; a generations file is read now (with ``set_aside``,
        its malformed rows are recorded there and left out)."""
        path = Path(source)
        if path.is_file():
            mine = None if set_aside is None else SetAside()
            replies = read_generations(path, mine)
            if mine is not None:
                set_aside.rows.extend(mine.rows)
            return Side(source, replies, len(mine or ()))
        if not path.exists() and path.name.endswith(JSON_SUFFIXES):
            raise FileNotFoundError(f"{source}: no such generations file")
        return Side(source)

    def generate(self, contexts: Sequence[Sequence[Turn]], feedback: str, sampling: Sampling, device: str | None,
                 api_key_env: str | None, progress: bool, desc: str, tag: str = "server") -> list[str]:
        if self.is_server:
            return generate_http(self.source, contexts, feedback, sampling, api_key_env, progress, desc, tag)
        lm = load_for_inference(self.source, device, label=f"model '{self.source}'")
        return generate(lm, prompt_ids(lm, contexts, feedback), sampling, progress, desc)


def eval_pairwise(a: Side, b: Side, judge: Judge, examples: Sequence[FeedbackExample] | None, sampling: Sampling,
                  feedback: str = "good", device: str | None = None, output_dir: Path | None = None,
                  progress: bool = False, limit: int | None = None, api_key_env: str | None = None
                  ) -> tuple[dict, dict, dict]:
    """Win rate of A over B under ``judge`` on the same prompts, 95 % bootstrap interval. Prompts:
    ``examples`` when given, else the first ``limit`` of a generations file (A's first). Model and
    server sides generate after ``feedback`` (``api_key_env``: the variable holding a server's key); prompts without a reply on
    both sides are counted as missing and left out."""
    if examples is not None:
        prompts = {ex.id: ex.context for ex in unique_contexts(examples)}
    else:
        given = a.replies if a.replies is not None else b.replies
        if given is None:
            raise ValueError("pairwise: two models need prompts: give --data (or a generations file for one side)")
        prompts = {i: ctx for i, (ctx, _) in list(given.items())[:limit]}
    replies: list[dict[str, str]] = []
    for tag, side in (("a", a), ("b", b)):
        if side.replies is not None:
            replies.append({i: r for i, (_, r) in side.replies.items()})
            continue
        ids = list(prompts)
        texts = side.generate([prompts[i] for i in ids], feedback, sampling, device, api_key_env, progress,
                              f"generate ({tag})", tag)
        replies.append(dict(zip(ids, texts)))
        if output_dir is not None:
            write_generations(output_dir / f"generations_{tag}.jsonl", ids, [prompts[i] for i in ids], feedback, texts)
    shared = [i for i in prompts if i in replies[0] and i in replies[1]]
    if not shared:
        have = {tag: len(r) for tag, r in zip("ab", replies)}
        raise ValueError(f"pairwise: --a {a.source} ({have['a']} replies) and --b {b.source} ({have['b']} replies) "
                         f"share no prompt id among the {len(prompts)} prompts; a generations file's ids must be "
                         "those of the prompts (--data) or of the other side's file")
    contexts = [prompts[i] for i in shared]
    score_a = judge.score(contexts, [replies[0][i] for i in shared])
    score_b = judge.score(contexts, [replies[1][i] for i in shared])
    metrics = {"win_rate_a_over_b": 0.0, "judge_a_mean": sum(score_a) / len(shared),
               "judge_b_mean": sum(score_b) / len(shared)}
    ci95: dict = {}
    counts = {"prompts": len(shared), "missing": len(prompts) - len(shared)}
    counts.update({f"invalid: {tag} generations": side.invalid for tag, side in (("a", a), ("b", b)) if side.invalid})
    _judged_win("win_rate_a_over_b", score_a, score_b, sampling.seed, metrics, ci95, counts)
    return metrics, ci95, counts

