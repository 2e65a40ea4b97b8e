"""Fixtures for `coh judge`: comparison sets, a votes store, live servers in background threads."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Model outputs and prompts that look like markup: the page must show them as text.
HOSTILE = [
    '<script>window.__pwned = "script"</script>',
    '<img src=x onerror="window.__pwned = \'img\'">',
    "</div><b>bold?</b> & &amp; \"quotes\" 'single' <!-- comment -->",
]


def comparison_rows(n: int, systems: tuple[str, ...] = ("coh", "sft")) -> list[dict]:
    """``n`` prompts, each with one output per system; the texts name prompt and system, so a
    test can tell which output is which. Every prompt and output holds markup."""
    rows = []
    for i in range(n):
        prompt = f"Question {i}: how do I {HOSTILE[2]}?"
        outputs = {s: HOSTILE[(i + k) % 2] + f"{s} answers question {i}." for k, s in enumerate(systems)}
        rows.append({"id": f"q{i}", "prompt": prompt, "outputs": outputs})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def comparisons_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "comparisons.jsonl", comparison_rows(6))


@pytest.fixture
def store(tmp_path, comparisons_file):
    from coh.judge.sources import read_comparisons
    from coh.judge.store import JudgeStore

    s = JudgeStore(tmp_path / "votes.sqlite")
    s.add_comparisons(read_comparisons(comparisons_file))
    return s


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a background thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
