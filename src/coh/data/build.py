"""``coh data build``: raw feedback datasets into Chain-of-Hindsight records.

The whole flow, top to bottom:

1. ``read_source_rows`` (``coh.data.reading``): each source's rows, with the file (or hub
   dataset) and line of each row, and its raw text; a line that is not JSON comes as a
   ``DataError``, a file that cannot be read raises one.
2. ``coh.data.workers`` (in ``num_proc`` worker processes, chunk by chunk): rows into
   ``FeedbackExample`` s (``coh.data.sources``); bad rows raise a ``DataError`` naming file, line
   and field, or with ``skip_invalid`` go to ``rejects.jsonl`` with their raw text
   (``coh.data.outputs.reject_entry``). The dataset's own train/eval split, or a seeded held-out
   split (``held_out``). Examples into records under the feedback types (``coh.data.render``),
   serialised, and tokenized when a tokenizer is given; sent back as one Arrow record batch per
   split.
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

import collections
import gc
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from coh.data.config import OUTPUT_FORMATS
from coh.data.errors import DataError, describe
from coh.data.outputs import MAX_LISTED, BuildOutputs, JsonlSink, nothing_built, reject_entry, write_jsonl
from coh.data.phrases import DEFAULT_PHRASES, PhraseSet, load_phrases, phrases_for
from coh.data.reading import SPLITS, SourceRow, SourceSpec, read_source_rows
from coh.data.render import RenderSpec, render_dataset
from coh.data.spill import Spill, read_shuffled, shuffle_order
from coh.data.tokenize import CHAT_TEMPLATE_MODES
from coh.data.workers import Job, held_out, in_order, load_record_tokenizer, record_tokenizer, work
from coh.data.writing import atomic_writer, check_output_dir, staged_outputs, write_dataset_folder

# The build's entry points, and the names other modules have imported from here (their homes:
# coh.data.reading, coh.data.workers, coh.data.render, coh.data.outputs).
__all__ = ["OUTPUTS", "SPLITS", "BuildConfig", "SourceReport", "SourceRow", "SourceSpec", "build", "build_source",
           "held_out", "read_source_rows", "reject_entry", "render_dataset", "write_jsonl", "write_split",
           "write_tokenized"]


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
        for key, allowed in (("output_format", OUTPUT_FORMATS), ("chat_template", CHAT_TEMPLATE_MODES)):
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


def build_source(spec: SourceSpec, cfg: BuildConfig, phrases: PhraseSet, report: SourceReport, out: BuildOutputs) -> None:
    """Read, convert and render one source into ``out``, counting everything in ``report``."""
    from tqdm import tqdm

    job = Job(spec.kind, spec.name, cfg.render, phrases, cfg.seed, cfg.eval_fraction, cfg.output_format,
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
        pool = ProcessPoolExecutor(cfg.num_proc, initializer=load_record_tokenizer if cfg.tokenizer else None,
                                   initargs=(cfg.tokenizer, cfg.chat_template) if cfg.tokenizer else ())
    counts = {split: Counter() for split in SPLITS}
    bar = tqdm(desc=f"build {spec.name}", unit=" rows", disable=not cfg.progress, file=sys.stderr)
    try:
        for chunk in in_order(pool, work, chunks(), 2 * cfg.num_proc):
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


# -- 5-6. writing ----------------------------------------------------------------------------------
# Everything a build writes into its folder; summary.json last, as the mark of a complete build.
OUTPUTS = ("train.jsonl", "eval.jsonl", "rejects.jsonl", "examples", "tokenized", "summary.json")


def build(cfg: BuildConfig) -> dict:
    """Run the whole build and return the summary (also written to ``summary.json``).

    The folder holds one build or none: every output is written under a staging folder and moved
    into place at the end (``coh.data.io.staged_outputs``), so a failed build leaves the previous
    one as it was, and outputs of the previous build that this one does not make are removed.

    Memory does not grow with the data: records, examples and rejects are streamed into the
    staging folder as the workers make them (the records as Arrow batches, ``coh.data.spill``),
    and the final shuffle reads them back a bounded bucket at a time."""
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
        load_record_tokenizer(cfg.tokenizer, cfg.chat_template, reload=True)
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
        out = BuildOutputs({split: Spill(stage / ".records" / f"{split}.arrow") for split in SPLITS},
                       {split: JsonlSink(stage / "examples" / f"{split}.jsonl", eager=True) for split in SPLITS}
                       if cfg.render.resample else None,
                       JsonlSink(stage / "rejects.jsonl", keep=MAX_LISTED))
        try:
            for spec in cfg.sources:
                reports[spec.name] = SourceReport()
                build_source(spec, cfg, phrases_for(spec.kind, phrases), reports[spec.name], out)
        finally:
            out.close()
        if not out.spills["train"].rows and not out.spills["eval"].rows:
            raise ValueError(nothing_built(reports, out.rejects, cfg.render.feedback))
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

            saved = {**tokenize_config(record_tokenizer(), cfg.tokenizer, cfg.chat_template),
                     "splits": {split: token_stats[split] for split in SPLITS}}
            with atomic_writer(stage / "tokenized" / TOKENIZE_CONFIG) as f:
                json.dump(saved, f, indent=2, ensure_ascii=False)
                f.write("\n")
        if cfg.render.resample:  # what coh train needs to render the examples afresh each epoch
            from coh.data.render import RENDER_CONFIG, render_settings

            with atomic_writer(stage / "examples" / RENDER_CONFIG) as f:
                json.dump(render_settings(summary), f, indent=2, ensure_ascii=False)
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
