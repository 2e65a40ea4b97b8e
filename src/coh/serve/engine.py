"""The model behind the server: one worker thread runs every forward pass, in batches.

Contract:

- ``Engine.submit(rows)`` queues a ``Job`` (one ``Row`` per output asked for) and returns at once;
  it raises ``QueueFull`` when ``queue_size`` jobs already wait. Callers wait on ``job.future``
  (a ``concurrent.futures.Future`` of one ``RowResult`` per row) or get events as they happen
  through ``on_event(kind, row_index, payload)``: ``"delta"`` (text ready to show), ``"done"``
  (the row's ``RowResult``), ``"error"`` (the exception; the whole job failed).
- The worker takes the first waiting job, then any that arrive within ``batch_wait_ms`` up to
  ``max_batch_size`` rows, and runs them together: one forward pass per batch for prompt
  logprobs and single greedy steps (lm-evaluation-harness's loglikelihood requests), and
  ``model.generate`` with left padding for longer or sampled generations, grouped by sampling
  settings. Rows with a ``seed`` run in a batch of their own job, after ``torch.manual_seed``,
  so that the same request gives the same text.
- Token ids are never changed: rows are scored and continued exactly as given.
- Generated text is decoded incrementally with the prompt as context (so a first token's
  leading space survives), EOS ends a row without text, and a stop string ends it with the text
  cut before the stop string. Logprobs are the model's own distribution (before temperature
  and top-p), as OpenAI and vLLM report them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


DTYPES = ("auto", "float32", "bfloat16", "float16")


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
    ``pieces[i]`` is the text that ``token_ids[i]`` added to ``text`` (EOS excluded; a stop
    string and what follows it cut off). ``finish_reason``: ``stop`` (EOS or a stop string),
    ``length``, or ``abort`` (the client went away)."""

    prompt_logprobs: list[TokenLogprob | None] | None = None
    token_ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str = "length"


class Job:
    """Rows submitted together; their results come back together (see the module contract)."""

    def __init__(self, rows: Sequence[Row], on_event: EventCallback | None = None):
        self.rows = list(rows)
        self.results: list[RowResult | None] = [None] * len(self.rows)
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.on_event = on_event
        self.cancelled = False
        self._left = len(self.rows)

    def cancel(self) -> None:
        """Stop work on this job (its rows end with finish_reason ``abort``)."""
        self.cancelled = True

    def _emit(self, kind: str, index: int, payload: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, index, payload)

    def _row_done(self, index: int, result: RowResult) -> None:
        if self.future.done():
            return
        self.results[index] = result
        self._left -= 1
        self._emit("done", index, result)
        if self._left == 0:
            self.future.set_result(self.results)

    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
            self._emit("error", -1, exc)


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # bf16 is emulated, and slow, on most CPUs
    return getattr(torch, dtype)


def context_length(model, tokenizer, override: int | None) -> int:
    """The longest sequence (prompt + generated) the model takes."""
    if override is not None:
        if override < 2:
            raise ValueError(f"max_model_len must be at least 2, got {override}")
        return override
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:  # transformers uses a huge number for "unknown"
        return limit
    raise ValueError("the model config states no context length; give --max-model-len")


def _eos_ids(model, tokenizer) -> tuple[int, ...]:
    """Every token that ends a reply: the tokenizer's EOS and the model's generation EOS ids."""
    ids: list[int] = []
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None),
                   getattr(model.config, "eos_token_id", None)):
        for i in source if isinstance(source, list | tuple) else [source]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return tuple(ids)


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

    def __init__(self, engine: Engine, job: Job, index: int, result: RowResult):
        self.job, self.index, self.row, self.result = job, index, job.rows[index], result
        self.eos = engine.eos_ids
        self.decoder = TextDecoder(engine.tokenizer, self.row.ids)
        self.sent = 0
        self.done = False
        if self.row.logprobs is not None:
            result.logprobs = []

    def add(self, token: int, logprob: TokenLogprob | None) -> None:
        res = self.result
        if self.job.cancelled:
            return self._finish("abort")
        if token in self.eos:
            return self._finish("stop")
        piece = self.decoder.step(token)
        before = len(res.text)
        res.token_ids.append(token)
        res.pieces.append(piece)
        res.text += piece
        if res.logprobs is not None and logprob is not None:
            res.logprobs.append(logprob)
        cut = self._find_stop(before)
        if cut is not None:
            self._cut(cut)
            return self._finish("stop")
        if len(res.token_ids) >= self.row.max_new_tokens:
            return self._finish("length")
        safe = len(res.text) - stop_holdback(res.text, self.row.stop)
        if safe > self.sent:
            self.job._emit("delta", self.index, res.text[self.sent:safe])
            self.sent = safe

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
        res.token_ids, res.pieces = res.token_ids[:keep], res.pieces[:keep]
        if res.logprobs is not None:
            res.logprobs = res.logprobs[:keep]
        if keep:
            last_start = sum(len(p) for p in res.pieces[:-1])
            res.pieces[-1] = res.pieces[-1][: max(0, at - last_start)]
        res.text = res.text[:at]

    def _finish(self, reason: str) -> None:
        self.done = True
        self.result.finish_reason = reason
        if len(self.result.text) > self.sent:
            self.job._emit("delta", self.index, self.result.text[self.sent:])
            self.sent = len(self.result.text)


