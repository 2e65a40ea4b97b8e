"""Plain-torch forward passes over the *source* layouts, written from the original code (Meta's
``llama/model.py``, EasyLM's ``gptj_model.py``), so that ``--check`` compares a converted HF model
against its source weights through code that shares nothing with the conversion (neither Meta's
nor EasyLM's packages run here: they need fairscale / JAX).

``get(name)`` returns one tensor by its source name and is called layer by layer, so a lazy
source (mmap'ed ``.pth``, an indexed msgpack stream) never has the whole model in memory.
Computation is float32, one sequence, no cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Getter = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class LlamaShape:
    """What a LLaMA forward needs beyond the weights (Meta's ``params.json`` fields)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class GPTJShape:
    n_layers: int
    n_heads: int
    rotary_dim: int
    layer_norm_eps: float = 1e-5


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(T, H, d) each -> (T, H*d); softmax(q k^T / sqrt d) with future keys masked."""
    t, _, d = q.shape
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    scores = scores + torch.full((t, t), float("-inf")).triu(1)
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, -1)


def llama_logits(get: Getter, shape: LlamaShape, ids: torch.Tensor) -> torch.Tensor:
    """Logits (T, vocab) of Meta-layout LLaMA weights (``layers.0.attention.wq.weight`` ...), with
    Meta's interleaved rotary embedding (pairs of adjacent channels as complex numbers)."""

    def w(name: str) -> torch.Tensor:
        return get(name).float()

    def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + shape.norm_eps) * weight

    t = ids.shape[0]
    h = w("tok_embeddings.weight")[ids]
    head_dim = h.shape[-1] // shape.n_heads
    freqs = 1.0 / shape.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    cis = torch.polar(torch.ones(t, head_dim // 2), torch.outer(torch.arange(t).float(), freqs))

    def rope(x: torch.Tensor) -> torch.Tensor:
        pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * cis[:, None, :]).reshape(x.shape)

    repeat = shape.n_heads // shape.n_kv_heads
    for i in range(shape.n_layers):
        p = f"layers.{i}."
        x = rms_norm(h, w(p + "attention_norm.weight"))
        q = rope((x @ w(p + "attention.wq.weight").T).view(t, shape.n_heads, head_dim))
        k = rope((x @ w(p + "attention.wk.weight").T).view(t, shape.n_kv_heads, head_dim))
        v = (x @ w(p + "attention.wv.weight").T).view(t, shape.n_kv_heads, head_dim)
        attn = _causal_attention(q, k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1))
        h = h + attn @ w(p + "attention.wo.weight").T
        x = rms_norm(h, w(p + "ffn_norm.weight"))
        h = h + (F.silu(x @ w(p + "feed_forward.w1.weight").T) * (x @ w(p + "feed_forward.w3.weight").T)) \
            @ w(p + "feed_forward.w2.weight").T
    return rms_norm(h, w("norm.weight")) @ w("output.weight").T


def gptj_logits(get: Getter, shape: GPTJShape, ids: torch.Tensor) -> torch.Tensor:
    """Logits (T, vocab) of GPT-J weights named as in HF / EasyLM (``transformer.h.0.attn.q_proj``,
    torch orientation), with GPT-J's rotate-every-two rotary on the first ``rotary_dim`` channels
    and attention and MLP in parallel off one LayerNorm."""

    def w(name: str) -> torch.Tensor:
        return get(name).float()

    def layer_norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], w(prefix + ".weight"), w(prefix + ".bias"), shape.layer_norm_eps)

    t = ids.shape[0]
    h = w("transformer.wte.weight")[ids]
    head_dim = h.shape[-1] // shape.n_heads
    rd = shape.rotary_dim or head_dim
    angles = torch.outer(torch.arange(t).float(), 1.0 / 10000 ** (torch.arange(0, rd, 2).float() / rd))
    sin, cos = (f(angles).repeat_interleave(2, -1)[:, None, :] for f in (torch.sin, torch.cos))

    def rope(x: torch.Tensor) -> torch.Tensor:
        rot, keep = x[..., :rd], x[..., rd:]
        every_two = torch.stack((-rot[..., 1::2], rot[..., ::2]), -1).reshape(rot.shape)
        return torch.cat((rot * cos + every_two * sin, keep), -1)

    for i in range(shape.n_layers):
        p = f"transformer.h.{i}."
        x = layer_norm(h, p + "ln_1")
        q, k, v = ((x @ w(f"{p}attn.{n}_proj.weight").T).view(t, shape.n_heads, head_dim) for n in "qkv")
        attn = _causal_attention(rope(q), rope(k), v) @ w(p + "attn.out_proj.weight").T
        inner = F.gelu(x @ w(p + "mlp.fc_in.weight").T + w(p + "mlp.fc_in.bias"), approximate="tanh")
        h = h + attn + inner @ w(p + "mlp.fc_out.weight").T + w(p + "mlp.fc_out.bias")
    return layer_norm(h, "transformer.ln_f") @ w("lm_head.weight").T + w("lm_head.bias")


