"""The model behind the server: one worker thread runs every forward pass.

Contract:

- ``Engine.submit(rows)`` queues a ``Job`` (one ``Row`` per output asked for) and returns at once;
  it raises ``QueueFull`` when ``queue_size`` jobs already wait. Callers wait on ``job.future``
  (a ``concurrent.futures.Future`` of one ``RowResult`` per row) or get events as they happen
  through ``on_event(kind, row_index, payload)``: ``"delta"`` (a ``Delta``: text ready to show
  and the tokens it came from), ``"done"`` (the row's ``RowResult``), ``"error"`` (the exception;
  the whole job failed). ``job.cancel()`` stops its work at the next decode step.
- Scoring (prompt logprobs and single greedy steps, lm-evaluation-harness's loglikelihood
  requests) is one forward pass per chunk of at most ``max_batch_size`` rows. Longer or sampled
  generations run through ``model.generate`` with left padding, grouped by sampling settings.
- Scheduling: the worker takes the waiting jobs (those arriving within ``batch_wait_ms`` of each
  other join one batch, up to ``max_batch_size`` rows), scores them at once, and adds their
  generations to a round robin of at most ``max_running`` generation batches. A generation runs
  in slices: after ``slice_steps`` decode steps it yields (keeping its KV cache) whenever other
  work is waiting, so a new request waits for at most one slice of each running generation
  (plus the prefill of new prompts), never for a whole long generation. A job's result is
  ready as soon as its own rows finish.
- Rows with a ``seed`` run in a batch of their own job, under their own random state (restored
  at every slice), so that the same request gives the same text whatever runs beside it.
- Token ids are never changed: rows are scored and continued exactly as given.
- Every generated token counts, EOS included: EOS ends a row (``finish_reason`` ``stop``) as its
  last token, with no text and with its logprob, as OpenAI and vLLM report it. A stop string
  ends a row with the text cut before the stop string (the tokens from there on dropped).
  Generated text is decoded incrementally with the prompt as context (so a first token's
  leading space survives). Logprobs are the model's own distribution (before temperature and
  top-p), as OpenAI and vLLM report them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from coh.models import DTYPES, context_length, eos_ids

log = logging.getLogger("coh.serve")

# (token id, logprob, top alternatives as (token id, logprob), most likely first)
TokenLogprob = tuple[int, float, list[tuple[int, float]]]
EventCallback = Callable[[str, int, Any], None]


class QueueFull(RuntimeError):
    """The request queue is full; the server answers 503."""


@dataclass
class EngineConfig:
    """How the model is loaded and how requests are batched (``coh serve`` flags)."""

    model: str = ""
    dtype: str = "auto"  # auto: bfloat16 on a GPU that supports it (else float16), float32 on a CPU
    device: str = "auto"  # auto: cuda, then mps, then cpu
    trust_remote_code: bool = False
    max_batch_size: int = 8  # rows per forward pass / generate call
    queue_size: int = 64  # jobs waiting for the worker before new ones get 503
    batch_wait_ms: float = 5.0  # how long the worker waits for more jobs to join a batch
    max_model_len: int | None = None  # context length; default: the model config's
    seed: int = 0  # seeds the sampler once at start (requests may bring their own seed)
    slice_steps: int = 16  # decode steps a generation runs before it yields to waiting work
    max_running: int = 4  # generation batches in progress at once (each holds a KV cache)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "queue_size", "slice_steps", "max_running"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")




@dataclass
class Row:
    """One output to produce for one prompt.

    ``prompt_logprobs``: report the logprob of every prompt token with that many alternatives
    (None: don't). ``logprobs``: the same for generated tokens. ``temperature`` 0 is greedy.
    ``top_k`` 0 and ``top_p`` 1 turn those filters off."""

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
class RowResult:
    """What one row produced. ``prompt_logprobs[0]`` is None (the first token has no context).
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
    """Streamed progress of one row: ``text`` to show, and the tokens that made it (``token_ids``,
    their ``offsets`` in the row's text and, when asked for, ``logprobs``). A token goes out with
    the text that ends in it; EOS and tokens still waiting for the rest of a character go out with
    the next text, or with the row's last delta."""

    text: str
    token_ids: list[int]
    offsets: list[int]
    logprobs: list[TokenLogprob] | None


class Job:
    """Rows submitted together; their results come back together (see the module contract)."""

    def __init__(self, rows: Sequence[Row], on_event: EventCallback | None = None):
        self.rows = list(rows)
        self.results: list[RowResult] = [RowResult() for _ in self.rows]
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.on_event = on_event
        self.cancelled = False
        # A row is done when its parts are: the forward pass, the generation, or both (echo + text).
        self._parts = [int(r.needs_forward) + int(r.needs_generate) for r in self.rows]
        self._left = len(self.rows)
        self.needs_generate = any(r.needs_generate for r in self.rows)

    def cancel(self) -> None:
        """Stop work on this job (its unfinished rows end with finish_reason ``abort``)."""
        self.cancelled = True

    def _emit(self, kind: str, index: int, payload: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, index, payload)

    def _part_done(self, index: int) -> None:
        self._parts[index] -= 1
        if self._parts[index] <= 0:
            self._row_done(index)

    def _row_done(self, index: int) -> None:
        if self.future.done():
            return
        result = self.results[index]
        if self.cancelled and result.finish_reason != "stop":
            result.finish_reason = "abort"
        self._left -= 1
        self._emit("done", index, result)
        if self._left == 0:
            self.future.set_result(self.results)

    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            self._emit("error", -1, exc)


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


class _RowDecoding:
    """One generating row: its tokens, text, stop checks and streamed deltas."""

    def __init__(self, engine: Engine, job: Job, index: int):
        self.job, self.index, self.row, self.result = job, index, job.rows[index], job.results[index]
        self.eos, self.stats = engine.eos_ids, engine.stats
        self.decoder = TextDecoder(engine.tokenizer, self.row.ids)
        self.sent = 0  # characters of text streamed
        self.sent_tokens = 0  # tokens streamed
        self.done = False
        if self.row.logprobs is not None:
            self.result.logprobs = []

    def add(self, token: int, logprob: TokenLogprob | None) -> None:
        res = self.result
        if self.job.cancelled:
            return self._finish("abort")
        eos = token in self.eos
        piece = "" if eos else self.decoder.step(token)
        before = len(res.text)
        res.token_ids.append(token)
        res.pieces.append(piece)
        res.text += piece
        if res.logprobs is not None and logprob is not None:
            res.logprobs.append(logprob)
        if eos:
            return self._finish("stop")
        cut = self._find_stop(before)
        if cut is not None:
            self._cut(cut)
            return self._finish("stop")
        if len(res.token_ids) >= self.row.max_new_tokens:
            return self._finish("length")
        safe = len(res.text) - stop_holdback(res.text, self.row.stop)
        if safe > self.sent:
            self._send(safe, last=False)

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
        self.job._emit("delta", self.index, Delta(text, res.token_ids[first:n], offsets, logprobs))

    def _find_stop(self, before: int) -> int | None:
        text = self.result.text
        hits = [p for s in self.row.stop if (p := text.find(s, max(0, before - len(s) + 1))) >= 0]
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

    def _finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.result.finish_reason = reason
        if reason == "abort":
            self.stats["aborted_rows"] += 1
        self._send(len(self.result.text), last=True)
        self.job._part_done(self.index)


class Engine:
    """A causal LM and its tokenizer behind a scheduling worker thread (see the module contract)."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None):
        import torch

        self.model, self.tokenizer = model, tokenizer
        self.config = config or EngineConfig()
        self.device = next(model.parameters()).device
        self.max_model_len = context_length(model, tokenizer, self.config.max_model_len)
        self.eos_ids = eos_ids(model, tokenizer)
        if tokenizer.pad_token_id is not None:
            self.pad_id = tokenizer.pad_token_id
        elif self.eos_ids:
            self.pad_id = self.eos_ids[0]
        else:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        from transformers import GenerationConfig

        # Requests alone decide sampling: the checkpoint's generation defaults (a top_k of 50, a
        # repetition penalty) would otherwise apply silently to every OpenAI request.
        model.generation_config = GenerationConfig(
            eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id, bos_token_id=tokenizer.bos_token_id)
        torch.manual_seed(self.config.seed)
        # A deque under a condition rather than queue.Queue: pausing must stop the worker from taking
        # any job, the worker skips generation jobs while its generation slots are full, and batching
        # waits for "more jobs or the deadline".
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._ready: deque[_Generation] = deque()  # generation batches not started yet
        self._running: deque[_Generation] = deque()  # started ones (each holds its KV cache)
        self._current: _Generation | None = None  # the one running a slice now (out of _running meanwhile)
        self._paused = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0, "jobs": 0, "failed_batches": 0,
                      "slices": 0, "yields": 0, "aborted_rows": 0}

    @classmethod
    def load(cls, config: EngineConfig) -> Engine:
        """Load ``config.model`` (a local folder or a hub id) and its tokenizer."""
        from coh.models import load_model, load_tokenizer

        model = load_model(config.model, dtype=config.dtype, device=config.device,
                           trust_remote_code=config.trust_remote_code)
        tokenizer = load_tokenizer(config.model, config.trust_remote_code, f"model {config.model}")
        return cls(model, tokenizer, config)

    # -- the queue ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._work, name="coh-serve-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the worker after the slice it is running; jobs still waiting or running fail."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cond:
            left, self._waiting = list(self._waiting), deque()
        gens, self._ready, self._running = [*self._ready, *self._running], deque(), deque()
        left += [j for g in gens for j, _ in g.chunk]
        for job in left:
            job._fail(RuntimeError("the server is shutting down"))

    def submit(self, rows: Sequence[Row], on_event: EventCallback | None = None) -> Job:
        """Queue rows as one job (see the module contract). Raises ``QueueFull``."""
        job = Job(rows, on_event)
        if not job.rows:
            job.future.set_result([])
            return job
        with self._cond:
            if len(self._waiting) >= self.config.queue_size:
                raise QueueFull(f"the server is busy: {self.config.queue_size} requests are already waiting")
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    def queued(self) -> int:
        """Jobs waiting for the worker."""
        return len(self._waiting)

    def running(self) -> int:
        """Generation batches in progress or about to start."""
        return len(self._running) + len(self._ready) + (self._current is not None)

    @contextlib.contextmanager
    def paused(self):
        """Hold the worker from taking jobs while the block runs (jobs queue up, none starts;
        generations already running go on): for maintenance and for tests of batching and of the
        full queue."""
        with self._cond:
            self._paused = True
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    # -- scheduling ----------------------------------------------------------------------------------
    def _generation_slots(self) -> bool:
        return len(self._running) + len(self._ready) < self.config.max_running

    def _takeable(self) -> bool:
        """A waiting job the worker may start now (caller holds the lock, or reads racily to decide
        whether to yield)."""
        if self._paused:
            return False
        slots = self._generation_slots()
        return any(slots or not j.needs_generate for j in list(self._waiting))

    def _should_yield(self) -> bool:
        """Whether a running generation should let other work in at the end of its slice."""
        return bool(self._running or self._ready) or self._takeable()

    def _take(self) -> list[Job] | None:
        """The jobs to start now ([] when none may start and generations are running; waits when
        there is nothing at all to do; None: closing). When it had to wait, it gathers the jobs
        arriving within ``batch_wait_ms`` up to ``max_batch_size`` rows."""
        limit, wait = self.config.max_batch_size, self.config.batch_wait_ms / 1000
        with self._cond:
            idle = not self._running and not self._ready
            while not self._closing and not self._takeable():
                if not idle:
                    return []
                self._cond.wait()
            if self._closing:
                return None
            slots = self._generation_slots()
            jobs: list[Job] = []
            rows = 0
            deadline = time.monotonic() + wait
            while True:
                for job in list(self._waiting):
                    if rows >= limit and jobs:
                        break
                    if job.needs_generate and not slots:
                        continue  # its turn comes when a generation slot frees; scoring goes first
                    self._waiting.remove(job)
                    jobs.append(job)
                    rows += len(job.rows)
                remaining = deadline - time.monotonic()
                if not idle or rows >= limit or remaining <= 0 or self._closing or self._paused:
                    break
                self._cond.wait(remaining)
        return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs:
                self._start(jobs)
            self._advance()

    def _advance(self) -> None:
        """Run one slice of the generation whose turn it is (round robin)."""
        while self._ready and len(self._running) < self.config.max_running:
            self._running.append(self._ready.popleft())
        if not self._running:
            return
        gen = self._current = self._running.popleft()
        try:
            finished = gen.run_slice()
        except Exception as e:  # an OOM or a model error fails this batch only; the server stays up
            self.stats["failed_batches"] += 1
            log.exception("generation batch of %d rows failed", len(gen.chunk))
            for j, _ in gen.chunk:
                j._fail(e)
            finished = True
        if not finished:
            self._running.append(gen)
        self._current = None

    # -- starting a batch ----------------------------------------------------------------------------
    def _count_batch(self, rows: int) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += rows
        self.stats["largest_batch"] = max(self.stats["largest_batch"], rows)

    def _start(self, jobs: list[Job]) -> None:
        """Score the jobs' rows now (forward passes) and queue their generations."""
        self.stats["jobs"] += len(jobs)
        live = []
        for j in jobs:
            if j.cancelled:
                self.stats["aborted_rows"] += len(j.rows)
                for i in range(len(j.rows)):
                    j._row_done(i)
            else:
                live.append(j)
        for j in live:
            for i, r in enumerate(j.rows):
                if not r.needs_forward and not r.needs_generate:
                    j._row_done(i)  # nothing to compute (max_tokens 0 without echo)
        forward = sorted(((j, i) for j in live for i, r in enumerate(j.rows) if r.needs_forward),
                         key=lambda ji: len(ji[0].rows[ji[1]].ids))
        size = self.config.max_batch_size
        for start in range(0, len(forward), size):
            chunk = [(j, i) for j, i in forward[start:start + size] if not j.future.done()]
            if not chunk:
                continue
            self._count_batch(len(chunk))
            try:
                self._forward(chunk)
            except Exception as e:  # an OOM or a model error fails this batch only; the server stays up
                self.stats["failed_batches"] += 1
                log.exception("batch of %d rows failed", len(chunk))
                for j, _ in chunk:
                    j._fail(e)
        groups: dict[tuple, list[tuple[Job, int]]] = {}
        for j in live:
            for i, r in enumerate(j.rows):
                if r.needs_generate and not j.future.done():
                    # model.generate takes one sampling setting per call; seeded rows keep to their job.
                    key = (r.temperature, r.top_p, r.top_k, None if r.seed is None else (id(j), r.seed))
                    groups.setdefault(key, []).append((j, i))
        for items in groups.values():
            items.sort(key=lambda ji: len(ji[0].rows[ji[1]].ids))
            for start in range(0, len(items), size):
                self._ready.append(_Generation(self, items[start:start + size]))

    def _padded(self, seqs: list[list[int]]):
        """Left-padded ids, attention mask and position ids."""
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[b, width - len(s):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _forward(self, chunk: list[tuple[Job, int]]) -> None:
        """One forward pass: prompt logprobs, and the token of single greedy steps."""
        import torch

        rows = [j.rows[i] for j, i in chunk]
        ids, mask, positions = self._padded([r.ids for r in rows])
        all_positions = any(r.prompt_logprobs is not None for r in rows)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=0 if all_positions else 1).logits
        for b, ((job, i), row) in enumerate(zip(chunk, rows)):
            res = job.results[i]
            n = len(row.ids)
            if row.prompt_logprobs is not None:
                lp = logits[b, -n:].float().log_softmax(-1)
                res.prompt_logprobs = [None, *_token_logprobs(lp[:-1], row.ids[1:], row.prompt_logprobs)]
                last = lp[-1:]
            else:
                last = logits[b, -1:].float().log_softmax(-1)
            if row.one_greedy_step:
                token = int(last[0].argmax())
                # The decoding ends the row's one part (max_new_tokens is 1), EOS or not.
                _RowDecoding(self, job, i).add(token, _token_logprobs(last, [token], row.logprobs or 0)[0])
            else:
                job._part_done(i)

    def _rng_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []


class _Generation:
    """One ``model.generate`` batch (rows sharing sampling settings), run in slices: each slice
    continues from the previous one's sequences and KV cache, so that slicing changes nothing in
    the tokens (seeded rows continue their own random state too)."""

    def __init__(self, engine: Engine, chunk: list[tuple[Job, int]]):
        self.engine, self.chunk = engine, chunk
        self.rows = [j.rows[i] for j, i in chunk]
        self.decodings = [_RowDecoding(engine, j, i) for j, i in chunk]
        self.top = max((r.logprobs for r in self.rows if r.logprobs is not None), default=None)
        self.max_new = max(r.max_new_tokens for r in self.rows)
        self.steps = 0  # decode steps so far
        self.sequences = None  # prompt + generated ids (left padded), after the first slice
        self.prompt_mask = None
        self.cache = None
        self.rng_state: tuple | None = None
        self.slice_left = 0
        self.yielded = False
        self.last_logprobs = None
        engine._count_batch(len(chunk))

    def _finish_all(self) -> bool:
        for d in self.decodings:
            if not d.done:  # generate ended (max length) before the row's own limit said so
                d._finish("abort" if d.job.cancelled else "length")
        self.sequences = self.cache = self.prompt_mask = self.last_logprobs = None
        return True

    def run_slice(self) -> bool:
        """Generate until every row is done (True) or the slice ends with other work waiting
        (False: call again to continue)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        engine = self.engine
        capture, stop, cache_arg = _generate_hooks()
        if all(d.done or d.job.cancelled or d.job.future.done() for d in self.decodings):
            return self._finish_all()
        first = self.rows[0]
        sample = first.temperature > 0
        processors = LogitsProcessorList([capture(self)])  # first: sees the model's raw logits
        if sample:
            from transformers.generation.logits_process import (
                TemperatureLogitsWarper,
                TopKLogitsWarper,
                TopPLogitsWarper,
            )

            # The warpers are added here, after the capture, so that reported logprobs stay raw.
            if first.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(first.temperature))
            if first.top_k > 0:
                processors.append(TopKLogitsWarper(first.top_k))
            if first.top_p < 1.0:
                processors.append(TopPLogitsWarper(first.top_p))
        gen = GenerationConfig(max_new_tokens=self.max_new - self.steps, do_sample=sample, num_beams=1,
                               eos_token_id=list(engine.eos_ids), pad_token_id=engine.pad_id,
                               return_dict_in_generate=True,
                               **({"temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else {}))
        if self.sequences is None:
            ids, self.prompt_mask, _ = engine._padded([r.ids for r in self.rows])
            mask, cache = self.prompt_mask, {}
        else:
            ids = self.sequences
            done = ids.shape[1] - self.prompt_mask.shape[1]
            mask = torch.cat([self.prompt_mask, self.prompt_mask.new_ones((ids.shape[0], done))], dim=1)
            cache = {cache_arg: self.cache}
        self.slice_left, self.yielded = engine.config.slice_steps, False
        seeded = first.seed is not None
        engine.stats["slices"] += 1
        with torch.inference_mode(), torch.random.fork_rng(devices=engine._rng_devices(), enabled=seeded):
            if seeded:
                if self.rng_state is None:
                    torch.manual_seed(first.seed)
                else:
                    _set_rng_state(self.rng_state, engine.device)
            out = engine.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                        logits_processor=processors,
                                        stopping_criteria=StoppingCriteriaList([stop(self)]), **cache)
            if seeded:
                self.rng_state = _get_rng_state(engine.device)
        if self.yielded and not all(d.done for d in self.decodings):
            engine.stats["yields"] += 1
            self.sequences = out.sequences
            self.cache = getattr(out, cache_arg)
            return False
        return self._finish_all()

    def step(self, input_ids) -> list[bool]:
        """After each decode step: hand the new tokens to their rows; say which rows are done (all
        of them, to end the slice early, when the slice is spent and other work waits)."""
        new = input_ids[:, -1].tolist()
        logprobs = (_token_logprobs(self.last_logprobs, new, self.top) if self.last_logprobs is not None
                    else [None] * len(new))
        for d, token, lp in zip(self.decodings, new, logprobs):
            if not d.done:
                d.add(token, lp)
        self.steps += 1
        self.slice_left -= 1
        done = [d.done for d in self.decodings]
        if not all(done) and self.slice_left <= 0 and self.steps < self.max_new and self.engine._should_yield():
            self.yielded = True
            return [True] * len(done)
        return done


def _get_rng_state(device) -> tuple:
    import torch

    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device) -> None:
    import torch

    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _token_logprobs(lp, targets: Sequence[int], top: int) -> list[TokenLogprob]:
    """(token, logprob, top alternatives) for each row of ``lp`` (log-softmax, [n, vocab])."""
    import torch

    if not len(targets):
        return []
    t = torch.tensor(list(targets), device=lp.device)
    chosen = lp.gather(1, t[:, None])[:, 0].tolist()
    if top > 0:
        values, indices = lp.topk(min(top, lp.shape[-1]), dim=-1)
        alts = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        alts = [[] for _ in targets]
    return [(int(tok), c, a) for tok, c, a in zip(targets, chosen, alts)]


@functools.cache
def _generate_hooks() -> tuple[type, type, str]:
    """The logits processor (keeps the raw log-softmax of each step when logprobs are asked for),
    the stopping criterion (``_Generation.step``) that ``model.generate`` calls, and the name
    ``generate`` takes a cache under (``cache`` in recent transformers 5 releases, where
    ``past_key_values`` is deprecated; ``past_key_values`` before). Built on first use: importing
    transformers takes seconds, and ``coh --help`` should not."""
    from transformers import LogitsProcessor, StoppingCriteria
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    class Capture(LogitsProcessor):
        def __init__(self, generation: _Generation):
            self.generation = generation

        def __call__(self, input_ids, scores):
            if self.generation.top is not None:
                self.generation.last_logprobs = scores.float().log_softmax(-1)
            return scores

    class Stop(StoppingCriteria):
        def __init__(self, generation: _Generation):
            self.generation = generation

        def __call__(self, input_ids, scores, **kwargs):
            import torch

            done = self.generation.step(input_ids)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    fields = getattr(GenerateDecoderOnlyOutput, "__dataclass_fields__", {})
    return Capture, Stop, "cache" if "cache" in fields else "past_key_values"
