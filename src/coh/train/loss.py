"""The Chain-of-Hindsight objective: next-token loss on output tokens only.

``target_loss`` returns the *sum* of the token losses of a packed micro-batch and the number
of target tokens; the trainer divides by the target tokens of the whole optimizer step (all
micro-batches of the step, all processes), so the update does not depend on gradient
accumulation or the number of GPUs. Logits are computed only at the positions that predict a
target (transformers' ``logits_to_keep`` with a boolean mask): prompts and feedback phrases cost
no vocabulary projection. Softmax math is fp32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TargetLoss:
    """Sum of the negative log-likelihoods of the targets, their count and how many the model's
    argmax got right (token accuracy)."""

    loss_sum: torch.Tensor
    targets: int
    correct: int


def predicting_positions(target_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict a target: ``target_mask`` shifted left by one."""
    keep = torch.zeros_like(target_mask)
    keep[:, :-1] = target_mask[:, 1:]
    return keep


def target_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], attention_mask: object = None
                ) -> TargetLoss:
    """Loss of one packed micro-batch (see ``coh.train.packing.collate_packed``).

    ``attention_mask``: None (record boundaries come from ``position_ids``) or a prepared 4D mask
    / flex ``BlockMask`` (random past-token masking composed with the boundaries).
    """
    target_mask = batch["target_mask"]
    targets = batch["input_ids"][target_mask]
    if targets.numel() == 0:
        zero = next(model.parameters()).sum() * 0.0  # keeps the graph for every process (FSDP/DDP)
        return TargetLoss(zero.float(), 0, 0)
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=attention_mask,
        logits_to_keep=predicting_positions(target_mask),
        use_cache=False,
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    correct = int((logits.argmax(-1) == targets).sum())
    return TargetLoss(loss_sum, int(targets.numel()), correct)
