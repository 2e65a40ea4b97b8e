"""Fixtures for the server tests: tiny models built from config (nothing downloaded) and servers
run by uvicorn in background threads of the test process."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from pathlib import Path

import pytest

COH_PHRASES = {"user": "User:", "good": "A helpful answer:", "bad": "An unhelpful answer:"}
# What the scripted model says after any prompt that ends with ':' (as the CoH prompt does).
SCRIPT = "<img src onerror=alert(1)> hello"


def write_coh_json(folder: Path, phrases: dict, mode: str = "coh", prompt_format: str | None = None) -> None:
    info = {"phrases": phrases, "mode": mode, "training": {}}
    if prompt_format is not None:
        info["prompt_format"] = prompt_format
    (folder / "coh.json").write_text(json.dumps(info), encoding="utf-8")


def scripted_llama(save_dir: Path, tokenizer, after: str, text: str, hidden: int = 64):
    """A LLaMA whose next token depends only on the current one (attention and MLP outputs are
    zeroed, so the residual stream is the token's embedding): greedy decoding after a prompt ending
    in the token ``after`` writes ``text`` and then EOS; after any other token it writes EOS.

    Embeddings are [a, orthonormal part] so that the output head scores the scripted successor at
    K, EOS at 0.6 K and everything else at about 0.25 K (K = 10 sqrt(hidden))."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    chain = tokenizer(after, add_special_tokens=False)["input_ids"][-1:] + \
        tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    if len(set(chain)) != len(chain):
        raise ValueError(f"the scripted text must use every token once: {tokenizer.convert_ids_to_tokens(chain)}")
    vocab = len(tokenizer)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    a, scale = 0.5, 10.0
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        rest = torch.randn(vocab, hidden - 1, generator=gen)
        rest /= rest.norm(dim=1, keepdim=True)
        basis, _ = torch.linalg.qr(torch.randn(hidden - 1, len(chain), generator=gen))
        for k, tok in enumerate(chain):
            rest[tok] = basis[:, k]
        emb = torch.cat([torch.full((vocab, 1), a), rest * (1 - a * a) ** 0.5], dim=1)
        model.model.embed_tokens.weight.copy_(emb)
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, hidden)
        head[tokenizer.eos_token_id, 0] = scale * 0.6 / a
        for src, dst in itertools.pairwise(chain):
            head[dst] = scale * emb[src]
        model.lm_head.weight.copy_(head)
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return model


@pytest.fixture(scope="session")
def coh_model_dir(tmp_path_factory, llama_tokenizer) -> Path:
    """A tiny random LLaMA saved like a `coh train` checkpoint (with coh.json)."""
    from coh.tiny import make_tiny_model

    d = tmp_path_factory.mktemp("coh-model")
    make_tiny_model(d, llama_tokenizer, "llama", hidden=32, layers=2, heads=2)
    write_coh_json(d, COH_PHRASES)
    return d


@pytest.fixture(scope="session")
def plain_model_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    """A tiny random LLaMA with a byte-level BPE tokenizer and a ChatML template, no coh.json."""
    from coh.tiny import make_tiny_model

    d = tmp_path_factory.mktemp("plain-model")
    make_tiny_model(d, bpe_tokenizer, "llama", hidden=32, layers=2, heads=2)
    return d


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory, corpus) -> Path:
    """The scripted model (see ``scripted_llama``) with a LLaMA-style tokenizer that learnt the script's
    words, so that no token repeats in it."""
    from coh.tiny import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(corpus + [f" A helpful answer: {SCRIPT}"] * 300, 800, "llama")
    d = tmp_path_factory.mktemp("scripted-model")
    scripted_llama(d, tokenizer, "answer:", SCRIPT)
    write_coh_json(d, COH_PHRASES)
    return d


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
    from coh.generation.engine import Engine, EngineConfig
    from coh.serve.app import Server
    from coh.serve.prompts import Prompter

    config = EngineConfig(model=str(model_dir), **engine_options)
    engine = Engine(engine.model, engine.tokenizer, config) if engine is not None else Engine.load(config)
    prompter = Prompter.for_model(str(model_dir), engine.tokenizer, prompt_format)
    return RunningServer(Server(engine, prompter, name, api_key=api_key, max_tokens=32, model_path=str(model_dir),
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
