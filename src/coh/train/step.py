"""One optimizer step's forward and backward passes: each micro-batch's loss, scaled to its
share of the step loss (``TrainConfig``: normalization, the pretraining regulariser), with the
FCM masks of the step and gradients synchronised across processes on the last micro-batch."""

from __future__ import annotations

import math

import torch

from coh.train.config import TrainConfig
from coh.train.distributed import gradient_sync, is_sharded
from coh.train.loss import TargetLoss, target_loss
from coh.train.masks import fcm_attention_mask


def accumulate_gradients(model, work: list, cfg: TrainConfig, step: int, fb_targets: int, pt_targets: int,
                         accelerator) -> list:
    """Forward and backward every micro-batch of one optimizer step; gradients are synchronised
    across processes on the last one only. ``work``: ``(batch, stream, record indices)`` with stream
    ``feedback`` or ``pretrain``. ``fb_targets`` / ``pt_targets``: target tokens of the whole step
    on every process. Returns ``(TargetLoss, stream, record indices, batch)`` per micro-batch."""
    world = accelerator.num_processes
    out = []
    for k, (batch, stream, bin_) in enumerate(work):
        batch = {key: v.to(accelerator.device) for key, v in batch.items()}
        mask = None
        if cfg.fcm and stream == "feedback":
            # From (seed, step, the micro-batch's place in the whole step) alone: exact resume, and the
            # same masks whatever the split between processes and accumulation.
            micro = accelerator.process_index * cfg.gradient_accumulation_steps + k
            micro_seed = (cfg.seed * 1_000_003 + step) * 1009 + micro
            mask = fcm_attention_mask(accelerator.unwrap_model(model), batch["position_ids"], cfg.fcm_min_ratio,
                                      cfg.fcm_max_ratio, seed=micro_seed,
                                      generator=torch.Generator().manual_seed(micro_seed))
        with gradient_sync(model, accelerator, sync=k == len(work) - 1):
            result = step_loss(model, batch, cfg, mask)
            # DDP averages gradients over processes: scale by the process count to keep sums.
            loss = micro_batch_loss(result, stream, cfg, fb_targets, pt_targets, len(work) * world) * world
            accelerator.backward(loss)
        out.append((result, stream, bin_, batch))
    return out


def step_loss(model, batch: dict, cfg: TrainConfig, attention_mask: object = None) -> TargetLoss:
    """``target_loss`` as configured: bf16 autocast for ``dtype=bfloat16`` (fp32 weights and
    optimizer; under FSDP its mixed precision does this instead), the chunked projection."""
    device_type = batch["input_ids"].device.type
    autocast = cfg.dtype == "bfloat16" and not is_sharded(model)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        return target_loss(model, batch, attention_mask, chunk=cfg.loss_chunk)


def micro_batch_loss(result: TargetLoss, stream: str, cfg: TrainConfig, fb_targets: int, pt_targets: int,
                     n_micro: int) -> torch.Tensor:
    """This micro-batch's share of the step loss (see ``TrainConfig``: normalization, pretraining).
    ``n_micro``: micro-batches in the step, over all processes."""
    if cfg.normalization == "row":  # the original's: a mean per micro-batch, the step their mean
        mean = result.loss_sum / max(1, result.targets)
        return mean / n_micro * (cfg.pretrain_lambda if stream == "pretrain" and cfg.pretrain_mode == "step" else 1)
    if stream == "pretrain" and cfg.pretrain_mode == "step":
        return cfg.pretrain_lambda * result.loss_sum / max(1, pt_targets)
    if cfg.pretrain_mode == "ratio":
        return result.loss_sum / max(1, fb_targets + pt_targets)
    return result.loss_sum / max(1, fb_targets)


def pretrain_slots(step: int, cfg: TrainConfig) -> int:
    """Pretraining micro-batches for this step in ratio mode: the share ``pretrain_ratio`` of all
    micro-batches, spread evenly over the steps (Bresenham)."""
    per_step = cfg.gradient_accumulation_steps * cfg.pretrain_ratio / (1 - cfg.pretrain_ratio)
    return math.floor((step + 1) * per_step) - math.floor(step * per_step)
