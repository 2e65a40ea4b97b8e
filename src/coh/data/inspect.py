"""``coh data inspect``: counts, one rendered record, a length histogram and the problems of a records file.

Reads our records (``segments``) and the original's ``fields`` format, told apart line by line. A
line that is not a valid record becomes a problem naming its file and line, and reading goes on.
Records are tokenized in batches of 1000 and not kept, except the one asked for to display."""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coh.data.errors import DataError
from coh.data.fields import record_from_fields
from coh.data.io import PARQUET_SUFFIXES, RawRow, iter_json_rows
from coh.data.records import FeedbackRecord, record_from_json
from coh.data.render import FEEDBACK_TYPES
from coh.data.tokenize import RecordTokenizer
from coh.models import load_tokenizer

LEAKED_TOKENS = ("<|eos|>", "</s>", "<|endoftext|>")
MAX_EXAMPLES, BATCH = 5, 1000
GREEN, DIM, RESET = "\x1b[32m", "\x1b[2m", "\x1b[0m"
PROBLEMS = {  # kind -> what it means
    "invalid": "lines that are not valid records",
    "unreadable": "the file could not be read to its end (the counts cover the lines before)",
    "empty": "the file holds no records",
    "duplicate_id": "duplicate ids",
    "no_loss": "records with no loss segment (nothing to train on)",
    "no_eos": "outputs (loss segments) not followed by EOS",
    "empty_output": "outputs that are empty or whitespace",
    "leaked_token": f"feedback or output text holding a literal special token {LEAKED_TOKENS}",
    "same_good_bad": "records whose good and bad outputs are identical",
    "too_long": "records longer than max_length",
}


@dataclass
class InspectReport:
    """What ``inspect_records`` found. Lengths are in file order, one per valid record; with no
    tokenizer ``token_lengths`` and ``loss_tokens`` are None. ``record``: the record at the index
    asked for, None if the file has fewer. Per problem kind (``PROBLEMS``) that occurred:
    ``problems[kind]`` its count, ``examples[kind]`` up to ``MAX_EXAMPLES`` places (id and line)."""

    path: str
    by_source: Counter = field(default_factory=Counter)
    by_feedback: Counter = field(default_factory=Counter)
    by_source_feedback: Counter = field(default_factory=Counter)  # keys (source, feedback)
    char_lengths: list[int] = field(default_factory=list)
    token_lengths: list[int] | None = None
    loss_tokens: list[int] | None = None
    problems: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    record: FeedbackRecord | None = None

    @property
    def n_records(self) -> int:
        return len(self.char_lengths)

    def problem(self, kind: str, example: str) -> None:
        self.problems[kind] += 1
        if len(examples := self.examples.setdefault(kind, [])) < MAX_EXAMPLES:
            examples.append(example)


def _rows_until_unreadable(path: Path, report: InspectReport) -> Iterator[RawRow]:
    """The file's rows; a file that stops being readable part-way (a gzip stream cut short) is a
    problem after the rows read so far, one unreadable from the start raises ``DataError``."""
    read = 0
    try:
        for row in iter_json_rows(path):
            read += 1
            yield row
    except DataError as e:
        if not read:
            raise
        report.problem("unreadable", e.message)


def _check(rec: FeedbackRecord, place: str, report: InspectReport, seen: set[str]) -> None:
    """Add the problems visible in one record (all but length)."""
    segs = rec.segments
    good, bad = ({s.text.strip() for s in segs if s.loss and s.label == lab} for lab in ("good", "bad"))
    found = {
        "duplicate_id": rec.id in seen,
        "no_loss": not any(s.loss for s in segs),
        "no_eos": any(s.loss and not s.eos for s in segs),
        "empty_output": any((s.loss or s.role == "assistant") and not s.text.strip() for s in segs),
        "leaked_token": any(t in s.text for s in segs if s.role in ("feedback", "assistant") for t in LEAKED_TOKENS),
        "same_good_bad": bool(good & bad),
    }
    seen.add(rec.id)
    for kind in (k for k, v in found.items() if v):
        report.problem(kind, place)


