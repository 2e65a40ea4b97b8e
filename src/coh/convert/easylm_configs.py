"""The model config of an EasyLM checkpoint, both ways: the HF config of a stream (from a
standard size name or a config file, checked against the tensor shapes), and the config JSON
that the original's and older EasyLM's ``json::`` loaders read for a written stream.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from coh.convert.easylm_stream import EasyLMStream
from coh.convert.meta_llama import llama_hf_config, llama_shape_of
from coh.convert.reference import GPTJShape, LlamaShape

# The original's and EasyLM-2023's standard LLaMA sizes (LLAMA_STANDARD_CONFIGS): name -> (hidden, layers, heads, eps)
LLAMA_SIZES = {
    "1b": (2048, 22, 16, 1e-6), "3b": (3200, 26, 32, 1e-6), "7b": (4096, 32, 32, 1e-6),
    "13b": (5120, 40, 40, 1e-6), "30b": (6656, 60, 52, 1e-6), "65b": (8192, 80, 64, 1e-5),
}
# EasyLM HEAD's (LLaMAConfigurator.get_standard_llama_config, the names of --llama.base_model):
# name -> (hidden, intermediate, layers, heads, KV heads, rms_norm_eps, max positions, vocab, rope_theta)
EASYLM_STANDARD = {
    "llama_1b": (2048, 5504, 22, 16, 16, 1e-6, 2048, 32000, 1e4),
    "llama_3b": (3200, 8640, 26, 32, 32, 1e-6, 2048, 32000, 1e4),
    "llama_7b": (4096, 11008, 32, 32, 32, 1e-6, 2048, 32000, 1e4),
    "llama_13b": (5120, 13824, 40, 40, 40, 1e-6, 2048, 32000, 1e4),
    "llama_30b": (6656, 17920, 60, 52, 52, 1e-6, 2048, 32000, 1e4),
    "llama_65b": (8192, 22016, 80, 64, 64, 1e-5, 2048, 32000, 1e4),
    "llama2_7b": (4096, 11008, 32, 32, 32, 1e-5, 4096, 32000, 1e4),
    "llama2_13b": (5120, 13824, 40, 40, 40, 1e-5, 4096, 32000, 1e4),
    "llama2_70b": (8192, 28672, 80, 64, 8, 1e-5, 4096, 32000, 1e4),
    "llama3_8b": (4096, 14336, 32, 32, 8, 1e-5, 8192, 128256, 5e5),
    "llama3_70b": (8192, 28672, 80, 64, 8, 1e-5, 8192, 128256, 5e5),
}
GPTJ_SIZES = {"6b": {"n_embd": 4096, "n_layer": 28, "n_head": 16, "rotary_dim": 64, "n_positions": 2048,
                     "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256}}


def config_file(spec: str) -> dict:
    """``--config`` as a dict: a JSON file (EasyLM's or HF's config.json) or a folder holding config.json."""
    p = Path(spec)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"--config {spec}: not a standard size ({', '.join([*LLAMA_SIZES, *GPTJ_SIZES])}, "
                                f"or EasyLM's {', '.join(EASYLM_STANDARD)}), "
                                "a JSON file or a folder with config.json")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from e


def config_says_untied(spec: str | None) -> bool:
    """``spec`` is a config file (not a size name) that sets ``tie_word_embeddings`` false."""
    return spec is not None and spec not in LLAMA_SIZES and spec not in EASYLM_STANDARD and \
        config_file(spec).get("tie_word_embeddings") is False


def _layers(shapes, pattern: str) -> int:
    return len({int(m.group(1)) for p in shapes if (m := re.fullmatch(pattern, "/".join(p)))})


def _pad_id(config: dict, pad: int | None) -> int | None:
    return pad if pad is not None else config.get("pad_token_id")


def llama_config_for(stream: EasyLMStream, spec: str | None, bos: int | None, eos: int | None,
                     dtype: torch.dtype | None, tied: bool = False, pad: int | None = None):
    """The HF LlamaConfig of a scanned EasyLM LLaMA stream, from ``spec`` or its standard size,
    checked against the tensor shapes. ``tied``: write a tied-embedding model (no ``lm_head``, or
    an ``lm_head`` equal to the transposed embedding)."""
    shapes = stream.shapes
    vocab, hidden = shapes[("transformer", "wte", "embedding")]
    n_layers = _layers(shapes, r"transformer/h/(\d+)/.*")
    intermediate = shapes[("transformer", "h", "0", "feed_forward", "w1", "kernel")][1]
    kv_dim = shapes[("transformer", "h", "0", "attention", "wk", "kernel")][1]
    found = f"hidden {hidden}, {n_layers} layers, intermediate {intermediate}, vocab {vocab}"
    positions, theta = 2048, 10000.0
    if spec is None:
        size = next((s for s, v in LLAMA_SIZES.items() if v[:2] == (hidden, n_layers)), None)
        if size is None:
            raise ValueError(f"{stream.path}: LLaMA with {found} is no EasyLM standard size; give --config "
                             "(an EasyLM or HF config JSON)")
        spec = size
    if spec in LLAMA_SIZES:
        want_hidden, want_layers, n_heads, eps = LLAMA_SIZES[spec]
        want = {"hidden_size": want_hidden, "num_hidden_layers": want_layers}
    elif spec in EASYLM_STANDARD:
        h, i, layers, n_heads, kv, eps, positions, v, theta = EASYLM_STANDARD[spec]
        want = {"hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers, "vocab_size": v,
                "num_key_value_heads": kv}
    else:
        c = config_file(spec)
        want = {k: c[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size",
                                  "num_key_value_heads") if c.get(k) is not None}
        if "num_attention_heads" not in c:
            raise ValueError(f"--config {spec}: no num_attention_heads (the weights do not show it)")
        n_heads, eps = int(c["num_attention_heads"]), float(c.get("rms_norm_eps", 1e-6))
        positions = int(c.get("max_sequence_length") or c.get("max_position_embeddings") or 2048)
        theta = float(c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta") or 10000.0)
        bos = c.get("bos_token_id", bos) if bos is None else bos
        eos = c.get("eos_token_id", eos) if eos is None else eos
        pad = _pad_id(c, pad)
    got = {"hidden_size": hidden, "num_hidden_layers": n_layers, "intermediate_size": intermediate, "vocab_size": vocab,
           "num_key_value_heads": n_heads * kv_dim // hidden}
    wrong = {k: (v, got[k]) for k, v in want.items() if v != got[k]}
    if wrong:
        raise ValueError(f"--config {spec} does not match {stream.path}: " +
                         ", ".join(f"{k} {a} in the config, {b} in the checkpoint" for k, (a, b) in wrong.items()))
    shape = LlamaShape(n_layers, n_heads, n_heads * kv_dim // hidden, eps, theta)
    config = llama_hf_config(shape, hidden, intermediate, vocab, positions, tied=tied,
                             bos_token_id=1 if bos is None else bos, eos_token_id=2 if eos is None else eos,
                             dtype=dtype)
    config.pad_token_id = pad
    return shape, config


def _gpt2_id(config: dict, which: str, vocab: int) -> int | None:
    """GPT-J's <|endoftext|> (50256) unless the config says otherwise or the vocabulary is smaller."""
    found = config.get(f"{which}_token_id", 50256)
    return found if found is not None and found < vocab else None


