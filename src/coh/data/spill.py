"""Records kept on disk while a build runs, read back in a seeded shuffle with bounded memory.

A build appends each chunk of records (an Arrow record batch: the JSONL line and, with a
tokenizer, the token columns) to one ``Spill`` per split, in file order, so the parent never
holds more than a few chunks. At the end ``read_shuffled`` hands the split back in the order of
a permutation of all its records (``shuffle_order``: the very permutation an in-memory
``random.shuffle`` of the records would make, so the output does not change with this), in
tables of at most about ``bucket_bytes``:

- a spill within ``bucket_bytes`` is read whole and reordered in memory;
- a larger one is shuffled on disk in two sequential passes (an external "bucket" shuffle):
  the records are scattered, chunk by chunk, into ``k`` bucket files by the output position
  they are to take (bucket ``b`` holds positions ``b*size ... (b+1)*size - 1``), then each
  bucket, small enough for memory, is read and put in order. Memory: one bucket, whatever the
  number of records; disk: the spill twice over, for the time of the write.

Arrow IPC streams are used as they are: typed columns, no per-row Python objects, and no
parsing on the way back.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

BUCKET_BYTES = 64 << 20  # per table read back; memory of the final write is about twice this
_RANK = "__coh_rank"  # the output position, carried through the bucket files


def shuffle_order(n: int, seed: str) -> np.ndarray:
    """The seeded permutation of ``range(n)``: ``order[k]`` is the record that goes to position ``k``.

    Exactly ``random.Random(seed).shuffle(list(range(n)))``, so it matches an in-memory shuffle."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return np.array(order, dtype=np.int64)


class Spill:
    """Record batches of one schema appended to an Arrow IPC stream file, in order.

    ``rows``, ``nbytes`` (the batches' in-memory size) and ``column_nbytes`` (per column)
    count what was appended."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows = 0
        self.nbytes = 0
        self.column_nbytes: dict[str, int] = {}
        self.schema: pa.Schema | None = None
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def append(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.schema = batch.schema
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, batch.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows
        self.nbytes += batch.nbytes
        for name, column in zip(batch.schema.names, batch.columns):
            self.column_nbytes[name] = self.column_nbytes.get(name, 0) + column.nbytes

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The appended batches, in order, read one at a time (not memory-mapped: a mapped file's
        pages would count as the process's memory)."""
        self.close()
        if self.rows == 0:
            return
        yield from _read_batches(self.path)

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _read_batches(path: Path) -> Iterator[pa.RecordBatch]:
    with pa.OSFile(str(path), "rb") as source:
        yield from pa.ipc.open_stream(source)


def read_shuffled(spill: Spill, order: np.ndarray, bucket_bytes: int | None = None) -> Iterator[pa.Table]:
    """The spill's rows in the order ``order`` (a permutation of ``range(spill.rows)``), as
    consecutive tables of at most about ``bucket_bytes`` (default ``BUCKET_BYTES``; see the
    module docstring)."""
    bucket_bytes = bucket_bytes or BUCKET_BYTES
    n = spill.rows
    if len(order) != n:
        raise ValueError(f"order has {len(order)} positions for {n} rows")
    if n == 0:
        return
    buckets = min(n, math.ceil(spill.nbytes / bucket_bytes))
    if buckets <= 1:
        yield pa.Table.from_batches(list(spill.batches()), spill.schema).take(order)
        return
    size = math.ceil(n / buckets)  # output positions per bucket
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)  # the output position of each spilled row
    folder = spill.path.with_name(spill.path.name + ".buckets")
    folder.mkdir(parents=True, exist_ok=True)
    schema = spill.schema.append(pa.field(_RANK, pa.int64()))
    paths = [folder / f"{b:05d}.arrow" for b in range(buckets)]
    sinks = [pa.OSFile(str(p), "wb") for p in paths]
    writers = [pa.ipc.new_stream(s, schema) for s in sinks]
    try:
        start = 0
        for batch in spill.batches():  # pass 1: scatter each chunk into the buckets of its rows
            ranks = rank[start : start + batch.num_rows]
            start += batch.num_rows
            of_bucket = ranks // size
            by_bucket = np.argsort(of_bucket, kind="stable")
            bounds = np.searchsorted(of_bucket[by_bucket], np.arange(buckets + 1))
            for b in np.flatnonzero(np.diff(bounds)):
                rows = by_bucket[bounds[b] : bounds[b + 1]]
                part = batch.take(pa.array(rows))
                writers[b].write_batch(pa.RecordBatch.from_arrays([*part.columns, pa.array(ranks[rows])],
                                                                  schema=schema))
    finally:
        for w, s in zip(writers, sinks):
            w.close()
            s.close()
    del rank
    try:
        for b, path in enumerate(paths):  # pass 2: each bucket in memory, put in order
            table = pa.Table.from_batches(list(_read_batches(path)), schema)
            path.unlink()
            in_order = np.empty(table.num_rows, dtype=np.int64)
            in_order[table.column(_RANK).to_numpy() - b * size] = np.arange(table.num_rows)
            yield table.drop_columns([_RANK]).take(in_order)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
        folder.rmdir()
