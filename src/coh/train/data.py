"""Training data: records from ``coh data build``, shaped by the training mode, tokenized, and laid
out as a deterministic plan of packed micro-batches per epoch.

Modes: ``coh`` trains on the records as built; ``conditional-sft`` keeps only preferred outputs,
each after its positive phrase (the seed's SFT variant); ``sft`` keeps only preferred outputs,
without any feedback phrase (plain SFT, which the original lacked).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from coh.data.errors import DataError
from coh.data.feedback import FeedbackExample
from coh.data.fields import record_from_fields
from coh.data.io import iter_json_lines
from coh.data.records import FeedbackRecord, Segment, join_segments, record_from_json
from coh.data.tokenize import RecordTokenizer, tokenize_many
from coh.train.packing import PackingReport, fit_records, pack_documents


def records_file(path: str | Path, split: str, option: str = "train_data") -> Path:
    """A records file, or ``<folder>/<split>.jsonl`` of a ``coh data build`` folder; ``option``
    names the setting in the error for a missing one."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: no such records file (give a .jsonl from `coh data build` or "
                                "its folder)")
    return path


def read_training_records(path: str | Path) -> list[FeedbackRecord]:
    """Records of a JSONL file in our format or the original's ``fields`` format (detected per line).
    A line with none of ``segments``, ``fields`` and ``feedback`` is raw feedback data:
    ``DataError`` saying to run ``coh data build`` on it first."""
    out = []
    for line, obj in iter_json_lines(path):
        if isinstance(obj, dict) and "fields" in obj and "segments" not in obj:
            out.append(record_from_fields(obj, str(path), line))
        elif isinstance(obj, dict) and not {"segments", "feedback"} & set(obj):
            raise _raw_data_error(path, line, obj)
        else:
            out.append(record_from_json(obj, str(path), line))
    return out


def _raw_data_error(path: str | Path, line: int, obj: dict) -> DataError:
    from coh.data.sources import CONVERTERS

    keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
    return DataError(str(path), line, None, (
        f"not a CoH record (a record has 'segments', or 'fields' in the original's format; this line has: "
        f"{keys}). It looks like raw feedback data: turn it into records first with `coh data build --source "
        f"KIND:{path} -o DIR` (KIND one of {', '.join(sorted(CONVERTERS))}), then give --train-data DIR"))


def for_mode(records: Sequence[FeedbackRecord], mode: str) -> list[FeedbackRecord]:
    """Records for a training mode (see the module docstring). Duplicates that a mode creates
    (``p`` and ``pn`` of one example both give the same preferred record) are kept once."""
    if mode == "coh":
        return list(records)
    out, seen = [], set()
    for rec in records:
        kept: list[Segment] = []
        segs = rec.segments
        for i, seg in enumerate(segs):
            rejected = seg.label in ("bad", "better") and seg.role in ("feedback", "assistant")
            if rejected or (mode == "sft" and seg.role == "feedback" and i + 1 < len(segs) and segs[i + 1].loss):
                continue
            kept.append(seg)
        if not any(s.loss for s in kept):
            continue
        segments = join_segments(kept)
        key = tuple(segments)
        if key not in seen:
            seen.add(key)
            out.append(replace(rec, segments=segments, feedback=mode))
    return out


@dataclass
class TokenizedSet:
    """Tokenized records: ``input_ids`` / ``loss_mask`` per record and its ``source``."""

    input_ids: list[list[int]]
    loss_mask: list[list[int]]
    sources: list[str]

    def __post_init__(self) -> None:
        # Counted once here: the training step needs the target tokens of every step's records.
        self.target_counts = [sum(mask[1:]) for mask in self.loss_mask]

    def __len__(self) -> int:
        return len(self.input_ids)

    def targets(self, index: int) -> int:
        """Target tokens of a record (its first token is never a target)."""
        return self.target_counts[index]


def tokenize_set(records: Sequence[FeedbackRecord], tokenizer: RecordTokenizer, max_length: int, overlong: str
                 ) -> tuple[TokenizedSet, int, int]:
    """Tokenize and apply the overlong policy. Returns the set, the overlong count and tokens skipped."""
    tokenized = tokenize_many(records, tokenizer)
    ids, masks, sources = [t.input_ids for t in tokenized], [t.loss_mask for t in tokenized], [r.source for r in records]
    if not any(any(m[1:]) for m in masks):
        raise ValueError("the training records have no loss tokens: nothing to learn (check the data and the mode)")
    fitted = fit_records(ids, masks, max_length, overlong)
    data = TokenizedSet(fitted.input_ids, fitted.loss_mask, [sources[k] for k in fitted.origin])
    return data, fitted.overlong, fitted.tokens_dropped


