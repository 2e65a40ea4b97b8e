"""A peft LoRA adapter merged into its base model (peft's ``merge_and_unload``), saved as an HF
folder with the tokenizer and ``coh.json`` of the adapter folder when it has them (else the base's)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from coh.cohjson import copy_coh_json


def adapter_base(adapter_dir: str | Path, base: str | None) -> str:
    """The base model: ``base`` if given, else ``base_model_name_or_path`` of ``adapter_config.json``."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing; a peft adapter folder holds adapter_config.json and "
                                "adapter_model.safetensors")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters can be merged")
    if base:
        return base
    found = cfg.get("base_model_name_or_path")
    if not found:
        raise ValueError(f"{cfg_path}: no base_model_name_or_path; give --base")
    return resolve_base(found, Path(adapter_dir), cfg_path)


def resolve_base(recorded: str, adapter_dir: Path, cfg_path: Path) -> str:
    """``base_model_name_or_path`` as a folder that exists: peft records the path the base was
    loaded from, relative to the directory training ran in. Tried as given (relative to the current
    directory), then relative to the adapter folder and each folder above it; a hub id when none
    exists and it has a hub id's form (``name`` or ``org/name``)."""
    p = Path(recorded)
    if p.is_absolute():
        return recorded
    candidates = [Path.cwd(), adapter_dir.resolve(), *adapter_dir.resolve().parents]
    for root in candidates:
        if (root / p / "config.json").is_file():
            return str(root / p)
    if recorded.startswith(".") or recorded.count("/") > 1 or "\\" in recorded:
        raise FileNotFoundError(f"{cfg_path}: base_model_name_or_path {recorded!r} is a relative path found from none "
                                f"of {', '.join(str(c) for c in candidates[:3])} (or the folders above the adapter); "
                                "give --base")
    return recorded


def load_unmerged(adapter_dir: str | Path, base: str | None = None, dtype: torch.dtype | None = None):
    """The base model with the adapter attached (not merged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = adapter_base(adapter_dir, base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype or "auto")
    except OSError as e:  # not a folder here, and not loadable as a hub id (offline, or no such repository)
        given = "--base" if base else f"{Path(adapter_dir) / 'adapter_config.json'}'s base_model_name_or_path"
        raise FileNotFoundError(f"base model {base_path!r} ({given}): not a model folder here (looked from "
                                f"{Path.cwd()} and above {Path(adapter_dir).resolve()}), and not loadable as a "
                                f"hub id ({str(e).splitlines()[0]}); give --base PATH") from e
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).eval(), base_path
    except (RuntimeError, KeyError, ValueError) as e:  # shapes or target modules that do not fit this base
        raise ValueError(f"{adapter_dir}: the adapter does not fit the base {base_path}: {e}") from e


def merge_lora(adapter_dir: str | Path, output_dir: str | Path, base: str | None = None, dtype: str | None = None,
               max_shard_size: str | int = "5GB") -> Path:
    """Merge the adapter into its base and save the result. Returns ``output_dir``."""
    from transformers import AutoTokenizer

    from coh.convert.safetensors_io import copy_tokenizer_files, prepare_output_dir, resolve_dtype

    peft_model, base_path = load_unmerged(adapter_dir, base, resolve_dtype(dtype))
    out = prepare_output_dir(output_dir)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out, max_shard_size=max_shard_size)
    copied = copy_tokenizer_files(adapter_dir, out) or (Path(base_path).is_dir() and copy_tokenizer_files(base_path, out))
    if not copied:  # a hub id
        AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    if not copy_coh_json(adapter_dir, out):
        copy_coh_json(base_path, out)
    return out
