"""Meta LLaMA checkpoints (``consolidated.NN.pth`` + ``params.json`` + ``tokenizer.model``) into an
HF model folder that ``coh train`` loads.

The mapping is that of transformers' ``convert_llama_weights_to_hf.py``, which transformers 5
wheels no longer ship (only its source tree has it), so it is restated here in a form that streams:
each ``.pth`` file is memory-mapped and one HF tensor is assembled at a time, where that script
loads every shard whole. Meta's rotary embedding rotates adjacent channel pairs, HF's rotates the
two halves of each head, hence the row permutation of the query and key projections.

EasyLM's LLaMA layout is Meta's with transposed kernels, so ``easylm`` reuses this mapping.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from coh.cohjson import CohJson
from coh.convert.reference import LlamaShape
from coh.convert.safetensors_io import (
    ShardWriter,
    finish_hf_folder,
    parse_size,
    prepare_output_dir,
    resolve_dtype,
)
from coh.models import TOKENIZER_FILES, has_tokenizer_files

# Meta name (per layer) -> HF name (per layer)
LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
# model-parallel shards: these are split along the input dimension, the rest (but norms) along the output
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")
IGNORED = ("rope.freqs",)  # LLaMA 1 stores its rotary frequencies; HF recomputes them from rope_theta
# meta-llama/llama llama/model.py ModelArgs: the values used when params.json leaves a field out
META_DEFAULTS = {"norm_eps": 1e-5, "rope_theta": 10000.0}


def rotary_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from Meta's interleaved pairs to HF's halves, per head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def rotary_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``rotary_to_hf``."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _rename(name: str, tensor: torch.Tensor, shape: LlamaShape, to_hf: bool) -> tuple[str, torch.Tensor]:
    """One LLaMA tensor between Meta's names and layout and HF's, either way."""
    prefix, layers, tops = ("", LAYER_NAMES, TOP_NAMES) if to_hf else \
        ("model.", {v: k for k, v in LAYER_NAMES.items()}, {v: k for k, v in TOP_NAMES.items()})
    m = re.fullmatch(rf"{re.escape(prefix)}layers\.(\d+)\.(.+)\.weight", name)
    if m and m.group(2) in layers:
        meta_part = m.group(2) if to_hf else layers[m.group(2)]
        heads = {"attention.wq": shape.n_heads, "attention.wk": shape.n_kv_heads}.get(meta_part)
        if heads:
            tensor = (rotary_to_hf if to_hf else rotary_to_meta)(tensor, heads)
        return f"{'' if prefix else 'model.'}layers.{m.group(1)}.{layers[m.group(2)]}.weight", tensor
    top = name.removesuffix(".weight")
    if m is None and name.endswith(".weight") and top in tops:
        return f"{tops[top]}.weight", tensor
    raise ValueError(f"unknown Meta LLaMA tensor {name}" if to_hf else
                     f"HF tensor {name} has no place in the Meta/EasyLM LLaMA layout")


def meta_to_hf(name: str, tensor: torch.Tensor, shape: LlamaShape) -> tuple[str, torch.Tensor]:
    """One Meta-named tensor as its HF name and layout."""
    return _rename(name, tensor, shape, to_hf=True)


def hf_to_meta(name: str, tensor: torch.Tensor, shape: LlamaShape) -> tuple[str, torch.Tensor]:
    """One HF LLaMA tensor as its Meta name and layout (inverse of ``meta_to_hf``)."""
    return _rename(name, tensor, shape, to_hf=False)


def meta_names(n_layers: int, tied: bool = False) -> list[str]:
    """Every Meta tensor name of a LLaMA, in HF's order (embeddings, layers, norm, output)."""
    names = ["tok_embeddings.weight"]
    for i in range(n_layers):
        names += [f"layers.{i}.{part}.weight" for part in LAYER_NAMES]
    return names + ["norm.weight"] + ([] if tied else ["output.weight"])


def llama_hf_config(shape: LlamaShape, hidden: int, intermediate: int, vocab: int, max_positions: int,
                    tied: bool = False, bos_token_id: int | None = 1, eos_token_id: int | None = 2,
                    dtype: torch.dtype | None = None):
    from huggingface_hub.errors import StrictDataclassError
    from transformers import LlamaConfig

    try:
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=shape.n_layers,
            num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads, rms_norm_eps=shape.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
            max_position_embeddings=max_positions, tie_word_embeddings=tied, bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        )
    except (StrictDataclassError, ValueError) as e:  # transformers 5 validates configs as they are made
        raise ValueError(f"no valid LLaMA config from these weights and settings: {e}") from e
    if dtype is not None:
        config.dtype = dtype
    return config


