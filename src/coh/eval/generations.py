"""Replies for evaluation, and the generations files that keep them.

- :func:`prompt_ids` renders an inference prompt exactly as training rendered context;
- :func:`generate` continues prompts through :func:`coh.generation.generate`, the path ``coh
  serve`` takes too; :func:`generate_http` asks an OpenAI-compatible server (``coh judge``'s client);
- :func:`write_generations` / :func:`read_generations`: one JSON line per prompt (``id``,
  ``context``, ``feedback``, ``reply``), which ``pairwise`` reads back.

Sampling settings are :class:`coh.eval.config.Sampling`; generation is greedy by default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from coh.data.errors import DataError, SetAside
from coh.data.feedback import Turn
from coh.eval.config import Sampling
from coh.models import LoadedModel


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


def generate_http(base_url: str, contexts: Sequence[Sequence[Turn]], feedback: str, sampling: Sampling,
                  api_key_env: str | None = None, progress: bool = False, desc: str = "generate",
                  name: str = "server") -> list[str]:
    """Replies from an OpenAI-compatible server's chat completions (``coh judge``'s client), with
    ``feedback`` in the body: ``coh serve`` conditions the reply on that phrase; servers that do not
    know the field, such as vLLM, ignore it. ``api_key_env`` names the variable holding the key;
    ``name`` the server in error messages."""
    from tqdm import tqdm

    from coh.judge.sources import Prompt
    from coh.judge.systems import Generation, SystemSpec
    from coh.judge.systems import generate as generate_remote

    system = SystemSpec(name, url=base_url, feedback=feedback, api_key_env=api_key_env)
    prompts = [Prompt(str(i), [{"role": t.role, "content": t.text} for t in turns]) for i, turns in enumerate(contexts)]
    gen = Generation(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                     seed=sampling.seed)
    with tqdm(total=len(prompts), desc=desc, unit=" prompts", disable=not progress) as bar:
        replies, _ = generate_remote(system, prompts, gen, bar)
    return replies


def write_generations(path: Path, ids: Sequence[str], contexts: Sequence[Sequence[Turn]], feedback: str,
                      replies: Sequence[str], extra: Sequence[dict] | None = None) -> None:
    """One JSON line per prompt: ``id``, ``context`` (turns), ``feedback`` (the phrase asked for) and
    ``reply``, plus ``extra[k]``'s keys (a score, references); ``pairwise`` reads these files back."""
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
