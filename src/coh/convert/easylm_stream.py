"""EasyLM's checkpoint file format: reading and writing ``streaming_params`` msgpack streams.

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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import torch

NDARRAY_EXT = 1  # flax.serialization._MsgpackExtType.ndarray
CHUNKED = "__msgpack_chunked_array__"
MAX_CHUNK_BYTES = 2**30  # flax.serialization.MAX_CHUNK_SIZE
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "int32": torch.int32, "int64": torch.int64}


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
# how many "params" levels stand above transformer/lm_head in the keys, and who writes them so
PARAMS_LEVELS = {
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
    depth: int | None = None  # params levels above transformer/lm_head (see PARAMS_LEVELS)
    whole_tree: dict[tuple[str, ...], torch.Tensor] | None = None  # a non-streaming flax file, decoded

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file (an EasyLM streaming_params / streaming_train_state file)")

    @property
    def form(self) -> str:
        """In words: a stream or a whole tree, and how many ``params`` levels its keys have."""
        return ("whole-tree flax msgpack, " if self.whole_tree is not None else "stream, ") + \
            PARAMS_LEVELS.get(self.depth, "?")

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