def llama_shape_of(config) -> LlamaShape:
    """The ``LlamaShape`` of an HF ``LlamaConfig``; refuses what the Meta/EasyLM layout cannot hold."""
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope type {rope.get('rope_type')!r} (rope scaling) has no Meta/EasyLM equivalent here")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("LLaMA with attention or MLP biases has no Meta/EasyLM equivalent")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        raise ValueError(f"head_dim {head_dim} x {config.num_attention_heads} heads != hidden size {config.hidden_size}")
    return LlamaShape(config.num_hidden_layers, config.num_attention_heads,
                      config.num_key_value_heads or config.num_attention_heads, config.rms_norm_eps,
                      float(rope.get("rope_theta", 10000.0)))


class MetaCheckpoint:
    """A Meta checkpoint folder, read lazily: ``get(name)`` memory-maps the ``.pth`` files and
    concatenates the model-parallel pieces of one tensor."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        params_path = self.folder / "params.json"
        if not params_path.is_file():
            raise FileNotFoundError(f"{params_path}: missing; a Meta LLaMA folder holds params.json, "
                                    "consolidated.NN.pth and tokenizer.model")
        params = json.loads(params_path.read_text(encoding="utf-8"))
        self.params = params.get("model", params)
        for key in ("dim", "n_layers", "n_heads"):
            if key not in self.params:
                raise ValueError(f"{params_path}: field {key!r} missing (found {sorted(self.params)})")
        if self.params.get("use_scaled_rope"):
            raise ValueError(f"{params_path}: use_scaled_rope (LLaMA 3.1 rope scaling) is not supported by this converter")
        files = sorted(self.folder.glob("consolidated.*.pth"))
        if not files:
            raise FileNotFoundError(f"{self.folder}: no consolidated.*.pth files")
        numbers = [int(f.name.split(".")[1]) for f in files]
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        if missing:
            raise FileNotFoundError(f"{self.folder}: missing shard(s) " + ", ".join(f"consolidated.{n:02d}.pth" for n in missing))
        self.files = files
        self.parts = [torch.load(f, map_location="cpu", mmap=True, weights_only=True) for f in files]
        keys = set(self.parts[0])
        for f, part in zip(files[1:], self.parts[1:]):
            if set(part) != keys:
                diff = sorted(set(part) ^ keys)[:5]
                raise ValueError(f"{f}: its tensors differ from {files[0].name}'s (e.g. {diff}); shards of two models?")
        self.ignored = sorted(k for k in keys if k in IGNORED)
        self.dim = int(self.params["dim"])
        self.shape = LlamaShape(
            n_layers=int(self.params["n_layers"]), n_heads=int(self.params["n_heads"]),
            n_kv_heads=int(self.params.get("n_kv_heads") or self.params["n_heads"]),
            norm_eps=float(self.params.get("norm_eps", META_DEFAULTS["norm_eps"])),
            rope_theta=float(self.params.get("rope_theta", META_DEFAULTS["rope_theta"])),
        )
        expected = set(meta_names(self.shape.n_layers))
        unexpected = sorted(keys - expected - set(IGNORED))
        absent = sorted(expected - keys)
        if unexpected or absent:
            raise ValueError(f"{files[0]}: does not match {params_path} (n_layers {self.shape.n_layers}): "
                             f"missing {absent[:5]}, unexpected {unexpected[:5]}")

    def get(self, name: str) -> torch.Tensor:
        pieces = [part[name] for part in self.parts]
        if len(pieces) == 1 or pieces[0].dim() == 1:
            return pieces[0]
        if name == "tok_embeddings.weight":  # split by columns in LLaMA 1/2, by rows in LLaMA 3
            return torch.cat(pieces, dim=1 if pieces[0].shape[1] != self.dim else 0)
        return torch.cat(pieces, dim=1 if name.endswith(ROW_PARALLEL) else 0)

    def hf_config(self, max_positions: int, bos_token_id: int | None, eos_token_id: int | None,
                  dtype: torch.dtype | None, pad_token_id: int | None = None):
        vocab = self.get("tok_embeddings.weight").shape[0]
        intermediate = self.get("layers.0.feed_forward.w1.weight").shape[0]
        config = llama_hf_config(self.shape, self.dim, intermediate, vocab, max_positions, tied=False,
                                 bos_token_id=bos_token_id, eos_token_id=eos_token_id, dtype=dtype)
        config.pad_token_id = pad_token_id
        return config


def load_sentencepiece_tokenizer(model_file: str | Path):
    """An HF LLaMA tokenizer from a SentencePiece ``tokenizer.model`` (adds BOS, as Meta's
    generation code does), through transformers' own SentencePiece conversion."""
    import shutil
    import tempfile

    from transformers import LlamaTokenizer

    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file}: no such file; give --tokenizer (a SentencePiece tokenizer.model or an "
                                "HF tokenizer folder)")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(model_file, Path(tmp) / "tokenizer.model")
        try:
            return LlamaTokenizer.from_pretrained(tmp, add_bos_token=True)
        except Exception as e:  # a tiktoken file (LLaMA 3) or anything else that is not SentencePiece
            raise ValueError(f"{model_file}: not a SentencePiece model ({type(e).__name__}: {e}); for LLaMA 3 "
                             "pass --tokenizer with an HF tokenizer folder") from e


