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
    """Sum of the negative log-likelihoods of the targets (with gradient), their count, how many
    the model's argmax got right (token accuracy), and the summed NLL of each record in packing
    order (detached, float64; records without targets get 0)."""

    loss_sum: torch.Tensor
    targets: int
    correct: int
    per_record: torch.Tensor


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
    record_of_token = torch.cumsum((batch["position_ids"][0] == 0).long(), 0) - 1
    per_record = torch.zeros(int(record_of_token[-1]) + 1, dtype=torch.float64)
    targets = batch["input_ids"][target_mask]
    if targets.numel() == 0:
        # A real forward with a zero loss: every process of a DDP / FSDP step runs the same
        # collectives, and every parameter takes part in the graph.
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], logits_to_keep=1, use_cache=False)
        return TargetLoss(out.logits.float().sum() * 0.0, 0, 0, per_record)
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=attention_mask,
        logits_to_keep=predicting_positions(target_mask),
        use_cache=False,
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    nll = F.cross_entropy(logits, targets, reduction="none")
    correct = int((logits.detach().argmax(-1) == targets).sum())
    per_record.index_add_(0, record_of_token[target_mask[0]].cpu(), nll.detach().double().cpu())
    return TargetLoss(nll.sum(), int(targets.numel()), correct, per_record)
