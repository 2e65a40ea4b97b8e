"""``coh data build``: raw feedback datasets into Chain-of-Hindsight records.

The whole flow, top to bottom:

1. ``read_source_rows``: each source's rows, with the file (or hub dataset) and line of each row,
   and its raw text; a line that is not JSON comes as a ``DataError``, a file that cannot be read
   raises one.
2. ``_work`` (in ``num_proc`` worker processes, chunk by chunk): rows into ``FeedbackExample`` s
   (``coh.data.sources``); bad rows raise a ``DataError`` naming file, line and field, or with
   ``skip_invalid`` go to ``rejects.jsonl`` with their raw text (``reject_entry``). The
   dataset's own train/eval split, or a seeded held-out split (``held_out``). Examples into
   records under the feedback types (``coh.data.render``), serialised, and tokenized when a
   tokenizer is given; sent back as one Arrow record batch per split (``_records_batch``).
3. ``build_source`` takes the workers' results in file order, counts everything, and streams
   them into the staging folder (``coh.data.io.staged_outputs``; the folder holds one build or
   none): the record batches appended to one file per split (``coh.data.spill.Spill``), the
   rejects to ``rejects.jsonl``, with ``resample`` the examples to ``examples/*.jsonl`` (from
   which the trainer draws fresh phrasing every epoch). Nothing grows in memory with the rows.
4. ``write_split``: all sources mixed into ``train.jsonl`` / ``eval.jsonl`` by one seeded shuffle
   per split, read back from disk a bounded bucket at a time (``coh.data.spill.read_shuffled``),
   and with a tokenizer, in the same pass, ``tokenized/{train,eval}``: token ids and loss masks
   as ``datasets`` folders, so training need not tokenize again, with
   ``tokenized/coh_tokenize.json`` saying what made them (``coh.data.tokenize``).
5. ``summary.json`` last; everything is moved into place.

Same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import gc
import hashlib
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from coh.data.errors import DataError, RowError, describe
from coh.data.feedback import FeedbackExample
from coh.data.fields import record_to_fields
from coh.data.io import (
    atomic_writer,
    check_output_dir,
    iter_local_raw_rows,
    staged_outputs,
    write_dataset_folder,
)
from coh.data.phrases import DEFAULT_PHRASES, PhraseSet, load_phrases, phrases_for
from coh.data.records import FeedbackRecord
from coh.data.render import RenderSpec, render_records
from coh.data.sources import CONVERTERS, HUB_DEFAULTS, Skip
from coh.data.spill import Spill, read_shuffled, shuffle_order

SPLITS = ("train", "eval")
_EVAL_SPLIT_NAMES = ("test", "validation", "eval", "dev")


@dataclass
class SourceSpec:
    """One input dataset.

    ``kind``: a converter name (``dialogue``, ``webgpt``, ``summary``, ``preference``,
    ``unpaired``, ``rated``). Rows come from ``files`` (split -> local path: jsonl/json/parquet,
    gzip allowed) or from a hub dataset ``hub`` (``config`` optional), whose ``train`` split
    becomes train and whose ``test``/``validation`` split becomes eval. With neither, the paper
    datasets use their hub names. ``name`` labels records and counts (defaults to ``kind``).
    """

    kind: str
    files: dict[str, str] = field(default_factory=dict)
    hub: str | None = None
    config: str | None = None
    name: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in CONVERTERS:
            raise ValueError(f"unknown source kind {self.kind!r}; expected one of {sorted(CONVERTERS)}")
        if not isinstance(self.files, dict) or not all(isinstance(v, (str, os.PathLike)) for v in self.files.values()):
            raise ValueError(f"source {self.kind}: files must map a split to a path, e.g. {{train: data.jsonl}}; "
                             f"got {describe(self.files)}")
        for key in ("hub", "config", "name"):
            if getattr(self, key) is not None and not (isinstance(getattr(self, key), str) and getattr(self, key)):
                raise ValueError(f"source {self.kind}: {key} must be a non-empty string, got {describe(getattr(self, key))}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"source {self.kind}: limit must be a positive whole number, got {describe(self.limit)}")
        self.files = {split: str(path) for split, path in self.files.items()}
        bad = [s for s in self.files if s not in SPLITS]
        if bad:
            raise ValueError(f"source {self.kind}: unknown split(s) {bad}; expected {list(SPLITS)}")
        if not self.files and self.hub is None:
            if self.kind not in HUB_DEFAULTS:
                raise ValueError(f"source '{self.kind}' needs a file or a hub dataset, e.g. '{self.kind}:data.jsonl'")
            self.hub, self.config = HUB_DEFAULTS[self.kind].name, HUB_DEFAULTS[self.kind].config
        self.name = self.name or self.kind

    @staticmethod
    def parse(text: str) -> SourceSpec:
        """Parse ``KIND``, ``KIND:PATH``, ``KIND:train=PATH,eval=PATH`` or ``KIND:hub=NAME[@CONFIG]``;
        ``name=LABEL`` and ``limit=N`` may be added to the comma list."""
        kind, _, rest = text.partition(":")
        spec: dict = {"kind": kind.strip(), "files": {}}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key in SPLITS:
                split, path = (key, value) if eq else ("train", part)
                if split in spec["files"]:
                    raise ValueError(f"source '{text}': two files for split '{split}'; give one file per split "
                                     "(or one source per file, each with name=LABEL)")
                spec["files"][split] = path
            elif key == "hub":
                spec["hub"], _, config = value.partition("@")
                spec["config"] = config or None
            elif key == "name":
                spec["name"] = value
            elif key == "limit":
                if not value.isdigit() or int(value) < 1:
                    raise ValueError(f"source '{text}': limit must be a positive whole number, got {value!r}")
                spec["limit"] = int(value)
            else:
                raise ValueError(f"source '{text}': unknown option '{key}'; expected train=, eval=, hub=, name=, limit=")
        return SourceSpec(**spec)

    @staticmethod
    def from_config(entry: object, where: str) -> SourceSpec:
        """A source of a YAML recipe: a spec string (see ``parse``) or a mapping of this class's
        fields (``kind``, ``files``, ``hub``, ``config``, ``name``, ``limit``). ``where`` names the
        entry in errors (file and index)."""
        if isinstance(entry, str):
            return SourceSpec.parse(entry)
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a source spec string or a mapping, got {describe(entry)}")
        known = [f.name for f in dataclasses.fields(SourceSpec)]
        unknown = sorted(str(k) for k in entry if k not in known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {known}")
        if "kind" not in entry:
            raise ValueError(f"{where}: missing 'kind'; expected one of {sorted(CONVERTERS)}")
        try:
            return SourceSpec(**entry)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


@dataclass
class BuildConfig:
    """Everything ``coh data build`` needs; ``seed`` fixes every random choice."""

    sources: list[SourceSpec]
    output_dir: str
    render: RenderSpec = field(default_factory=RenderSpec)
    phrases_file: str | None = None
    phrases: dict[str, PhraseSet] | None = None  # a ready phrase table; overrides phrases_file
    seed: int = 0
    eval_fraction: float = 0.05
    skip_invalid: bool = False
    num_proc: int = 1
    progress: bool = True
    tokenizer: str | None = None
    chat_template: str = "auto"
    output_format: str = "coh"

    def __post_init__(self) -> None:
        def number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not number(self.eval_fraction) or not 0 <= self.eval_fraction < 1:  # NaN fails both comparisons
            raise ValueError(f"eval_fraction must be a number from 0 up to (not including) 1, got "
                             f"{describe(self.eval_fraction)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be a whole number, got {describe(self.seed)}")
        if isinstance(self.num_proc, bool) or not isinstance(self.num_proc, int) or self.num_proc < 1:
            raise ValueError(f"num_proc must be a whole number of at least 1, got {describe(self.num_proc)}")
        for key, allowed in (("output_format", ("coh", "fields")), ("chat_template", ("auto", "always", "never"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {list(allowed)}, got {describe(getattr(self, key))}")
        for key in ("output_dir", "tokenizer", "phrases_file"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (str, os.PathLike)) and str(value)):
                raise ValueError(f"{key} must be a path, got {describe(value)}")


@dataclass
class SourceReport:
    """Counts for one source, reported in ``summary.json``."""

    rows: int = 0
    examples: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    invalid: int = 0
    no_record: int = 0
    records: dict[str, dict[str, int]] = field(default_factory=dict)


# -- 1. reading ----------------------------------------------------------------------------------
class SourceRow(NamedTuple):
    """One row of a source: ``split`` (train/eval for the dataset's own splits, ``""`` where it
    has none), ``where`` (file or hub dataset and split), ``line`` (1-based), ``row`` (the parsed
    row, or a ``DataError`` for a line that could not be read) and ``raw`` (the line's exact text,
    ``bytes`` when it is not UTF-8, ``None`` for parquet and hub rows; see ``coh.data.io.RawRow``)."""

    split: str
    where: str
    line: int
    row: object
    raw: str | bytes | None = None


def read_source_rows(spec: SourceSpec) -> Iterator[SourceRow]:
    """Every row of a source, bad lines included as ``DataError`` values (for callers that set
    them aside). A file that holds no rows, or cannot be read, raises ``DataError`` naming it."""
    if spec.files:
        from coh.data.from_disk import dataset_splits

        files = dataset_splits(spec.files)  # a DatasetDict folder: its own train and eval splits
        own_eval = "eval" in files
        for split, path in files.items():
            empty = True
            for line, row, raw in _limited(iter_local_raw_rows(path), spec.limit):
                empty = False
                yield SourceRow(split if own_eval else "", path, line, row, raw)
            if empty:
                raise DataError(path, None, None, "holds no rows (the file is empty)")
        return
    import datasets

    where = f"hub dataset {spec.hub}" + (f" ({spec.config})" if spec.config else "")
    try:
        splits = datasets.load_dataset(spec.hub, spec.config)
    except Exception as e:  # datasets raises many types; report which dataset failed and why
        raise DataError(where, None, None, f"cannot load: {type(e).__name__}: {e}") from None
    eval_name = next((n for n in _EVAL_SPLIT_NAMES if n in splits), None)
    if "train" not in splits:
        raise DataError(where, None, None, f"has no 'train' split (splits: {list(splits)})")
    for ours, theirs in (("train", "train"), ("eval", eval_name)):
        if theirs is None:
            continue
        for line, row in _limited(enumerate(splits[theirs], start=1), spec.limit):
            yield SourceRow(ours if eval_name else "", f"{where} split {theirs}", line, row)


def read_source(spec: SourceSpec) -> Iterator[tuple[str, str, int, object]]:
    """Yield ``(split, where, line, row)`` for every row of a source (see ``read_source_rows``);
    a line that cannot be read raises its ``DataError``."""
    for split, where, line, row, _ in read_source_rows(spec):
        if isinstance(row, DataError):
            raise row
        yield split, where, line, row


def _limited(rows: Iterator, limit: int | None) -> Iterator:
    for i, item in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield item


# -- 2-4. per row, in worker processes: convert, split, render, serialise, tokenize ------------
@dataclass(frozen=True)
class _Job:
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


def _load_record_tokenizer(path: str, chat_template: str) -> None:
    global _RECORD_TOKENIZER
    if _RECORD_TOKENIZER is None:
        from coh.data.tokenize import RecordTokenizer
        from coh.models import load_tokenizer

        _RECORD_TOKENIZER = RecordTokenizer(load_tokenizer(path), chat_template=chat_template)


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
    """What ``_work`` sends back for a chunk of rows: one ``_Row`` each, and per split the
    chunk's records as one Arrow record batch (see ``_records_batch``), in row order."""

    rows: list[_Row]
    records: dict[str, object]