@dataclass
class EpochPlan:
    """The packed micro-batches of one epoch, in training order: lists of record indices."""

    bins: list[list[int]]
    report: PackingReport


def epoch_plan(data: TokenizedSet, capacity: int, seed: int, epoch: int, n_long: int = 0, dropped: int = 0,
               policy: str = "error", max_length: int = 0) -> EpochPlan:
    """Best-fit-decreasing packing (see ``coh.train.packing``), bins in a seeded order per epoch."""
    lengths = [len(x) for x in data.input_ids]
    bins = pack_documents(lengths, capacity)
    random.Random(f"{seed}/epoch/{epoch}").shuffle(bins)
    report = PackingReport(len(lengths), sum(lengths), len(bins), capacity, n_long, dropped, policy, max_length)
    return EpochPlan(bins, report)


def phrases_of(records: Sequence[FeedbackRecord]) -> dict[str, str]:
    """The phrases a model is trained with, read off its records (the most common of each kind),
    saved with checkpoints so the server can prompt the way training did."""
    counts: dict[str, dict[str, int]] = {"user": {}, "good": {}, "bad": {}}
    for rec in records[:5000]:
        for seg in rec.segments:
            kind = "user" if seg.role == "marker" else seg.label if seg.role == "feedback" else None
            if kind in counts:
                text = seg.text.strip()
                counts[kind][text] = counts[kind].get(text, 0) + 1
    return {k: max(v, key=v.get) for k, v in counts.items() if v}


class TrainingEpochs:
    """The training data epoch by epoch: the same records in a new seeded order, or with
    ``resample_each_epoch`` records rendered afresh from the build's ``examples/train.jsonl``
    (new phrasing and order per epoch, as the original's first release did)."""

    def __init__(self, records_path: Path, mode: str, tokenizer: RecordTokenizer, capacity: int, max_length: int,
                 overlong: str, seed: int, resample: bool):
        self.path, self.mode, self.tokenizer = records_path, mode, tokenizer
        self.capacity, self.max_length, self.overlong, self.seed = capacity, max_length, overlong, seed
        self.resample = resample
        self._cache: tuple[int, list[FeedbackRecord], TokenizedSet, EpochPlan] | None = None
        if resample:
            build_dir = records_path.parent
            summary_path, examples_path = build_dir / "summary.json", build_dir / "examples" / "train.jsonl"
            if not examples_path.exists() or not summary_path.exists():
                raise FileNotFoundError(
                    f"resample_each_epoch needs {examples_path} and {summary_path}: build the data with "
                    "`coh data build --resample`")
            self.summary = json.loads(summary_path.read_text(encoding="utf-8"))
            self.examples = [FeedbackExample.from_json(obj) for _, obj in iter_json_lines(examples_path)]

    def records(self, epoch: int) -> list[FeedbackRecord]:
        if not self.resample:
            return for_mode(read_training_records(self.path), self.mode)
        from coh.data.build import render_dataset
        from coh.data.phrases import DEFAULT_PHRASES, load_phrases
        from coh.data.render import RenderSpec

        s = self.summary
        phrases = load_phrases(s["phrases_file"]) if s.get("phrases_file") else DEFAULT_PHRASES
        spec = RenderSpec(feedback=tuple(s["feedback"]), shared_prefix=s["shared_prefix"], resample=True)
        kinds = {name: src["spec"]["kind"] for name, src in s["sources"].items()}
        return for_mode(render_dataset(self.examples, spec, phrases, kinds, s["seed"], epoch), self.mode)

    def get(self, epoch: int) -> tuple[list[FeedbackRecord], TokenizedSet, EpochPlan]:
        """Records, their tokens and the packing plan of ``epoch`` (the last one is cached)."""
        if self._cache is None or self._cache[0] != epoch:
            if self._cache is not None and not self.resample:
                records, data = self._cache[1], self._cache[2]
                n_long, dropped = self._cache[3].report.overlong, self._cache[3].report.overlong_tokens_dropped
            else:
                records = self.records(epoch)
                if not records:
                    raise ValueError(f"{self.path}: no records for mode '{self.mode}'")
                data, n_long, dropped = tokenize_set(records, self.tokenizer, self.max_length, self.overlong)
            plan = epoch_plan(data, self.capacity, self.seed, epoch, n_long, dropped, self.overlong, self.max_length)
            self._cache = (epoch, records, data, plan)
        return self._cache[1], self._cache[2], self._cache[3]
