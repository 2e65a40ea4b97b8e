"""EasyLM / original-CoH checkpoints (``streaming_params``; LLaMA and GPT-J) to HF and back.

The format (EasyLM ``checkpoint.py``, ``StreamingCheckpointer``): a file of consecutive msgpack
objects, one per tensor, each the pair ``(key path, flax.serialization.to_bytes(array))``; the
key path is the flattened flax parameter tree, ``("params", "transformer", "h", "0", "attention",
"wq", "kernel")``. ``to_bytes`` is itself msgpack: a flax ndarray extension (type 1) holding
``(shape, dtype name, raw C-order bytes)``, or for arrays over 2**30 bytes a
``{"__msgpack_chunked_array__", "shape", "chunks"}`` map of flat pieces. flax and JAX are not
installed here (and not needed to read bytes), so that extension is decoded directly below.
A train-state stream (``streaming_train_state``) holds ``("params", "params", ...)`` keys beside
the optimizer state, which is skipped and counted. A whole-tree flax msgpack file
(EasyLM's ``flax_params::``) is read too, though necessarily whole.

Layouts: dense kernels are (in, out), so they are transposed; EasyLM's LLaMA is Meta's layout
(``wq``, ``w1``..., interleaved rotary), so the Meta mapping applies; EasyLM's GPT-J is HF's Flax
GPT-J, whose names match HF's torch GPT-J (``kernel``/``scale``/``embedding`` -> ``weight``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import torch

from coh.convert import safetensors_io
from coh.convert.meta_llama import (
    hf_to_meta,
    llama_hf_config,
    llama_shape_of,
    load_tokenizer,
    meta_to_hf,
)
from coh.convert.reference import GPTJShape, LlamaShape

NDARRAY_EXT = 1  # flax.serialization._MsgpackExtType.ndarray
CHUNKED = "__msgpack_chunked_array__"
MAX_CHUNK_BYTES = 2**30  # flax.serialization.MAX_CHUNK_SIZE
STREAM_NAME = "streaming_params"
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "int32": torch.int32, "int64": torch.int64}

# EasyLM's standard sizes (EasyLM/models/llama/llama_model.py, gptj_model.py): (hidden, layers) -> shape
LLAMA_SIZES = {
    "1b": (2048, 22, 16, 1e-6), "3b": (3200, 26, 32, 1e-6), "7b": (4096, 32, 32, 1e-6),
    "13b": (5120, 40, 40, 1e-6), "30b": (6656, 60, 52, 1e-6), "65b": (8192, 80, 64, 1e-5),
}
GPTJ_SIZES = {"6b": {"n_embd": 4096, "n_layer": 28, "n_head": 16, "rotary_dim": 64, "n_positions": 2048,
                     "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256}}


# -- the msgpack stream ------------------------------------------------------------------------------
def _ext_hook(code: int, data: bytes):
    if code != NDARRAY_EXT:
        return msgpack.ExtType(code, data)
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=False)
    name = dtype_name.decode() if isinstance(dtype_name, bytes) else dtype_name
    if name not in TORCH_DTYPES:
        raise ValueError(f"array of dtype {name!r}: expected one of {sorted(TORCH_DTYPES)}")
    # bytearray: a writable copy, so the tensor owns its memory
    return torch.frombuffer(bytearray(buffer), dtype=TORCH_DTYPES[name]).reshape(shape) if buffer else \
        torch.empty(shape, dtype=TORCH_DTYPES[name])


def _unchunk(value):
    """A decoded ``to_bytes`` payload as one tensor (joining flax's chunked form)."""
    if isinstance(value, dict) and value.get(CHUNKED):
        shape = [value["shape"][str(i)] for i in range(len(value["shape"]))]
        return torch.cat([value["chunks"][str(i)] for i in range(len(value["chunks"]))]).reshape(shape)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"expected an array, found {type(value).__name__}")
    return value


def decode_array(payload: bytes) -> torch.Tensor:
    """``flax.serialization.from_bytes(None, payload)`` for an array."""
    return _unchunk(msgpack.unpackb(payload, ext_hook=_ext_hook, raw=False, strict_map_key=False))


