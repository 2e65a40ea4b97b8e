"""A ``model.generate`` batch run in slices: requests sharing sampling settings, left padded,
generated ``slice_steps`` decode steps at a time. Each slice continues from the previous one's
sequences and KV cache, so that slicing changes nothing in the tokens; seeded requests continue
their own random state too (restored at every slice).

``model.generate`` is driven through its own hooks: :class:`CaptureLogprobs` (the first logits
processor, so it sees the raw logits) keeps each step's log-softmax when logprobs are asked for,
and :class:`SliceStop` (the stopping criterion) hands each new token to its request's
``Decoding`` and ends the slice early when the slice is spent and other work waits.

This module imports torch and transformers; the engine imports it, and ``coh --help`` imports
neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.utils import GenerateDecoderOnlyOutput

from coh.generation.requests import GenRequest, Job
from coh.generation.scoring import left_padded, token_logprobs

if TYPE_CHECKING:
    from coh.generation.engine import Engine

# The name generate takes a cache under: `cache` in recent transformers 5 releases, where
# `past_key_values` is deprecated; `past_key_values` before.
CACHE_ARGUMENT = "cache" if "cache" in getattr(GenerateDecoderOnlyOutput, "__dataclass_fields__", {}) \
    else "past_key_values"


class SlicedGeneration:
    """One ``model.generate`` batch of ``(job, index)`` requests; ``run_slice()`` until it
    returns True (see the module docstring)."""

    def __init__(self, engine: Engine, chunk: list[tuple[Job, int]]):
        self.engine, self.chunk = engine, chunk
        self.requests = [j.requests[i] for j, i in chunk]
        self.decodings = [engine.decoding(j, i) for j, i in chunk]
        self.top = max((r.logprobs for r in self.requests if r.logprobs is not None), default=None)
        self.max_new = max(r.max_new_tokens for r in self.requests)
        self.steps = 0  # decode steps so far
        self.sequences = None  # prompt + generated ids (left padded), after the first slice
        self.prompt_mask = None
        self.cache = None
        self.rng_state: tuple | None = None
        self.slice_left = 0
        self.yielded = False
        self.last_logprobs = None
        engine.count_batch(len(chunk))

    def _finish_all(self) -> bool:
        for d in self.decodings:
            if not d.done:  # generate ended (max length) before the request's own limit said so
                d.finish("abort" if d.job.cancelled else "length")
        self.sequences = self.cache = self.prompt_mask = self.last_logprobs = None
        return True

    def run_slice(self) -> bool:
        """Generate until every request is done (True) or the slice ends with other work waiting
        (False: call again to continue)."""
        engine = self.engine
        if all(d.done or d.job.cancelled or d.job.future.done() for d in self.decodings):
            return self._finish_all()
        first = self.requests[0]
        sample = first.temperature > 0
        processors = LogitsProcessorList([CaptureLogprobs(self), *sampling_warpers(first)])
        gen = GenerationConfig(max_new_tokens=self.max_new - self.steps, do_sample=sample, num_beams=1,
                               eos_token_id=list(engine.eos_ids), pad_token_id=engine.pad_id,
                               return_dict_in_generate=True,
                               **({"temperature": 1.0, "top_p": 1.0, "top_k": 0} if sample else {}))
        if self.sequences is None:
            ids, self.prompt_mask, _ = left_padded([r.ids for r in self.requests], engine.pad_id, engine.device)
            mask, cache = self.prompt_mask, {}
        else:
            ids = self.sequences
            done = ids.shape[1] - self.prompt_mask.shape[1]
            mask = torch.cat([self.prompt_mask, self.prompt_mask.new_ones((ids.shape[0], done))], dim=1)
            cache = {CACHE_ARGUMENT: self.cache}
        self.slice_left, self.yielded = engine.config.slice_steps, False
        seeded = first.seed is not None
        engine.stats["slices"] += 1
        cuda = [engine.device] if engine.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=cuda, enabled=seeded):
            if seeded:
                if self.rng_state is None:
                    torch.manual_seed(first.seed)
                else:
                    _set_rng_state(self.rng_state, engine.device)
            out = engine.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                        logits_processor=processors,
                                        stopping_criteria=StoppingCriteriaList([SliceStop(self)]), **cache)
            if seeded:
                self.rng_state = _get_rng_state(engine.device)
        if self.yielded and not all(d.done for d in self.decodings):
            engine.stats["yields"] += 1
            self.sequences = out.sequences
            self.cache = getattr(out, CACHE_ARGUMENT)
            return False
        return self._finish_all()

    def step(self, input_ids: torch.Tensor) -> list[bool]:
        """After each decode step: hand the new tokens to their requests; say which requests are
        done (all of them, to end the slice early, when the slice is spent and other work waits)."""
        new = input_ids[:, -1].tolist()
        logprobs = (token_logprobs(self.last_logprobs, new, self.top) if self.last_logprobs is not None
                    else [None] * len(new))
        for d, token, lp in zip(self.decodings, new, logprobs):
            if not d.done:
                d.add(token, lp)
        self.steps += 1
        self.slice_left -= 1
        done = [d.done for d in self.decodings]
        if not all(done) and self.slice_left <= 0 and self.steps < self.max_new and self.engine.should_yield():
            self.yielded = True
            return [True] * len(done)
        return done


def sampling_warpers(request: GenRequest) -> list[LogitsProcessor]:
    """Temperature, top-k and top-p for a sampled request (none for greedy). They go after
    :class:`CaptureLogprobs`, so that reported logprobs stay raw."""
    if request.temperature <= 0:
        return []
    warpers: list[LogitsProcessor] = []
    if request.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(request.temperature))
    if request.top_k > 0:
        warpers.append(TopKLogitsWarper(request.top_k))
    if request.top_p < 1.0:
        warpers.append(TopPLogitsWarper(request.top_p))
    return warpers


class CaptureLogprobs(LogitsProcessor):
    """Keeps the raw log-softmax of each step ([batch, vocab]) on the generation when logprobs
    are asked for; changes nothing in the scores."""

    def __init__(self, generation: SlicedGeneration):
        self.generation = generation

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generation.top is not None:
            self.generation.last_logprobs = scores.float().log_softmax(-1)
        return scores


class SliceStop(StoppingCriteria):
    """``SlicedGeneration.step`` after each decode step: which requests of the batch are done."""

    def __init__(self, generation: SlicedGeneration):
        self.generation = generation

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = self.generation.step(input_ids)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _get_rng_state(device) -> tuple:
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
