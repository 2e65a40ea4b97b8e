"""EasyLM / original-CoH checkpoints (``streaming_params``; LLaMA and GPT-J) to HF and back.

The format (EasyLM ``checkpoint.py``, ``StreamingCheckpointer``): a file of consecutive msgpack
objects, one per tensor, each the pair ``(key path, flax.serialization.to_bytes(array))``; the
key path is the flattened flax parameter tree from its root, ``("transformer", "h", "0", "attention",
"wq", "kernel")``, with no ``params`` level (``save_all`` saves ``train_state.params['params']``;
the loaders wrap the ``params`` level back on). ``to_bytes`` is itself msgpack: a flax ndarray extension (type 1) holding
``(shape, dtype name, raw C-order bytes)``, or for arrays over 2**30 bytes a
``{"__msgpack_chunked_array__", "shape", "chunks"}`` map of flat pieces. flax and JAX are not
installed here (and not needed to read bytes), so that extension is decoded directly below.
A train-state stream (``streaming_train_state``) holds ``("params", "params", ...)`` keys beside
the optimizer state, which is skipped and counted; a stream with one ``params`` level is read too.
A whole-tree flax msgpack file (EasyLM's ``flax_params::``) is read too, though necessarily whole.
Writing follows EasyLM's own ``convert_hf_to_easylm.py`` byte for byte (``export_easylm``).

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
from coh.convert.reference import EasyLMLayout, GPTJShape, LlamaShape, easylm_layout

NDARRAY_EXT = 1  # flax.serialization._MsgpackExtType.ndarray
CHUNKED = "__msgpack_chunked_array__"
MAX_CHUNK_BYTES = 2**30  # flax.serialization.MAX_CHUNK_SIZE
STREAM_NAME = "streaming_params"
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "int32": torch.int32, "int64": torch.int64}

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


PARAM_ROOTS = ("transformer", "lm_head")
# how many "params" levels stand above transformer/lm_head, and who writes that layout
LAYOUTS = {
    0: "no params level (EasyLM's StreamingCheckpointer.save_all streaming_params, convert_hf_to_easylm.py, "
       "the original's convert_checkpoint.py)",
    1: "one params level",
    2: "params/params (a streaming_train_state)",
}


def model_key(key: tuple[str, ...]) -> tuple[int, tuple[str, ...]] | None:
    """(number of ``params`` levels, parameter path from ``transformer`` / ``lm_head``) of a stream
    key, or None for anything else (optimizer state, step counter). EasyLM's ``streaming_params``
    have no ``params`` level; a train state holds the parameters under ``params/params``."""
    for depth in (0, 1, 2):
        if len(key) > depth and all(k == "params" for k in key[:depth]) and key[depth] in PARAM_ROOTS:
            return depth, key[depth:]
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
    depth: int | None = None  # params levels above transformer/lm_head (see LAYOUTS)
    whole_tree: dict[tuple[str, ...], torch.Tensor] | None = None  # a non-streaming flax file, decoded

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file (an EasyLM streaming_params / streaming_train_state file)")

    @property
    def layout(self) -> str:
        return ("whole-tree flax msgpack, " if self.whole_tree is not None else "stream, ") + LAYOUTS.get(self.depth, "?")

    def _entries(self) -> Iterator[tuple[tuple[str, ...], object, int, int]]:
        """(key, payload bytes or decoded value, start, end) for every entry of the file."""
        with self.path.open("rb") as f:
            unpacker = msgpack.Unpacker(f, read_size=64 << 20, max_buffer_size=0, raw=False,
                                        ext_hook=_ext_hook, strict_map_key=False)
            start, n = 0, 0
            try:
                for item in unpacker:
                    end = unpacker.tell()
                    if n == 0 and isinstance(item, dict):  # flax's whole-tree format (EasyLM flax_params::)
                        self.whole_tree = {}
                        for key, value in _flatten(item):
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
        self.skipped, self.depth = 0, None
        for key, payload, start, end in self._entries():
            found = model_key(key)
            if found is None:
                self.skipped += 1
                continue
            depth, path = found
            if self.depth is None:
                self.depth = depth
            elif depth != self.depth:
                raise ValueError(f"{self.path}: entry {'/'.join(key)} has {depth} params level(s), earlier ones "
                                 f"{self.depth}: two layouts in one file")
            try:
                tensor = decode_array(payload) if isinstance(payload, bytes) else _unchunk(payload)
            except (ValueError, msgpack.UnpackException) as e:
                raise ValueError(f"{self.path}: entry {'/'.join(key)}: {e}") from e
            if self.whole_tree is not None:
                self.whole_tree[path] = tensor
            yield path, tensor, start, end

    def tensors(self) -> Iterator[tuple[tuple[str, ...], torch.Tensor]]:
        """(parameter path, tensor) in file order, one at a time."""
        for path, tensor, _, _ in self._params():
            yield path, tensor

    def scan(self) -> EasyLMStream:
        """Read the file once: names, shapes, byte ranges; tensors are decoded and dropped."""
        self.index.clear()
        self.shapes.clear()
        for path, tensor, start, end in self._params():
            if path in self.index:
                raise ValueError(f"{self.path}: parameter {'/'.join(path)} stored twice")
            self.index[path] = (start, end)
            self.shapes[path] = tuple(tensor.shape)
            self.dtype = self.dtype or tensor.dtype
        if not self.index:
            raise ValueError(f"{self.path}: no model parameters found (expected keys transformer/... and lm_head/..., "
                             f"with no params level, under params/ or under params/params/; {self.skipped} other entries)")
        return self

    def get(self, path: tuple[str, ...]) -> torch.Tensor:
        if path not in self.index:
            raise KeyError(f"{self.path}: no tensor {'/'.join(path)}")
        if self.whole_tree is not None:
            return self.whole_tree[path]
        start, end = self.index[path]
        with self.path.open("rb") as f:
            f.seek(start)
            _, payload = msgpack.unpackb(f.read(end - start), raw=False)
        return decode_array(payload)


def write_stream(path: str | Path, tensors: Iterator[tuple[tuple[str, ...], torch.Tensor]]) -> int:
    """Write ``(parameter path, tensor)`` pairs as EasyLM's ``streaming_params``: keys from
    ``transformer`` / ``lm_head`` with no ``params`` level, one ``packer.pack((key, to_bytes(array)))``
    each, as ``StreamingCheckpointer.save_train_state_to_file`` writes them; the number written."""
    packer = msgpack.Packer(use_bin_type=True)
    n = 0
    with Path(path).open("wb") as f:
        for key, tensor in tensors:
            f.write(packer.pack((list(key), encode_array(tensor))))
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
        raise FileNotFoundError(f"--config {spec}: not a standard size ({', '.join([*LLAMA_SIZES, *GPTJ_SIZES])}, "
                                f"or EasyLM's {', '.join(EASYLM_STANDARD)}), "
                                "a JSON file or a folder with config.json")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from e


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
        c = _config_dict(spec)
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
    c = dict(GPTJ_SIZES[spec]) if spec in GPTJ_SIZES else _config_dict(spec)
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


def layout_of(arch: str, config) -> EasyLMLayout:
    """EasyLM's parameter tree for an HF LLaMA / GPT-J config (``reference.easylm_layout``)."""
    if arch == "llama":
        shape = llama_shape_of(config)
        head_dim = config.hidden_size // shape.n_heads
        return easylm_layout("llama", shape.n_layers, config.hidden_size, config.vocab_size,
                             shape.n_heads * head_dim, shape.n_kv_heads * head_dim, config.intermediate_size)
    return easylm_layout("gptj", config.n_layer, config.n_embd, config.vocab_size, config.n_embd, config.n_embd,
                         config.n_inner or 4 * config.n_embd)


