"""`coh serve` under a long generation: how long a 1-token request waits, with generations in
slices (the default, --slice-steps 16) and without (one slice as long as the whole generation, as
the engine ran before issue 14), in one run; and how slow /health gets while an 8 MB prompt is
tokenized.

    python bench/serve_fairness.py [--model DIR] [--long-tokens 300] [--slice-steps 16]

MODEL defaults to SmolLM2-135M-Instruct (coh.smollm2). Prints the figures and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import sys
import threading
import time

import httpx


class Served:
    """``coh serve``'s app on a free local port, in a background thread."""

    def __init__(self, model: str, slice_steps: int, engine=None):
        import uvicorn

        from coh.generation.config import EngineConfig
        from coh.generation.engine import Engine
        from coh.serve.app import Server
        from coh.serve.prompts import Prompter

        config = EngineConfig(model=model, slice_steps=slice_steps)
        self.engine = Engine(engine.model, engine.tokenizer, config) if engine else Engine.load(config)
        server = Server(self.engine, Prompter.for_model(model, self.engine.tokenizer), "bench", max_new_tokens=512)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(server.app, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.uvicorn.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=60)
        self.engine.close()


def short_request_wait(served: Served, long_tokens: int) -> tuple[float, float, int]:
    """(seconds the 1-token request took, seconds the long generation took, tokens it made)."""
    tok = served.engine.tokenizer
    long_prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # greedy decoding counts on, far past 300 tokens
    out: dict = {}

    def long_generation() -> None:
        start = time.monotonic()
        r = httpx.post(served.url + "/v1/completions", timeout=3600, json={
            "prompt": long_prompt, "max_tokens": long_tokens, "temperature": 0}).json()
        out["seconds"], out["tokens"] = time.monotonic() - start, r["usage"]["completion_tokens"]

    worker = threading.Thread(target=long_generation)
    worker.start()
    while served.engine.running() == 0 and worker.is_alive():  # the long generation has started
        time.sleep(0.005)
    time.sleep(0.5)
    ids = tok("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    start = time.monotonic()
    r = httpx.post(served.url + "/v1/completions", timeout=3600, json={
        "prompt": ids, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1})
    waited = time.monotonic() - start
    assert r.status_code == 200, r.text
    worker.join()
    if "tokens" not in out:
        raise RuntimeError("the long generation failed")
    return waited, out["seconds"], out["tokens"]


def health_while_tokenizing(served: Served, megabytes: float) -> tuple[float, float, int]:
    """(slowest /health answer in s, seconds /tokenize took, /health answers meanwhile)."""
    text = ("The quick brown fox jumps over the lazy dog. " * int(megabytes * 2**20 / 45 + 1))[: int(megabytes * 1e6)]
    done = threading.Event()
    took: dict = {}

    def tokenize() -> None:
        start = time.monotonic()
        httpx.post(served.url + "/tokenize", json={"prompt": text}, timeout=3600).raise_for_status()
        took["s"] = time.monotonic() - start
        done.set()

    worker = threading.Thread(target=tokenize)
    worker.start()
    slowest, answers = 0.0, 0
    while not done.is_set():
        start = time.monotonic()
        httpx.get(served.url + "/health", timeout=3600).raise_for_status()
        slowest, answers = max(slowest, time.monotonic() - start), answers + 1
        time.sleep(0.02)
    worker.join()
    return slowest, took["s"], answers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct from coh.smollm2)")
    ap.add_argument("--long-tokens", type=int, default=300)
    ap.add_argument("--slice-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.model is None:
        from coh.smollm2 import smollm2_folder

        args.model = str(smollm2_folder())
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"python {platform.python_version()}, torch {torch.__version__}")
    first = None
    waits: dict[str, list[float]] = {}
    for name, steps in (("sliced", args.slice_steps), ("unsliced", 10**9)):
        served = Served(args.model, steps, engine=first)
        first = first or served.engine
        try:
            for _ in range(args.repeats):
                waited, long_s, tokens = short_request_wait(served, args.long_tokens)
                waits.setdefault(name, []).append(waited)
                print(f"{name:9s} (--slice-steps {steps}): 1-token request {waited:6.2f} s while a generation of "
                      f"{tokens} tokens took {long_s:6.2f} s", flush=True)
            if name == "sliced":
                slowest, took, answers = health_while_tokenizing(served, 8)
                print(f"/health while /tokenize worked on 8 MB for {took:.1f} s: {answers} answers, slowest "
                      f"{slowest:.3f} s", flush=True)
        finally:
            served.stop()
    sliced, unsliced = statistics.median(waits["sliced"]), statistics.median(waits["unsliced"])
    print(f"median wait of the 1-token request: sliced {sliced:.2f} s, unsliced {unsliced:.2f} s "
          f"(unsliced / sliced = {unsliced / sliced:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
