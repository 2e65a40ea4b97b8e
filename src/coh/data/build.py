"""``coh data build``: raw feedback datasets into Chain-of-Hindsight records.

The whole flow, top to bottom:

1. ``read_source``: each source's rows, with the file (or hub dataset) and line of each row.
2. ``convert_rows``: rows into ``FeedbackExample`` s (``coh.data.sources``); bad rows raise a
   ``DataError`` naming file, line and field, or with ``skip_invalid`` go to ``rejects.jsonl``.
3. ``assign_splits``: the dataset's own train/eval splits, or a seeded held-out split.
4. ``render_dataset``: examples into records under the feedback types (``coh.data.render``).
5. writing: all sources mixed into ``train.jsonl`` / ``eval.jsonl`` (seeded shuffle), the
   examples (for fresh phrasing per epoch), ``summary.json`` and the rejects.
6. with a tokenizer, ``tokenized/{train,eval}``: token ids and loss masks as ``datasets`` on
   disk, so training need not tokenize again (``coh.data.tokenize``).

Same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coh.data.errors import DataError, RowError
from coh.data.feedback import FeedbackExample
from coh.data.io import atomic_writer, iter_hub_rows, iter_local_rows
from coh.data.phrases import DEFAULT_PHRASES, PhraseSet, load_phrases, phrases_for
from coh.data.records import FeedbackRecord
from coh.data.render import RenderSpec, render_records
from coh.data.sources import CONVERTERS, HUB_DEFAULTS, Skip

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
        if self.kind not in CONVERTERS:
            raise ValueError(f"unknown source kind '{self.kind}'; expected one of {sorted(CONVERTERS)}")
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
            if not eq:
                spec["files"]["train"] = part
            elif key in SPLITS:
                spec["files"][key] = value
            elif key == "hub":
                spec["hub"], _, config = value.partition("@")
                spec["config"] = config or None
            elif key == "name":
                spec["name"] = value
            elif key == "limit":
                spec["limit"] = int(value)
            else:
                raise ValueError(f"source '{text}': unknown option '{key}'; expected train=, eval=, hub=, name=, limit=")
        return SourceSpec(**spec)


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
    chat_template: bool = False
    output_format: str = "coh"


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
def read_source(spec: SourceSpec) -> Iterator[tuple[str, str, int, object]]:
    """Yield ``(split, where, line, row)`` for every row of a source, ``split`` being train/eval
    for the dataset's own splits or ``""`` where it has none."""
    if spec.files:
        own_eval = "eval" in spec.files
        for split, path in spec.files.items():
            for line, row in _limited(iter_local_rows(path), spec.limit):
                yield (split if own_eval else ""), path, line, row
        return
    import datasets

    where = f"hub dataset {spec.hub}" + (f" ({spec.config})" if spec.config else "")
    try:
        names = list(datasets.load_dataset(spec.hub, spec.config).keys())
    except Exception as e:  # datasets raises many types; report which dataset failed and why
        raise DataError(where, None, None, f"cannot load: {type(e).__name__}: {e}") from None
    eval_name = next((n for n in _EVAL_SPLIT_NAMES if n in names), None)
    if "train" not in names:
        raise DataError(where, None, None, f"has no 'train' split (splits: {names})")
    for ours, theirs in (("train", "train"), ("eval", eval_name)):
        if theirs is None:
            continue
        for line, row in _limited(iter_hub_rows(spec.hub, spec.config, theirs), spec.limit):
            yield (ours if eval_name else ""), f"{where} split {theirs}", line, row


def _limited(rows: Iterator, limit: int | None) -> Iterator:
    for i, item in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield item


# -- 2. converting (and rendering, in the same worker: both are per-row and seeded per example) ---
@dataclass(frozen=True)
class _Job:
    kind: str
    name: str
    render: RenderSpec
    phrases: PhraseSet
    seed: int


