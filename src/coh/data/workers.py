"""Stage 2 of ``coh data build``, in worker processes, a chunk of rows at a time: each row
converted (``coh.data.sources.convert_row``), given its split (the dataset's own, or the seeded
``held_out``), rendered into records (``coh.data.render``), serialised and, with a tokenizer,
tokenized; a chunk's records go back to the parent as one Arrow record batch per split.
``in_order`` runs the chunks through a process pool and hands the results back in order.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from coh.data.errors import DataError
from coh.data.feedback import FeedbackExample
from coh.data.fields import record_to_fields
from coh.data.phrases import PhraseSet
from coh.data.records import FeedbackRecord
from coh.data.render import RenderSpec, render_records
from coh.data.sources import CONVERTERS, NESTED_TOO_DEEPLY, Skip, convert_row


@dataclass(frozen=True)
class Job:
    """What a worker needs to turn a source's rows into records (sent with every chunk)."""

    kind: str
    name: str
    render: RenderSpec
    phrases: PhraseSet
    seed: int
    eval_fraction: float
    output_format: str
    tokenize: bool


# The record tokenizer, loaded once in the parent; forked workers inherit it, spawned ones load it.
_RECORD_TOKENIZER = None


def load_record_tokenizer(path: str, chat_template: str, reload: bool = False) -> None:
    """Load the record tokenizer of this process (kept unless ``reload``: forked workers have it)."""
    global _RECORD_TOKENIZER
    if _RECORD_TOKENIZER is None or reload:
        from coh.data.chat_template import with_base_template
        from coh.data.tokenize import RecordTokenizer
        from coh.models import load_tokenizer

        _RECORD_TOKENIZER = RecordTokenizer(with_base_template(load_tokenizer(path)), chat_template=chat_template)


def record_tokenizer():
    """The ``coh.data.tokenize.RecordTokenizer`` loaded by ``load_record_tokenizer``, or None."""
    return _RECORD_TOKENIZER


def held_out(seed: int, ex: FeedbackExample, fraction: float) -> bool:
    """Whether a split-less example goes to eval. Decided by a seeded hash of its prompt (the
    context turns), so it does not depend on row order or processes, an example keeps its split
    when rows are added, and every comparison of one prompt lands in the same split (no eval
    prompt is trained on)."""
    prompt = "\x1e".join(f"{t.role}\x1f{t.text}" for t in ex.context)
    digest = hashlib.sha256(f"{seed}\x1d{prompt}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


@dataclass
class _Row:
    """One row's outcome. ``status``: ``ok`` (``feedback``: the type of each of its records, in
    order), ``skip`` (``reason``) or ``invalid`` (``error``, and the parsed ``row`` for
    rejects.jsonl where the row has no raw text: parquet and hub rows)."""

    status: str
    split: str = ""
    feedback: list[str] = field(default_factory=list)
    example: str | None = None
    reason: str = ""
    error: DataError | None = None
    row: object = None


@dataclass
class _Chunk:
    """What ``work`` sends back for a chunk of rows: one ``_Row`` each, and per split the
    chunk's records as one Arrow record batch (see ``_records_batch``), in row order."""

    rows: list[_Row]
    records: dict[str, object]


def work(args: tuple[Job, list[tuple[str, str, int, object]]]) -> _Chunk:
    """Convert, split, render, serialise and (with a tokenizer) tokenize a chunk of rows
    (``SourceRow`` s without their raw text, which stays with the parent)."""
    # The cyclic garbage collector would walk the chunk's many young lists over and over (a
    # fifth to a third of the time); whatever cycles a chunk makes are collected after it.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _work_chunk(*args)
    finally:
        if enabled:
            gc.enable()


def _work_chunk(job: Job, chunk: list[tuple[str, str, int, object]]) -> _Chunk:
    convert = CONVERTERS[job.kind]
    epoch = 0 if job.render.resample else None
    out: list[_Row] = []
    by_split: dict[str, tuple[list[str], list[FeedbackRecord]]] = {}
    for split, where, line, row in chunk:
        ex_id = f"{job.name}/{split}/{line}" if split else f"{job.name}/{line}"
        ex = convert_row(lambda r, _, i=ex_id, s=split or "train": convert(r, i, s), row, where, line)
        if isinstance(ex, DataError):
            # the row goes with its error into rejects.jsonl, unless the reader could not read
            # it or it is too deeply nested to write back
            kept = None if isinstance(row, DataError) or ex.problem == NESTED_TOO_DEEPLY else row
            out.append(_Row("invalid", split, error=ex, row=kept))
            continue
        if isinstance(ex, Skip):
            out.append(_Row("skip", split, reason=ex.reason))
            continue
        if not split and held_out(job.seed, ex, job.eval_fraction):
            ex = dataclasses.replace(ex, split="eval")
        if ex.source != job.name:
            ex = dataclasses.replace(ex, source=job.name)
        recs = render_records(ex, job.render, job.phrases, job.seed, epoch)
        if job.output_format == "fields":
            lines = [json.dumps(record_to_fields(r), ensure_ascii=False) + "\n" for r in recs]
        else:
            lines = [r.to_line() for r in recs]
        if not all(x.isascii() for x in lines) and not _encodable(lines):  # isascii is O(1) in CPython
            # converters check the fields they read; this catches any they let through
            err = DataError(where, line, None, "text holds a lone surrogate (half of a UTF-16 pair, e.g. \\ud83d)")
            out.append(_Row("invalid", split, error=err, row=row))
            continue
        example = json.dumps(ex.to_json(), ensure_ascii=False) + "\n" if job.render.resample else None
        out.append(_Row("ok", ex.split, [r.feedback for r in recs], example=example))
        dest_lines, dest_recs = by_split.setdefault(ex.split, ([], []))
        dest_lines.extend(lines)
        dest_recs.extend(recs)
    return _Chunk(out, {split: _records_batch(lines, recs, job.tokenize) for split, (lines, recs) in by_split.items()})


def _records_batch(lines: list[str], records: list[FeedbackRecord], tokenize: bool):
    """Records as one Arrow record batch: ``line`` (the JSONL line, its newline included) and,
    with ``tokenize``, the columns of ``coh.data.tokenize.tokens_batch``. Arrow, not Python
    lists, crosses to the parent: it pickles as a few buffers, and the parent writes it as it is."""
    import pyarrow as pa

    line = pa.array(lines, pa.string())
    if not tokenize:
        return pa.RecordBatch.from_arrays([line], ["line"])
    from coh.data.tokenize import tokens_batch

    tokens = tokens_batch([r.id for r in records], [r.source for r in records], [r.feedback for r in records],
                          _RECORD_TOKENIZER.batch(records))
    return pa.RecordBatch.from_arrays([line, *tokens.columns], ["line", *tokens.schema.names])


def _encodable(lines: list[str]) -> bool:
    try:
        for line in lines:
            line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def in_order(pool: ProcessPoolExecutor | None, func: Callable, chunks: Iterator, ahead: int) -> Iterator:
    """``func`` over ``chunks`` (in ``pool``'s worker processes; here without one), results in
    chunk order, with at most ``ahead`` chunks in flight, so memory stays bounded and an error
    stops the work without processing the rest. The build's rows (``work``) and training's
    token tables (``coh.train.tokens``) both go through it."""
    if pool is None:
        yield from map(func, chunks)
        return
    in_flight: collections.deque = collections.deque()
    for chunk in chunks:
        in_flight.append(pool.submit(func, chunk))
        if len(in_flight) >= ahead:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()
