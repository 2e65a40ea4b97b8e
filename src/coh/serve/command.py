"""Serve a model over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions (with
streaming), /v1/models, tokenizer endpoints for lm-evaluation-harness, the original code's
endpoints (/loglikelihood, /loglikelihood-rolling, /generate, /greedy-until, /chat, /ready),
/health, and a chat page at /.

MODEL is a `coh train` checkpoint folder (OUTPUT/final), any Hugging Face causal LM folder, or a
hub id. A folder with coh.json is prompted the way it was trained (`User: ... A helpful answer:`);
requests choose the phrase the reply is conditioned on with the body field "feedback" ("good",
"bad", "none", or any phrase text).

examples:
  coh serve runs/tiny/final
  coh serve runs/tiny/final --port 8000 --api-key secret --served-model-name coh-tiny
  coh serve runs/tiny/final --config serve.yaml --port 8001   # a YAML recipe of these options, flags over it
  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "coh-tiny", "messages": [{"role": "user", "content": "hi"}], "feedback": "bad"}'

Options: coh.serve.config.ServeConfig (--print-config prints them resolved, as a recipe).
"""

from __future__ import annotations

import argparse
import logging
import sys

from coh.options import add_options
from coh.serve.config import ServeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, ServeConfig)


def run(config: ServeConfig) -> int:
    import uvicorn

    from coh.generation.engine import Engine
    from coh.serve.app import Server
    from coh.serve.prompts import Prompter

    api_key = config.required_api_key()
    logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s: %(message)s")
    print(f"coh serve: loading {config.model} ...", file=sys.stderr)
    engine = Engine.load(config.engine_config())
    prompter = Prompter.for_model(config.model, engine.tokenizer, config.prompt_format)
    name = config.served_model_name or config.model
    server = Server(engine, prompter, name, api_key=api_key, max_new_tokens=config.max_new_tokens,
                    model_path=config.model, max_body_mb=config.max_body_mb)
    phrase = prompter.phrase(None)
    print(f"coh serve: '{name}' on {engine.device} ({next(engine.model.parameters()).dtype}), context "
          f"{engine.max_model_len} tokens; prompt format {prompter.format} from {prompter.origin}; replies follow "
          f"{repr(phrase) if phrase else 'no phrase'} unless a request sets 'feedback'", file=sys.stderr)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"coh serve: warning: listening on {config.host} without --api-key: anyone who can reach this port "
              "can use the model", file=sys.stderr)
    print(f"coh serve: chat page and API at http://{config.host}:{config.port}/", file=sys.stderr)
    try:
        uvicorn.run(server.app, host=config.host, port=config.port, log_level=config.log_level)
    finally:
        engine.close()
    return 0