# -- conversions -----------------------------------------------------------------------------------
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
        if lm_head_tied and config is not None and config not in LLAMA_SIZES and config not in EASYLM_STANDARD and \
                _config_dict(config).get("tie_word_embeddings") is False:
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
    info = safetensors_io.converted_coh_info("easylm", path) if coh_phrases else None
    safetensors_io.finish_hf_folder(out, source.config, tok, tokenizer, info)
    print(f"read {source.stream.path}: {source.stream.layout}, {len(source.stream.index)} tensors, {source.stream.dtype}")
    if tok is None:
        print("no --tokenizer given: the folder has no tokenizer (coh train and coh serve need one)")
    if source.lm_head_tied:
        print("lm_head/kernel equals the transposed embedding: written as a tied model (tie_word_embeddings)")
    if source.stream.skipped:
        print(f"skipped {source.stream.skipped} non-parameter entries (optimizer state, step)")
    return source


# -- HF -> EasyLM ----------------------------------------------------------------------------------
# The code bases that read these files, and what each reads. EasyLM's LLaMA config moved from a
# JSON file (--load_llama_config='json::...', LLaMAConfig.load_config) to --llama.* flags
# (LLaMAConfigurator) in b2e2a78 (May 2024), which also dropped GPT-J.
TARGETS = {
    "easylm": "EasyLM since b2e2a78 (May 2024; young-geng/EasyLM HEAD fe5b2c3): --llama.* flags, LLaMA only",
    "coh": "the original Chain-of-Hindsight code (lhao499/chain-of-hindsight 9f55cea) and EasyLM before b2e2a78: "
           "--load_llama_config / --load_gptj_config 'json::FILE'",
}

