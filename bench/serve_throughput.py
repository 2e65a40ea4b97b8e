"""`coh serve` generation throughput: completion tokens per second with 1 and with N concurrent
clients, over HTTP, against the real command (`python -m coh serve MODEL --port P`).

Each client sends ``--requests`` completions one after another (greedy, ``--max-tokens`` each,
distinct prompts), all clients at once; throughput is the completion tokens the server reports
(``usage``) over the wall time from the first request to the last answer. One warm-up request
goes first. Without ``--model`` a LLaMA is built from config (random weights: it rarely stops
early, so generations run to ``--max-tokens``).

    python bench/serve_throughput.py [--model DIR] [--clients 1,32] [--max-tokens 128] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PROMPTS = ["The history of", "A recipe for", "In the morning the", "Dear friend,", "The answer is",
           "Once upon a time", "Step one:", "Breaking news:"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, max_batch_size: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "coh", "serve", model, "--port", str(port), "--log-level",
                             "warning", "--max-batch-size", str(max_batch_size), "--queue-size", str(4 * max_batch_size)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"coh serve exited with status {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"coh serve did not answer /health within 300 s: {log.read_text()[-2000:]}")


def complete(url: str, prompt: str, max_tokens: int) -> int:
    r = httpx.post(url + "/v1/completions", timeout=600,
                   json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def measure(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    tokens = [0] * clients
    errors: list[str] = []

    def client(k: int) -> None:
        try:
            for j in range(requests):
                tokens[k] += complete(url, f"{PROMPTS[(k + j) % len(PROMPTS)]} {k}-{j}", max_tokens)
        except Exception as e:  # counted, and the figure is refused below
            errors.append(f"client {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} clients failed; first: {errors[0]}")
    total = sum(tokens)
    return {"clients": clients, "requests": clients * requests, "completion_tokens": total, "seconds": seconds,
            "tokens_per_s": total / seconds, "tokens_per_s_per_client": total / seconds / clients}


def make_model(folder: Path, hidden: int, layers: int) -> str:
    from coh.tiny import make_tiny_model, train_tiny_tokenizer

    text = [f"{p} {w}" for p in PROMPTS for w in ("sun", "rain", "bread", "news", "time", "answer")] * 20
    tok = train_tiny_tokenizer(text, 500, "bpe", folder / "tokenizer")
    make_tiny_model(folder / "model", tok, "llama", hidden=hidden, layers=layers, heads=max(1, hidden // 64))
    return str(folder / "model")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder (default: a LLaMA from config, --hidden x --layers)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--clients", default="1,32", help="comma list of concurrent client counts")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    import torch

    report: dict = {"machine": platform.node(), "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                    else f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
                    "max_tokens": args.max_tokens, "results": []}

    def write() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(Path(tmp), args.hidden, args.layers)
        report["model"] = model if args.model else f"LLaMA from config, hidden {args.hidden} x {args.layers} layers"
        port = free_port()
        server = start_server(model, port, max(counts), Path(tmp) / "serve.log")
        url = f"http://127.0.0.1:{port}"
        try:
            complete(url, "warm up", 8)
            for n in counts:
                row = measure(url, n, args.requests, args.max_tokens)
                report["results"].append(row)
                write()
                print(f"{n:>3} clients: {row['completion_tokens']} tokens in {row['seconds']:.1f} s = "
                      f"{row['tokens_per_s']:.0f} tokens/s ({row['tokens_per_s_per_client']:.0f} per client)", flush=True)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    rows = report["results"]
    if len(rows) > 1:
        report["speedup"] = rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"]
        print(f"{rows[-1]['clients']} clients / {rows[0]['clients']}: {report['speedup']:.1f}x the tokens/s")
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