def inspect_records(path: str | Path, tokenizer=None, max_length: int | None = None,
                    record_index: int = 0) -> InspectReport:
    """Read a records file (ours or ``fields``, auto-detected per line) and report counts, lengths
    and problems (see ``InspectReport``). ``tokenizer``: a Hugging Face tokenizer object; lengths
    are then also in tokens, with loss tokens, via ``RecordTokenizer``. ``max_length``: longer
    records are a problem, in tokens with a tokenizer, else in characters. Raises ``DataError``
    only if the file cannot be read (not found, a folder, parquet, a gzip stream that is cut short)."""
    path, seen, pending = Path(path), set(), []
    report = InspectReport(str(path))
    rt = RecordTokenizer(tokenizer) if tokenizer is not None else None
    report.token_lengths, report.loss_tokens = ([], []) if rt else (None, None)

    def flush() -> None:  # token lengths (one batched call) and the length check of the pending records
        toks = rt.batch([r for r, _ in pending]) if rt else [None] * len(pending)
        for (rec, place), tok in zip(pending, toks):
            n = sum(len(s.text) for s in rec.segments) if tok is None else len(tok)
            if tok is not None:
                report.token_lengths.append(n)  # type: ignore[union-attr]
                report.loss_tokens.append(sum(tok.loss_mask))  # type: ignore[union-attr]
            if max_length is not None and n > max_length:
                report.problem("too_long", f"{place}: {n} {'characters' if tok is None else 'tokens'} > {max_length}")
        pending.clear()

    if path.name.endswith(PARQUET_SUFFIXES):
        raise DataError(str(path), None, None, "is parquet; inspect reads records as JSON lines (.jsonl, .jsonl.gz), "
                                               "as `coh data build` writes them")
    if path.is_dir():
        hint = f" such as {path / 'train.jsonl'}" if (path / "train.jsonl").exists() else ""
        raise DataError(str(path), None, None, f"is a folder; give a records file{hint}")
    for line, obj, _ in _rows_until_unreadable(path, report):
        try:
            if isinstance(obj, DataError):
                raise obj
            if isinstance(obj, dict) and "fields" in obj and "segments" not in obj:  # the original's format
                rec = record_from_fields(obj, str(path), line)
            else:
                rec = record_from_json(obj, str(path), line)
        except RecursionError:  # the reader bounds nesting; this is a guard
            report.problem("invalid", f"{path}:{line}: nested too deeply")
            continue
        except DataError as e:
            detail = (f"field '{e.field}': " if e.field else "") + e.problem
            report.problem("invalid", f"{e.where}:{e.line}: {detail}")
            continue
        if report.n_records == record_index:
            report.record = rec
        report.char_lengths.append(sum(len(s.text) for s in rec.segments))
        report.by_source[rec.source] += 1
        report.by_feedback[rec.feedback] += 1
        report.by_source_feedback[rec.source, rec.feedback] += 1
        pending.append((rec, f"{rec.id} (line {line})"))
        _check(rec, pending[-1][1], report, seen)
        if len(pending) >= BATCH:
            flush()
    flush()
    if report.n_records == 0 and not report.problems:
        report.problem("empty", str(path))
    return report


def render_record(record: FeedbackRecord, color: bool) -> str:
    """The record's text with its loss spans marked, then a line of segment/loss/character counts.
    With ``color``: loss text green, no-loss text dim (ANSI). Without: loss spans wrapped in ``⟦ ⟧``.
    Each end-of-sequence token shows as ``⟨eos⟩`` (inside the span when it carries loss)."""
    segs = record.segments
    parts = [s.text + ("⟨eos⟩" if s.eos else "") for s in segs]
    if color:
        parts = [(GREEN if s.loss else DIM) + p + RESET for s, p in zip(segs, parts)]
    else:
        parts = [f"⟦{p}⟧" if s.loss else p for s, p in zip(segs, parts)]
    chars, loss_chars = sum(len(s.text) for s in segs), sum(len(s.text) for s in segs if s.loss)
    return "".join(parts) + (f"\n-- {len(segs)} segments, {sum(s.loss for s in segs)} with loss; "
                             f"{chars} characters, {loss_chars} with loss")


