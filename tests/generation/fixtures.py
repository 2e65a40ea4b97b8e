"""Fixtures of the generation and server tests (a pytest plugin, named in tests/conftest.py): tiny
models built from config (nothing downloaded), engines over them, and a way to hold an engine's
worker."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
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


def engine_for(model_dir: Path, **options):
    """An engine over ``model_dir``, started (close it when done)."""
    from coh.generation.config import EngineConfig
    from coh.generation.engine import Engine

    engine = Engine.load(EngineConfig(model=str(model_dir), **options))
    engine.start()
    return engine


@pytest.fixture(scope="session")
def coh_engine(coh_model_dir):
    engine = engine_for(coh_model_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def scripted_engine(scripted_model_dir):
    engine = engine_for(scripted_model_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def scripted_prompt(scripted_model_dir, scripted_engine) -> list[int]:
    """The prompt after which the scripted model writes ``SCRIPT``: a user's "hi" in the CoH format."""
    from coh.data.feedback import Turn
    from coh.serve.prompts import Prompter

    return Prompter.for_model(str(scripted_model_dir), scripted_engine.tokenizer).chat_ids([Turn("user", "hi")])


@contextlib.contextmanager
def paused(engine):
    """Hold ``engine``'s worker while the block runs: jobs submitted meanwhile queue up and none
    starts (for tests of batching, cancelling and the full queue). Through the public API: the
    worker takes a job with nothing to compute, whose "done" event waits for the block to end."""
    from coh.generation.requests import GenRequest

    taken, release = threading.Event(), threading.Event()

    def hold(event, index, payload):
        if event == "done":
            taken.set()
            release.wait()

    # The class's submit: some tests wrap the instance's to record the jobs the server submits.
    job = type(engine).submit(engine, [GenRequest([0])], on_event=hold)
    try:
        if not taken.wait(60):
            raise RuntimeError("the engine's worker did not take the holding job (is the engine started?)")
        yield
    finally:
        release.set()
    job.future.result(timeout=60)
