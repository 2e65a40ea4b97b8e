"""Random masking of past tokens (forgetful causal masking, FCM), composed with record boundaries.

As in the original: for every record draw ``r ~ U(fcm_min_ratio, fcm_max_ratio)``; drop each
(query, key) attention entry of that record with probability ``r``; always keep the record's
first key (so no query is left with nothing to attend to); the same mask in every layer and
head; training only.

The mask is an index function, ``keep(b, h, q, kv)``, handed to transformers'
``create_causal_mask`` as an extra condition on top of its causal mask; it holds the record
boundaries itself (same record for q and kv), because transformers' own packed-sequence path
would hand it positions within records instead of absolute indices. With flex attention that
yields a compressed ``BlockMask`` (no dense L x L tensor); sdpa and eager get the dense boolean
mask they need anyway. Randomness is a counter-based hash of (seed, query, key), so the mask
needs no stored random tensor and is reproducible from the seed alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_HASH_BITS = 24


def _mix(x: torch.Tensor) -> torch.Tensor:
    # A 64-bit integer hash (splitmix-like); int64 multiplication wraps, which is what we want.
    x = x ^ (x >> 31)
    x = x * 0x7FB5D329728EA185
    x = x ^ (x >> 27)
    x = x * 0x81DADEF4BC2DD44D & 0x7FFFFFFFFFFFFFFF
    return x ^ (x >> 33)


def record_ratios(position_ids: torch.Tensor, min_ratio: float, max_ratio: float, generator: torch.Generator
                  ) -> torch.Tensor:
    """One drop ratio per record, drawn from U(min_ratio, max_ratio) in row-major order of the
    records, spread over its tokens: shape ``(R, W)`` like ``position_ids``."""
    starts = (position_ids == 0).reshape(-1)
    record_of_token = torch.cumsum(starts.long(), 0) - 1
    n_records = int(starts.sum())
    draws = min_ratio + (max_ratio - min_ratio) * torch.rand(n_records, generator=generator)
    return draws.to(position_ids.device)[record_of_token].reshape(position_ids.shape)


def fcm_mask_function(position_ids: torch.Tensor, ratios: torch.Tensor, seed: int) -> Callable:
    """``keep(b, h, q, kv)`` on absolute indices: q and kv in the same record, and the entry not
    dropped; a record's first key is never dropped."""
    threshold = (ratios * (1 << _HASH_BITS)).long()
    first_key = position_ids == 0
    record = torch.cumsum(first_key.long(), dim=1)
    seed_t = torch.tensor(seed & 0x7FFFFFFF, device=position_ids.device)
    width = position_ids.shape[1]

    def keep(batch_idx, head_idx, q_idx, kv_idx):
        u = _mix(_mix(seed_t * 0x1000003 + batch_idx * width + q_idx) + kv_idx) & ((1 << _HASH_BITS) - 1)
        same_record = record[batch_idx, q_idx] == record[batch_idx, kv_idx]
        return same_record & ((u >= threshold[batch_idx, q_idx]) | first_key[batch_idx, kv_idx])

    return keep


def fcm_attention_mask(model: torch.nn.Module, position_ids: torch.Tensor, min_ratio: float, max_ratio: float,
                       seed: int, generator: torch.Generator):
    """The attention mask for one packed micro-batch with FCM: causal, within records, randomly
    thinned. A 4D boolean tensor for sdpa/eager, a ``BlockMask`` for flex attention."""
    from transformers.masking_utils import create_causal_mask

    ratios = record_ratios(position_ids, min_ratio, max_ratio, generator)
    dtype = next(model.parameters()).dtype
    shape_only = torch.empty((position_ids.shape[0], position_ids.shape[1], 1), dtype=dtype, device=position_ids.device)
    return create_causal_mask(
        config=model.config,
        inputs_embeds=shape_only,
        attention_mask=None,
        cache=None,
        position_ids=None,  # boundaries are in the mask function (see the module docstring)
        and_mask_function=fcm_mask_function(position_ids, ratios, seed),
    )
