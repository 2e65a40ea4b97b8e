"""Sequence likelihoods through the training loss (``coh.train.loss.target_loss`` on packed
sequences), so evaluation scores exactly what training optimises."""

from __future__ import annotations

from collections.abc import Sequence

from coh.data.records import FeedbackRecord
from coh.models import LoadedModel


def sequence_nll(lm: LoadedModel, records: Sequence[FeedbackRecord], batch_tokens: int = 8192,
                 progress: bool = False) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood of each record's loss tokens, and their count, in order.
    Records are packed into micro-batches of at most ``batch_tokens`` tokens (a longer record
    gets a sequence of its own) and scored by the training loss."""
    import torch
    from tqdm import tqdm

    from coh.data.tokenize import tokenize_many
    from coh.train.loss import target_loss
    from coh.train.packing import collate_packed, dense_attention, pack_documents

    tokenized = tokenize_many(records, lm.record_tokenizer)
    lengths = [len(t.input_ids) for t in tokenized]
    bins = pack_documents(lengths, max([batch_tokens, *lengths])) if lm.packs else [[i] for i in range(len(lengths))]
    nll = [0.0] * len(records)
    split_rows = dense_attention(lm.model)
    with torch.no_grad():
        for b in tqdm(bins, desc="likelihoods", unit=" sequences", disable=not progress):
            batch = collate_packed([(tokenized[i].input_ids, tokenized[i].loss_mask) for i in b], split_rows)
            result = target_loss(lm.model, {k: v.to(lm.device) for k, v in batch.items()})
            for i, value in zip(b, result.per_record.tolist()):
                nll[i] = value
    return nll, [sum(t.loss_mask[1:]) for t in tokenized]