def _work(args: tuple[_Job, list[tuple[str, str, int, object]]]) -> _Chunk:
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


def _work_chunk(job: _Job, chunk: list[tuple[str, str, int, object]]) -> _Chunk:
    convert = CONVERTERS[job.kind]
    epoch = 0 if job.render.resample else None
    out: list[_Row] = []
    by_split: dict[str, tuple[list[str], list[FeedbackRecord]]] = {}
    for split, where, line, row in chunk:
        ex_id = f"{job.name}/{split}/{line}" if split else f"{job.name}/{line}"
        if isinstance(row, DataError):  # a line the reader could not parse
            out.append(_Row("invalid", split, error=row))
            continue
        try:
            if not isinstance(row, dict):
                raise RowError(None, f"expected a JSON object, got {describe(row)}")
            ex = convert(row, ex_id, split or "train")
        except RecursionError:  # the reader bounds nesting; this guards a deep parquet or hub row
            out.append(_Row("invalid", split, error=DataError(where, line, None, "nested too deeply")))
            continue
        except RowError as e:
            out.append(_Row("invalid", split, error=e.at(where, line), row=row))
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


def _in_order(pool: ProcessPoolExecutor | None, chunks: Iterator, ahead: int) -> Iterator[list[_Row]]:
    """Results of ``_work`` in chunk order, with at most ``ahead`` chunks in flight, so memory
    stays bounded and an error stops the build without processing the rest."""
    if pool is None:
        yield from map(_work, chunks)
        return
    in_flight: collections.deque = collections.deque()
    for chunk in chunks:
        in_flight.append(pool.submit(_work, chunk))
        if len(in_flight) >= ahead:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


