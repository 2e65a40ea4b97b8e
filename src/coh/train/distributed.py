"""Scale-out: DDP through accelerate, FSDP2 through torch's ``fully_shard``, sharded checkpoints
through ``torch.distributed.checkpoint`` (DCP).

``distributed=ddp`` (the default under ``torchrun`` / ``accelerate launch``) lets accelerate wrap
the model. ``distributed=fsdp`` shards every decoder layer and the root with FSDP2 here rather
than through accelerate's plugin, because accelerate applies FSDP only on accelerators and falls
back to DDP on CPUs: one code path, the one the CPU tests run, also runs on GPUs.

Under FSDP a checkpoint holds ``model_sharded/`` and ``optim_sharded/`` (DCP folders, each process
writing its own shards; model keys are the model's own state-dict names) beside ``config.json``,
the tokenizer and ``coh.json``; ``coh.convert.sharded.export_sharded_checkpoint`` turns one into
consolidated HF safetensors without gathering the model in one process.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

MODEL_SHARDS = "model_sharded"
OPTIM_SHARDS = "optim_sharded"


def decoder_layer_classes(model: torch.nn.Module) -> set[str]:
    """The classes FSDP wraps one by one: the model's own ``_no_split_modules`` (its decoder layers)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(model).__name__} names no decoder-layer class (_no_split_modules): "
                         "cannot shard it layer by layer; use distributed=ddp")
    return names


def shard_model(model: torch.nn.Module, device: torch.device, world: int, bf16: bool) -> torch.nn.Module:
    """FSDP2 in place: each decoder layer is one communication unit, the rest (embeddings, final
    norm, a tied or untied head) the root's. With ``bf16`` parameters are gathered and computed in
    bf16 while gradients are reduced and the optimizer steps in fp32 (FSDP's mixed precision)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    layers = decoder_layer_classes(model)
    model.to(device)
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gradient_sync(model: torch.nn.Module, accelerator, sync: bool):
    """A context in which backward reduces gradients across processes only when ``sync``: the
    last micro-batch of an optimizer step (gradient accumulation without extra communication)."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else accelerator.no_sync(model)


def clip_grad_norm(model: torch.nn.Module, accelerator, max_norm: float) -> float:
    """Global gradient norm over every process's shard, clipped to ``max_norm``; returns the norm
    before clipping."""
    if is_sharded(model):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return float(accelerator.clip_grad_norm_(model.parameters(), max_norm))


def save_sharded(folder: Path, model: torch.nn.Module, optimizer) -> None:
    """Every process writes its shards of the model and the optimizer state (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    dcp.save(get_model_state_dict(model), checkpoint_id=str(folder / MODEL_SHARDS))
    dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=str(folder / OPTIM_SHARDS))


def load_sharded(folder: Path, model: torch.nn.Module, optimizer) -> None:
    """Read a checkpoint written by ``save_sharded`` into an already sharded model and its
    optimizer, each process reading only what its shards need (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model_state = get_model_state_dict(model)
    dcp.load(model_state, checkpoint_id=str(folder / MODEL_SHARDS))
    set_model_state_dict(model, model_state)
    optim_state = get_optimizer_state_dict(model, optimizer)
    dcp.load(optim_state, checkpoint_id=str(folder / OPTIM_SHARDS))
    set_optimizer_state_dict(model, optimizer, optim_state)
