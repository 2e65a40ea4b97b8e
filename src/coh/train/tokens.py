"""Training tokens on disk, memory-mapped: the tokenized build when it was made as this run
would tokenize, else a cache tokenized once (by rank 0, in worker processes).

A run never holds every record's token ids as Python lists. The ids and loss masks stay in
Arrow files (``datasets`` folders with the columns of ``coh.data.tokenize.TOKEN_COLUMNS``) mapped
into memory; packing plans from the lengths (the list offsets) alone; a micro-batch's records are
gathered from the map when it is collated. The pages a process reads are the operating system's
page cache, shared by every process of a ``torchrun`` job that maps the same files.

- ``usable_build``: ``<build>/tokenized/<split>`` if ``tokenized/coh_tokenize.json`` matches this
  run's tokenizer (fingerprint), chat-template setting and ``max_length``, the training mode
  keeps the records as built, and the folder holds the rows of the JSONL beside it; else the
  one-line reason why not.
- ``tokenize_to_folder``: records into such a folder, chunk by chunk in worker processes (forked:
  they inherit the parent's tokenizer), written atomically; ``cached_tokens`` does it on rank 0
  only, once per cache key, while the other ranks wait on a barrier.
- ``MappedTokens``: a folder as the ``TokenizedSet`` interface the loop uses (``input_ids[i]``,
  ``loss_mask[i]``, ``sources[i]``, ``targets(i)``, ``lengths``), after the overlong policy.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from coh.data.records import FeedbackRecord
from coh.data.tokenize import (
    TOKENIZE_CONFIG,
    RecordTokenizer,
    read_tokenize_config,
    token_features,
    tokenize_config,
    tokenize_config_mismatch,
    tokens_batch,
)
from coh.data.workers import in_order
from coh.train.packing import fit_lengths

CACHE_FORMAT = 1  # of the token cache folders; raised when their layout or key changes
CHUNK_RECORDS = 1000  # records per worker task: one batched tokenizer call, one Arrow batch


# -- the build's tokens ---------------------------------------------------------------------------
def run_tokenize_config(rtok: RecordTokenizer, name: str) -> dict:
    """``coh.data.tokenize.tokenize_config`` of this run's record tokenizer."""
    return tokenize_config(rtok, name, rtok.chat_template)


def usable_build(records_path: Path, rtok: RecordTokenizer, name: str, max_length: int, mode: str
                 ) -> tuple[Path | None, str]:
    """The tokenized build of ``records_path`` (``<dir>/tokenized/<stem>`` of a ``coh data build``
    folder) if its ids are those this run would make, with ``""``; else ``None`` and why not, in
    one line (which field differs)."""
    folder = records_path.parent / "tokenized" / records_path.stem
    if not (folder.parent / TOKENIZE_CONFIG).exists():
        return None, f"{folder.parent / TOKENIZE_CONFIG} not found (build with `coh data build --tokenizer` to skip this)"
    if mode != "coh":
        return None, f"mode {mode} trains other records than the build's (mode coh) tokenized ones"
    try:
        saved = read_tokenize_config(folder.parent)
    except ValueError as e:
        return None, str(e)
    differences = tokenize_config_mismatch(saved, run_tokenize_config(rtok, name), max_length)
    if differences:
        return None, f"{folder.parent / TOKENIZE_CONFIG} differs from this run: " + "; ".join(differences)
    if not folder.is_dir():
        return None, f"{folder}: no such folder"
    import datasets

    try:
        rows = datasets.load_from_disk(str(folder)).num_rows
    except Exception as e:  # datasets and pyarrow raise many types; the tokens are a cache of the JSONL
        return None, f"{folder} cannot be read ({type(e).__name__}: {e})"
    lines = count_lines(records_path)
    if rows != lines:
        return None, f"{folder} holds {rows} records, {records_path} {lines}: not the same build"
    return folder, ""


def count_lines(path: Path) -> int:
    """Lines that are not blank in a JSONL file (gzip allowed): its records, no JSON parsed."""
    import gzip

    with (gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")) as f:
        return sum(1 for line in f if line.strip())


# -- tokenizing into a folder ---------------------------------------------------------------------
_WORKER_RTOK: RecordTokenizer | None = None  # set in the parent before forking: workers inherit it


def _tokens_table(records: list[FeedbackRecord]):
    import pyarrow as pa

    tokenized = _WORKER_RTOK.batch(records)
    batch = tokens_batch([r.id for r in records], [r.source for r in records], [r.feedback for r in records], tokenized)
    return pa.Table.from_batches([batch])


def _chunks(records: Iterable[FeedbackRecord], size: int) -> Iterator[list[FeedbackRecord]]:
    chunk: list[FeedbackRecord] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def tokenize_to_folder(records: Iterable[FeedbackRecord], num_records: int, rtok: RecordTokenizer, folder: Path,
                       num_proc: int | None = None, chunk_records: int = CHUNK_RECORDS) -> None:
    """Tokenize ``num_records`` records (in order) into the ``datasets`` folder ``folder``, written
    under a temporary name and renamed when complete. ``num_proc`` worker processes (default: the
    CPU count) each tokenize a chunk of ``chunk_records`` at a time; a few chunks are in flight,
    so memory does not grow with the records."""
    global _WORKER_RTOK
    from concurrent.futures import ProcessPoolExecutor

    from coh.data.writing import write_dataset_folder

    num_proc = num_proc or os.cpu_count() or 1
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _WORKER_RTOK = rtok
    chunks = _chunks(records, chunk_records)
    first = next(chunks, [])
    try:
        # nbytes 0: one shard, which load_from_disk maps as any other
        if num_proc == 1 or len(first) < chunk_records:  # one chunk or one process: no pool to start
            write_dataset_folder(map(_tokens_table, _prepend(first, chunks)), tmp, token_features(), num_records, 0)
        else:
            # fork: the workers inherit the loaded tokenizer instead of loading it again
            with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork")) as pool:
                tables = in_order(pool, _tokens_table, _prepend(first, chunks), 2 * num_proc)
                write_dataset_folder(tables, tmp, token_features(), num_records, 0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _WORKER_RTOK = None
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _prepend(first: list, rest: Iterator) -> Iterator:
    if first:
        yield first
    yield from rest


def cache_key(parts: dict) -> str:
    """A short hash of what decides a cache folder's contents."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cached_tokens(folder: Path, make: callable) -> Path:
    """``folder``, made by ``make(folder)`` if it does not exist yet: on rank 0 only, while the
    other ranks of a ``torch.distributed`` job wait on a barrier, then map what it wrote."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if (not distributed or dist.get_rank() == 0) and not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        make(folder)
    if distributed:
        dist.barrier()
    return folder


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# -- reading: the memory map ----------------------------------------------------------------------
class _Gather(Sequence):
    """``[i]``: record ``i``'s tokens (a list of ints) read from the mapped column chunks."""

    def __init__(self, owner: MappedTokens, values: list[np.ndarray]):
        self.owner, self.values = owner, values

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, i: int) -> list[int]:
        chunk, start, end = self.owner.span(i)
        return self.values[chunk][start:end].tolist()


class _Sources(Sequence):
    def __init__(self, owner: MappedTokens):
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, i: int) -> str:
        return self.owner.source_names[self.owner.source_index[self.owner.row[i]]]