def _convert_chunk(args: tuple[_Job, list[tuple[str, str, int, object]]]) -> list:
    """Per row: ``(split, example, records)``, ``(split, Skip)`` or ``(split, DataError, row)``."""
    job, chunk = args
    convert = CONVERTERS[job.kind]
    epoch = 0 if job.render.resample else None
    out: list = []
    for split, where, line, row in chunk:
        ex_id = f"{job.name}/{split}/{line}" if split else f"{job.name}/{line}"
        try:
            if not isinstance(row, dict):
                raise RowError(None, f"expected a JSON object, got {type(row).__name__}")
            result = convert(row, ex_id, split or "train")
        except RowError as e:
            out.append((split, e.at(where, line), row))
            continue
        if isinstance(result, Skip):
            out.append((split, result))
            continue
        if result.source != job.name:
            result = dataclasses.replace(result, source=job.name)
        out.append((split, result, render_records(result, job.render, job.phrases, job.seed, epoch)))
    return out


def convert_rows(spec: SourceSpec, cfg: BuildConfig, phrases: PhraseSet, report: SourceReport,
                 rejects: list[dict]) -> dict[str, list[tuple[FeedbackExample, list[FeedbackRecord]]]]:
    """Examples of one source, each with its records, by split (``""``: no split of its own yet)."""
    from tqdm import tqdm

    job = _Job(spec.kind, spec.name, cfg.render, phrases, cfg.seed)
    by_split: dict[str, list] = {"train": [], "eval": [], "": []}
    rows = read_source(spec)
    bar = tqdm(desc=f"build {spec.name}", unit=" rows", disable=not cfg.progress, file=sys.stderr)

    def chunks(size: int = 2000) -> Iterator:
        buf = []
        for item in rows:
            buf.append(item)
            if len(buf) == size:
                yield job, buf
                buf = []
        if buf:
            yield job, buf

    pool = ProcessPoolExecutor(cfg.num_proc) if cfg.num_proc > 1 else None
    try:
        results = pool.map(_convert_chunk, chunks()) if pool else map(_convert_chunk, chunks())
        for chunk in results:
            for split, result, *rest in chunk:
                report.rows += 1
                if isinstance(result, DataError):
                    if not cfg.skip_invalid:
                        raise DataError(result.where, result.line, result.field,
                                        result.problem + " (use --skip-invalid to set such rows aside and go on)")
                    report.invalid += 1
                    rejects.append({**result.as_dict(), "source": spec.name, "row": rest[0]})
                elif isinstance(result, Skip):
                    report.skipped[result.reason] = report.skipped.get(result.reason, 0) + 1
                else:
                    report.no_record += not rest[0]
                    by_split[split].append((result, rest[0]))
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    return by_split


# -- 3. splits -----------------------------------------------------------------------------------
def assign_splits(by_split: dict[str, list], eval_fraction: float, seed: int, name: str) -> dict[str, list]:
    """Keep the dataset's splits; hold out ``eval_fraction`` of split-less examples (seeded, exact count)."""
    pool = by_split.pop("")
    if pool:
        n_eval = round(len(pool) * eval_fraction)
        order = list(range(len(pool)))
        random.Random(f"{seed}/split/{name}").shuffle(order)
        held = set(order[:n_eval])
        for i, (ex, recs) in enumerate(pool):
            split = "eval" if i in held else "train"
            if split != ex.split:
                ex = dataclasses.replace(ex, split=split)
                recs = [dataclasses.replace(r, split=split) for r in recs]
            by_split[split].append((ex, recs))
    return by_split


# -- 4. rendering again, per epoch -------------------------------------------------------------------
def render_dataset(examples: list[FeedbackExample], spec: RenderSpec, phrases: dict[str, PhraseSet],
                   kinds: dict[str, str], seed: int, epoch: int | None = None) -> list[FeedbackRecord]:
    """Records of many examples; ``kinds`` maps source name to converter kind (for its phrases).

    The build renders as it converts; the trainer calls this with ``epoch`` set to draw fresh
    phrasing every epoch from ``examples/*.jsonl``."""
    out: list[FeedbackRecord] = []
    for ex in examples:
        out.extend(render_records(ex, spec, phrases_for(kinds.get(ex.source, ex.source), phrases), seed, epoch))
    return out


# -- 5. writing ----------------------------------------------------------------------------------
def write_jsonl(rows: list, path: Path) -> None:
    with atomic_writer(path) as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) + "\n")