def histogram(lengths: Sequence[int], unit: str, bins: int = 10, width: int = 40) -> str:
    """A text histogram: up to ``bins`` equal integer ranges (bounds inclusive), each with a bar of
    ``█`` scaled so the fullest is ``width`` wide, and its count; then min/median/p95/max."""
    if not lengths:
        return f"lengths ({unit}): no records"
    s = sorted(lengths)
    lo, hi = s[0], s[-1]
    step = max(1, math.ceil((hi - lo + 1) / bins))
    counts = [0] * math.ceil((hi - lo + 1) / step)
    for n in s:
        counts[(n - lo) // step] += 1
    d = len(str(hi))
    lines = [f"lengths ({unit}):"]
    for i, c in enumerate(counts):
        bar = "█" * (max(1, round(c / max(counts) * width)) if c else 0)
        lines.append(f"  {lo + i * step:>{d}}–{lo + (i + 1) * step - 1:<{d}} {bar:<{width}} {c}")
    p95 = s[math.ceil(0.95 * len(s)) - 1]  # nearest rank
    lines.append(f"  min {lo}, median {statistics.median(s):g}, p95 {p95}, max {hi}")
    return "\n".join(lines)


def counts_table(report: InspectReport) -> str:
    """Records per source (rows) and feedback type (columns, known types in their usual order), with totals."""
    fbs = sorted(report.by_feedback, key=lambda f: (FEEDBACK_TYPES.index(f) if f in FEEDBACK_TYPES else 99, f))
    w = max(len(x) for x in ["source", *report.by_source]) + 2
    c = max(len(f) for f in [*fbs, "total"]) + 3
    rows = [f"{'source':<{w}}" + "".join(f"{f:>{c}}" for f in [*fbs, "total"])]
    for src in sorted(report.by_source):
        cells = [report.by_source_feedback[src, f] for f in fbs] + [report.by_source[src]]
        rows.append(f"{src:<{w}}" + "".join(f"{n:>{c}}" for n in cells))
    cells = [report.by_feedback[f] for f in fbs] + [report.n_records]
    rows.append(f"{'total':<{w}}" + "".join(f"{n:>{c}}" for n in cells))
    return "\n".join(rows)


def run_inspect(path: str, tokenizer: str | None = None, record_index: int = 0, max_length: int | None = None) -> int:
    """``coh data inspect``: print the counts table, the record at ``record_index`` (coloured only
    when stdout is a terminal and ``NO_COLOR`` is unset), the length histogram and the problems.
    ``tokenizer``: a path or hub id for ``AutoTokenizer.from_pretrained``. Returns the exit code:
    0 if no problems were found, 1 if any were."""
    tok = load_tokenizer(tokenizer) if tokenizer else None
    report = inspect_records(path, tok, max_length, record_index)
    print(f"{path}: {report.n_records} records")
    if report.n_records:
        print(counts_table(report))
    if report.token_lengths and report.loss_tokens is not None:
        total, loss = sum(report.token_lengths), sum(report.loss_tokens)
        print(f"tokens: {total}, {loss} with loss ({100 * loss / total:.1f}%)")
    if (rec := report.record) is not None:
        print(f"\nrecord {record_index}: {rec.id} (source {rec.source}, feedback {rec.feedback}, split {rec.split})")
        print(render_record(rec, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
    else:
        print(f"\nrecord {record_index}: out of range: the file has {report.n_records} valid records"
              + (f" (indices 0 to {report.n_records - 1})" if report.n_records else ""))
    unit = "characters" if report.token_lengths is None else "tokens"
    print("\n" + histogram(report.char_lengths if report.token_lengths is None else report.token_lengths, unit))
    if not report.problems:
        print("\nno problems found")
        return 0
    print(f"\nproblems ({report.problems.total()} in all):")
    for kind, count in report.problems.items():
        print(f"  {count} {PROBLEMS[kind]}")
        print("".join(f"      {ex}\n" for ex in report.examples[kind]), end="")
    return 1
