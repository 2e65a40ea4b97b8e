"""Tokenized records into packed micro-batches, no record split or dropped.

Records are assigned whole to micro-batches of ``capacity`` tokens by best-fit decreasing; a
record longer than ``max_length`` is handled by the stated ``overlong`` policy, never silently.
Within a micro-batch, records lie back to back (the layout of transformers'
``DataCollatorWithFlattening``): ``position_ids`` restart at 0 at every record, from which
transformers builds a block-diagonal causal mask on every attention backend, so no record attends
to another.

Two layouts of a micro-batch (``collate_packed``): one padding-free packed sequence, for attention
that skips the pairs across records (flex attention's block mask, flash varlen); or, for attention
that computes every (query, key) pair of a sequence (sdpa, eager: T^2 for one sequence of T
tokens), several sequences as long as the longest record, right-padded, which costs S x W^2. On 2
CPU cores ``python bench/train_throughput.py --rows 40`` trains 2.3x faster that way
(docs/benchmarks.md; ``--rows`` counts hh-rlhf rows there).
Padding can reach nearly half of a micro-batch when one record is a little over half the longest
(``perf/padding`` logs the share), so memory follows ``micro_batch_tokens`` up to that factor.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from coh.train.config import OVERLONG_POLICIES


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
                f"{self.capacity} tokens: fill rate {self.fill_rate:.1%}, no record split or dropped")
        if self.overlong:
            text += (f"; {self.overlong} records longer than max_length {self.max_length} tokens were "
                     + ("split" if self.policy == "split" else f"skipped ({self.overlong_tokens_dropped} tokens)"))
        return text


@dataclass
class FittedLengths:
    """The overlong policy applied to record lengths: piece ``i`` is tokens ``start[i] :
    start[i] + length[i]`` of input record ``origin[i]`` (int64 arrays)."""

    origin: np.ndarray
    start: np.ndarray
    length: np.ndarray
    overlong: int
    tokens_dropped: int


def fit_lengths(lengths: Sequence[int] | np.ndarray, capacity: int, policy: str) -> FittedLengths:
    """Apply the overlong policy to records of these lengths: ``error`` raises, ``split`` cuts a
    long record into pieces of ``capacity`` tokens (each piece a record of its own), ``skip``
    leaves it out (counted). Lengths only: the tokens are cut where they lie."""
    if policy not in OVERLONG_POLICIES:
        raise ValueError(f"overlong policy must be one of {OVERLONG_POLICIES}, got {policy!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    long = lengths > capacity
    n_long = int(long.sum())
    if n_long and policy == "error":
        raise ValueError(
            f"{n_long} of {len(lengths)} records are longer than max_length {capacity} tokens (longest "
            f"{int(lengths[long].max())}). Raise max_length, or choose overlong: split (cut them into pieces) or skip "
            "(leave them out)."
        )
    pieces = -(-lengths // capacity)  # an empty record has none
    if policy == "skip":
        pieces[long] = 0
    origin = np.repeat(np.arange(len(lengths), dtype=np.int64), pieces)
    first_piece = np.cumsum(pieces) - pieces
    start = (np.arange(len(origin), dtype=np.int64) - np.repeat(first_piece, pieces)) * capacity
    length = np.minimum(capacity, lengths[origin] - start)
    return FittedLengths(origin, start, length, n_long, int(lengths[long].sum()) if policy == "skip" else 0)


@dataclass
class FittedRecords:
    """Records after the overlong policy; ``origin[i]`` is the input record piece ``i`` came from."""

    input_ids: list[list[int]]
    loss_mask: list[list[int]]
    origin: list[int]
    overlong: int
    tokens_dropped: int


def fit_records(input_ids: list[list[int]], loss_mask: list[list[int]], capacity: int, policy: str) -> FittedRecords:
    """``fit_lengths`` on records held as lists: the pieces themselves."""
    fitted = fit_lengths([len(ids) for ids in input_ids], capacity, policy)
    pieces = list(zip(fitted.origin.tolist(), fitted.start.tolist(), fitted.length.tolist()))
    return FittedRecords([input_ids[k][s : s + n] for k, s, n in pieces], [loss_mask[k][s : s + n] for k, s, n in pieces],
                         fitted.origin.tolist(), fitted.overlong, fitted.tokens_dropped)


def dense_attention(model: torch.nn.Module) -> bool:
    """Whether the model's attention computes every (query, key) pair of a sequence (sdpa, eager),
    so that records are better laid out in several short packed sequences than in one long one.
    Any other backend gets one sequence: flash kernels find record boundaries only in a single one."""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", None) in DENSE_ATTENTION


DENSE_ATTENTION = ("sdpa", "eager")


def collate_packed(records: Sequence[tuple[Sequence[int], Sequence[int]]], split_sequences: bool = False
                   ) -> dict[str, torch.Tensor]:
    """Records ``(input_ids, loss_mask)`` into one micro-batch of shape ``(S, W)``: S packed
    sequences of W tokens.

    ``split_sequences`` False: one padding-free sequence (S = 1). True: the records packed
    (best-fit decreasing) into sequences of at most W = the longest record's length, right-padded;
    padding continues the last record's positions (no extra document) and, coming after every real
    token of its sequence, is never attended to under the causal mask.

    Returns ``input_ids`` and ``position_ids`` (restarting at 0 per record); ``target_mask``, True
    where token ``t`` is a training target: its ``loss_mask`` is 1 and it is not the first token of
    its record (the logits that predict token ``t`` come from position ``t - 1``); and
    ``record_index``, the index in ``records`` of each token's record, -1 on padding.
    """
    if split_sequences:
        sequences = pack_documents([len(ids) for ids, _ in records], max(len(ids) for ids, _ in records))
    else:
        sequences = [list(range(len(records)))]
    width = max(sum(len(records[i][0]) for i in seq) for seq in sequences)
    all_ids, all_pos, all_targets, all_index = [], [], [], []  # one list per sequence
    for seq in sequences:
        ids: list[int] = []
        pos: list[int] = []
        target: list[bool] = []
        index: list[int] = []
        for i in seq:
            rec_ids, rec_mask = records[i]
            ids.extend(rec_ids)
            pos.extend(range(len(rec_ids)))
            target.append(False)
            target.extend(bool(m) for m in rec_mask[1:])
            index.extend([i] * len(rec_ids))
        pad = width - len(ids)
        ids.extend([0] * pad)
        pos.extend(range(pos[-1] + 1, pos[-1] + 1 + pad))
        target.extend([False] * pad)
        index.extend([-1] * pad)
        all_ids.append(ids)
        all_pos.append(pos)
        all_targets.append(target)
        all_index.append(index)
    return {
        "input_ids": torch.tensor(all_ids, dtype=torch.long),
        "position_ids": torch.tensor(all_pos, dtype=torch.long),
        "target_mask": torch.tensor(all_targets, dtype=torch.bool),
        "record_index": torch.tensor(all_index, dtype=torch.long),
    }
