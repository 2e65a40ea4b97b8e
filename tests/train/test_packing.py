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
