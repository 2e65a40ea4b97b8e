"""EasyLM / original-CoH checkpoints (``streaming_params``; LLaMA and GPT-J) to HF and back.

The parts, one job each: ``easylm_stream`` (the msgpack file format), ``easylm_names`` (EasyLM
parameter names against Meta's and HF's), ``easylm_configs`` (the model config, from a size name
or file, and the one written for EasyLM), ``easylm_targets`` (which EasyLM code base can run a
model, and its command line). This module puts them together: ``open_easylm`` /
``convert_easylm`` (EasyLM -> HF), ``export_easylm`` (HF -> EasyLM, following EasyLM's own
``convert_hf_to_easylm.py`` byte for byte) and ``read_back_for_check``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from coh.cohjson import CohJson
from coh.convert import safetensors_io
from coh.convert.easylm_configs import (
    config_says_untied,
    easylm_config_json,
    gptj_config_for,
    llama_config_for,
)
from coh.convert.easylm_names import detect_arch, easylm_order, easylm_to_torch, layout_of, torch_to_easylm
from coh.convert.easylm_stream import EasyLMStream, write_stream
from coh.convert.easylm_targets import TARGETS, target_problems
from coh.convert.meta_llama import hf_to_meta, llama_shape_of, load_tokenizer, meta_to_hf
from coh.convert.reference import GPTJShape, LlamaShape

STREAM_NAME = "streaming_params"


@dataclass
class EasyLMSource:
    """A scanned EasyLM checkpoint with its architecture and HF config. ``lm_head_tied``: the
    file holds an ``lm_head`` equal to the transposed embedding (EasyLM always writes one), which
    the HF folder does not repeat (``tie_word_embeddings``)."""

    stream: EasyLMStream
    arch: str
    shape: LlamaShape | GPTJShape
    config: object
    lm_head_tied: bool = False

    def torch_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(torch-orientation name, tensor) in file order: Meta names for LLaMA, HF names for GPT-J."""
        for path, tensor in self.stream.tensors():
            if self.lm_head_tied and path == ("lm_head", "kernel"):
                continue
            yield easylm_to_torch(path, tensor, self.arch)

    def reference_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The source's logits: the plain-torch reference forward over the file's tensors, looked up
        through EasyLM's parameter tree (``reference.easylm_layout``), not the converter's mapping."""
        from coh.convert.reference import easylm_getter, gptj_logits, llama_logits

        tied = ("lm_head", "kernel") not in self.stream.index
        get = easylm_getter(layout_of(self.arch, self.config), self.stream.get, tied=tied)
        return llama_logits(get, self.shape, ids) if self.arch == "llama" else gptj_logits(get, self.shape, ids)


def _lm_head_is_embedding(stream: EasyLMStream) -> bool:
    head = stream.index.get(("lm_head", "kernel"))
    if head is None or ("lm_head", "bias") in stream.index:
        return False
    return torch.equal(stream.get(("lm_head", "kernel")).t(), stream.get(("transformer", "wte", "embedding")))


def open_easylm(path: str | Path, config: str | None = None, bos: int | None = None, eos: int | None = None,
                dtype: torch.dtype | None = None, pad: int | None = None) -> EasyLMSource:
    stream = EasyLMStream(Path(path)).scan()
    arch = detect_arch(stream.index)
    if arch == "llama":
        no_head = ("lm_head", "kernel") not in stream.index
        lm_head_tied = not no_head and _lm_head_is_embedding(stream)
        if lm_head_tied and config_says_untied(config):
            lm_head_tied = False  # the config says untied: keep both copies
        shape, hf_config = llama_config_for(stream, config, bos, eos, dtype or stream.dtype,
                                            tied=no_head or lm_head_tied, pad=pad)
    else:
        lm_head_tied = False
        shape, hf_config = gptj_config_for(stream, config, bos, eos, dtype or stream.dtype, pad=pad)
    source = EasyLMSource(stream, arch, shape, hf_config, lm_head_tied)
    # names and shapes as they will be written, worked out on meta tensors (no memory), against the config
    found = {}
    for key, size in stream.shapes.items():
        if lm_head_tied and key == ("lm_head", "kernel"):
            continue
        name, t = easylm_to_torch(key, torch.empty(size, device="meta"), arch)
        if arch == "llama":
            try:
                name, t = meta_to_hf(name, t, shape)
            except RuntimeError as e:  # a q/k projection that does not split into the config's heads
                raise ValueError(f"{stream.path}: {'/'.join(key)} of shape {size} does not fit "
                                 f"{shape.n_heads} heads / {shape.n_kv_heads} KV heads: {e}") from e
        found[name] = tuple(t.shape)
    safetensors_io.check_tensors(found, hf_config, str(stream.path))
    return source


def convert_easylm(path: str | Path, output_dir: str | Path, config: str | None = None,
                   tokenizer: str | Path | None = None, dtype: str | None = None, max_shard_size: str | int = "5GB",
                   coh_phrases: bool = False, progress: bool | None = None) -> EasyLMSource:
    """An EasyLM checkpoint into an HF folder; returns the scanned source (for ``--check``)."""
    from tqdm.auto import tqdm

    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    target_dtype = safetensors_io.resolve_dtype(dtype)
    source = open_easylm(path, config, tok.bos_token_id if tok else None, tok.eos_token_id if tok else None,
                         target_dtype, pad=tok.pad_token_id if tok else None)
    if tok is not None and len(tok) > source.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the checkpoint's embeddings only {source.config.vocab_size}")
    out = safetensors_io.prepare_output_dir(output_dir)
    writer = safetensors_io.ShardWriter(out, safetensors_io.parse_size(max_shard_size), target_dtype)
    bar = tqdm(total=len(source.stream.index) - source.lm_head_tied, desc=f"easylm {source.arch} -> hf",
               unit="tensor", disable=None if progress is None else not progress)
    for name, tensor in source.torch_tensors():
        writer.add(*(meta_to_hf(name, tensor, source.shape) if source.arch == "llama" else (name, tensor)))
        bar.update()
    bar.close()
    writer.close()
    info = CohJson.for_original_weights("easylm", path) if coh_phrases else None
    safetensors_io.finish_hf_folder(out, source.config, tok, tokenizer, info)
    print(f"read {source.stream.path}: {source.stream.form}, {len(source.stream.index)} tensors, {source.stream.dtype}")
    if tok is None:
        print("no --tokenizer given: the folder has no tokenizer (coh train and coh serve need one)")
    if source.lm_head_tied:
        print("lm_head/kernel equals the transposed embedding: written as a tied model (tie_word_embeddings)")
    if source.stream.skipped:
        print(f"skipped {source.stream.skipped} non-parameter entries (optimizer state, step)")
    return source


class HFTensors:
    """Random access to the tensors of an HF folder's safetensors files, one at a time."""

    def __init__(self, model_dir: str | Path):
        from safetensors import safe_open

        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{model_dir}: no *.safetensors files (save the model with safe_serialization)")
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                    self.where[name] = f
                    self.shapes[name] = tuple(st.get_slice(name).get_shape())

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.where:
            raise KeyError(f"no tensor {name} in the model's safetensors files")
        with safe_open(str(self.where[name]), framework="pt") as st:
            return st.get_tensor(name)


