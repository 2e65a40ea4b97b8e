"""Helpers the data tests share: small writers and readers that coh itself does not need."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from coh.data.fields import record_to_fields
from coh.data.io import atomic_writer
from coh.data.records import FeedbackRecord
from coh.data.tokenize import RecordTokenizer, token_features, tokenize_many, tokens_batch


def write_records(records: Iterable[FeedbackRecord], path: str | Path) -> int:
    """Write records as JSONL (atomically: a temporary file renamed into place). Returns the count."""
    n = 0
    with atomic_writer(path) as f:
        for rec in records:
            f.write(rec.to_line())
            n += 1
    return n


def write_fields_file(records: Iterable[FeedbackRecord], path: str | Path) -> int:
    """Write records in the original format, atomically. Returns the count."""
    n = 0
    with atomic_writer(path) as f:
        for rec in records:
            f.write(json.dumps(record_to_fields(rec), ensure_ascii=False) + "\n")
            n += 1
    return n


def tokenize_records(records: Sequence[FeedbackRecord], record_tokenizer: RecordTokenizer, batch_size: int = 1000):
    """Records tokenized into a ``datasets.Dataset`` of ``coh.data.tokenize.tokens_batch``'s
    columns, one row per record, same order: the reference the build's ``tokenized/`` is checked against."""
    import datasets
    import pyarrow as pa

    records = list(records)
    tokenized = tokenize_many(records, record_tokenizer, batch_size)
    batch = tokens_batch([r.id for r in records], [r.source for r in records], [r.feedback for r in records],
                         tokenized)
    return datasets.Dataset(pa.Table.from_batches([batch]), info=datasets.DatasetInfo(features=token_features()))
