"""The CoH loss against a naive reference: each record alone, full logits, masked NLL summed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from coh.train.loss import target_loss
from coh.train.packing import collate_packed

from .models import tiny_gptj, tiny_llama


def reference_loss(model, records) -> tuple[float, int]:
    """Obviously correct: run every record on its own and add -log p(token) where its mask is 1."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in records:
            logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            for t in range(1, len(ids)):
                if mask[t]:
                    total -= logp[t - 1, ids[t]].item()
                    count += 1
    return total, count


def random_records(vocab: int, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(n):
        length = int(torch.randint(4, 40, (1,), generator=g))
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 1, (1,), generator=g))
        records.append((ids, [0] * prompt + [1] * (length - prompt)))
    return records


@pytest.mark.parametrize("make", [tiny_llama, tiny_gptj])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("split_sequences", [False, True])
def test_packed_loss_equals_unpacked_reference(make, attn, split_sequences):
    model = make(97, attn)
    records = random_records(97, 6, seed=1)
    batch = collate_packed(records, split_sequences)
    assert (batch["input_ids"].shape[0] > 1) == split_sequences  # several sequences, with padding
    with torch.no_grad():
        got = target_loss(model, batch)
    want, count = reference_loss(model, records)
    assert got.targets == count
    assert got.loss_sum.item() == pytest.approx(want, rel=1e-5)
    # and record by record
    per_record = [reference_loss(model, [r])[0] for r in records]
    assert got.per_record.tolist() == pytest.approx(per_record, rel=1e-5)


def test_no_targets_gives_zero_with_a_graph():
    model = tiny_llama(50)
    got = target_loss(model, collate_packed([([1, 2, 3], [0, 0, 0])]))
    assert got.targets == 0 and got.loss_sum.item() == 0.0 and got.loss_sum.requires_grad


@pytest.mark.parametrize("split_sequences", [False, True])
def test_fcm_mask_composes_with_packing(split_sequences):
    from coh.train.masks import fcm_attention_mask

    model = tiny_llama(97)
    batch = collate_packed(random_records(97, 5, seed=2), split_sequences)
    with torch.no_grad():
        plain = target_loss(model, batch).loss_sum
        g = torch.Generator().manual_seed(0)
        zero = fcm_attention_mask(model, batch["position_ids"], 0.0, 0.0, seed=0, generator=g)
        assert target_loss(model, batch, zero).loss_sum.item() == pytest.approx(plain.item(), rel=1e-6)
        # A random tiny model barely uses attention: a high ratio makes the change clear (>= 3e-3).
        some = fcm_attention_mask(model, batch["position_ids"], 0.9, 0.9, seed=0, generator=g)
        assert target_loss(model, batch, some).loss_sum.item() != pytest.approx(plain.item(), rel=1e-3)


def test_flex_attention_block_mask_matches_the_dense_mask():
    """Under flex attention the FCM mask is a compressed BlockMask (no dense L x L tensor) and gives
    the same loss as sdpa with the dense mask. (Forward only: torch has no CPU backward for flex.)"""
    from torch.nn.attention.flex_attention import BlockMask

    from coh.train.masks import fcm_attention_mask

    batch = collate_packed(random_records(97, 5, seed=2))
    losses = []
    for attn in ("sdpa", "flex_attention"):
        model = tiny_llama(97, attn)
        mask = fcm_attention_mask(model, batch["position_ids"], 0.2, 0.2, seed=3,
                                  generator=torch.Generator().manual_seed(1))
        assert isinstance(mask, BlockMask) == (attn == "flex_attention")
        with torch.no_grad():
            losses.append(target_loss(model, batch, mask).loss_sum.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gptj])
@pytest.mark.parametrize(("chunk", "split_sequences"), [(1, False), (7, False), (10**6, False), (7, True)])
def test_chunked_loss_equals_whole_loss_with_bounded_logits(make, chunk, split_sequences):
    """Chunked vocabulary projection: the same loss, per-record losses, hits and gradients as the
    whole projection, while the output layer never sees more than ``chunk`` positions at once."""
    model = make(300).train()
    batch = collate_packed(random_records(300, 6, seed=3), split_sequences)
    whole = target_loss(model, batch)
    whole.loss_sum.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    rows_seen = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, args, out: rows_seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    chunked = target_loss(model, batch, chunk=chunk)
    chunked.loss_sum.backward()
    hook.remove()
    assert model.get_output_embeddings() is head  # the swap is undone
    assert chunked.loss_sum.item() == pytest.approx(whole.loss_sum.item(), rel=1e-6)
    assert torch.allclose(chunked.per_record, whole.per_record, atol=1e-4)
    assert (chunked.targets, chunked.correct) == (whole.targets, whole.correct)
    assert max(rows_seen) <= chunk and sum(rows_seen) >= whole.targets
    for p, g in zip(model.parameters(), grads):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_models_that_transform_logits_are_not_chunked():
    from coh.train.loss import chunkable

    model = tiny_llama(50)
    assert chunkable(model)
    model.config.final_logit_softcapping = 30.0
    assert not chunkable(model)