def export_easylm(model_dir: str | Path, output_dir: str | Path, dtype: str | None = None, target: str = "all",
                  progress: bool | None = None) -> Path:
    """An HF LLaMA or GPT-J folder as ``OUTPUT/streaming_params`` + ``OUTPUT/easylm_config.json``
    (+ ``tokenizer.model`` when the folder has one), as EasyLM's own converter writes them: keys
    with no ``params`` level, ``lm_head`` always (a tied model's is the transposed embedding),
    the reference code's order, ``dtype`` as asked (default: the source's). ``target``: ``all``,
    or a code base of ``TARGETS`` that must be able to run the model (refused before anything is
    written otherwise). Returns the stream's path."""
    from tqdm.auto import tqdm
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    arch = {"llama": "llama", "gptj": "gptj"}.get(config.model_type)
    if arch is None:
        raise ValueError(f"{model_dir}: model type {config.model_type!r}; EasyLM holds llama and gptj")
    if target != "all":
        if target not in TARGETS:
            raise ValueError(f"--target {target!r}: expected all or one of {sorted(TARGETS)}")
        problem = target_problems(config, arch)[target]
        if problem:
            raise ValueError(f"{model_dir}: {TARGETS[target]} cannot run this model: {problem}")
    shape = llama_shape_of(config) if arch == "llama" else None
    target_dtype = safetensors_io.resolve_dtype(dtype)
    out = Path(output_dir)
    if (out / STREAM_NAME).exists():
        raise ValueError(f"{out / STREAM_NAME}: exists already; choose an empty folder")
    hf = HFTensors(model_dir)
    head, embedding = "lm_head.weight", "model.embed_tokens.weight" if arch == "llama" else "transformer.wte.weight"
    names = {n for n in hf.where if not n.endswith("rotary_emb.inv_freq")}
    if head not in hf and not config.tie_word_embeddings:
        raise ValueError(f"{model_dir}: no {head} and tie_word_embeddings is false")
    # EasyLM path -> the HF tensor it is made from; a tied model's lm_head is its embedding
    sources: dict[tuple[str, ...], str] = {}
    for name in sorted(names | {head}):
        hf_name = embedding if name == head and head not in hf else name
        t = torch.empty(hf.shapes[hf_name], device="meta")  # names and orientation only: no data read
        if arch == "llama":
            meta_name, t = hf_to_meta(name, t, shape)
        sources[torch_to_easylm(meta_name if arch == "llama" else name, t, arch)[0]] = hf_name
    out.mkdir(parents=True, exist_ok=True)

    def converted() -> Iterator[tuple[tuple[str, ...], torch.Tensor]]:
        for path in tqdm(easylm_order(arch, list(sources)), desc=f"hf {arch} -> easylm", unit="tensor",
                         disable=None if progress is None else not progress):
            tensor = hf.get(sources[path])
            if target_dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(target_dtype)
            hf_name = head if path == ("lm_head", "kernel") else sources[path]
            if arch == "llama":
                hf_name, tensor = hf_to_meta(hf_name, tensor, shape)
            yield path, torch_to_easylm(hf_name, tensor, arch)[1].contiguous()

    write_stream(out / STREAM_NAME, converted())
    (out / "easylm_config.json").write_text(json.dumps(easylm_config_json(config, arch), indent=2) + "\n",
                                            encoding="utf-8")
    if (Path(model_dir) / "tokenizer.model").is_file():
        (out / "tokenizer.model").write_bytes((Path(model_dir) / "tokenizer.model").read_bytes())
    elif arch == "llama":
        print(f"{model_dir} has no tokenizer.model: the original's LLaMA tokenizer (--tokenizer.vocab_file) needs "
              "the SentencePiece file the model was trained with (e.g. the original Meta one)")
    if head not in hf:
        print(f"{head}: written as the transposed embedding (a tied model; EasyLM's model always has an lm_head)")
    return out / STREAM_NAME


def read_back_for_check(stream_path: str | Path, config):
    """``ids -> logits`` of a written ``streaming_params`` as EasyLM would run it: the file's keys
    exactly as ``StreamingCheckpointer.load_checkpoint`` returns them for ``params::`` (no
    ``params`` level stripped), required to be the model's parameter tree (``lm_head`` included),
    then the reference forward over EasyLM's layout (not the converter's mapping)."""
    from coh.convert.reference import check_easylm_tree, easylm_getter, gptj_logits, llama_logits

    arch = config.model_type
    stream = EasyLMStream(Path(stream_path)).scan()
    if stream.whole_tree is not None or stream.depth != 0:
        raise ValueError(f"{stream_path}: {stream.form}; EasyLM's params:: loader needs a stream with no params "
                         "level")
    layout = layout_of(arch, config)
    check_easylm_tree(layout, stream.shapes, str(stream_path))
    get = easylm_getter(layout, stream.get)
    if arch == "llama":
        shape = llama_shape_of(config)
        return lambda ids: llama_logits(get, shape, ids)
    shape = GPTJShape(config.n_layer, config.n_head, config.rotary_dim or 0, config.layer_norm_epsilon)
    return lambda ids: gptj_logits(get, shape, ids)
