"""Evaluation during training, on held-out records packed once: feedback loss and token accuracy,
per-source losses, the pretraining loss, and preference accuracy (``coh.eval.preference``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from coh.data.records import FeedbackRecord
from coh.data.tokenize import RecordTokenizer
from coh.eval.preference import pairs_from_records, preference_accuracy
from coh.train.config import TrainConfig
from coh.train.data import TokenizedSet, for_mode, read_training_records, tokenize_set
from coh.train.packing import collate_packed, dense_attention, pack_documents
from coh.train.preflight import TrainingError
from coh.train.step import step_loss


def load_eval_set(cfg: TrainConfig, path: Path, rtok: RecordTokenizer) -> EvalSet:
    """The held-out records of ``path`` for the training mode (at most ``eval_records``) and the
    preference pairs of the file's first ``eval_records`` records, tokenized and packed. Records too
    long are split, so nothing errors mid-run."""
    held_out = read_training_records(path)
    records = for_mode(held_out, cfg.mode)[: cfg.eval_records or None]
    if not records:
        raise TrainingError(f"{path}: no eval records for mode '{cfg.mode}'")
    data, _, _ = tokenize_set(records, rtok, cfg.max_length, "split")
    pairs = pairs_from_records(held_out[: cfg.eval_records or None])
    return prepare_eval(data, pairs, rtok, cfg.micro_batch_tokens)


def _share(bins: list[list[int]], accelerator) -> list[list[int]]:
    """This process's bins, padded with empty ones so that every process runs as many forwards
    (FSDP gathers parameters in each)."""
    world = accelerator.num_processes
    mine = bins[accelerator.process_index :: world]
    return mine + [[]] * (-(-len(bins) // world) - len(mine))


@dataclass
class EvalSet:
    """Held-out records and preference pairs, tokenized and packed once for every evaluation.
    ``pairs`` holds (preferred, dispreferred) records interleaved: record 2k is preferred over 2k+1."""

    data: TokenizedSet
    bins: list[list[int]]
    pairs: TokenizedSet | None
    pair_bins: list[list[int]]


def prepare_eval(data: TokenizedSet, pairs: list[tuple[FeedbackRecord, FeedbackRecord]], rtok: RecordTokenizer,
                 capacity: int) -> EvalSet:
    bins = pack_documents([len(x) for x in data.input_ids], capacity)
    if not pairs:
        return EvalSet(data, bins, None, [])
    pair_data, _, _ = tokenize_set([rec for pair in pairs for rec in pair], rtok, 10**9, "error")
    lengths = [len(x) for x in pair_data.input_ids]
    return EvalSet(data, bins, pair_data, pack_documents(lengths, max(capacity, *lengths)))


def evaluate(model, ev: EvalSet, cfg: TrainConfig, accelerator, pretrain_eval=None, pretrain_batches: int = 4
             ) -> dict[str, float]:
    """Held-out feedback loss and token accuracy (no FCM, token-weighted: packing does not change
    it), per-source losses, pretraining loss, and preference accuracy: how often the preferred
    output gets a higher likelihood than the dispreferred one, both after the positive phrase."""
    model.eval()
    device = accelerator.device
    split_sequences = dense_attention(model)
    totals: dict[str, float] = defaultdict(float)
    pref: dict[str, float] = {}
    data = ev.data
    with torch.no_grad():
        for b in _share(ev.bins, accelerator):
            pieces = [(data.input_ids[i], data.loss_mask[i]) for i in b] or [([0], [0])]
            batch = {k: v.to(device) for k, v in collate_packed(pieces, split_sequences).items()}
            r = step_loss(model, batch, cfg)
            totals["loss_sum"] += float(r.loss_sum)
            totals["targets"] += r.targets
            totals["correct"] += r.correct
            for i, nll in zip(b, r.per_record.tolist()):
                totals[f"src_sum/{data.sources[i]}"] += nll
                totals[f"src_n/{data.sources[i]}"] += data.targets(i)
        if pretrain_eval is not None:
            state = pretrain_eval.state_dict()
            for _ in range(pretrain_batches):
                batch = {k: v.to(device) for k, v in pretrain_eval.next_batch(cfg.micro_batch_tokens, split_sequences).items()}
                r = step_loss(model, batch, cfg)
                totals["pt_sum"] += float(r.loss_sum)
                totals["pt_n"] += r.targets
            pretrain_eval.load_state_dict(state)  # the same batches at every evaluation
        if ev.pairs is not None:
            nll = torch.zeros(len(ev.pairs), dtype=torch.float64)
            for b in _share(ev.pair_bins, accelerator):
                batch = collate_packed([(ev.pairs.input_ids[i], ev.pairs.loss_mask[i]) for i in b] or [([0], [0])],
                                       split_sequences)
                r = step_loss(model, {k: v.to(device) for k, v in batch.items()}, cfg)
                if b:
                    nll[b] = r.per_record
            nll = accelerator.reduce(nll.to(device), "sum").cpu()
            by_sum, by_token = preference_accuracy(nll.tolist(), [ev.pairs.targets(i) for i in range(len(ev.pairs))])
            pref = {"preference_accuracy": sum(by_sum) / len(by_sum),
                    "preference_accuracy_per_token": sum(by_token) / len(by_token)}
    keys = sorted(totals)
    summed = accelerator.reduce(torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=device), "sum")
    totals.update(dict(zip(keys, summed.tolist())))
    out = {"eval/loss": totals["loss_sum"] / max(1, totals["targets"]),
           "eval/token_accuracy": totals["correct"] / max(1, totals["targets"])}
    for k in keys:
        if k.startswith("src_sum/"):
            src = k.split("/", 1)[1]
            out[f"eval/loss_{src}"] = totals[k] / max(1, totals[f"src_n/{src}"])
    if totals.get("pt_n"):
        out["eval/pretrain_loss"] = totals["pt_sum"] / totals["pt_n"]
    out.update({f"eval/{k}": v for k, v in pref.items()})
    model.train()
    return out