def gptj_config_for(stream: EasyLMStream, spec: str | None, bos: int | None, eos: int | None,
                    dtype: torch.dtype | None, pad: int | None = None):
    from transformers import GPTJConfig

    shapes = stream.shapes
    vocab, hidden = shapes[("transformer", "wte", "embedding")]
    n_layers = _layers(shapes, r"transformer/h/(\d+)/.*")
    inner = shapes[("transformer", "h", "0", "mlp", "fc_in", "kernel")][1]
    if spec is None:
        spec = next((s for s, v in GPTJ_SIZES.items() if (v["n_embd"], v["n_layer"]) == (hidden, n_layers)), None)
        if spec is None:
            raise ValueError(f"{stream.path}: GPT-J with hidden {hidden}, {n_layers} layers is no EasyLM standard "
                             "size; give --config (an EasyLM or HF GPT-J config JSON)")
    c = dict(GPTJ_SIZES[spec]) if spec in GPTJ_SIZES else config_file(spec)
    if c.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"--config {spec}: activation {c['activation_function']!r}; only GPT-J's gelu_new is supported")
    if "n_head" not in c:
        raise ValueError(f"--config {spec}: no n_head (the weights do not show it)")
    wrong = [f"{k} {c[k]} in the config, {v} in the checkpoint" for k, v in
             (("n_embd", hidden), ("n_layer", n_layers), ("vocab_size", vocab)) if k in c and c[k] != v]
    if wrong:
        raise ValueError(f"--config {spec} does not match {stream.path}: " + ", ".join(wrong))
    shape = GPTJShape(n_layers, int(c["n_head"]), int(c.get("rotary_dim") or 0), float(c.get("layer_norm_epsilon", 1e-5)))
    config = GPTJConfig(vocab_size=vocab, n_embd=hidden, n_layer=n_layers, n_head=shape.n_heads,
                        rotary_dim=shape.rotary_dim or None, n_inner=inner if inner != 4 * hidden else None,
                        n_positions=int(c.get("n_positions", 2048)), layer_norm_epsilon=shape.layer_norm_eps,
                        tie_word_embeddings=False, bos_token_id=bos if bos is not None else _gpt2_id(c, "bos", vocab),
                        eos_token_id=eos if eos is not None else _gpt2_id(c, "eos", vocab),
                        pad_token_id=_pad_id(c, pad))
    if dtype is not None:
        config.dtype = dtype
    return shape, config


def easylm_config_json(config, arch: str) -> dict:
    """The config JSON that ``--load_llama_config`` / ``--load_gptj_config 'json::PATH'`` read
    (the original's and EasyLM-before-b2e2a78's ``LLaMAConfig`` / ``GPTJConfig``), plus, for
    LLaMA, ``num_key_value_heads`` and ``rope_theta`` when not the defaults (those versions
    ignore them; ``coh convert easylm --config`` reads them)."""
    if arch == "llama":
        shape = llama_shape_of(config)
        out = {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
               "intermediate_size": config.intermediate_size, "num_hidden_layers": shape.n_layers,
               "num_attention_heads": shape.n_heads, "max_sequence_length": config.max_position_embeddings,
               "rms_norm_eps": shape.norm_eps, "tie_word_embeddings": bool(config.tie_word_embeddings),
               "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
        if shape.n_kv_heads != shape.n_heads:
            out["num_key_value_heads"] = shape.n_kv_heads
        if shape.rope_theta != 10000.0:
            out["rope_theta"] = shape.rope_theta
    else:
        out = {k: getattr(config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "rotary_dim",
                                              "n_inner", "activation_function", "layer_norm_epsilon",
                                              "tie_word_embeddings", "bos_token_id", "eos_token_id")}
    if config.pad_token_id is not None:
        out["pad_token_id"] = config.pad_token_id
    return out
