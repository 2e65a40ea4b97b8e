"""From generated token ids to text, one request at a time.

Contract:

- Every generated token counts, EOS included: EOS ends a request (``finish_reason`` ``stop``)
  as its last token, with no text and with its logprob, as OpenAI and vLLM report it.
- A stop string ends a request with the text cut before the stop string (the tokens from there
  on dropped); streamed text is held back only while it could still be the start of one.
- Generated text is decoded incrementally with the prompt as context (so a first token's leading
  space survives).
"""

from __future__ import annotations

from collections.abc import Sequence

from coh.generation.requests import Delta, Job, TokenLogprob


class TextDecoder:
    """Incremental detokenization with the prompt as context: ``step(id)`` returns the text the
    token adds ("" while a multi-byte character is incomplete)."""

    def __init__(self, tokenizer, context: Sequence[int] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        context = list(context)[-8:]  # a few tokens settle spacing and merges
        if self.backend is not None:
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(ids=context, skip_special_tokens=self.skip)
        else:  # slow tokenizers: decode the whole tail again per token (no streaming decoder there)
            self.ids = context
            self.prefix = tokenizer.decode(context, skip_special_tokens=self.skip)

    def step(self, token_id: int) -> str:
        if self.backend is not None:
            return self.stream.step(self.backend, token_id) or ""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its other bytes
            return ""
        piece, self.prefix = text[len(self.prefix):], text
        return piece


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string (held back
    from streaming until it is clear)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Decoding:
    """One generating request of a job: its tokens, text, stop checks and streamed deltas.
    ``add(token, logprob)`` takes each new token until ``done``; the job hears of the text as it
    becomes safe to show (``"delta"`` events) and of the end (its part of the request is done).
    ``stats``: the engine's counters (``aborted_rows`` counts requests stopped by a cancel)."""

    def __init__(self, job: Job, index: int, tokenizer, eos_ids: Sequence[int], stats: dict):
        self.job, self.index, self.request, self.result = job, index, job.requests[index], job.results[index]
        self.eos, self.stats = eos_ids, stats
        self.decoder = TextDecoder(tokenizer, self.request.ids)
        self.sent = 0  # characters of text streamed
        self.sent_tokens = 0  # tokens streamed
        self.done = False
        if self.request.logprobs is not None:
            self.result.logprobs = []

    def add(self, token: int, logprob: TokenLogprob | None) -> None:
        res = self.result
        if self.job.cancelled:
            return self.finish("abort")
        eos = token in self.eos
        piece = "" if eos else self.decoder.step(token)
        before = len(res.text)
        res.token_ids.append(token)
        res.pieces.append(piece)
        res.text += piece
        if res.logprobs is not None and logprob is not None:
            res.logprobs.append(logprob)
        if eos:
            return self.finish("stop")
        cut = self._find_stop(before)
        if cut is not None:
            self._cut(cut)
            return self.finish("stop")
        if len(res.token_ids) >= self.request.max_new_tokens:
            return self.finish("length")
        safe = len(res.text) - stop_holdback(res.text, self.request.stop)
        if safe > self.sent:
            self._send(safe, last=False)

    def finish(self, reason: str) -> None:
        """End the request's generation with ``reason`` (once), sending what is left of its text."""
        if self.done:
            return
        self.done = True
        self.result.finish_reason = reason
        if reason == "abort":
            self.stats["aborted_rows"] += 1
        self._send(len(self.result.text), last=True)
        self.job.part_done(self.index)

    def _send(self, upto: int, last: bool) -> None:
        """Emit text up to character ``upto`` and the tokens whose text ends by then (all of them
        when ``last``)."""
        res = self.result
        n = len(res.token_ids)
        if not last:
            end, n = 0, self.sent_tokens
            for k, piece in enumerate(res.pieces):
                end += len(piece)
                if end > upto:
                    break
                if piece:
                    n = k + 1
            n = max(n, self.sent_tokens)
        text = res.text[self.sent:upto]
        if not text and n == self.sent_tokens:
            return
        first = self.sent_tokens
        offsets = []
        pos = sum(len(p) for p in res.pieces[:first])
        for piece in res.pieces[first:n]:
            offsets.append(pos)
            pos += len(piece)
        logprobs = res.logprobs[first:n] if res.logprobs is not None else None
        self.sent, self.sent_tokens = upto, n
        self.job.emit("delta", self.index, Delta(text, res.token_ids[first:n], offsets, logprobs))

    def _find_stop(self, before: int) -> int | None:
        text = self.result.text
        hits = [p for s in self.request.stop if (p := text.find(s, max(0, before - len(s) + 1))) >= 0]
        return min(hits) if hits else None

    def _cut(self, at: int) -> None:
        """Drop text from ``at`` on, and the tokens that start at or after it."""
        res = self.result
        start, keep = 0, 0
        for piece in res.pieces:
            if start >= at:
                break
            start += len(piece)
            keep += 1
        keep = max(keep, self.sent_tokens)  # streamed tokens stay (their text ends before the stop)
        res.token_ids, res.pieces = res.token_ids[:keep], res.pieces[:keep]
        if res.logprobs is not None:
            res.logprobs = res.logprobs[:keep]
        if keep:
            last_start = sum(len(p) for p in res.pieces[:-1])
            res.pieces[-1] = res.pieces[-1][: max(0, at - last_start)]
        res.text = res.text[:at]