class Engine:
    """A causal LM and its tokenizer behind a batching worker thread (see the module contract)."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None):
        import torch

        self.model, self.tokenizer = model, tokenizer
        self.config = config or EngineConfig()
        self.device = next(model.parameters()).device
        self.max_model_len = context_length(model, tokenizer, self.config.max_model_len)
        self.eos_ids = _eos_ids(model, tokenizer)
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
        # any job, and batching needs to wait for "more jobs or the deadline".
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._paused = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0, "jobs": 0, "failed_batches": 0}

    @classmethod
    def load(cls, config: EngineConfig) -> Engine:
        """Load ``config.model`` (a local folder or a hub id) and its tokenizer."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype,
                                                         trust_remote_code=config.trust_remote_code)
        except OSError as e:  # no such folder or hub repository, or files missing from it
            raise FileNotFoundError(f"cannot load the model '{config.model}': {e}") from None
        model.to(device).eval()
        return cls(model, tokenizer, config)

    # -- the queue ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._work, name="coh-serve-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the worker after the batch it is running; jobs still waiting fail."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cond:
            left, self._waiting = list(self._waiting), deque()
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

    @contextlib.contextmanager
    def paused(self):
        """Hold the worker while the block runs (jobs queue up, none starts): for maintenance and
        for tests of batching and of the full queue."""
        with self._cond:
            self._paused = True
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    def _next_batch(self) -> list[Job] | None:
        """Wait for a job, then gather those arriving within ``batch_wait_ms`` (None: closing)."""
        limit, wait = self.config.max_batch_size, self.config.batch_wait_ms / 1000
        with self._cond:
            while not self._closing and (self._paused or not self._waiting):
                self._cond.wait()
            if self._closing:
                return None
            jobs = [self._waiting.popleft()]
            rows = len(jobs[0].rows)
            deadline = time.monotonic() + wait
            while rows < limit:
                if self._waiting:
                    jobs.append(self._waiting.popleft())
                    rows += len(jobs[-1].rows)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing or self._paused:
                    break
                self._cond.wait(remaining)
        return jobs

    def _work(self) -> None:
        while (jobs := self._next_batch()) is not None:
            self._run(jobs)

    # -- running a batch ---------------------------------------------------------------------------
    def _run(self, jobs: list[Job]) -> None:
        self.stats["jobs"] += len(jobs)
        results = {id(j): [RowResult() for _ in j.rows] for j in jobs}
        forward = [(j, i) for j in jobs for i, r in enumerate(j.rows) if r.needs_forward and not j.cancelled]
        self._in_chunks(forward, self._forward, results, key=lambda ji: len(ji[0].rows[ji[1]].ids))
        groups: dict[tuple, list[tuple[Job, int]]] = {}
        for j in jobs:
            for i, r in enumerate(j.rows):
                if r.needs_generate and not j.cancelled and not j.future.done():
                    # model.generate takes one sampling setting per call; seeded rows keep to their job.
                    key = (r.temperature, r.top_p, r.top_k, None if r.seed is None else (id(j), r.seed))
                    groups.setdefault(key, []).append((j, i))
        for items in groups.values():
            self._in_chunks(items, self._generate, results, key=lambda ji: len(ji[0].rows[ji[1]].ids))
        for j in jobs:
            for i, res in enumerate(results[id(j)]):
                if j.cancelled:
                    res.finish_reason = "abort"
                j._row_done(i, res)

    def _in_chunks(self, items: list[tuple[Job, int]], fn, results: dict, key) -> None:
        """Run ``fn`` on chunks of at most ``max_batch_size`` rows of similar length; a failing
        chunk fails its jobs, the others go on."""
        items = sorted(items, key=key)
        size = self.config.max_batch_size
        for start in range(0, len(items), size):
            chunk = [(j, i) for j, i in items[start:start + size] if not j.future.done()]
            if not chunk:
                continue
            self.stats["batches"] += 1
            self.stats["rows"] += len(chunk)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(chunk))
            try:
                fn(chunk, results)
            except Exception as e:  # an OOM or a model error fails this batch only; the server stays up
                self.stats["failed_batches"] += 1
                log.exception("batch of %d rows failed", len(chunk))
                for j, _ in chunk:
                    j._fail(e)

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

    def _forward(self, chunk: list[tuple[Job, int]], results: dict) -> None:
        """One forward pass: prompt logprobs, and the token of single greedy steps."""
        import torch

        rows = [j.rows[i] for j, i in chunk]
        ids, mask, positions = self._padded([r.ids for r in rows])
        all_positions = any(r.prompt_logprobs is not None for r in rows)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=0 if all_positions else 1).logits
        for b, ((job, i), row) in enumerate(zip(chunk, rows)):
            res = results[id(job)][i]
            n = len(row.ids)
            if row.prompt_logprobs is not None:
                lp = logits[b, -n:].float().log_softmax(-1)
                res.prompt_logprobs = [None, *_token_logprobs(lp[:-1], row.ids[1:], row.prompt_logprobs)]
                last = lp[-1:]
            else:
                last = logits[b, -1:].float().log_softmax(-1)
            if row.one_greedy_step:
                token = int(last[0].argmax())
                decoding = _RowDecoding(self, job, i, res)
                decoding.add(token, _token_logprobs(last, [token], row.logprobs or 0)[0])

    def _generate(self, chunk: list[tuple[Job, int]], results: dict) -> None:
        """``model.generate`` on rows that share sampling settings."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        rows = [j.rows[i] for j, i in chunk]
        first = rows[0]
        tracker = _Tracker([_RowDecoding(self, j, i, results[id(j)][i]) for j, i in chunk],
                           max(r.logprobs for r in rows) if any(r.logprobs is not None for r in rows) else None)
        processors = LogitsProcessorList([tracker.capture])  # first: sees the model's raw logits
        sample = first.temperature > 0
        if sample:
            # The warpers are added here, after the capture, so that reported logprobs stay raw.
            if first.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(first.temperature))
            if first.top_k > 0:
                processors.append(TopKLogitsWarper(first.top_k))
            if first.top_p < 1.0:
                processors.append(TopPLogitsWarper(first.top_p))
        gen = GenerationConfig(max_new_tokens=max(r.max_new_tokens for r in rows), do_sample=sample, num_beams=1,
                               eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id,
                               **({"temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else {}))
        ids, mask, _ = self._padded([r.ids for r in rows])
        seeded = first.seed is not None
        with torch.inference_mode(), torch.random.fork_rng(devices=self._rng_devices(), enabled=seeded):
            if seeded:
                torch.manual_seed(first.seed)
            self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                logits_processor=processors, stopping_criteria=StoppingCriteriaList([tracker.stop]))
        for d in tracker.rows:
            if not d.done:  # generate ended (max length) before the row's own limit said so
                d._finish("abort" if d.job.cancelled else "length")

    def _rng_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []


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


class _Tracker:
    """Per-row stopping for ``model.generate`` (a ``StoppingCriteria``: called after every step
    with the sequences so far) plus a logits processor that keeps the raw log-softmax of the step
    when logprobs are asked for."""

    def __init__(self, rows: list[_RowDecoding], top: int | None):
        from transformers import LogitsProcessor, StoppingCriteria

        self.rows, self.top = rows, top
        self.last_logprobs = None
        tracker = self

        class Capture(LogitsProcessor):
            def __call__(self, input_ids, scores):
                if tracker.top is not None:
                    tracker.last_logprobs = scores.float().log_softmax(-1)
                return scores

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return tracker.step(input_ids)

        self.capture, self.stop = Capture(), Stop()

    def step(self, input_ids):
        import torch

        new = input_ids[:, -1].tolist()
        logprobs = (_token_logprobs(self.last_logprobs, new, self.top) if self.last_logprobs is not None
                    else [None] * len(new))
        for d, token, lp in zip(self.rows, new, logprobs):
            if not d.done:
                d.add(token, lp)
        return torch.tensor([d.done for d in self.rows], dtype=torch.bool, device=input_ids.device)