# -- EasyLM's parameter trees --------------------------------------------------------------------------
# Restated from the Flax modules (EasyLM ``llama_model.py`` FlaxLLaMA*, the original CoH ``gptj.py``
# FlaxGPTJ*), apart from the converter's own name mapping, so that ``--check`` reads an EasyLM file the
# way EasyLM's loader hands it to those modules: a bug in the converter's mapping cannot hide in both.
EasyLMLayout = dict[str, tuple[tuple[str, ...], bool, tuple[int, ...]]]


def easylm_layout(arch: str, n_layers: int, hidden: int, vocab: int, q_dim: int, kv_dim: int,
                  inner: int) -> EasyLMLayout:
    """Reference-forward name (Meta's for LLaMA, HF's for GPT-J) -> (EasyLM key path from
    ``transformer`` / ``lm_head``, stored transposed (a Dense kernel is (in, out)), EasyLM shape).
    ``q_dim`` = heads x head dim, ``kv_dim`` = KV heads x head dim, ``inner`` = MLP width."""
    out: EasyLMLayout = {}

    def add(name: str, path: tuple[str, ...], torch_shape: tuple[int, ...]) -> None:
        kernel = path[-1] == "kernel" and len(torch_shape) == 2
        out[name] = (path, kernel, torch_shape[::-1] if kernel else torch_shape)

    if arch == "llama":
        add("tok_embeddings.weight", ("transformer", "wte", "embedding"), (vocab, hidden))
        add("norm.weight", ("transformer", "ln_f", "kernel"), (hidden,))
        add("output.weight", ("lm_head", "kernel"), (vocab, hidden))
        for i in range(n_layers):
            h = ("transformer", "h", str(i))
            for part, shape in (("wq", (q_dim, hidden)), ("wk", (kv_dim, hidden)), ("wv", (kv_dim, hidden)),
                                ("wo", (hidden, q_dim))):
                add(f"layers.{i}.attention.{part}.weight", (*h, "attention", part, "kernel"), shape)
            for part, shape in (("w1", (inner, hidden)), ("w2", (hidden, inner)), ("w3", (inner, hidden))):
                add(f"layers.{i}.feed_forward.{part}.weight", (*h, "feed_forward", part, "kernel"), shape)
            add(f"layers.{i}.attention_norm.weight", (*h, "attention_norm", "kernel"), (hidden,))
            add(f"layers.{i}.ffn_norm.weight", (*h, "ffn_norm", "kernel"), (hidden,))
        return out
    if arch != "gptj":
        raise ValueError(f"no EasyLM layout for {arch!r}")
    add("transformer.wte.weight", ("transformer", "wte", "embedding"), (vocab, hidden))
    for i in range(n_layers):
        p, h = f"transformer.h.{i}.", ("transformer", "h", str(i))
        add(p + "ln_1.weight", (*h, "ln_1", "scale"), (hidden,))
        add(p + "ln_1.bias", (*h, "ln_1", "bias"), (hidden,))
        for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
            add(f"{p}attn.{part}.weight", (*h, "attn", part, "kernel"), (hidden, hidden))
        add(p + "mlp.fc_in.weight", (*h, "mlp", "fc_in", "kernel"), (inner, hidden))
        add(p + "mlp.fc_in.bias", (*h, "mlp", "fc_in", "bias"), (inner,))
        add(p + "mlp.fc_out.weight", (*h, "mlp", "fc_out", "kernel"), (hidden, inner))
        add(p + "mlp.fc_out.bias", (*h, "mlp", "fc_out", "bias"), (hidden,))
    add("transformer.ln_f.weight", ("transformer", "ln_f", "scale"), (hidden,))
    add("transformer.ln_f.bias", ("transformer", "ln_f", "bias"), (hidden,))
    add("lm_head.weight", ("lm_head", "kernel"), (vocab, hidden))
    add("lm_head.bias", ("lm_head", "bias"), (vocab,))
    return out


def easylm_getter(layout: EasyLMLayout, get_path: Callable[[tuple[str, ...]], torch.Tensor],
                  tied: bool = False) -> Getter:
    """A reference-forward ``get(name)`` over EasyLM key paths (``get_path``), transposing kernels
    back; ``tied``: a LLaMA without ``lm_head`` (the output reuses the embedding)."""

    def get(name: str) -> torch.Tensor:
        if tied and name == "output.weight":
            name = "tok_embeddings.weight"
        path, transposed, _ = layout[name]
        t = get_path(path)
        return t.t() if transposed else t

    return get


def check_easylm_tree(layout: EasyLMLayout, found: dict[tuple[str, ...], tuple[int, ...]], where: str,
                      optional: tuple[str, ...] = ()) -> None:
    """Raise unless ``found`` (key path -> shape, as EasyLM's loader returns them) is exactly the
    parameter tree of ``layout``: same keys, same shapes. ``optional``: names that may be absent."""
    want = {path: shape for name, (path, _, shape) in layout.items() if name not in optional}
    allowed = {path for path, _, _ in layout.values()}
    missing = sorted("/".join(p) for p in want if p not in found)
    unexpected = sorted("/".join(p) for p in found if p not in allowed)
    wrong = [f"{'/'.join(p)}: {tuple(found[p])} stored, {tuple(s)} expected" for p, s in want.items()
             if p in found and tuple(found[p]) != tuple(s)]
    if missing or unexpected or wrong:
        raise ValueError(f"{where} is not the parameter tree EasyLM's model expects: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shapes {wrong[:5]}")