def target_problems(config, arch: str) -> dict[str, str | None]:
    """Per target code base: why it cannot run this model as HF does, or None when it can."""
    problems: dict[str, str | None] = {}
    if arch == "gptj":
        problems["easylm"] = "EasyLM dropped GPT-J in b2e2a78 (May 2024); use --target coh"
        problems["coh"] = None
        return problems
    shape = llama_shape_of(config)
    theta = None if shape.rope_theta == 10000.0 else (
        f"rope_theta {shape.rope_theta:g}: this code's rotary embedding always uses 10000")
    problems["easylm"] = theta and theta.replace(
        "this code's rotary embedding always uses 10000",
        "EasyLM's FlaxLLaMAAttention calls apply_rotary_emb without the config's rope_theta, so it runs 10000")
    gqa = None if shape.n_kv_heads == shape.n_heads else (
        f"{shape.n_kv_heads} KV heads for {shape.n_heads} attention heads (grouped-query attention): this "
        "LLaMAConfig has no num_key_value_heads")
    problems["coh"] = "; ".join(p for p in (gqa, theta) if p) or None
    return problems


def easylm_commands(config, arch: str, stream: Path, config_json: Path, model_dir: Path) -> dict[str, str]:
    """Per target code base that can run the model: the command line that loads the written files,
    with only the flags that version reads."""
    stream, config_json, model_dir = stream.resolve(), config_json.resolve(), model_dir.resolve()
    commands = {}
    problems = target_problems(config, arch)
    ckpt = f"--load_checkpoint='params::{stream}'"
    if arch == "llama" and problems["easylm"] is None:
        shape = llama_shape_of(config)
        dims = (config.hidden_size, config.intermediate_size, shape.n_layers, shape.n_heads, shape.n_kv_heads)
        base = next((name for name, d in EASYLM_STANDARD.items() if d[:5] == dims), "llama_7b")
        flags = [f"--llama.base_model={base}", f"--llama.vocab_size={config.vocab_size}",
                 f"--llama.hidden_size={config.hidden_size}", f"--llama.intermediate_size={config.intermediate_size}",
                 f"--llama.num_hidden_layers={shape.n_layers}", f"--llama.num_attention_heads={shape.n_heads}",
                 f"--llama.num_key_value_heads={shape.n_kv_heads}", f"--llama.rms_norm_eps={shape.norm_eps:g}",
                 f"--llama.max_position_embeddings={config.max_position_embeddings}"]
        commands["easylm"] = (f"python -m EasyLM.models.llama.llama_serve {ckpt} --tokenizer='{model_dir}' "
                              + " ".join(flags))
    if problems["coh"] is None:
        if arch == "llama":
            vocab_file = stream.parent / "tokenizer.model"
            vocab_file = f"'{vocab_file}'" if vocab_file.is_file() else "PATH/TO/tokenizer.model"
            commands["coh"] = (f"python -m coh.coh_serve_llama --load_llama_config='json::{config_json}' {ckpt} "
                               f"--tokenizer.vocab_file={vocab_file}")
        else:
            commands["coh"] = (f"python -m coh.coh_serve_gptj --load_gptj_config='json::{config_json}' {ckpt} "
                               f"--tokenizer.name='{model_dir}'")
    return commands


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
        raise ValueError(f"{stream_path}: {stream.layout}; EasyLM's params:: loader needs a stream with no params "
                         "level")
    layout = layout_of(arch, config)
    check_easylm_tree(layout, stream.shapes, str(stream_path))
    get = easylm_getter(layout, stream.get)
    if arch == "llama":
        shape = llama_shape_of(config)
        return lambda ids: llama_logits(get, shape, ids)
    shape = GPTJShape(config.n_layer, config.n_head, config.rotary_dim or 0, config.layer_norm_epsilon)
    return lambda ids: gptj_logits(get, shape, ids)
