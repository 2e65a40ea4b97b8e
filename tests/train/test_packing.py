"""Packing: every record placed whole, once, within capacity; masks travel with the tokens."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coh.train.packing import PackingReport, collate_packed, fit_records, pack_documents


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), min_size=0, max_size=200), capacity=st.integers(64, 256))
def test_every_document_once_and_within_capacity(lengths, capacity):
    bins = pack_documents(lengths, capacity)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # best fit decreasing never needs more than 11/9 OPT + 1 bins; OPT >= total / capacity
    assert len(bins) <= 11 / 9 * (sum(lengths) / capacity) + 2
    assert pack_documents(lengths, capacity) == bins  # deterministic


def test_fill_is_high_on_varied_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(20, 900) for _ in range(2000)]
    bins = pack_documents(lengths, 2048)
    assert sum(lengths) / (len(bins) * 2048) > 0.97


def test_overlong_policies():
    ids = [[1] * 5, [2] * 12, [3] * 3]
    masks = [[0] * 5, [1] * 12, [1] * 3]
    with pytest.raises(ValueError, match=r"1 of 3 records are longer than max_length 8 tokens \(longest 12"):
        fit_records(ids, masks, 8, "error")
    split = fit_records(ids, masks, 8, "split")
    assert [len(x) for x in split.input_ids] == [5, 8, 4, 3] and split.overlong == 1 and split.tokens_dropped == 0
    assert split.loss_mask[1] == [1] * 8 and split.origin == [0, 1, 1, 2]
    skip = fit_records(ids, masks, 8, "skip")
    assert [len(x) for x in skip.input_ids] == [5, 3] and skip.overlong == 1 and skip.tokens_dropped == 12
    assert skip.origin == [0, 2]
    report = PackingReport(2, 8, 1, 8, 1, 12, "skip", 8)
    assert "fill rate 100.0%" in report.describe() and "skipped (12 tokens)" in report.describe()


def test_collate_restarts_positions_and_never_targets_a_record_start():
    batch = collate_packed([([5, 6, 7], [1, 1, 1]), ([8, 9], [0, 1])])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # token 5 and token 8 start records: nothing in their record predicts them
    assert batch["target_mask"].tolist() == [[False, True, True, False, True]]
    assert batch["target_mask"].dtype == torch.bool


def test_split_sequences_lays_records_in_sequences_of_the_longest_record():
    """Reference: each packed sequence holds whole records back to back, right-padded to the widest; the
    padding is no target, belongs to no record and continues the last record's positions."""
    records = [([1] * 6, [1] * 6), ([2] * 3, [0, 1, 1]), ([3] * 2, [1, 1]), ([4] * 4, [0, 0, 1, 1]), ([5], [1])]
    batch = collate_packed(records, split_sequences=True)
    assert batch["input_ids"].shape[1] == 6  # the longest record
    seen = []
    for ids, pos, target, index in zip(*(batch[k].tolist() for k in ("input_ids", "position_ids", "target_mask",
                                                                      "record_index"))):
        at = 0
        for i in dict.fromkeys(x for x in index if x >= 0):
            rec_ids, rec_mask = records[i]
            n = len(rec_ids)
            assert ids[at:at + n] == rec_ids and pos[at:at + n] == list(range(n)) and index[at:at + n] == [i] * n
            assert target[at:at + n] == [False] + [bool(m) for m in rec_mask[1:]]
            seen.append(i)
            at += n
        assert index[at:] == [-1] * (6 - at) and not any(target[at:])
        assert pos[at:] == list(range(pos[at - 1] + 1, pos[at - 1] + 1 + 6 - at))
    assert sorted(seen) == list(range(len(records)))
    assert batch["input_ids"].shape[0] == 3  # 16 tokens in sequences of 6: best-fit decreasing needs 3


def test_only_dense_attention_gets_split_sequences():
    """sdpa and eager compute every pair of a sequence: split sequences. Anything else (flex, flash of
    any version, hub kernels) keeps one sequence, where record boundaries are found."""
    from types import SimpleNamespace

    from coh.train.packing import dense_attention

    from .models import tiny_llama

    assert dense_attention(tiny_llama(50, "sdpa")) and dense_attention(tiny_llama(50, "eager"))
    assert not dense_attention(tiny_llama(50, "flex_attention"))
    for name in ("flash_attention_2", "flash_attention_4", "kernels-community/flash-attn", None):
        assert not dense_attention(SimpleNamespace(config=SimpleNamespace(_attn_implementation=name)))
