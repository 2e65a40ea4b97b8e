"""EasyLM parameter names and orientation against the torch side's, both ways.

Dense kernels are (in, out), so they are transposed; EasyLM's LLaMA is Meta's layout (``wq``,
``w1``..., interleaved rotary), so its names map to Meta's and ``meta_llama`` takes it from
there; EasyLM's GPT-J is HF's Flax GPT-J, whose names match HF's torch GPT-J
(``kernel``/``scale``/``embedding`` -> ``weight``).
"""

from __future__ import annotations

import re

import torch

from coh.convert.meta_llama import llama_shape_of
from coh.convert.reference import EasyLMLayout, easylm_layout


def detect_arch(paths) -> str:
    names = {"/".join(p) for p in paths}
    if any("/attention/wq/" in n for n in names):
        return "llama"
    if any("/attn/q_proj/" in n for n in names):
        return "gptj"
    raise ValueError(f"neither an EasyLM LLaMA (attention/wq) nor GPT-J (attn/q_proj) checkpoint; "
                     f"parameters seen: {sorted(names)[:6]}")


def _llama_to_meta_name(dotted: str) -> str:
    dotted = re.sub(r"^transformer\.h\.(\d+)\.", r"layers.\1.", dotted)
    return {"transformer.wte.weight": "tok_embeddings.weight", "transformer.ln_f.weight": "norm.weight",
            "lm_head.weight": "output.weight"}.get(dotted, dotted)


def easylm_to_torch(path: tuple[str, ...], tensor: torch.Tensor, arch: str) -> tuple[str, torch.Tensor]:
    """An EasyLM parameter as its torch-orientation name: Meta's for LLaMA, HF's for GPT-J."""
    *parents, leaf = path
    if leaf == "kernel" and tensor.dim() == 2:
        tensor = tensor.t()
    if leaf not in ("kernel", "scale", "embedding", "bias"):
        raise ValueError(f"unknown EasyLM parameter {'/'.join(path)}")
    name = ".".join([*parents, "bias" if leaf == "bias" else "weight"])
    return (_llama_to_meta_name(name) if arch == "llama" else name), tensor


def torch_to_easylm(name: str, tensor: torch.Tensor, arch: str) -> tuple[tuple[str, ...], torch.Tensor]:
    """Inverse of ``easylm_to_torch`` (Meta names for LLaMA, HF names for GPT-J)."""
    if arch == "llama":
        name = re.sub(r"^layers\.(\d+)\.", r"transformer.h.\1.", name)
        name = {"tok_embeddings.weight": "transformer.wte.weight", "norm.weight": "transformer.ln_f.weight",
                "output.weight": "lm_head.weight"}.get(name, name)
    *parents, leaf = name.split(".")
    if leaf == "bias":
        return (*parents, "bias"), tensor
    if parents[-1] == "wte":
        return (*parents, "embedding"), tensor
    if tensor.dim() == 1:  # LLaMA's RMSNorm keeps "kernel", flax LayerNorm calls it "scale"
        return (*parents, "kernel" if arch == "llama" else "scale"), tensor
    return (*parents, "kernel"), tensor.t()


def easylm_order(arch: str, paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The order the reference code writes: EasyLM's convert_hf_to_easylm.py (embedding, final norm,
    each layer's wq wk wv wo w1 w2 w3 attention_norm ffn_norm, lm_head) for LLaMA; for GPT-J the
    original's save_all of a flax tree, whose keys are sorted (as strings) at every level."""
    if arch == "gptj":
        return sorted(paths)
    parts = ["attention/wq", "attention/wk", "attention/wv", "attention/wo", "feed_forward/w1", "feed_forward/w2",
             "feed_forward/w3", "attention_norm", "ffn_norm"]

    def rank(p: tuple[str, ...]) -> tuple:
        if p[:2] == ("transformer", "wte"):
            return (0,)
        if p[:2] == ("transformer", "ln_f"):
            return (1,)
        if p[:2] == ("transformer", "h"):
            return (2, int(p[2]), parts.index("/".join(p[3:-1])))
        return (3,)

    return sorted(paths, key=rank)


def layout_of(arch: str, config) -> EasyLMLayout:
    """EasyLM's parameter tree for an HF LLaMA / GPT-J config (``reference.easylm_layout``)."""
    if arch == "llama":
        shape = llama_shape_of(config)
        head_dim = config.hidden_size // shape.n_heads
        return easylm_layout("llama", shape.n_layers, config.hidden_size, config.vocab_size,
                             shape.n_heads * head_dim, shape.n_kv_heads * head_dim, config.intermediate_size)
    return easylm_layout("gptj", config.n_layer, config.n_embd, config.vocab_size, config.n_embd, config.n_embd,
                         config.n_inner or 4 * config.n_embd)
