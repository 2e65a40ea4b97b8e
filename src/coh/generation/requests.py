"""What the engine is asked for and what it answers: ``GenRequest`` (one output to produce for one
prompt), ``GenResult`` (what it produced), ``Delta`` (streamed progress) and ``Job`` (requests
submitted together, with their future and events). Plain data: no torch here.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# (token id, logprob, top alternatives as (token id, logprob), most likely first)
TokenLogprob = tuple[int, float, list[tuple[int, float]]]
# on_event(event, index of the request in its job, payload): see Job
EventCallback = Callable[[str, int, Any], None]


@dataclass
class GenRequest:
    """One output to produce for one prompt of token ids (``ids``, used exactly as given).

    ``prompt_logprobs``: report the logprob of every prompt token with that many alternatives
    (None: don't). ``logprobs``: the same for generated tokens. ``temperature`` 0 is greedy.
    ``top_k`` 0 and ``top_p`` 1 turn those filters off. ``seed``: sample from this seed alone,
    whatever runs beside the request. ``stop``: strings that end the text (left out of it)."""

    ids: list[int]
    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    @property
    def one_greedy_step(self) -> bool:
        """A single greedy token: taken from the forward pass, no ``generate`` call needed."""
        return self.max_new_tokens == 1 and self.temperature == 0

    @property
    def needs_forward(self) -> bool:
        return self.prompt_logprobs is not None or self.one_greedy_step

    @property
    def needs_generate(self) -> bool:
        return self.max_new_tokens > 0 and not self.one_greedy_step


@dataclass
class GenResult:
    """What one request produced. ``prompt_logprobs[0]`` is None (the first token has no context).
    ``token_ids`` are every generated token, EOS included; ``pieces[i]`` is the text that
    ``token_ids[i]`` added to ``text`` ("" for EOS; a stop string and what follows it cut off);
    ``logprobs[i]`` belongs to ``token_ids[i]``. ``finish_reason``: ``stop`` (EOS or a stop
    string), ``length``, or ``abort`` (the client went away)."""

    prompt_logprobs: list[TokenLogprob | None] | None = None
    token_ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str = "length"


@dataclass
class Delta:
    """Streamed progress of one request: ``text`` to show, and the tokens that made it
    (``token_ids``, their ``offsets`` in the request's text and, when asked for, ``logprobs``). A
    token goes out with the text that ends in it; EOS and tokens still waiting for the rest of a
    character go out with the next text, or with the request's last delta."""

    text: str
    token_ids: list[int]
    offsets: list[int]
    logprobs: list[TokenLogprob] | None


class Job:
    """Requests submitted together; their results come back together.

    ``future``: a ``concurrent.futures.Future`` of one ``GenResult`` per request, set as soon as
    the job's own requests are done. ``on_event(event, index, payload)``, called on the engine's
    worker thread: ``"delta"`` (a ``Delta``), ``"done"`` (the request's ``GenResult``),
    ``"error"`` (the exception: the whole job failed; index -1)."""

    def __init__(self, requests: Sequence[GenRequest], on_event: EventCallback | None = None):
        self.requests = list(requests)
        self.results: list[GenResult] = [GenResult() for _ in self.requests]
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.on_event = on_event
        self.cancelled = False
        # A request is done when its parts are: the forward pass, the generation, or both (echo + text).
        self._parts = [int(r.needs_forward) + int(r.needs_generate) for r in self.requests]
        self._left = len(self.requests)
        self.needs_generate = any(r.needs_generate for r in self.requests)

    def cancel(self) -> None:
        """Stop work on this job at the next decode step (its unfinished requests end with
        finish_reason ``abort``)."""
        self.cancelled = True

    def emit(self, event: str, index: int, payload: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, index, payload)

    def part_done(self, index: int) -> None:
        """One part of request ``index`` (its forward pass or its generation) is finished."""
        self._parts[index] -= 1
        if self._parts[index] <= 0:
            self.request_done(index)

    def request_done(self, index: int) -> None:
        """Request ``index`` is finished (whatever parts it had left); the job's future is set
        with the last one."""
        if self.future.done():
            return
        result = self.results[index]
        if self.cancelled and result.finish_reason != "stop":
            result.finish_reason = "abort"
        self._left -= 1
        self.emit("done", index, result)
        if self._left == 0:
            self.future.set_result(self.results)

    def fail(self, exc: BaseException) -> None:
        """The job failed as a whole (its batch did): the future raises ``exc``."""
        if not self.future.done():
            self.future.set_exception(exc)
            self.emit("error", -1, exc)
