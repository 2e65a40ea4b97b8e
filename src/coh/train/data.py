"""Training data: records from ``coh data build``, shaped by the training mode, tokenized, and laid
out as a deterministic plan of packed micro-batches per epoch.

Modes: ``coh`` trains on the records as built; ``conditional-sft`` keeps only preferred outputs,
each after its positive phrase (the seed's SFT variant); ``sft`` keeps only preferred outputs,
without any feedback phrase (plain SFT, which the original lacked).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np

from coh.data.errors import DataError
from coh.data.feedback import FeedbackExample
from coh.data.fields import record_from_fields
from coh.data.io import iter_json_lines
from coh.data.records import FeedbackRecord, Segment, join_segments, record_from_json
from coh.data.render import RENDER_CONFIG, render_settings
from coh.data.tokenize import RecordTokenizer, tokenize_many
from coh.train.packing import PackingReport, fit_records, pack_documents
from coh.train.tokens import (
    MappedTokens,
    cache_key,
    cached_tokens,
    count_lines,
    is_main_process,
    run_tokenize_config,
    tokenize_to_folder,
    usable_build,
)


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
    return list(iter_training_records(path))


def iter_training_records(path: str | Path) -> Iterator[FeedbackRecord]:
    """``read_training_records`` one record at a time."""
    for line, obj in iter_json_lines(path):
        if isinstance(obj, dict) and "fields" in obj and "segments" not in obj:
            yield record_from_fields(obj, str(path), line)
        elif isinstance(obj, dict) and not {"segments", "feedback"} & set(obj):
            raise _raw_data_error(path, line, obj)
        else:
            yield record_from_json(obj, str(path), line)


def _raw_data_error(path: str | Path, line: int, obj: dict) -> DataError:
    from coh.data.sources import CONVERTERS

    keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
    return DataError(str(path), line, None, (
        f"not a CoH record (a record has 'segments', or 'fields' in the original's format; this line has: "
        f"{keys}). It looks like raw feedback data: turn it into records first with `coh data build --source "
        f"KIND:{path} -o DIR` (KIND one of {', '.join(sorted(CONVERTERS))}), then give --train-data DIR"))


def for_mode(records: Iterable[FeedbackRecord], mode: str) -> list[FeedbackRecord]:
    """Records for a training mode (see the module docstring). Duplicates that a mode creates
    (``p`` and ``pn`` of one example both give the same preferred record) are kept once."""
    return list(iter_for_mode(records, mode))


def iter_for_mode(records: Iterable[FeedbackRecord], mode: str) -> Iterator[FeedbackRecord]:
    """``for_mode`` one record at a time, in order."""
    if mode == "coh":
        yield from records
        return
    seen = set()
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
            yield replace(rec, segments=segments, feedback=mode)


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

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]

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


def epoch_plan(data: TokenizedSet | MappedTokens, capacity: int, seed: int, epoch: int, n_long: int = 0, dropped: int = 0,
               policy: str = "error", max_length: int = 0) -> EpochPlan:
    """Best-fit-decreasing packing (see ``coh.train.packing``) of the records' lengths, bins in a
    seeded order per epoch."""
    lengths = data.lengths.tolist() if isinstance(data.lengths, np.ndarray) else data.lengths
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


PHRASE_RECORDS = 5000  # the records coh.json's phrases and prompt format are read from (phrases_of)
TOKEN_CACHE = "tokens"  # the folder of a run's token caches, in its output_dir


def render_config(build_dir: Path, cache_dir: Path) -> dict:
    """How a build rendered its records, to render them afresh each epoch: ``seed``,
    ``feedback``, ``shared_prefix``, ``phrases_file`` and ``kinds`` (source name -> converter
    kind). Read from the build's ``examples/coh_render.json``; for a build made before builds
    wrote it, derived from its ``summary.json`` and saved as ``cache_dir/coh_render.json``, the
    settings this run renders with."""
    saved = build_dir / "examples" / RENDER_CONFIG
    if saved.exists():
        return json.loads(saved.read_text(encoding="utf-8"))
    config = render_settings(json.loads((build_dir / "summary.json").read_text(encoding="utf-8")))
    if is_main_process():
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / RENDER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def _file_key(path: Path) -> dict:
    stat = path.stat()
    return {"file": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class TrainingEpochs:
    """The training data epoch by epoch: the same records in a new seeded order, or with
    ``resample_each_epoch`` records rendered afresh from the build's ``examples/train.jsonl``
    (new phrasing and order per epoch, as the original's first release did).

    Token ids are never held as lists (``coh.train.tokens``): they are read memory-mapped from
    the build's ``tokenized/`` folder when it was made as this run tokenizes, else from a folder
    under ``cache_dir`` (default: a temporary one) that rank 0 tokenizes once, in ``num_proc``
    worker processes, while other ranks wait; with ``resample`` one per epoch, which a resumed
    run finds again. Why the build's tokens were not used is printed in one line."""

    def __init__(self, records_path: Path, mode: str, tokenizer: RecordTokenizer, capacity: int, max_length: int,
                 overlong: str, seed: int, resample: bool, cache_dir: Path | None = None,
                 tokenizer_name: str | None = None, num_proc: int | None = None):
        self.path, self.mode, self.tokenizer = Path(records_path), mode, tokenizer
        self.capacity, self.max_length, self.overlong, self.seed = capacity, max_length, overlong, seed
        self.resample, self.num_proc = resample, num_proc
        self.tokenizer_name = tokenizer_name or getattr(tokenizer.tokenizer, "name_or_path", "")
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="coh-tokens-")
            cache_dir = Path(self._tmp.name)
        self.cache_dir = Path(cache_dir)
        self._cache: tuple[int, list[FeedbackRecord], MappedTokens, EpochPlan] | None = None
        if resample:
            build_dir = self.path.parent
            summary_path, self.examples_path = build_dir / "summary.json", build_dir / "examples" / "train.jsonl"
            if not self.examples_path.exists() or not summary_path.exists():
                raise FileNotFoundError(
                    f"resample_each_epoch needs {self.examples_path} and {summary_path}: build the data with "
                    "`coh data build --resample`")
            self.render = render_config(build_dir, self.cache_dir)
            self.examples = [FeedbackExample.from_json(obj) for _, obj in iter_json_lines(self.examples_path)]

    def records(self, epoch: int) -> list[FeedbackRecord]:
        if not self.resample:
            return for_mode(read_training_records(self.path), self.mode)
        from coh.data.phrases import DEFAULT_PHRASES, load_phrases
        from coh.data.render import RenderSpec, render_dataset

        r = self.render
        phrases = load_phrases(r["phrases_file"]) if r.get("phrases_file") else DEFAULT_PHRASES
        spec = RenderSpec(feedback=tuple(r["feedback"]), shared_prefix=r["shared_prefix"], resample=True)
        return for_mode(render_dataset(self.examples, spec, phrases, r["kinds"], r["seed"], epoch), self.mode)

    def get(self, epoch: int) -> tuple[list[FeedbackRecord], MappedTokens, EpochPlan]:
        """The records of ``epoch`` (with ``resample`` all of them, else the first
        ``PHRASE_RECORDS``: what coh.json is read from), their tokens and the packing plan (the
        last epoch's is kept)."""
        if self._cache is None or self._cache[0] != epoch:
            if self._cache is not None and not self.resample:
                records, data = self._cache[1], self._cache[2]
            else:
                records, data = self._epoch_tokens(epoch)
                if not data.has_targets():
                    raise ValueError("the training records have no loss tokens: nothing to learn (check the data and "
                                     "the mode)")
            plan = epoch_plan(data, self.capacity, self.seed, epoch, data.overlong, data.tokens_dropped, self.overlong,
                              self.max_length)
            self._cache = (epoch, records, data, plan)
        return self._cache[1], self._cache[2], self._cache[3]

    def _tokenize_key(self) -> dict:
        config = run_tokenize_config(self.tokenizer, self.tokenizer_name)
        config["tokenizer"] = {k: v for k, v in config["tokenizer"].items() if k != "name_or_path"}
        return config

    def _map(self, folder: Path) -> MappedTokens:
        return MappedTokens(folder, self.max_length, self.overlong)

    def _epoch_tokens(self, epoch: int) -> tuple[list[FeedbackRecord], MappedTokens]:
        if self.resample:
            records = self.records(epoch)
            if not records:
                raise ValueError(f"{self.examples_path}: no records for mode '{self.mode}'")
            key = cache_key({"examples": _file_key(self.examples_path), "render": self.render, "mode": self.mode,
                             "tokenize": self._tokenize_key(), "epoch": epoch})

            def make(folder: Path) -> None:
                tokenize_to_folder(records, len(records), self.tokenizer, folder, self.num_proc)
                for old in self.cache_dir.glob("train-epoch*-*"):  # keep this epoch's and the one before
                    number = old.name.split("-")[1][len("epoch"):]
                    if number.isdigit() and int(number) < epoch - 1:
                        shutil.rmtree(old, ignore_errors=True)

            return records, self._map(cached_tokens(self.cache_dir / f"train-epoch{epoch}-{key}", make))
        head = list(islice(iter_for_mode(iter_training_records(self.path), self.mode), PHRASE_RECORDS))
        if not head:
            raise ValueError(f"{self.path}: no records for mode '{self.mode}'")
        folder, reason = usable_build(self.path, self.tokenizer, self.tokenizer_name, self.max_length, self.mode)
        if folder is not None:
            _say(f"training tokens: {folder}, memory-mapped (the build tokenized as this run would)")
            return head, self._map(folder)
        _say(f"tokenizing {self.path} again: {reason}")
        key = cache_key({"data": _file_key(self.path), "mode": self.mode, "tokenize": self._tokenize_key()})

        def make(folder: Path) -> None:
            if self.mode == "coh" and self.path.name.endswith((".jsonl", ".jsonl.gz")):  # streamed: one chunk at a time
                records, count = iter_training_records(self.path), count_lines(self.path)
            else:  # a mode's duplicates are found over all records
                records = for_mode(read_training_records(self.path), self.mode)
                count = len(records)
            tokenize_to_folder(records, count, self.tokenizer, folder, self.num_proc)

        return head, self._map(cached_tokens(self.cache_dir / f"{self.path.stem}-{key}", make))


def _say(line: str) -> None:
    if is_main_process():
        print(line, flush=True)