def _encode_ext(t: torch.Tensor) -> msgpack.ExtType:
    t = t.detach().contiguous().cpu()
    raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
    name = str(t.dtype).removeprefix("torch.")
    return msgpack.ExtType(NDARRAY_EXT, msgpack.packb((list(t.shape), name, raw), use_bin_type=True))


def encode_array(t: torch.Tensor) -> bytes:
    """``flax.serialization.to_bytes(array)``: one extension, or flax's chunked map when large."""
    if t.numel() * t.element_size() <= MAX_CHUNK_BYTES:
        return msgpack.packb(_encode_ext(t), use_bin_type=True)
    flat, per = t.reshape(-1), max(1, MAX_CHUNK_BYTES // t.element_size())
    chunks = {str(i): _encode_ext(flat[s:s + per]) for i, s in enumerate(range(0, flat.numel(), per))}
    return msgpack.packb({CHUNKED: True, "shape": {str(i): d for i, d in enumerate(t.shape)}, "chunks": chunks},
                         use_bin_type=True)


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    for k, v in tree.items():
        if isinstance(v, dict) and not v.get(CHUNKED):
            yield from _flatten(v, (*prefix, str(k)))
        else:
            yield (*prefix, str(k)), v


def model_key(key: tuple[str, ...]) -> tuple[str, ...] | None:
    """The parameter path below ``params`` (streaming_params) or ``params/params`` (a train
    state), or None for anything else (optimizer state, step counter)."""
    for depth in (1, 2):
        if len(key) > depth and all(k == "params" for k in key[:depth]) and key[depth] in ("transformer", "lm_head"):
            return key[depth:]
    return None


@dataclass
class EasyLMStream:
    """An EasyLM checkpoint file. ``scan()`` reads it once for names, shapes and offsets, after
    which ``get(path)`` reads one tensor; ``tensors()`` streams them all in file order."""

    path: Path
    index: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict)  # key -> (start, end)
    shapes: dict[tuple[str, ...], tuple[int, ...]] = field(default_factory=dict)
    dtype: torch.dtype | None = None  # of the first parameter
    skipped: int = 0  # non-parameter entries (optimizer state, step)
    whole_tree: dict[tuple[str, ...], torch.Tensor] | None = None  # a non-streaming flax file, decoded

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file (an EasyLM streaming_params / streaming_train_state file)")

    def _entries(self) -> Iterator[tuple[tuple[str, ...], object, int, int]]:
        """(key, payload bytes or decoded array, start, end) for every entry of the file."""
        with self.path.open("rb") as f:
            unpacker = msgpack.Unpacker(f, read_size=64 << 20, max_buffer_size=0, raw=False,
                                        ext_hook=_ext_hook, strict_map_key=False)
            start, n = 0, 0
            try:
                for item in unpacker:
                    end = unpacker.tell()
                    if n == 0 and isinstance(item, dict):  # flax's whole-tree format (EasyLM flax_params::)
                        tree = item if "params" in item else {"params": item}
                        self.whole_tree = {k: _unchunk(v) for k, v in _flatten(tree)}
                        for key, value in self.whole_tree.items():
                            yield key, value, -1, -1
                        return
                    if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (list, tuple))
                            and all(isinstance(k, str) for k in item[0]) and isinstance(item[1], bytes)):
                        raise ValueError(f"entry {n} at byte {start} is a {type(item).__name__}, not a "
                                         "(key path, array bytes) pair")
                    yield tuple(item[0]), item[1], start, end
                    start, n = end, n + 1
            except (msgpack.UnpackException, msgpack.ExtraData, ValueError, TypeError) as e:
                raise ValueError(f"{self.path}: not an EasyLM streaming checkpoint: {e}") from e
            if n == 0:
                raise ValueError(f"{self.path}: empty, or not an EasyLM streaming checkpoint")

    def _params(self) -> Iterator[tuple[tuple[str, ...], torch.Tensor, int, int]]:
        """(parameter path, tensor, start, end) of the model's parameters; the rest is counted in ``skipped``."""
        self.skipped = 0
        for key, payload, start, end in self._entries():
            path = model_key(key)
            if path is None:
                self.skipped += 1
                continue
            try:
                yield path, decode_array(payload) if isinstance(payload, bytes) else payload, start, end
            except (ValueError, msgpack.UnpackException) as e:
                raise ValueError(f"{self.path}: entry {'/'.join(key)}: {e}") from e

    def tensors(self) -> Iterator[tuple[tuple[str, ...], torch.Tensor]]:
        """(parameter path, tensor) in file order, one at a time."""
        for path, tensor, _, _ in self._params():
            yield path, tensor

    def scan(self) -> EasyLMStream:
        """Read the file once: names, shapes, byte ranges; tensors are decoded and dropped."""
        self.index.clear()
        self.shapes.clear()
        for path, tensor, start, end in self._params():
            self.index[path] = (start, end)
            self.shapes[path] = tuple(tensor.shape)
            self.dtype = self.dtype or tensor.dtype
        if not self.index:
            raise ValueError(f"{self.path}: no model parameters found (expected keys under params/transformer "
                             f"and params/lm_head; {self.skipped} other entries)")
        return self

    def get(self, path: tuple[str, ...]) -> torch.Tensor:
        if path not in self.index:
            raise KeyError(f"{self.path}: no tensor {'/'.join(path)}")
        if self.whole_tree is not None:
            return self.whole_tree[("params", *path)]
        start, end = self.index[path]
        with self.path.open("rb") as f:
            f.seek(start)
            _, payload = msgpack.unpackb(f.read(end - start), raw=False)
        return decode_array(payload)