class _JsonlSink:
    """A JSON lines file written as rows come (objects, or ready lines), opened on the first row
    unless ``eager``; ``count`` rows so far, ``head`` the first ``keep`` of them (objects only)."""

    def __init__(self, path: Path, eager: bool = False, keep: int = 0):
        self.path, self.count, self.head, self._keep, self._file = path, 0, [], keep, None
        if eager:
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115  open across add() calls

    def add(self, row: object) -> None:
        if self._file is None:
            self._open()
        # default=str: hub and parquet rows may hold dates and other non-JSON values
        self._file.write(row if isinstance(row, str) else
                         json.dumps(row, ensure_ascii=False, default=str, allow_nan=False) + "\n")
        if self.count < self._keep:
            self.head.append(row)
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class _Outputs:
    """Where a build streams what it makes, all under its staging folder: per split, the records
    in file order (``spills``, before the final shuffle) and, with resample, the examples;
    the rejects."""

    spills: dict[str, Spill]
    examples: dict[str, _JsonlSink] | None
    rejects: _JsonlSink

    def close(self) -> None:
        for sink in [self.rejects, *(self.examples or {}).values()]:
            sink.close()
        for spill in self.spills.values():
            spill.close()


def build_source(spec: SourceSpec, cfg: BuildConfig, phrases: PhraseSet, report: SourceReport, out: _Outputs) -> None:
    """Read, convert and render one source into ``out``, counting everything in ``report``."""
    from tqdm import tqdm

    job = _Job(spec.kind, spec.name, cfg.render, phrases, cfg.seed, cfg.eval_fraction, cfg.output_format,
               cfg.tokenizer is not None)
    rows = read_source_rows(spec)
    raws: collections.deque[list] = collections.deque()  # per chunk in flight: its rows' raw text

    def chunks(size: int = 1000) -> Iterator:
        # The raw text stays here, for the few rows that go to rejects.jsonl: sending it to the
        # workers too cost the reading process a quarter more time.
        buf, raw_buf = [], []
        for split, where, line, row, raw in rows:
            buf.append((split, where, line, row))
            raw_buf.append(raw)
            if len(buf) == size:
                raws.append(raw_buf)
                yield job, buf
                buf, raw_buf = [], []
        if buf:
            raws.append(raw_buf)
            yield job, buf

    pool = None
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    if cfg.num_proc > 1:
        # Workers tokenize single-threaded; together they fill the cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        pool = ProcessPoolExecutor(cfg.num_proc, initializer=_load_record_tokenizer if cfg.tokenizer else None,
                                   initargs=(cfg.tokenizer, cfg.chat_template) if cfg.tokenizer else ())
    counts = {split: Counter() for split in SPLITS}
    bar = tqdm(desc=f"build {spec.name}", unit=" rows", disable=not cfg.progress, file=sys.stderr)
    try:
        for chunk in _in_order(pool, chunks(), 2 * cfg.num_proc):
            for r, raw in zip(chunk.rows, raws.popleft()):
                report.rows += 1
                if r.status == "invalid":
                    err = r.error
                    if not cfg.skip_invalid:
                        raise DataError(err.where, err.line, err.field,
                                        err.problem + " (use --skip-invalid to set such rows aside and go on)")
                    report.invalid += 1
                    out.rejects.add(reject_entry(err, spec.name, raw, r.row))
                elif r.status == "skip":
                    report.skipped[r.reason] = report.skipped.get(r.reason, 0) + 1
                else:
                    report.examples[r.split] = report.examples.get(r.split, 0) + 1
                    report.no_record += not r.feedback
                    counts[r.split].update(r.feedback)
                    if r.example is not None:
                        out.examples[r.split].add(r.example)
            for split, batch in chunk.records.items():
                out.spills[split].append(batch)
            bar.update(len(chunk.rows))
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)
            if parallelism is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    report.examples = {split: report.examples.get(split, 0) for split in SPLITS}
    report.records = {split: dict(sorted(counts[split].items())) for split in SPLITS}


