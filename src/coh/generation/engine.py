"""The model behind ``coh serve`` and ``coh.generation.generate``: one worker thread runs every
forward pass. This module is the queue and the scheduling; what is asked and answered is in
``coh.generation.requests``, token ids into text in ``coh.generation.decoding``, the forward pass
in ``coh.generation.scoring`` and generation in ``coh.generation.sliced``.

Contract:

- ``Engine.submit(requests)`` queues a ``Job`` (one ``GenRequest`` per output asked for) and
  returns at once; it raises ``QueueFull`` when ``queue_size`` jobs already wait. Callers wait on
  ``job.future`` (one ``GenResult`` per request) or get events as they happen through
  ``on_event(event, index, payload)`` (see ``Job``). ``job.cancel()`` stops its work at the next
  decode step.
- Scoring (prompt logprobs and single greedy steps, lm-evaluation-harness's loglikelihood
  requests) is one forward pass per chunk of at most ``max_batch_size`` requests. Longer or
  sampled generations run through ``model.generate`` with left padding, grouped by sampling
  settings.
- Scheduling: the worker takes the waiting jobs (those arriving within ``batch_wait_ms`` of each
  other join one batch, up to ``max_batch_size`` requests), scores them at once, and adds their
  generations to a round robin of at most ``max_running_batches`` generation batches. A
  generation runs in slices: after ``slice_steps`` decode steps it yields (keeping its KV cache)
  whenever other work is waiting, so a new request waits for at most one slice of each running
  generation (plus the prefill of new prompts), never for a whole long generation. A job's result
  is ready as soon as its own requests finish.
- Requests with a ``seed`` run in a batch of their own job, under their own random state
  (restored at every slice), so that the same request gives the same text whatever runs beside it.
- Token ids are never changed: prompts are scored and continued exactly as given. EOS, stop
  strings and logprobs: see ``coh.generation.decoding`` and ``coh.generation.scoring``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

import torch
from transformers import GenerationConfig

from coh.generation.config import EngineConfig
from coh.generation.decoding import Decoding
from coh.generation.requests import EventCallback, GenRequest, Job
from coh.generation.scoring import score_chunk
from coh.generation.sliced import SlicedGeneration
from coh.models import context_length, eos_ids

log = logging.getLogger("coh.generation")


class QueueFull(RuntimeError):
    """The request queue is full; the server answers 503."""


class Engine:
    """A causal LM and its tokenizer behind a scheduling worker thread (see the module contract)."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None):
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
        # Requests alone decide sampling: the checkpoint's generation defaults (a top_k of 50, a
        # repetition penalty) would otherwise apply silently to every OpenAI request.
        model.generation_config = GenerationConfig(
            eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id, bos_token_id=tokenizer.bos_token_id)
        torch.manual_seed(self.config.seed)
        # A deque under a condition rather than queue.Queue: the worker skips generation jobs while
        # its generation slots are full, and batching waits for "more jobs or the deadline".
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._ready: deque[SlicedGeneration] = deque()  # generation batches not started yet
        self._running: deque[SlicedGeneration] = deque()  # started ones (each holds its KV cache)
        self._current: SlicedGeneration | None = None  # the one running a slice now (out of _running meanwhile)
        self._closing = False
        self._thread: threading.Thread | None = None
        # Counters that /health reports ("rows": requests, the name that API has always used).
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
            self._thread = threading.Thread(target=self._work, name="coh-generation-engine", daemon=True)
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
            job.fail(RuntimeError("the server is shutting down"))

    def submit(self, requests: Sequence[GenRequest], on_event: EventCallback | None = None) -> Job:
        """Queue requests as one job (see the module contract). Raises ``QueueFull``."""
        job = Job(requests, on_event)
        if not job.requests:
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

    # -- scheduling ----------------------------------------------------------------------------------
    def _generation_slots(self) -> bool:
        return len(self._running) + len(self._ready) < self.config.max_running_batches

    def _takeable(self) -> bool:
        """A waiting job the worker may start now (caller holds the lock, or reads racily to decide
        whether to yield)."""
        slots = self._generation_slots()
        return any(slots or not j.needs_generate for j in list(self._waiting))

    def should_yield(self) -> bool:
        """Whether a running generation should let other work in at the end of its slice."""
        return bool(self._running or self._ready) or self._takeable()

    def _take(self) -> list[Job] | None:
        """The jobs to start now ([] when none may start and generations are running; waits when
        there is nothing at all to do; None: closing). When it had to wait, it gathers the jobs
        arriving within ``batch_wait_ms`` up to ``max_batch_size`` requests."""
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
            taken = 0
            deadline = time.monotonic() + wait
            while True:
                for job in list(self._waiting):
                    if taken >= limit and jobs:
                        break
                    if job.needs_generate and not slots:
                        continue  # its turn comes when a generation slot frees; scoring goes first
                    self._waiting.remove(job)
                    jobs.append(job)
                    taken += len(job.requests)
                remaining = deadline - time.monotonic()
                if not idle or taken >= limit or remaining <= 0 or self._closing:
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
        while self._ready and len(self._running) < self.config.max_running_batches:
            self._running.append(self._ready.popleft())
        if not self._running:
            return
        gen = self._current = self._running.popleft()
        try:
            finished = gen.run_slice()
        except Exception as e:  # an OOM or a model error fails this batch only; the server stays up
            self.stats["failed_batches"] += 1
            log.exception("generation batch of %d requests failed", len(gen.chunk))
            for j, _ in gen.chunk:
                j.fail(e)
            finished = True
        if not finished:
            self._running.append(gen)
        self._current = None

    # -- starting a batch ----------------------------------------------------------------------------
    def count_batch(self, size: int) -> None:
        """Count a forward pass or generation batch of ``size`` requests."""
        self.stats["batches"] += 1
        self.stats["rows"] += size
        self.stats["largest_batch"] = max(self.stats["largest_batch"], size)

    def decoding(self, job: Job, index: int) -> Decoding:
        """The decoding state of request ``index`` of ``job``, as it starts generating."""
        return Decoding(job, index, self.tokenizer, self.eos_ids, self.stats)

    def _start(self, jobs: list[Job]) -> None:
        """Score the jobs' requests now (forward passes) and queue their generations."""
        self.stats["jobs"] += len(jobs)
        live = []
        for j in jobs:
            if j.cancelled:
                self.stats["aborted_rows"] += len(j.requests)
                for i in range(len(j.requests)):
                    j.request_done(i)
            else:
                live.append(j)
        for j in live:
            for i, r in enumerate(j.requests):
                if not r.needs_forward and not r.needs_generate:
                    j.request_done(i)  # nothing to compute (max_tokens 0 without echo)
        forward = sorted(((j, i) for j in live for i, r in enumerate(j.requests) if r.needs_forward),
                         key=lambda ji: len(ji[0].requests[ji[1]].ids))
        size = self.config.max_batch_size
        for start in range(0, len(forward), size):
            chunk = [(j, i) for j, i in forward[start:start + size] if not j.future.done()]
            if not chunk:
                continue
            self.count_batch(len(chunk))
            try:
                score_chunk(self, chunk)
            except Exception as e:  # an OOM or a model error fails this batch only; the server stays up
                self.stats["failed_batches"] += 1
                log.exception("batch of %d requests failed", len(chunk))
                for j, _ in chunk:
                    j.fail(e)
        groups: dict[tuple, list[tuple[Job, int]]] = {}
        for j in live:
            for i, r in enumerate(j.requests):
                if r.needs_generate and not j.future.done():
                    # model.generate takes one sampling setting per call; seeded requests keep to their job.
                    key = (r.temperature, r.top_p, r.top_k, None if r.seed is None else (id(j), r.seed))
                    groups.setdefault(key, []).append((j, i))
        for items in groups.values():
            items.sort(key=lambda ji: len(ji[0].requests[ji[1]].ids))
            for start in range(0, len(items), size):
                self._ready.append(SlicedGeneration(self, items[start:start + size]))