def load_tokenizer(path: str | Path, what: str = "--tokenizer"):
    """A tokenizer from a SentencePiece ``tokenizer.model`` file or an HF tokenizer folder / hub id;
    a path that is none of these is named with what it should have been (``what``)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if path.is_file():
        return load_sentencepiece_tokenizer(path)
    if path.is_dir() and not has_tokenizer_files(path):
        raise FileNotFoundError(f"{what} {path}: a folder without tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, "
                                "...); give a SentencePiece tokenizer.model or an HF tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except OSError as e:  # neither here nor loadable as a hub id (offline, or no such repository)
        raise FileNotFoundError(f"{what} {path}: not a file or folder here, and not loadable as a hub id "
                                f"({str(e).splitlines()[0]})") from e


def convert_meta_llama(meta_dir: str | Path, output_dir: str | Path, tokenizer: str | Path | None = None,
                       dtype: str | None = None, max_shard_size: str | int = "5GB", max_positions: int | None = None,
                       coh_phrases: bool = False, progress: bool | None = None) -> Path:
    """Convert a Meta LLaMA folder into an HF folder (safetensors shards, config, tokenizer, and with
    ``coh_phrases`` a ``coh.json`` with the original CoH phrases). Returns ``output_dir``."""
    from tqdm.auto import tqdm

    ckpt = MetaCheckpoint(meta_dir)
    if tokenizer is None and not (ckpt.folder / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{ckpt.folder / 'tokenizer.model'}: missing; a Meta LLaMA folder holds params.json, "
                                "consolidated.NN.pth and tokenizer.model. Give --tokenizer (the tokenizer.model "
                                "Meta shipped, or an HF tokenizer folder; LLaMA 3's tiktoken file needs the latter)")
    tok = load_tokenizer(tokenizer if tokenizer is not None else ckpt.folder / "tokenizer.model")
    out = prepare_output_dir(output_dir)
    target_dtype = resolve_dtype(dtype)
    source_dtype = ckpt.get("norm.weight").dtype
    positions = max_positions or int(ckpt.params.get("max_seq_len") or 2048)
    config = ckpt.hf_config(positions, tok.bos_token_id, tok.eos_token_id, target_dtype or source_dtype,
                            pad_token_id=tok.pad_token_id)
    if len(tok) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the checkpoint's embeddings only {config.vocab_size}")
    writer = ShardWriter(out, parse_size(max_shard_size), target_dtype)
    names = meta_names(ckpt.shape.n_layers)
    for name in tqdm(names, desc="llama -> hf", unit="tensor", disable=None if progress is None else not progress):
        writer.add(*meta_to_hf(name, ckpt.get(name), ckpt.shape))
    writer.close()
    finish_hf_folder(out, config, tok, tokenizer if tokenizer is not None else ckpt.folder / "tokenizer.model",
                     CohJson.for_original_weights("meta-llama", meta_dir) if coh_phrases else None)
    if ckpt.ignored:
        print(f"not converted: {', '.join(ckpt.ignored)} (recomputed by transformers from rope_theta)")
    return out
