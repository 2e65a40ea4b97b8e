"""Tokenized records into padding-free packed micro-batches.

A micro-batch is one row holding several whole records back to back (the layout of
transformers' ``DataCollatorWithFlattening``): ``position_ids`` restart at 0 at every record,
from which transformers builds a block-diagonal causal mask on every attention backend (sdpa,
eager, flex, flash varlen), so no record attends to another. No padding, no token lost: records
are assigned whole to bins of ``capacity`` tokens by best-fit decreasing; a record longer than
the capacity is handled by the stated ``overlong`` policy, never silently.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

OVERLONG_POLICIES = ("error", "split", "skip")


def pack_documents(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign documents (by index) to bins of at most ``capacity`` tokens, best-fit decreasing.

    Deterministic: ties are broken by document index, and each bin lists its documents in index
    order. Every document must fit (``length <= capacity``); the result covers each index once.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} documents are longer than the capacity {capacity} (first: #{too_long[0]})")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # Free space of each bin, kept sorted with the bin number to find the tightest fit in O(log n).
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
    return [sorted(b) for b in bins]


@dataclass(frozen=True)
class PackingReport:
    """What packing did, reported at the start of training."""

    records: int
    tokens: int
    bins: int
    capacity: int
    overlong: int
    overlong_tokens_dropped: int
    policy: str
    max_length: int

    @property
    def fill_rate(self) -> float:
        return self.tokens / max(1, self.bins * self.capacity)

    def describe(self) -> str:
        text = (f"packed {self.records} records ({self.tokens} tokens) into {self.bins} micro-batches of at most "
                f"{self.capacity} tokens: fill rate {self.fill_rate:.1%}, no padding")
        if self.overlong:
            text += (f"; {self.overlong} records longer than max_length {self.max_length} tokens were "
                     + ("split" if self.policy == "split" else f"skipped ({self.overlong_tokens_dropped} tokens)"))
        return text


@dataclass
class FittedRecords:
    """Records after the overlong policy; ``origin[i]`` is the input record piece ``i`` came from."""

    input_ids: list[list[int]]
    loss_mask: list[list[int]]
    origin: list[int]
    overlong: int
    tokens_dropped: int


def fit_records(input_ids: list[list[int]], loss_mask: list[list[int]], capacity: int, policy: str) -> FittedRecords:
    """Apply the overlong policy: ``error`` raises, ``split`` cuts a long record into pieces of
    ``capacity`` tokens (each piece a record of its own), ``skip`` leaves it out (counted)."""
    if policy not in OVERLONG_POLICIES:
        raise ValueError(f"overlong policy must be one of {OVERLONG_POLICIES}, got {policy!r}")
    long_ids = [i for i, ids in enumerate(input_ids) if len(ids) > capacity]
    if long_ids and policy == "error":
        longest = max(len(input_ids[i]) for i in long_ids)
        raise ValueError(
            f"{len(long_ids)} of {len(input_ids)} records are longer than max_length {capacity} tokens (longest "
            f"{longest}). Raise max_length, or choose overlong: split (cut them into pieces) or skip (leave them out)."
        )
    out = FittedRecords([], [], [], len(long_ids), 0)
    for k, (ids, mask) in enumerate(zip(input_ids, loss_mask)):
        if len(ids) > capacity and policy == "skip":
            out.tokens_dropped += len(ids)
            continue
        for start in range(0, len(ids), capacity):
            out.input_ids.append(ids[start : start + capacity])
            out.loss_mask.append(mask[start : start + capacity])
            out.origin.append(k)
    return out


def collate_packed(records: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, torch.Tensor]:
    """Records ``(input_ids, loss_mask)`` into one padding-free row.

    Returns ``input_ids``, ``position_ids`` (restarting at 0 per record) of shape ``(1, T)``, and
    ``target_mask`` ``(1, T)``, True where token ``t`` is a training target: its ``loss_mask`` is
    1 and it is not the first token of its record (nothing before it in the same record). The
    logits that predict token ``t`` come from position ``t - 1``.
    """
    ids: list[int] = []
    pos: list[int] = []
    target: list[bool] = []
    for rec_ids, rec_mask in records:
        ids.extend(rec_ids)
        pos.extend(range(len(rec_ids)))
        target.append(False)
        target.extend(bool(m) for m in rec_mask[1:])
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        "target_mask": torch.tensor([target], dtype=torch.bool),
    }
