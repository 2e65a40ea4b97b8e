"""Generation: the one path every stage generates text through (``coh serve``, ``coh eval``,
``coh demo``, ``coh compare``).

- ``config``: ``EngineConfig``, the engine's options (``coh serve`` flags).
- ``requests``: what the engine is asked for and answers (``GenRequest``, ``GenResult``,
  ``Delta``, ``Job``).
- ``engine``: a model and its tokenizer behind a batching worker thread (``Engine``): the queue
  and the scheduling. Prompts of token ids are scored and continued exactly as given, with stop
  strings, EOS, logprobs, seeds, and long generations that yield to waiting work.
- ``scoring``: one forward pass (prompt logprobs, single greedy steps); ``sliced``: a
  ``model.generate`` batch run in slices; ``decoding``: token ids into text, stop strings, EOS.
- :func:`generate`: the same engine, synchronously, for a list of prompts.
"""

from __future__ import annotations

from collections.abc import Sequence


def generate(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = 0, stop: Sequence[str] = (), batch_size: int = 8,
             progress: bool = False, desc: str = "generate") -> list[str]:
    """The text each token-id prompt continues with, in order: up to EOS (left out), the first
    of the ``stop`` strings (cut before it) or ``max_new_tokens``. Greedy when ``temperature`` is
    0; sampled prompts draw from ``seed``, so a call gives the same text whatever ran before."""
    from tqdm import tqdm

    from coh.generation.config import EngineConfig
    from coh.generation.engine import Engine
    from coh.generation.requests import GenRequest

    requests = [GenRequest(list(p), max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           seed=seed if temperature > 0 else None, stop=tuple(stop)) for p in prompts]
    engine = Engine(model, tokenizer, EngineConfig(max_batch_size=batch_size, queue_size=max(1, len(requests)),
                                                   batch_wait_ms=0))
    with tqdm(total=len(requests), desc=desc, unit=" prompts", disable=not progress) as bar:
        engine.start()
        try:
            job = engine.submit(requests, on_event=lambda event, i, payload: bar.update(1) if event == "done" else None)
            results = job.future.result()
        finally:
            engine.close()
    return [r.text for r in results]