def reject_entry(err: DataError, source: str, raw: str | bytes | None, row: object) -> dict:
    """A line of rejects.jsonl: where and why (``file``, ``line``, ``field``, ``problem``), the
    source's name, and the row exactly as it was: ``raw``, the line's text without its line
    ending (or the JSON array item's), or ``raw_base64``, its bytes when they are not UTF-8; for
    parquet and hub rows, which have no text, ``row``, the row as read (non-finite numbers as the
    strings "NaN", "Infinity", "-Infinity", so the file stays standard JSON)."""
    out = {**err.as_dict(), "source": source}
    if isinstance(raw, bytes):
        out["raw_base64"] = base64.b64encode(raw.removesuffix(b"\n").removesuffix(b"\r")).decode("ascii")
    elif raw is not None:
        out["raw"] = raw.removesuffix("\n").removesuffix("\r")
    else:
        out["row"] = _finite_json(row)
    return out


def _finite_json(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


# -- rendering again, per epoch ------------------------------------------------------------------
def render_dataset(examples: list[FeedbackExample], spec: RenderSpec, phrases: dict[str, PhraseSet],
                   kinds: dict[str, str], seed: int, epoch: int | None = None) -> list[FeedbackRecord]:
    """Records of many examples; ``kinds`` maps source name to converter kind (for its phrases).

    The build renders as it converts; the trainer calls this with ``epoch`` set to draw fresh
    phrasing every epoch from ``examples/*.jsonl`` (written with ``resample``)."""
    out: list[FeedbackRecord] = []
    for ex in examples:
        out.extend(render_records(ex, spec, phrases_for(kinds.get(ex.source, ex.source), phrases), seed, epoch))
    return out


# -- 5-6. writing ----------------------------------------------------------------------------------
def write_jsonl(rows: list, path: Path) -> None:
    """Write JSON lines (rows given as objects or as ready lines), atomically; standard JSON only
    (a NaN or infinity raises ``ValueError``)."""
    with atomic_writer(path) as f:
        for row in rows:
            # default=str: hub and parquet rows may hold dates and other non-JSON values
            f.write(row if isinstance(row, str) else
                    json.dumps(row, ensure_ascii=False, default=str, allow_nan=False) + "\n")


# Everything a build writes into its folder; summary.json last, as the mark of a complete build.
OUTPUTS = ("train.jsonl", "eval.jsonl", "rejects.jsonl", "examples", "tokenized", "summary.json")
MAX_LISTED = 3  # invalid rows listed in the error of a build that produced nothing


def build(cfg: BuildConfig) -> dict:
    """Run the whole build and return the summary (also written to ``summary.json``).

    The folder holds one build or none: every output is written under a staging folder and moved
    into place at the end (``coh.data.io.staged_outputs``), so a failed build leaves the previous
    one as it was, and outputs of the previous build that this one does not make are removed.

    Memory does not grow with the data: records, examples and rejects are streamed into the
    staging folder as the workers make them (the records as Arrow batches, ``coh.data.spill``),
    and the final shuffle reads them back a bounded bucket at a time."""
    global _RECORD_TOKENIZER
    names = [s.name for s in cfg.sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"several sources are named {dupes}; give each a distinct name=LABEL")
    out_dir = Path(cfg.output_dir)
    check_output_dir(out_dir)  # before any work: a file in the way should not cost a whole build
    if cfg.phrases is not None:
        phrases = cfg.phrases
    else:
        phrases = load_phrases(cfg.phrases_file) if cfg.phrases_file else dict(DEFAULT_PHRASES)
    if cfg.tokenizer:  # load (and check) the tokenizer before any work is done
        _RECORD_TOKENIZER = None
        _load_record_tokenizer(cfg.tokenizer, cfg.chat_template)
    reports: dict[str, SourceReport] = {}
    # What is loaded by now (libraries, the tokenizer: millions of objects) lives as long as the
    # build: the garbage collector need not walk it for every few hundred rows read. Forked
    # workers inherit this.
    gc.freeze()
    try:
        return _build(cfg, phrases, out_dir, reports)
    finally:
        gc.unfreeze()


def _build(cfg: BuildConfig, phrases: dict[str, PhraseSet], out_dir: Path, reports: dict[str, SourceReport]) -> dict:
    with staged_outputs(out_dir, OUTPUTS, marker="summary.json") as stage:
        out = _Outputs({split: Spill(stage / ".records" / f"{split}.arrow") for split in SPLITS},
                       {split: _JsonlSink(stage / "examples" / f"{split}.jsonl", eager=True) for split in SPLITS}
                       if cfg.render.resample else None,
                       _JsonlSink(stage / "rejects.jsonl", keep=MAX_LISTED))
        try:
            for spec in cfg.sources:
                reports[spec.name] = SourceReport()
                build_source(spec, cfg, phrases_for(spec.kind, phrases), reports[spec.name], out)
        finally:
            out.close()
        if not out.spills["train"].rows and not out.spills["eval"].rows:
            raise ValueError(_nothing_built(reports, out.rejects, cfg.render.feedback))
        summary = {
            "seed": cfg.seed,
            "feedback": list(cfg.render.feedback),
            "shared_prefix": cfg.render.shared_prefix,
            "resample": cfg.render.resample,
            "phrases_file": cfg.phrases_file,
            "eval_fraction": cfg.eval_fraction,
            "sources": {n: {**asdict(s), "spec": _spec_json(sp)} for (n, s), sp in zip(reports.items(), cfg.sources)},
            "records": {split: out.spills[split].rows for split in SPLITS},
            "invalid_rows": out.rejects.count,
            "skipped_rows": sum(sum(r.skipped.values()) for r in reports.values()),
        }
        token_stats: dict = {"tokenizer": cfg.tokenizer, "chat_template": cfg.chat_template}
        for split in SPLITS:
            spill = out.spills[split]
            order = shuffle_order(spill.rows, f"{cfg.seed}/shuffle/{split}")
            with _progress(cfg.progress, spill.rows, f"write {split}") as bar:
                stats = write_split(spill, order, stage, split, cfg.tokenizer is not None, bar)
            spill.remove()
            if cfg.tokenizer:
                token_stats[split] = stats
        if cfg.tokenizer:
            summary["tokens"] = token_stats
            from coh.data.tokenize import TOKENIZE_CONFIG, tokenize_config

            saved = {**tokenize_config(_RECORD_TOKENIZER, cfg.tokenizer, cfg.chat_template),
                     "splits": {split: token_stats[split] for split in SPLITS}}
            with atomic_writer(stage / "tokenized" / TOKENIZE_CONFIG) as f:
                json.dump(saved, f, indent=2, ensure_ascii=False)
                f.write("\n")
        with atomic_writer(stage / "summary.json") as f:
            json.dump(summary, f, indent=2, ensure_ascii=False, allow_nan=False)
            f.write("\n")
    return summary


def _progress(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=" records", disable=not enabled, file=sys.stderr)


def write_split(spill: Spill, order: np.ndarray, stage: Path, split: str, tokenized: bool, bar) -> dict | None:
    """Write a split's records in the order ``order`` (``coh.data.spill.read_shuffled``):
    ``{split}.jsonl`` and, with ``tokenized``, ``tokenized/{split}`` (``write_tokenized``), in
    one pass, a bucket at a time. Returns the token counts, or None."""
    with open(stage / f"{split}.jsonl", "wb") as f:
        def lines_written(tables: Iterator) -> Iterator:
            for table in tables:
                for chunk in table.column("line").chunks:
                    f.write(_string_values(chunk))
                bar.update(table.num_rows)
                yield table.drop_columns(["line"])

        tables = lines_written(read_shuffled(spill, order))
        if not tokenized:
            collections.deque(tables, maxlen=0)  # run it through
            return None
        from coh.data.tokenize import TOKEN_COLUMNS

        nbytes = sum(spill.column_nbytes.get(name, 0) for name in TOKEN_COLUMNS)
        return write_tokenized(tables, stage / "tokenized" / split, spill.rows, nbytes)


def _string_values(array) -> memoryview:
    """The bytes of an Arrow string array's values back to back (here: JSONL lines, as the
    workers serialised them), without making Python strings of them."""
    if len(array) == 0:
        return memoryview(b"")
    offsets = np.frombuffer(array.buffers()[1], np.int32, count=array.offset + len(array) + 1)[array.offset :]
    return memoryview(array.buffers()[2])[offsets[0] : offsets[-1]]


def _nothing_built(reports: dict[str, SourceReport], rejects: _JsonlSink, feedback: tuple[str, ...]) -> str:
    """Why a build made no records; the first invalid rows are listed, as no rejects.jsonl is left."""
    rows = sum(r.rows for r in reports.values())
    skipped = sum(sum(r.skipped.values()) for r in reports.values())
    if rows == 0:
        why = "the sources are empty"
    elif rejects.count + skipped == rows:
        why = f"{rejects.count} invalid and {skipped} skipped"
        if rejects.count:
            listed = "; ".join(DataError(r["file"], r["line"], r["field"], r["problem"]).message
                               for r in rejects.head[:MAX_LISTED])
            more = f" (and {rejects.count - MAX_LISTED} more)" if rejects.count > MAX_LISTED else ""
            why += f": {listed}{more}"
    else:
        why = f"feedback types {list(feedback)} apply to none of them (unpaired data supports only p and n)"
    return f"no records were produced from the {rows} rows read: {why}"


def write_tokenized(tables: Iterable, path: Path, num_rows: int, nbytes: int) -> dict:
    """Token ids and loss masks of a split, given in the order of its JSONL file as consecutive
    Arrow tables of ``coh.data.tokenize.TOKEN_COLUMNS``, as a ``datasets`` folder
    (``coh.data.io.write_dataset_folder``; ``nbytes``: their size in memory). Returns the counts."""
    import pyarrow.compute as pc

    from coh.data.tokenize import token_features

    stats = {"records": 0, "tokens": 0, "loss_tokens": 0, "max_length": 0}

    def counted(tables: Iterable) -> Iterator:
        for table in tables:
            stats["records"] += table.num_rows
            if table.num_rows:
                stats["tokens"] += pc.sum(table.column("length")).as_py()
                stats["loss_tokens"] += pc.sum(table.column("loss_tokens")).as_py()
                stats["max_length"] = max(stats["max_length"], pc.max(table.column("length")).as_py())
            yield table

    write_dataset_folder(counted(tables), path, token_features(), num_rows, nbytes)
    return stats


def _spec_json(spec: SourceSpec) -> dict:
    return {"kind": spec.kind, "files": spec.files, "hub": spec.hub, "config": spec.config, "limit": spec.limit}