def write_stream(path: str | Path, tensors: Iterator[tuple[tuple[str, ...], torch.Tensor]]) -> int:
    """Write ``(parameter path, tensor)`` pairs as EasyLM's ``streaming_params`` (keys under
    ``params``, as ``StreamingCheckpointer.save_all`` writes them); the number written."""
    packer = msgpack.Packer(use_bin_type=True)
    n = 0
    with Path(path).open("wb") as f:
        for key, tensor in tensors:
            f.write(packer.pack((["params", *key], encode_array(tensor))))
            n += 1
    return n


# -- names and layouts ------------------------------------------------------------------------------
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


# -- configs ---------------------------------------------------------------------------------------
def _config_dict(spec: str) -> dict:
    """``--config`` as a dict: a JSON file (EasyLM's or HF's config.json) or a folder holding config.json."""
    p = Path(spec)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"--config {spec}: not a standard size ({', '.join([*LLAMA_SIZES, *GPTJ_SIZES])}), "
                                "a JSON file or a folder with config.json")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from e


def _layers(shapes, pattern: str) -> int:
    return len({int(m.group(1)) for p in shapes if (m := re.fullmatch(pattern, "/".join(p)))})


def llama_config_for(stream: EasyLMStream, spec: str | None, bos: int | None, eos: int | None,
                     dtype: torch.dtype | None):
    """The HF LlamaConfig of a scanned EasyLM LLaMA stream, from ``spec`` or its standard size,
    checked against the tensor shapes."""
    shapes = stream.shapes
    vocab, hidden = shapes[("transformer", "wte", "embedding")]
    n_layers = _layers(shapes, r"transformer/h/(\d+)/.*")
    intermediate = shapes[("transformer", "h", "0", "feed_forward", "w1", "kernel")][1]
    kv_dim = shapes[("transformer", "h", "0", "attention", "wk", "kernel")][1]
    tied = ("lm_head", "kernel") not in shapes
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
    else:
        c = _config_dict(spec)
        want = {k: c[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size") if k in c}
        n_heads, eps = int(c["num_attention_heads"]), float(c.get("rms_norm_eps", 1e-6))
        positions = int(c.get("max_sequence_length") or c.get("max_position_embeddings") or 2048)
        theta = float(c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta") or 10000.0)
        bos = c.get("bos_token_id", bos) if bos is None else bos
        eos = c.get("eos_token_id", eos) if eos is None else eos
    got = {"hidden_size": hidden, "num_hidden_layers": n_layers, "intermediate_size": intermediate, "vocab_size": vocab}
    wrong = {k: (v, got[k]) for k, v in want.items() if v != got[k]}
    if wrong:
        raise ValueError(f"--config {spec} does not match {stream.path}: " +
                         ", ".join(f"{k} {a} in the config, {b} in the checkpoint" for k, (a, b) in wrong.items()))
    shape = LlamaShape(n_layers, n_heads, n_heads * kv_dim // hidden, eps, theta)
    return shape, llama_hf_config(shape, hidden, intermediate, vocab, positions, tied=tied,
                                  bos_token_id=1 if bos is None else bos, eos_token_id=2 if eos is None else eos,
                                  dtype=dtype)


def _gpt2_id(config: dict, which: str, vocab: int) -> int | None:
    """GPT-J's <|endoftext|> (50256) unless the config says otherwise or the vocabulary is smaller."""
    found = config.get(f"{which}_token_id", 50256)
    return found if found is not None and found < vocab else None


def gptj_config_for(stream: EasyLMStream, spec: str | None, bos: int | None, eos: int | None,
                    dtype: torch.dtype | None):
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
    c = dict(GPTJ_SIZES[spec]) if spec in GPTJ_SIZES else _config_dict(spec)
    if c.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"--config {spec}: activation {c['activation_function']!r}; only GPT-J's gelu_new is supported")
    wrong = [f"{k} {c[k]} in the config, {v} in the checkpoint" for k, v in
             (("n_embd", hidden), ("n_layer", n_layers), ("vocab_size", vocab)) if k in c and c[k] != v]
    if wrong:
        raise ValueError(f"--config {spec} does not match {stream.path}: " + ", ".join(wrong))
    shape = GPTJShape(n_layers, int(c["n_head"]), int(c.get("rotary_dim") or 0), float(c.get("layer_norm_epsilon", 1e-5)))
    config = GPTJConfig(vocab_size=vocab, n_embd=hidden, n_layer=n_layers, n_head=shape.n_heads,
                        rotary_dim=shape.rotary_dim or None, n_inner=inner if inner != 4 * hidden else None,
                        n_positions=int(c.get("n_positions", 2048)), layer_norm_epsilon=shape.layer_norm_eps,
                        tie_word_embeddings=False, bos_token_id=bos if bos is not None else _gpt2_id(c, "bos", vocab),
                        eos_token_id=eos if eos is not None else _gpt2_id(c, "eos", vocab))
    if dtype is not None:
        config.dtype = dtype
    return shape, config


# -- conversions -----------------------------------------------------------------------------------
@dataclass
class EasyLMSource:
    """A scanned EasyLM checkpoint with its architecture and HF config."""

    stream: EasyLMStream
    arch: str
    shape: LlamaShape | GPTJShape
    config: object

    def torch_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(torch-orientation name, tensor) in file order: Meta names for LLaMA, HF names for GPT-J."""
        for path, tensor in self.stream.tensors():
            yield easylm_to_torch(path, tensor, self.arch)

    def get(self, name: str) -> torch.Tensor:
        """One tensor by torch-orientation name (what ``reference`` asks for)."""
        key, _ = torch_to_easylm(name, torch.empty(0, 0), self.arch)  # a 2-D stand-in: the leaf may be "scale"
        for leaf in (key[-1], "scale"):
            if (*key[:-1], leaf) in self.stream.index:
                path = (*key[:-1], leaf)
                return easylm_to_torch(path, self.stream.get(path), self.arch)[1]
        raise KeyError(f"{self.stream.path}: no tensor for {name}")

    def reference_logits(self, ids: torch.Tensor) -> torch.Tensor:
        from coh.convert.reference import gptj_logits, llama_logits

        if self.arch == "llama":
            tied = ("lm_head", "kernel") not in self.stream.index

            def get(name: str) -> torch.Tensor:
                return self.get("tok_embeddings.weight" if tied and name == "output.weight" else name)

            return llama_logits(get, self.shape, ids)
        return gptj_logits(self.get, self.shape, ids)


def open_easylm(path: str | Path, config: str | None = None, bos: int | None = None, eos: int | None = None,
                dtype: torch.dtype | None = None) -> EasyLMSource:
    stream = EasyLMStream(Path(path)).scan()
    arch = detect_arch(stream.index)
    make = llama_config_for if arch == "llama" else gptj_config_for
    shape, hf_config = make(stream, config, bos, eos, dtype or stream.dtype)
    source = EasyLMSource(stream, arch, shape, hf_config)
    # names and shapes as they will be written, worked out on meta tensors (no memory), against the config
    found = {}
    for key, size in stream.shapes.items():
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
                         target_dtype)
    if tok is not None and len(tok) > source.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but the checkpoint's embeddings only {source.config.vocab_size}")
    out = safetensors_io.prepare_output_dir(output_dir)
    writer = safetensors_io.ShardWriter(out, safetensors_io.parse_size(max_shard_size), target_dtype)
    bar = tqdm(total=len(source.stream.index), desc=f"easylm {source.arch} -> hf", unit="tensor",
               disable=None if progress is None else not progress)
    for name, tensor in source.torch_tensors():
        writer.add(*(meta_to_hf(name, tensor, source.shape) if source.arch == "llama" else (name, tensor)))
        bar.update()
    bar.close()
    writer.close()
    info = safetensors_io.converted_coh_info("easylm", path) if coh_phrases else None
    safetensors_io.finish_hf_folder(out, source.config, tok, tokenizer, info)
    if tok is None:
        print("no --tokenizer given: the folder has no tokenizer (coh train and coh serve need one)")
    if source.stream.skipped:
        print(f"skipped {source.stream.skipped} non-parameter entries (optimizer state, step)")
    return source


def easylm_config_json(config, arch: str) -> dict:
    """EasyLM's config for ``--load_llama_config`` / ``--load_gptj_config`` ``json::PATH``."""
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
        return out
    return {k: getattr(config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "rotary_dim",
                                           "n_inner", "activation_function", "layer_norm_epsilon",
                                           "tie_word_embeddings", "bos_token_id", "eos_token_id")}


def hf_model_tensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of an HF folder's safetensors files, one tensor at a time."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files (save the model with safe_serialization)")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, st.get_tensor(name)


def export_easylm(model_dir: str | Path, output_dir: str | Path, dtype: str | None = None,
                  progress: bool | None = None) -> Path:
    """An HF LLaMA or GPT-J folder as ``OUTPUT/streaming_params`` + ``OUTPUT/easylm_config.json``
    (+ ``tokenizer.model`` when the folder has one). Returns the stream's path."""
    from tqdm.auto import tqdm
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    arch = {"llama": "llama", "gptj": "gptj"}.get(config.model_type)
    if arch is None:
        raise ValueError(f"{model_dir}: model type {config.model_type!r}; EasyLM holds llama and gptj")
    shape = llama_shape_of(config) if arch == "llama" else None
    target = safetensors_io.resolve_dtype(dtype)
    out = Path(output_dir)
    if (out / STREAM_NAME).exists():
        raise ValueError(f"{out / STREAM_NAME}: exists already; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    tied = bool(config.tie_word_embeddings)
    skipped: list[str] = []

    def converted() -> Iterator[tuple[tuple[str, ...], torch.Tensor]]:
        for name, tensor in tqdm(hf_model_tensors(model_dir), desc=f"hf {arch} -> easylm", unit="tensor",
                                 disable=None if progress is None else not progress):
            if tied and name == "lm_head.weight":
                skipped.append(name)
                continue
            if target is not None and tensor.is_floating_point():
                tensor = tensor.to(target)
            if arch == "llama":
                name, tensor = hf_to_meta(name, tensor, shape)
            yield torch_to_easylm(name, tensor, arch)

    write_stream(out / STREAM_NAME, converted())
    (out / "easylm_config.json").write_text(json.dumps(easylm_config_json(config, arch), indent=2) + "\n",
                                            encoding="utf-8")
    if (Path(model_dir) / "tokenizer.model").is_file():
        (out / "tokenizer.model").write_bytes((Path(model_dir) / "tokenizer.model").read_bytes())
    elif arch == "llama":
        print(f"{model_dir} has no tokenizer.model: EasyLM's LLaMA tokenizer needs the SentencePiece file the "
              "model was trained with (e.g. the original Meta one)")
    if skipped:
        print(f"not written: {', '.join(skipped)} (tied to the embeddings; EasyLM reads tie_word_embeddings)")
    return out / STREAM_NAME
