"""The shapes of OpenAI answers that the routes and the stream share: a request's plan (the engine
requests it became), ``usage``, and logprobs in both of OpenAI's formats: the completions
logprobs format (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``), which
lm-evaluation-harness reads, and chat's ``logprobs.content`` entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coh.generation.requests import GenRequest, GenResult, TokenLogprob

# OpenAI reports a token with no probability at all as -9999 (JSON has no -Infinity).
NO_PROBABILITY = -9999.0
TokenName = Callable[[int], str]  # a token id as the answer shows it


@dataclass
class Plan:
    """A request turned into engine requests (tokenized, validated), with what the answer needs."""

    requests: list[GenRequest]
    prompt_tokens: int
    echo: list[str] | None = None  # completions: the prompt text each choice starts with


def finite(v: float) -> float:
    return v if math.isfinite(v) else NO_PROBABILITY


def usage(prompt_tokens: int, results: Sequence[GenResult | None]) -> dict:
    """Counts every generated token, EOS included (as OpenAI and vLLM do)."""
    completion = sum(len(r.token_ids) for r in results if r is not None)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def chat_logprob(name: TokenName, entry: TokenLogprob) -> dict:
    """One entry of chat's ``logprobs.content``: the token, its logprob and bytes, and the top ones."""
    tok, lp, alts = entry

    def one(t: int, v: float) -> dict:
        text = name(t)
        return {"token": text, "logprob": finite(v), "bytes": list(text.encode("utf-8"))}

    return {**one(tok, lp), "top_logprobs": [one(t, v) for t, v in alts]}


def completions_logprob_entries(entries: Sequence[TokenLogprob | None], token_ids: Sequence[int],
                                name: TokenName) -> dict:
    """``tokens``, ``token_logprobs`` and ``top_logprobs`` in the completions logprobs format."""
    top_logprobs: list[dict | None] = []
    for entry in entries:
        if entry is None:
            top_logprobs.append(None)
            continue
        tok, lp, alts = entry
        top: dict[str, float] = {}
        for t, v in sorted([(tok, lp), *alts], key=lambda x: -x[1]):
            top.setdefault(name(t), finite(v))  # two ids may print alike: the likelier one stays
        top_logprobs.append(top)
    return {"tokens": [name(t) for t in token_ids],
            "token_logprobs": [finite(e[1]) if e else None for e in entries], "top_logprobs": top_logprobs}


def completions_logprobs(request: GenRequest, result: GenResult, name: TokenName, echo_text: str | None = None,
                         prompt_pieces: Sequence[str] = ()) -> dict:
    """The completions logprobs format, which lm-evaluation-harness reads: with echo (``echo_text``,
    the prompt's text, and ``prompt_pieces``, each prompt token's text), every prompt token (the
    first with null) and then every generated token, EOS included."""
    entries: list[TokenLogprob | None] = []
    offsets: list[int] = []
    if echo_text is not None:
        entries.extend(result.prompt_logprobs or [])
        pos = 0
        for piece in prompt_pieces:
            offsets.append(pos)
            pos += len(piece)
        start = len(echo_text)
        token_ids = list(request.ids)
    else:
        start, token_ids = 0, []
    entries.extend(result.logprobs or [])
    for piece in result.pieces:
        offsets.append(start)
        start += len(piece)
    token_ids.extend(result.token_ids)
    return {**completions_logprob_entries(entries, token_ids, name), "text_offset": offsets}
