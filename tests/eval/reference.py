"""Small, obviously correct references for the eval tests."""

from __future__ import annotations

import torch


def naive_logprob(model, ids: list[int], start: int) -> float:
    """log p(ids[start:] | ids[:start]): one unpadded sequence, no packing."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))
