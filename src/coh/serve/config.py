"""The options of ``coh serve``: the engine's (``coh.generation.config.EngineConfig``: the model,
how it is loaded and how requests are batched) and the server's own (address, key, prompt format,
limits). Fields are made with ``coh.options.option``, so ``coh.options`` builds the flags, the
``--config`` recipe and ``--print-config`` from them; ``__post_init__`` checks them, for the
command line, a recipe and a Python caller alike.

Nothing heavy is imported here: ``coh --help`` builds this parser.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from coh.generation.config import EngineConfig
from coh.options import option
from coh.serve.prompts import PROMPT_FORMATS

API_KEY_ENV = "COH_API_KEY"
DEFAULT_MAX_BODY_MB = 8.0  # holds lm-eval batches of 128 prompts of 8k token ids
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class ServeConfig(EngineConfig):
    """``coh serve MODEL``: an OpenAI-compatible server over one engine."""

    model: str = option(help="checkpoint folder or hub id", positional=True)
    host: str = option("127.0.0.1", "address to bind (127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    port: int = option(8000, "port, 0 to 65535 (0: any free port)", low=0, high=65535,
                       expected="a port from 0 to 65535")
    api_key: str | None = option(None, "require 'Authorization: Bearer KEY' on every API route (none: the "
                                       "variable named by --api-key-env if set, else no key)")
    api_key_env: str = option(API_KEY_ENV, "environment variable that holds the API key when --api-key is not given")
    served_model_name: str | None = option(None, "the model name clients send (none: MODEL as given)")
    prompt_format: str = option("auto", "how chat messages become a prompt: coh (User: ... A helpful answer:), "
                                        "chat-template, or auto: coh for a folder with coh.json, else the "
                                        "tokenizer's chat template if it has one, else coh with the default phrases",
                                choices=PROMPT_FORMATS)
    max_new_tokens: int = option(512, "reply length in tokens when a chat request gives no max_tokens (also of the "
                                      "original server's /generate, /greedy-until and /chat)",
                                 deprecated=("--max-tokens",), low=1, expected="a whole number of at least 1")
    max_body_mb: float = option(DEFAULT_MAX_BODY_MB, "largest request body in MiB; larger ones get 413 (8 holds "
                                                     "lm-eval batches of 128 prompts of 8k token ids)",
                                low=0, low_open=True, expected="a number of MiB above 0")
    log_level: str = option("info", "server log level", choices=LOG_LEVELS)

    def required_api_key(self) -> str | None:
        """The key clients must send: ``api_key``, else the variable ``api_key_env`` names (None: no key)."""
        return self.api_key if self.api_key is not None else os.environ.get(self.api_key_env)

    def engine_config(self) -> EngineConfig:
        """The engine's part of these options."""
        return EngineConfig(**{f.name: getattr(self, f.name) for f in fields(EngineConfig)})