def build(cfg: BuildConfig) -> dict:
    """Run the whole build and return the summary (also written to ``summary.json``)."""
    names = [s.name for s in cfg.sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"several sources are named {dupes}; give each a distinct name=LABEL")
    if cfg.phrases is not None:
        phrases = cfg.phrases
    else:
        phrases = load_phrases(cfg.phrases_file) if cfg.phrases_file else dict(DEFAULT_PHRASES)
    out_dir = Path(cfg.output_dir)
    rejects: list[dict] = []
    reports: dict[str, SourceReport] = {}
    examples: dict[str, list[FeedbackExample]] = {"train": [], "eval": []}
    records: dict[str, list[FeedbackRecord]] = {"train": [], "eval": []}
    for spec in cfg.sources:
        report = reports[spec.name] = SourceReport()
        converted = convert_rows(spec, cfg, phrases_for(spec.kind, phrases), report, rejects)
        by_split = assign_splits(converted, cfg.eval_fraction, cfg.seed, spec.name)
        for split in SPLITS:
            recs = [r for _, rs in by_split[split] for r in rs]
            report.examples[split] = len(by_split[split])
            report.records[split] = dict(sorted(Counter(r.feedback for r in recs).items()))
            examples[split].extend(ex for ex, _ in by_split[split])
            records[split].extend(recs)
    if not records["train"] and not records["eval"]:
        raise ValueError(
            f"no records were produced: feedback types {list(cfg.render.feedback)} apply to none of the "
            f"{sum(r.rows for r in reports.values())} rows read (unpaired data supports only p and n)"
        )
    for split in SPLITS:
        random.Random(f"{cfg.seed}/shuffle/{split}").shuffle(records[split])
        if cfg.output_format == "fields":
            from coh.data.fields import record_to_fields

            write_jsonl([record_to_fields(r) for r in records[split]], out_dir / f"{split}.jsonl")
        else:
            write_jsonl([r.to_line() for r in records[split]], out_dir / f"{split}.jsonl")
        write_jsonl([ex.to_json() for ex in examples[split]], out_dir / "examples" / f"{split}.jsonl")
    if rejects:
        write_jsonl(rejects, out_dir / "rejects.jsonl")
    elif (out_dir / "rejects.jsonl").exists():
        os.unlink(out_dir / "rejects.jsonl")
    summary = {
        "seed": cfg.seed,
        "feedback": list(cfg.render.feedback),
        "shared_prefix": cfg.render.shared_prefix,
        "resample": cfg.render.resample,
        "phrases_file": cfg.phrases_file,
        "sources": {n: {**asdict(s), "spec": _spec_json(sp)} for (n, s), sp in zip(reports.items(), cfg.sources)},
        "records": {split: len(records[split]) for split in SPLITS},
        "invalid_rows": len(rejects),
        "skipped_rows": sum(sum(r.skipped.values()) for r in reports.values()),
    }
    if cfg.tokenizer:
        summary["tokens"] = tokenize_outputs(records, cfg, out_dir)
    with atomic_writer(out_dir / "summary.json") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return summary


def tokenize_outputs(records: dict[str, list[FeedbackRecord]], cfg: BuildConfig, out_dir: Path) -> dict:
    """Tokenize each split into ``out_dir/tokenized/<split>`` and return token counts."""
    from transformers import AutoTokenizer

    from coh.data.tokenize import RecordTokenizer, tokenize_records

    tok = RecordTokenizer(AutoTokenizer.from_pretrained(cfg.tokenizer), chat_template=cfg.chat_template)
    stats = {"tokenizer": cfg.tokenizer, "chat_template": tok.chat_template}
    for split in SPLITS:
        ds = tokenize_records(records[split], tok, progress=cfg.progress)
        ds.save_to_disk(str(out_dir / "tokenized" / split))
        lengths = ds.data.column("length").to_pylist()
        stats[split] = {
            "records": len(ds),
            "tokens": int(sum(lengths)),
            "loss_tokens": int(sum(ds.data.column("loss_tokens").to_pylist())),
            "max_length": int(max(lengths, default=0)),
        }
    return stats


def _spec_json(spec: SourceSpec) -> dict:
    return {"kind": spec.kind, "files": spec.files, "hub": spec.hub, "config": spec.config, "limit": spec.limit}
