"""Random past-token masking: the dropped share matches the ratio, first keys stay, boundaries hold."""

from __future__ import annotations

import torch

from coh.train.masks import fcm_attention_mask
from coh.train.packing import collate_packed

from .models import tiny_llama


def allowed_entries(lengths: list[int]) -> torch.Tensor:
    """Causal attention within each record: the mask FCM may only thin, never widen."""
    total = sum(lengths)
    out = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for n in lengths:
        out[start : start + n, start : start + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
        start += n
    return out


def make_mask(lengths, lo, hi, seed=0, gen_seed=0):
    model = tiny_llama(64)
    batch = collate_packed([(list(range(n)), [1] * n) for n in lengths])
    g = torch.Generator().manual_seed(gen_seed)
    return fcm_attention_mask(model, batch["position_ids"], lo, hi, seed, g)[0, 0]


def test_dropped_fraction_matches_the_ratio_and_first_keys_stay():
    lengths = [300, 200, 250]
    for ratio in (0.05, 0.15, 0.5):
        mask = make_mask(lengths, ratio, ratio)
        allowed = allowed_entries(lengths)
        assert not (mask & ~allowed).any()  # never attends across records or to the future
        firsts = [0, 300, 500]
        droppable = allowed.clone()
        droppable[:, firsts] = False
        dropped = 1 - (mask & droppable).sum().item() / droppable.sum().item()
        assert abs(dropped - ratio) < 0.01, (ratio, dropped)
        for f, n in zip(firsts, lengths):
            assert mask[f : f + n, f].all()  # every query keeps its record's first key


def test_ratio_drawn_per_record_in_range():
    lengths = [400] * 6
    mask = make_mask(lengths, 0.0, 0.3, gen_seed=3)
    allowed = allowed_entries(lengths)
    rates = []
    for k in range(6):
        s = 400 * k
        block, ok = mask[s : s + 400, s + 1 : s + 400], allowed[s : s + 400, s + 1 : s + 400]
        rates.append(1 - (block & ok).sum().item() / ok.sum().item())
    assert all(-0.01 < r < 0.31 for r in rates) and max(rates) - min(rates) > 0.05  # drawn, not constant


def test_reproducible_from_seeds():
    a = make_mask([100, 50], 0.1, 0.2, seed=5, gen_seed=1)
    assert torch.equal(a, make_mask([100, 50], 0.1, 0.2, seed=5, gen_seed=1))
    assert not torch.equal(a, make_mask([100, 50], 0.1, 0.2, seed=6, gen_seed=1))


def test_zero_ratio_is_the_plain_record_mask():
    lengths = [30, 20]
    assert torch.equal(make_mask(lengths, 0.0, 0.0), allowed_entries(lengths))


def test_split_sequences_layout_masks_each_sequence_on_its_own():
    """Several packed sequences (split_sequences): FCM stays inside each record of each sequence,
    keeps first keys, and draws different patterns in different sequences."""
    records = [(list(range(n)), [1] * n) for n in (120, 120, 80, 40)]
    batch = collate_packed(records, split_sequences=True)
    g = torch.Generator().manual_seed(0)
    mask = fcm_attention_mask(tiny_llama(64), batch["position_ids"], 0.2, 0.2, 7, g)[:, 0]
    assert mask.shape[0] == batch["input_ids"].shape[0] == 3  # [120], [120], [80, 40]
    for r in range(3):
        index = batch["record_index"][r]
        lengths = [int((index == i).sum()) for i in dict.fromkeys(index[index >= 0].tolist())]
        real = sum(lengths)
        allowed = allowed_entries(lengths)
        assert not (mask[r, :real, :real] & ~allowed).any()
        starts = [sum(lengths[:k]) for k in range(len(lengths))]
        for s0, n in zip(starts, lengths):
            assert mask[r, s0:s0 + n, s0].all()
        assert not mask[r, :real, real:].any()  # no real token sees the padding
        droppable = allowed.clone()
        droppable[:, starts] = False
        dropped = 1 - (mask[r, :real, :real] & droppable).sum().item() / droppable.sum().item()
        assert abs(dropped - 0.2) < 0.03, (r, dropped)
    assert not torch.equal(mask[0, :120, :120], mask[1, :120, :120])
