"""Loading a model, choosing its device and dtype: the one home every stage uses.

- :func:`check_model_folder` / :func:`check_tokenizer_folder`: what the user named, checked
  before any library call, so a mistake reads as what it is (transformers, finding no tokenizer
  files, blames a missing sentencepiece or tiktoken package instead).
- :func:`pick_device` and :func:`pick_dtype`: ``auto`` is a CUDA GPU, then Apple's MPS, then the
  CPU; the ``auto`` dtype is bfloat16 on a GPU that supports it, float16 on older CUDA GPUs, and
  float32 elsewhere (bf16 is emulated, and about 25x slower, on CPUs).
- :func:`load_tokenizer` and :func:`load_model`: ``AutoTokenizer`` / ``AutoModelForCausalLM``
  with those checks and one error message per failure; ``training=True`` loads float32 weights
  for the optimizer (mixed precision is autocast), with the cache off.
- :class:`LoadedModel` / :func:`load_for_inference`: a model ready for scoring and generation,
  with the phrases it was trained with (its ``coh.json``, :mod:`coh.cohjson`).
- :func:`check_position_resets`, :func:`context_length`, :func:`eos_ids`: facts about a loaded model.

Every check raises ``ValueError`` with the name the user gave.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Files of which a tokenizer folder holds at least one (fast tokenizer.json, its config, SentencePiece,
# BPE vocab + merges, WordPiece vocab, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "*.tiktoken")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


# -- checks of what the user named ------------------------------------------------------------------
def looks_like_path(name: str) -> bool:
    """A name that cannot be a hub id (``org/name`` or ``name``): absolute, relative to ., ~, deeper."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
            or not _HUB_ID.fullmatch(name))


def has_tokenizer_files(folder: str | Path) -> bool:
    path = Path(folder)
    return any(next(path.glob(pattern), None) is not None for pattern in TOKENIZER_FILES)


def check_model_folder(name: str, label: str | None = None) -> None:
    """``name`` is a local model folder (with ``config.json``, or a peft ``adapter_config.json``)
    or else could be a hub id, which transformers checks. ``label``: how errors name it
    (default ``model NAME``)."""
    label = label or f"model {name}"
    path = Path(name).expanduser()
    if path.is_file():
        raise ValueError(f"{label}: a file, not a model folder (a folder with config.json, the weights and "
                         "the tokenizer, such as coh train's OUTPUT/final)")
    if not path.exists():
        if looks_like_path(name):
            raise ValueError(f"{label}: no such folder here, and as a hub id: not a repository name")
        return
    if not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
        hint = " (coh train writes the model to OUTPUT/final)" if (path / "final").is_dir() else \
            " (write one with save_pretrained, or convert it with `coh convert`)"
        raise ValueError(f"{label}: no config.json in that folder, so not a Hugging Face model folder{hint}")


def check_tokenizer_folder(name: str, label: str | None = None, folder: str = "tokenizer") -> None:
    """A local folder given as a tokenizer (or a model folder that must carry one: ``folder``
    "model") holds a tokenizer's files; a file, or a missing path that cannot be a hub id, is refused."""
    label = label or f"tokenizer {name}"
    path = Path(name).expanduser()
    if path.is_dir():
        if not has_tokenizer_files(path):
            raise ValueError(
                f"{label}: the {folder} folder has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}), so it is "
                "not a tokenizer folder: it holds no tokenizer. Save the base model's tokenizer into it "
                "(tokenizer.save_pretrained) or name the tokenizer separately")
    elif path.exists():
        raise ValueError(f"{label}: is a file; give the folder that holds tokenizer.json, or a hub id")
    elif looks_like_path(name):
        raise ValueError(f"{label}: no such folder here, and as a hub id: not a repository name")


# -- device and dtype ----------------------------------------------------------------------------------
def pick_device(device: str | None = "auto") -> str:
    """``auto`` (or None): ``cuda``, else ``mps``, else ``cpu``. A named device is checked to be
    here (``ValueError`` otherwise)."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device name (auto, cpu, cuda, cuda:1, mps, ...)") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if not available.get(parsed.type, lambda: True)():
        raise ValueError(f"--device {device}: there is no {parsed.type} device here")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s) here")
    return device


def pick_dtype(dtype: str, device: str):
    """The torch dtype for ``dtype`` on ``device`` (see the module docstring for ``auto``)."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


# -- loading ---------------------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_tokenizer(name: str, trust_remote_code: bool = False, label: str | None = None):
    """``AutoTokenizer.from_pretrained(name)`` (a folder or a hub id) after
    :func:`check_tokenizer_folder`; a failure is a ``ValueError`` that says which it was."""
    from transformers import AutoTokenizer

    label = label or f"tokenizer {name}"
    check_tokenizer_folder(name, label)
    path = Path(name).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError ... with long advice
        where = "folder" if path.is_dir() else "no such folder here, and as a hub id"
        raise ValueError(f"{label}: {where}: cannot load: {_first_line(e)}") from None


