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
  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "coh-tiny", "messages": [{"role": "user", "content": "hi"}], "feedback": "bad"}'
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coh.models import DTYPES
    from coh.serve.prompts import PROMPT_FORMATS

    parser.add_argument("model", metavar="MODEL", help="checkpoint folder or hub id")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get("COH_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every API route (default: $COH_API_KEY, "
                             "else no key)")
    parser.add_argument("--served-model-name", help="the model name clients send (default: MODEL as given)")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="auto",
                        help="how chat messages become a prompt: coh (User: ... A helpful answer:), chat-template, "
                             "or auto (default): coh for a folder with coh.json, else the tokenizer's chat template "
                             "if it has one, else coh with the default phrases")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="weights dtype (default auto: bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu (default auto)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code shipped with the model (off by default: only for models you trust)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="rows per forward pass (default 8)")
    parser.add_argument("--queue-size", type=int, default=64,
                        help="requests that may wait; more get 503 Service Unavailable (default 64)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a batch waits for more requests to join it (default 5)")
    parser.add_argument("--slice-steps", type=int, default=16,
                        help="a running generation lets waiting requests in after this many decode steps (default 16)")
    parser.add_argument("--max-running-batches", type=int, default=4,
                        help="generation batches in progress at once, taking turns (default 4; each holds a KV cache)")
    parser.add_argument("--max-body-mb", type=float, default=8.0,
                        help="largest request body in MiB; larger ones get 413 (default 8: lm-eval batches of "
                             "128 prompts of 8k token ids)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="context length in tokens (default: the model config's)")
    parser.add_argument("--max-tokens", type=int, default=512,
                        help="reply length when a chat request gives no max_tokens (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler at start (default 0)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="server log level (default info)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coh.generation.config import EngineConfig
    from coh.generation.engine import Engine
    from coh.serve.app import Server
    from coh.serve.prompts import Prompter

    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if not args.max_body_mb > 0:
        raise ValueError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    config = EngineConfig(model=args.model, dtype=args.dtype, device=args.device,
                          trust_remote_code=args.trust_remote_code, max_batch_size=args.max_batch_size,
                          queue_size=args.queue_size, batch_wait_ms=args.batch_wait_ms,
                          max_model_len=args.max_model_len, seed=args.seed, slice_steps=args.slice_steps,
                          max_running_batches=args.max_running_batches)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    print(f"coh serve: loading {args.model} ...", file=sys.stderr)
    engine = Engine.load(config)
    prompter = Prompter.for_model(args.model, engine.tokenizer, args.prompt_format)
    name = args.served_model_name or args.model
    server = Server(engine, prompter, name, api_key=args.api_key, max_new_tokens=args.max_tokens, model_path=args.model,
                    max_body_mb=args.max_body_mb)
    phrase = prompter.phrase(None)
    print(f"coh serve: '{name}' on {engine.device} ({next(engine.model.parameters()).dtype}), context "
          f"{engine.max_model_len} tokens; prompt format {prompter.format} from {prompter.origin}; replies follow "
          f"{repr(phrase) if phrase else 'no phrase'} unless a request sets 'feedback'", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"coh serve: warning: listening on {args.host} without --api-key: anyone who can reach this port "
              "can use the model", file=sys.stderr)
    print(f"coh serve: chat page and API at http://{args.host}:{args.port}/", file=sys.stderr)
    try:
        uvicorn.run(server.app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.close()
    return 0
