"""Tiny source checkpoints of every format, written by code independent of ``coh.convert``:
Meta's layout and EasyLM's msgpack stream are produced here from a tiny HF model by following
transformers' and EasyLM's own converters (``convert_llama_weights_to_hf.py``,
``convert_hf_to_easylm.py``, ``flax.serialization``), so the readers are not only tested
against their own writers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from ..conftest import hh_rows

ATOL = 1e-5  # float32 tiny models: conversions move weights exactly; only op order differs


def tiny_llama(save_dir: Path, tokenizer, vocab: int | None = None, tied: bool = False, seed: int = 0):
    """A 2-layer LLaMA with grouped-query attention (4 heads, 2 KV heads), saved with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab or len(tokenizer), hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    model = LlamaForCausalLM(config).eval()
    for p in model.parameters():  # norms away from 1, so a swapped norm weight would show
        if p.dim() == 1:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return model


def tiny_gptj(save_dir: Path, tokenizer, seed: int = 0):
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(seed)
    config = GPTJConfig(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPTJForCausalLM(config).eval()
    for n, p in model.named_parameters():
        if n.endswith("bias") or p.dim() == 1:
            torch.nn.init.uniform_(p, -0.5, 0.5) if n.endswith("bias") else torch.nn.init.uniform_(p, 0.5, 1.5)
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return model


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids[None]).logits[0]


def sample_ids(vocab: int, n: int = 20) -> torch.Tensor:
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(1))


# -- Meta layout (after transformers' convert_llama_weights_to_hf.py, inverted) ---------------------------
def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF q/k rows (halves) back to Meta's interleaved pairs: the inverse of the script's ``permute``."""
    dim1, dim2 = w.shape
    return w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def meta_state(model) -> dict[str, torch.Tensor]:
    cfg, sd = model.config, model.state_dict()
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out |= {
            f"layers.{i}.attention.wq.weight": unpermute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads),
            f"layers.{i}.attention.wk.weight": unpermute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads),
            f"layers.{i}.attention.wv.weight": sd[p + "self_attn.v_proj.weight"],
            f"layers.{i}.attention.wo.weight": sd[p + "self_attn.o_proj.weight"],
            f"layers.{i}.feed_forward.w1.weight": sd[p + "mlp.gate_proj.weight"],
            f"layers.{i}.feed_forward.w2.weight": sd[p + "mlp.down_proj.weight"],
            f"layers.{i}.feed_forward.w3.weight": sd[p + "mlp.up_proj.weight"],
            f"layers.{i}.attention_norm.weight": sd[p + "input_layernorm.weight"],
            f"layers.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
        }
    return {k: v.clone() for k, v in out.items()}


def write_meta_checkpoint(folder: Path, model, sp_model: Path, shards: int = 1, dtype=torch.float32) -> Path:
    """Meta's folder: params.json, consolidated.NN.pth split as model parallelism splits them
    (wo / w2 by columns, embeddings by columns, the rest by rows, norms replicated), tokenizer.model."""
    cfg = model.config
    folder.mkdir(parents=True, exist_ok=True)
    state = meta_state(model)
    state["rope.freqs"] = torch.zeros(4)  # LLaMA 1 checkpoints carry this; converters ignore it
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    for name, t in state.items():
        t = t.to(dtype)
        if t.dim() == 1:
            pieces = [t.clone() for _ in range(shards)]
        else:
            dim = 1 if name.endswith(("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")) else 0
            pieces = [p.clone() for p in t.chunk(shards, dim=dim)]
        for part, piece in zip(parts, pieces):
            part[name] = piece
    for i, part in enumerate(parts):
        torch.save(part, folder / f"consolidated.{i:02d}.pth")
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "norm_eps": cfg.rms_norm_eps, "multiple_of": 16,
              "rope_theta": cfg.rope_parameters["rope_theta"], "vocab_size": -1}
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "tokenizer.model").write_bytes(sp_model.read_bytes())
    return folder


# -- EasyLM stream (after EasyLM's StreamingCheckpointer and flax.serialization) -------------------------
def flax_to_bytes(arr: np.ndarray) -> bytes:
    """``flax.serialization.to_bytes(arr)`` for an array under flax's chunking limit."""
    payload = msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")), use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(1, payload), use_bin_type=True)