def load_model(name: str, *, dtype: str = "auto", device: str | None = "auto", attention: str | None = None,
               trust_remote_code: bool = False, training: bool = False, label: str | None = None):
    """A causal LM from a folder or hub id, checked first (:func:`check_model_folder`).

    ``training``: float32 weights on the CPU (the trainer places and wraps them; mixed precision is
    autocast), ``use_cache`` off. Otherwise the weights in :func:`pick_dtype` on
    :func:`pick_device`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    label = label or f"model {name}"
    try:
        check_model_folder(name, label)
    except ValueError as e:
        raise ValueError(f"cannot load the {e}") from None
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if training:
        kwargs["dtype"] = torch.float32
    else:
        device = pick_device(device)
        kwargs["dtype"] = pick_dtype(dtype, device)
    path = Path(name).expanduser()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path) if path.is_dir() else name, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        where = "" if path.exists() else "no such folder here, and as a hub id: "
        raise ValueError(f"cannot load the {label}: {where}{_first_line(e)}") from None
    if training:
        model.config.use_cache = False
        return model
    return model.to(device).eval()


@dataclass
class LoadedModel:
    """A causal LM ready for scoring and generation: its tokenizer, the phrases it was trained
    with (``coh.json``; the defaults for other models) and whether records may share a row."""

    path: str
    model: Any
    tokenizer: Any
    phrases: Any  # coh.data.phrases.PhraseSet
    device: str
    packs: bool  # attention restarts at position_ids resets, so records can share a row
    mode: str = "coh"  # as trained (coh.json); "sft" models are prompted with no phrase

    @functools.cached_property
    def record_tokenizer(self):
        from coh.data.tokenize import RecordTokenizer

        return RecordTokenizer(self.tokenizer, chat_template="never")


def load_for_inference(path: str, device: str | None = "auto", dtype: str = "auto",
                       trust_remote_code: bool = False, label: str | None = None) -> LoadedModel:
    """Load a model folder (``coh train``'s ``final/`` or any HF causal LM) with its tokenizer
    and ``coh.json`` for scoring and generation."""
    from coh.cohjson import CohJson
    from coh.data.phrases import PhraseSet

    label = label or f"model {path}"
    device = pick_device(device)
    if Path(path).is_dir():  # the cheap checks of both before the slow load of either
        check_model_folder(path, label)
        check_tokenizer_folder(path, label, "model")
    model = load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code, label=label)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, label=label)
    use_cache, model.config.use_cache = model.config.use_cache, False  # a cache would hide the resets
    try:
        check_position_resets(model)
        packs = True
    except ValueError:  # e.g. learned absolute positions: score each record in a row of its own
        packs = False
    model.config.use_cache = use_cache
    info = CohJson.read(path) if Path(path).is_dir() else None
    phrases = info.phrases if info is not None else PhraseSet()
    return LoadedModel(path, model, tokenizer, phrases, device, packs, info.mode if info is not None else "coh")


# -- facts about a loaded model ----------------------------------------------------------------------------
def check_position_resets(model) -> None:
    """Packing needs attention that honours ``position_ids`` resets: compare a record packed after
    another with the same record alone. Some architectures (ALiBi, learned absolute positions
    without ``position_ids``) ignore them; refuse those (``ValueError``)."""
    import torch

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    first, second = torch.randint(0, vocab, (5,), generator=g), torch.randint(0, vocab, (4,), generator=g)
    device = next(model.parameters()).device
    with torch.no_grad():
        alone = model(input_ids=second[None].to(device), position_ids=torch.arange(4, device=device)[None]).logits
        packed = model(
            input_ids=torch.cat([first, second])[None].to(device),
            position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]], device=device),
        ).logits[:, 5:]
    if not torch.allclose(alone.float(), packed.float(), atol=1e-3, rtol=1e-3):
        raise ValueError(
            f"{type(model).__name__} does not restart attention at position_ids resets, so packed records would "
            "see each other. This architecture cannot be trained with packing here."
        )


def context_length(model, tokenizer, override: int | None = None) -> int:
    """The longest sequence (prompt + generated) the model takes."""
    if override is not None:
        if override < 2:
            raise ValueError(f"max_model_len must be at least 2, got {override}")
        return override
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:  # transformers uses a huge number for "unknown"
        return limit
    raise ValueError("the model config states no context length; give --max-model-len")


def eos_ids(model, tokenizer) -> tuple[int, ...]:
    """Every token that ends a reply: the tokenizer's EOS and the model's generation EOS ids."""
    ids: list[int] = []
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None),
                   getattr(model.config, "eos_token_id", None)):
        for i in source if isinstance(source, list | tuple) else [source]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return tuple(ids)
