"""Fixtures for the server tests: servers run by uvicorn in background threads of the test process,
over the tiny models of tests/generation/fixtures.py (nothing downloaded)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest


class RunningServer:
    """A ``coh.serve`` app served by uvicorn on a free local port, in a background thread."""

    def __init__(self, server):
        import uvicorn

        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(server.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.uvicorn.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    @property
    def engine(self):
        return self.server.engine

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=30)
        self.server.engine.close()


def make_server(model_dir: Path, name: str = "tiny", api_key: str | None = None, prompt_format: str = "auto",
                engine=None, max_body_mb: float = 8.0, **engine_options) -> RunningServer:
    """Load ``model_dir`` (or reuse ``engine``'s model) and serve it."""
    from coh.generation.config import EngineConfig
    from coh.generation.engine import Engine
    from coh.serve.app import Server
    from coh.serve.prompts import Prompter

    config = EngineConfig(model=str(model_dir), **engine_options)
    engine = Engine(engine.model, engine.tokenizer, config) if engine is not None else Engine.load(config)
    prompter = Prompter.for_model(str(model_dir), engine.tokenizer, prompt_format)
    return RunningServer(Server(engine, prompter, name, api_key=api_key, max_new_tokens=32, model_path=str(model_dir),
                                max_body_mb=max_body_mb))


@pytest.fixture(scope="session")
def coh_server(coh_model_dir):
    running = make_server(coh_model_dir)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def scripted_server(scripted_model_dir):
    running = make_server(scripted_model_dir, name="scripted")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def plain_server(plain_model_dir):
    running = make_server(plain_model_dir, name="plain")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def lively_model_dir(tmp_path_factory, llama_tokenizer) -> Path:
    """A tiny random LLaMA saved like a `coh train` checkpoint whose greedy replies depend on the whole
    prompt, so the positive and the negative phrase give different replies (at the default
    initialisation's scale a tiny model answers ':' to everything): its matrices are drawn with std 0.3."""
    import torch

    from coh.tiny import make_tiny_model
    from tests.generation.fixtures import COH_PHRASES, write_coh_json

    d = tmp_path_factory.mktemp("lively-model")
    model = make_tiny_model(d, llama_tokenizer, "llama", hidden=32, layers=2, heads=2)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=generator)
    model.save_pretrained(d)
    write_coh_json(d, COH_PHRASES)
    return d


@pytest.fixture(scope="session")
def lively_server(lively_model_dir):
    running = make_server(lively_model_dir, name="lively")
    yield running
    running.stop()
