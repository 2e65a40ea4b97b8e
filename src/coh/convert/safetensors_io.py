"""Writing HF model folders tensor by tensor: size-capped safetensors shards plus the index json
that ``from_pretrained`` reads, and the side files (config, tokenizer, ``coh.json``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from coh.cohjson import CohJson
from coh.data.chat_template import checkpoint_chat_template, is_coh_template

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# files of a tokenizer folder (transformers 5 writes the first two; older ones and SentencePiece
# models the rest); copied as they are so nothing about the tokenizer changes
# Every file of a tokenizer, copied beside converted weights (coh.models.TOKENIZER_FILES: those that
# show a folder holds one).
TOKENIZER_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json")


def parse_size(size: str | int) -> int:
    """Bytes in ``"5GB"``, ``"500MB"``, ``"20KB"``, ``"2GiB"`` or a plain integer (decimal units, as
    transformers' ``max_shard_size``)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", size, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max shard size: expected a size such as 5GB, 500MB or 20KB, got {size!r}")
    number, unit, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    return int(number * (1024 if binary else 1000) ** " KMGT".index(unit or " "))


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """``None`` / ``"auto"`` keep each tensor's own dtype; else float32, bfloat16 or float16."""
    if name in (None, "auto"):
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype: expected auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def prepare_output_dir(output_dir: str | Path) -> Path:
    """Create ``output_dir``; refuse one that already holds a model, so two models never mix."""
    out = Path(output_dir)
    if out.exists() and (any(out.glob("*.safetensors")) or (out / "config.json").exists()):
        raise ValueError(f"{out}: already holds a model (config.json or *.safetensors); choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


class ShardWriter:
    """Append tensors one at a time; a shard file is written whenever the next tensor would take
    the buffer past ``max_shard_bytes``, so at most one shard's worth (or one larger tensor) is
    ever held. ``close()`` names the files ``model-0000i-of-0000n.safetensors`` and writes the
    index, or a single ``model.safetensors`` when one shard suffices.

    Hand-written rather than huggingface_hub's ``split_torch_state_dict_into_shards``, which
    needs every tensor up front: streaming sources only ever hand us one."""

    def __init__(self, output_dir: str | Path, max_shard_bytes: int, dtype: torch.dtype | None = None):
        self.out = Path(output_dir)
        self.max_bytes = max_shard_bytes
        self.dtype = dtype
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.peak_buffer_bytes = 0  # largest number of bytes held at once (tests check the bound)
        self.files: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.names: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.names:
            raise ValueError(f"tensor {name} written twice")
        self.names.add(name)
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        tensor = (tensor.detach() if tensor.requires_grad else tensor).contiguous()  # no copy when already so
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + size > self.max_bytes:
            self.flush()
        self.buffer[name] = tensor
        self.buffer_bytes += size
        self.total_bytes += size
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, self.buffer_bytes)

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buffer:
            return
        path = self.out / f".shard-{len(self.files) + 1:05d}.safetensors.tmp"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.buffer)))
        self.buffer, self.buffer_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, give every shard its final name, write the index; the final paths."""
        self.flush()
        n = len(self.files)
        if n == 0:
            raise ValueError("no tensors were written")
        if n == 1:
            final = [self.out / SINGLE_NAME]
            self.files[0][0].replace(final[0])
            return final
        final, weight_map = [], {}
        for i, (tmp, names) in enumerate(self.files, start=1):
            target = self.out / f"model-{i:05d}-of-{n:05d}.safetensors"
            tmp.replace(target)
            final.append(target)
            weight_map.update(dict.fromkeys(names, target.name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return final


def expected_tensors(config) -> tuple[dict[str, torch.Size], dict[str, str]]:
    """(state-dict name -> shape, tied alias -> the name it shares storage with) of the model the
    config describes, built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    owners = {id(t): n for n, t in [*model.named_parameters(), *model.named_buffers()]}
    state = model.state_dict(keep_vars=True)  # the parameters themselves, so shared ones share an id
    aliases = {n: owners[id(t)] for n, t in state.items() if owners.get(id(t), n) != n}
    return {n: t.shape for n, t in state.items()}, aliases


def check_tensors(found: dict[str, tuple[int, ...]], config, where: str) -> list[str]:
    """Compare the tensors a source will write (name -> shape) with those of the model ``config``
    describes; raise naming what is missing, unexpected or misshapen. Returns the tied aliases
    present in ``found`` (not to be written)."""
    expected, aliases = expected_tensors(config)
    required = [n for n in expected if n not in aliases]
    missing = [n for n in required if n not in found]
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{n}: {tuple(found[n])} stored, {tuple(expected[n])} in the config"
             for n in required if n in found and tuple(found[n]) != tuple(expected[n])]
    if missing or unexpected or wrong:
        raise ValueError(f"{where} does not match its config ({config.model_type}): missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shapes {wrong[:5]}"
                         + (f" ({len(missing)} missing in all)" if len(missing) > 5 else ""))
    return sorted(set(found) & set(aliases))


def copy_tokenizer_files(source_dir: str | Path, output_dir: str | Path) -> list[str]:
    """Copy the tokenizer files found in ``source_dir``; the names copied."""
    src, copied = Path(source_dir), []
    for name in TOKENIZER_SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, Path(output_dir) / name)
            copied.append(name)
    return copied


def finish_hf_folder(output_dir: str | Path, config, tokenizer=None, sentencepiece_file: str | Path | None = None,
                     coh_info: CohJson | None = None) -> None:
    """Write the side files of a converted folder: config, tokenizer, the SentencePiece model when
    there is one (kept for users who go back to Meta's or EasyLM's code) and ``coh.json``. With
    ``coh_info`` the tokenizer gets the CoH chat template (unless it carries one already)."""
    out = Path(output_dir)
    config.save_pretrained(out)
    if tokenizer is not None:
        if coh_info is not None and not is_coh_template(tokenizer.chat_template):
            # CoH weights: any engine that applies the chat template then prompts them as trained
            tokenizer.chat_template = checkpoint_chat_template(tokenizer, coh_info)
        tokenizer.save_pretrained(out)
    if sentencepiece_file is not None and Path(sentencepiece_file).is_file():
        shutil.copyfile(sentencepiece_file, out / "tokenizer.model")
    if coh_info is not None:
        coh_info.write(out)