class MappedTokens:
    """The records of a tokenized ``datasets`` folder, memory-mapped, after the overlong policy
    (``coh.train.packing.fit_lengths``): record ``i`` is tokens ``start[i] : start[i] + lengths[i]``
    of row ``row[i]``. Reading the folder touches only the list offsets and the source names;
    token ids and masks are read when a record is gathered."""

    def __init__(self, folder: Path, max_length: int, overlong: str):
        import datasets

        self.folder = Path(folder)
        table = datasets.load_from_disk(str(folder)).data.table  # pyarrow Table over the mapped files
        ids_chunks, mask_chunks = table.column("input_ids").chunks, table.column("loss_mask").chunks
        self._ids = [c.values.to_numpy(zero_copy_only=True) for c in ids_chunks]
        self._mask = [c.values.to_numpy(zero_copy_only=True) for c in mask_chunks]
        row_chunk, row_start, row_length = [], [], []
        for k, (ids, mask) in enumerate(zip(ids_chunks, mask_chunks)):
            offsets = ids.offsets.to_numpy()
            if not np.array_equal(offsets, mask.offsets.to_numpy()):
                raise ValueError(f"{folder}: input_ids and loss_mask differ in length in some records")
            row_chunk.append(np.full(len(ids), k, np.int32))
            row_start.append(offsets[:-1].astype(np.int64))
            row_length.append(np.diff(offsets).astype(np.int64))
        self.row_chunk = np.concatenate(row_chunk) if row_chunk else np.zeros(0, np.int32)
        self.row_start = np.concatenate(row_start) if row_start else np.zeros(0, np.int64)
        self.row_length = np.concatenate(row_length) if row_length else np.zeros(0, np.int64)
        self.source_names, self.source_index = _dictionary(table.column("source"))
        fitted = fit_lengths(self.row_length, max_length, overlong)
        self.row, self.start, self.lengths = fitted.origin, fitted.start, fitted.length
        self.overlong, self.tokens_dropped = fitted.overlong, fitted.tokens_dropped
        self.loss_tokens = table.column("loss_tokens").to_numpy()
        self.input_ids, self.loss_mask, self.sources = _Gather(self, self._ids), _Gather(self, self._mask), _Sources(self)

    def __len__(self) -> int:
        return len(self.row)

    def span(self, i: int) -> tuple[int, int, int]:
        """(column chunk, first, end) of record ``i``'s tokens in that chunk's flat values."""
        r = self.row[i]
        start = int(self.row_start[r] + self.start[i])
        return int(self.row_chunk[r]), start, start + int(self.lengths[i])

    def targets(self, index: int) -> int:
        """Target tokens of a record (its first token is never a target)."""
        chunk, start, end = self.span(index)
        return int(np.count_nonzero(self._mask[chunk][start + 1 : end]))

    def has_targets(self) -> bool:
        """Whether any record has a target token; decided by the ``loss_tokens`` column where it
        can be (a record with two or more loss tokens has a target), else record by record."""
        whole = self.lengths == self.row_length[self.row]  # records not cut by the overlong policy
        if bool((self.loss_tokens[self.row[whole]] >= 2).any()):
            return True
        return any(self.targets(i) for i in range(len(self)))


def _dictionary(column) -> tuple[list[str], np.ndarray]:
    """(distinct values, index of each row's value) of a string column, chunk by chunk."""
    names: list[str] = []
    position: dict[str, int] = {}
    parts = []
    for chunk in column.chunks:
        encoded = chunk.dictionary_encode()
        local = [position.setdefault(name, len(position)) for name in encoded.dictionary.to_pylist()]
        parts.append(np.asarray(local, np.int32)[encoded.indices.to_numpy(zero_copy_only=False)] if local
                     else np.zeros(0, np.int32))
    names = list(position)
    return names, (np.concatenate(parts) if parts else np.zeros(0, np.int32))
