"""The options of the generation engine: how its model is loaded and how requests are batched.

``coh serve`` takes them as flags (``coh.serve.config.ServeConfig`` extends this class), and
:func:`coh.generation.generate` builds one for a synchronous run. Nothing heavy is imported
here: ``coh --help`` builds the serve parser from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from coh.models import DTYPES
from coh.options import check_fields, option

# Counts that must be at least 1; their message is the one `coh serve` has always given.
AT_LEAST_ONE = ("max_batch_size", "queue_size", "slice_steps", "max_running_batches")


@dataclass
class EngineConfig:
    """How the model is loaded and how requests are batched (see ``coh.generation.engine``)."""

    model: str = option("", "checkpoint folder or hub id (for Engine.load)")
    dtype: str = option("auto", "weights dtype: auto is bfloat16 on a GPU that supports it (else float16), "
                                "float32 on a CPU", choices=DTYPES)
    device: str = option("auto", "cuda, cuda:1, mps, cpu; auto: cuda, then mps, then cpu")
    trust_remote_code: bool = option(False, "run Python code shipped with the model (only for models you trust)")
    max_batch_size: int = option(8, "requests per forward pass or generate call")
    queue_size: int = option(64, "requests that may wait for the worker; more are refused at once (over HTTP: "
                                 "503 Service Unavailable)")
    batch_wait_ms: float = option(5.0, "how long a batch waits for more requests to join it, in milliseconds")
    max_model_len: int | None = option(None, "context length in tokens, at least 2 (none: the model config's)")
    seed: int = option(0, "seed of the sampler at start (requests may bring their own seed)")
    slice_steps: int = option(16, "a running generation lets waiting requests in after this many decode steps")
    max_running_batches: int = option(4, "generation batches in progress at once, taking turns (each holds a "
                                         "KV cache)")

    def __post_init__(self) -> None:
        check_fields(self)
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        # max_model_len is checked by coh.models.context_length, which the engine calls.