def write_easylm_stream(path: Path, params: dict[tuple[str, ...], np.ndarray], extra: dict | None = None) -> Path:
    """``StreamingCheckpointer.save_checkpoint``: one ``packer.pack((key, to_bytes(value)))`` per leaf."""
    packer = msgpack.Packer()
    with path.open("wb") as f:
        for key, value in {**params, **(extra or {})}.items():
            f.write(packer.pack((key, flax_to_bytes(value))))
    return path


def read_easylm_stream(path: Path) -> dict[tuple[str, ...], np.ndarray]:
    """``StreamingCheckpointer.load_checkpoint`` + ``flax.serialization.from_bytes`` (chunks included)."""

    def ext_hook(code, data):
        shape, dtype, buf = msgpack.unpackb(data, raw=True)
        dtype = dtype.decode()
        arr = np.frombuffer(buf, dtype=np.uint16 if dtype == "bfloat16" else dtype).reshape(shape)
        return (arr, dtype)

    out = {}
    with path.open("rb") as f:
        for key, value in msgpack.Unpacker(f, max_buffer_size=0):
            tree = msgpack.unpackb(value, ext_hook=ext_hook, raw=False)
            if isinstance(tree, dict):  # flax's _unchunk
                shape = [tree["shape"][str(i)] for i in range(len(tree["shape"]))]
                chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
                tree = (np.concatenate([c[0] for c in chunks]).reshape(shape), chunks[0][1])
            out[tuple(key)] = tree
    return out


def easylm_llama_params(model) -> dict[tuple[str, ...], np.ndarray]:
    """EasyLM's convert_hf_to_easylm.py: keys from transformer/lm_head (no params level), inverse-
    permuted q/k, every kernel transposed to (in, out), lm_head always (a tied model's is the
    embedding, as the HF state dict holds it)."""
    cfg, sd = model.config, {k: v.numpy() for k, v in model.state_dict().items()}
    out = {("transformer", "wte", "embedding"): sd["model.embed_tokens.weight"],
           ("transformer", "ln_f", "kernel"): sd["model.norm.weight"]}
    names = {"attention/wv": "self_attn.v_proj", "attention/wo": "self_attn.o_proj", "feed_forward/w1": "mlp.gate_proj",
             "feed_forward/w2": "mlp.down_proj", "feed_forward/w3": "mlp.up_proj"}
    for i in range(cfg.num_hidden_layers):
        h, p = ("transformer", "h", str(i)), f"model.layers.{i}."
        q = unpermute(torch.from_numpy(sd[p + "self_attn.q_proj.weight"]), cfg.num_attention_heads).numpy()
        k = unpermute(torch.from_numpy(sd[p + "self_attn.k_proj.weight"]), cfg.num_key_value_heads).numpy()
        out[(*h, "attention", "wq", "kernel")] = q.T
        out[(*h, "attention", "wk", "kernel")] = k.T
        for ez, hf in names.items():
            out[(*h, *ez.split("/"), "kernel")] = sd[p + hf + ".weight"].T
        out[(*h, "attention_norm", "kernel")] = sd[p + "input_layernorm.weight"]
        out[(*h, "ffn_norm", "kernel")] = sd[p + "post_attention_layernorm.weight"]
    out[("lm_head", "kernel")] = sd["lm_head.weight"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def easylm_gptj_params(model) -> dict[tuple[str, ...], np.ndarray]:
    """HF's Flax GPT-J parameter tree (what EasyLM's GPT-J and the original train): kernels (in, out),
    LayerNorm ``scale``, embedding ``embedding``; keys with no params level, as save_all writes them."""
    out = {}
    for name, t in model.state_dict().items():
        *parents, leaf = name.split(".")
        a = t.numpy()
        if leaf == "weight":
            leaf, a = ("embedding", a) if parents[-1] == "wte" else ("scale", a) if a.ndim == 1 else ("kernel", a.T)
        out[(*parents, leaf)] = np.ascontiguousarray(a)
    return out


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """A tiny SentencePiece BPE ``tokenizer.model`` trained offline (ids: unk 0, bos 1, eos 2, as LLaMA's)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([r["chosen"] for r in hh_rows(300)]), model_writer=buf,
                                   vocab_size=600, character_coverage=0.995, hard_vocab_limit=False,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path
