"""What the training loop logs: the micro-batches trained since the last log line, summed (over
processes too) into losses per stream and per source, token accuracy, throughput and padding."""

from __future__ import annotations

import time
from collections import defaultdict

from coh.train.data import TokenizedSet
from coh.train.loss import TargetLoss


class LogWindow:
    """Sums of the micro-batches trained since the last ``reset``, and the wall time since then."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.started = time.perf_counter()

    def reset(self) -> None:
        self.sums.clear()
        self.started = time.perf_counter()

    def add(self, result: TargetLoss, stream: str, bin_: list[int] | None, data: TokenizedSet, batch: dict) -> None:
        """One micro-batch: its losses (per stream, and per source of its records) and token counts.
        ``bin_``: the indices in ``data`` of its records (feedback stream)."""
        sums = self.sums
        sums["tokens"] += int((batch["record_index"] >= 0).sum())  # not the padding of split sequences
        sums["slots"] += batch["input_ids"].numel()
        if stream == "pretrain":
            sums["pretrain_loss_sum"] += float(result.loss_sum.detach())
            sums["pretrain_targets"] += result.targets
            return
        sums["loss_sum"] += float(result.loss_sum.detach())
        sums["targets"] += result.targets
        sums["correct"] += result.correct
        for rec_index, nll in zip(bin_, result.per_record.tolist()):
            src = data.sources[rec_index]
            sums[f"src_sum/{src}"] += nll
            sums[f"src_n/{src}"] += data.targets(rec_index)

    def values(self, accelerator) -> dict[str, float]:
        """The window's metrics, over every process: ``train/loss`` (per target token),
        ``train/loss_<source>``, ``train/pretrain_loss``, ``train/token_accuracy``, ``perf/tokens``
        (non-padding), ``perf/tokens_per_s``, ``perf/loss_tokens_per_s``, ``perf/padding`` (share)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        sums = _sum_over_processes(self.sums, accelerator)
        values = {
            "train/loss": sums["loss_sum"] / max(1, sums["targets"]),
            "train/token_accuracy": sums["correct"] / max(1, sums["targets"]),
            "perf/tokens": sums["tokens"],  # non-padding tokens in the window, all processes
            "perf/tokens_per_s": sums["tokens"] / elapsed,
            "perf/loss_tokens_per_s": sums["targets"] / elapsed,
            "perf/padding": 1 - sums["tokens"] / max(1, sums["slots"]),  # share of the token slots
        }
        if sums.get("pretrain_targets"):
            values["train/pretrain_loss"] = sums["pretrain_loss_sum"] / sums["pretrain_targets"]
        for key in list(sums):
            if key.startswith("src_sum/"):
                src = key.split("/", 1)[1]
                values[f"train/loss_{src}"] = sums[key] / max(1, sums[f"src_n/{src}"])
        return values


def _sum_over_processes(sums: dict[str, float], accelerator) -> dict[str, float]:
    """``sums`` added up over processes (keys may differ: the sources each one saw)."""
    if accelerator.num_processes == 1:
        return sums
    from accelerate.utils import gather_object

    total: dict[str, float] = defaultdict(float)
    for part in gather_object([dict(sums)]):
        for key, value in part.items():
            total[key] += value
    return total
