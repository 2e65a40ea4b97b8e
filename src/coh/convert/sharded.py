"""Sharded training checkpoints (``torch.distributed.checkpoint``) into consolidated HF safetensors.

Input: ``CKPT/model_sharded/`` (a DCP folder whose keys are the model's HF state-dict names, as
FSDP training writes it with ``FileSystemWriter``) beside ``CKPT/config.json``, the tokenizer
files and ``coh.json``. The DCP metadata gives every tensor's name, shape and dtype up front, so
the tensors are planned into shard-sized groups and each group is loaded by ``dcp.load`` (which
needs no process group in one process), written, and dropped before the next: at most one
shard's worth of tensors is in memory. DCP's own HF consolidation helpers
(``_consolidate_hf_safetensors``) only read checkpoints written by ``HuggingFaceStorageWriter``,
not ``.distcp`` files, hence this loop.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from coh.cohjson import copy_coh_json

SHARDED_DIR = "model_sharded"


def _reader(dcp_dir: Path):
    from torch.distributed.checkpoint import FileSystemReader

    if not (dcp_dir / ".metadata").is_file():
        raise FileNotFoundError(f"{dcp_dir}: no .metadata; expected a torch.distributed.checkpoint folder "
                                f"(CHECKPOINT/{SHARDED_DIR}/ written by FSDP training)")
    reader = FileSystemReader(str(dcp_dir))
    metadata = reader.read_metadata()
    files = sorted({info.relative_path for info in (metadata.storage_data or {}).values()})
    missing = [f for f in files if not (dcp_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{dcp_dir}: missing shard file(s) {', '.join(missing)} "
                                f"({len(files) - len(missing)} of {len(files)} present)")
    return reader, metadata


def plan_groups(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Consecutive names grouped so that each group's bytes stay within ``max_bytes`` (a larger
    tensor gets a group of its own): the same rule ``ShardWriter`` cuts shards by."""
    groups: list[list[str]] = []
    current, used = [], 0
    for name, size in sizes:
        if current and used + size > max_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return groups + ([current] if current else [])


def export_sharded_checkpoint(checkpoint_dir: str | Path, output_dir: str | Path, max_shard_size: str | int = "5GB",
                              *, dtype: str | None = None, progress: bool | None = None) -> Path:
    """Write ``checkpoint_dir`` (``model_sharded/`` + ``config.json`` + tokenizer + ``coh.json``) as
    a consolidated HF folder in ``output_dir`` (which may be ``checkpoint_dir`` itself): safetensors
    shards of at most ``max_shard_size`` with their index, config, tokenizer files and ``coh.json``. Tied weights (``lm_head.weight``
    when the config ties it) are not written. Never holds more than one shard's tensors.
    Returns ``output_dir``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from tqdm.auto import tqdm
    from transformers import AutoConfig

    from coh.convert.safetensors_io import (
        ShardWriter,
        check_tensors,
        copy_tokenizer_files,
        expected_tensors,
        parse_size,
        prepare_output_dir,
        resolve_dtype,
    )

    ckpt = Path(checkpoint_dir)
    if not (ckpt / "config.json").is_file():
        raise FileNotFoundError(f"{ckpt / 'config.json'}: missing; a sharded checkpoint folder holds config.json "
                                f"beside {SHARDED_DIR}/")
    reader, metadata = _reader(ckpt / SHARDED_DIR)
    stored = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    config = AutoConfig.from_pretrained(str(ckpt))
    tied = check_tensors({n: tuple(m.size) for n, m in stored.items()}, config, f"{ckpt / SHARDED_DIR}")
    expected, aliases = expected_tensors(config)
    required = [n for n in expected if n not in aliases]
    target = resolve_dtype(dtype)

    def nbytes(name: str) -> int:
        meta = stored[name]
        written = target if target is not None and meta.properties.dtype.is_floating_point else meta.properties.dtype
        return meta.size.numel() * torch.empty((), dtype=written).element_size()

    max_bytes = parse_size(max_shard_size)
    in_place = Path(output_dir).resolve() == ckpt.resolve()  # HF files beside model_sharded/
    if in_place and any(ckpt.glob("*.safetensors")):
        raise ValueError(f"{ckpt}: already holds safetensors files; export into an empty folder")
    out = ckpt if in_place else prepare_output_dir(output_dir)
    writer = ShardWriter(out, max_bytes, target)
    groups = plan_groups([(n, nbytes(n)) for n in required], max_bytes)
    bar = tqdm(total=sum(nbytes(n) for n in required), desc="sharded -> hf", unit="B", unit_scale=True,
               disable=None if progress is None else not progress)
    for group in groups:
        tensors = {n: torch.empty(stored[n].size, dtype=stored[n].properties.dtype) for n in group}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.load(tensors, storage_reader=reader, no_dist=True)
        for n in group:
            writer.add(n, tensors[n])
            bar.update(nbytes(n))
        writer.flush()  # the group is one shard: write it and drop it before loading the next
        del tensors
    bar.close()
    writer.close()
    config.dtype = target or stored[required[0]].properties.dtype
    config.save_pretrained(out)
    if not in_place:
        copy_tokenizer_files(ckpt, out)
        copy_coh_json(ckpt, out)
    if tied:
        print(f"not written: {', '.join(tied)} (tied to {', '.join(aliases[n] for n in tied)})")
    return out


def load_sharded_into_model(checkpoint_dir: str | Path):
    """The whole sharded checkpoint in a float32 model (for ``--check`` only: holds everything)."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM

    from coh.convert.safetensors_io import expected_tensors

    ckpt = Path(checkpoint_dir)
    reader, _ = _reader(ckpt / SHARDED_DIR)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(ckpt)), dtype=torch.float32)
    _, aliases = expected_tensors(model.config)
    state = {n: t for n, t in model.state_dict().items() if n not in aliases}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.load(state, storage_reader=reader, no_dist=True)
    model.load_state_dict(state, strict=False)
    return model.eval()
