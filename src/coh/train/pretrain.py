"""Plain text for the CoH pretraining regulariser, packed into micro-batches in stream order. Sources:
``"c4"`` (hub ``allenai/c4``, config ``en``, streamed); ``"hub:NAME"`` or any name that is not a local
path (a hub dataset); a ``.txt`` file (a document per non-blank line); a JSON Lines file (``.jsonl``,
``.json``; document = ``obj[text_field]``), gzipped or not; a directory of such files (sorted, not recursive).
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import torch

from coh.data.errors import DataError, describe
from coh.data.tokenize import encode_texts, tokenizer_adds_bos
from coh.train.packing import collate_packed

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES
_TOKENIZE_BATCH = 128  # documents per call to the Rust tokenizer: amortises the call, bounds memory
_SHUFFLE_BUFFER = 10_000  # documents held by a streamed hub dataset's shuffle buffer
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, written by some editors


class PretrainStream:
    """An endless stream of packed next-token micro-batches of plain text.

    Each document becomes ``[BOS] + tokens + [EOS]``, BOS only where the tokenizer adds one by itself
    (``tokenizer_adds_bos``); blank documents are skipped. A document longer than ``max_length`` is cut
    into pieces of ``max_length`` tokens, each a document of its own. Every token but a piece's first is
    a target. ``next_batch(capacity)`` packs pieces whole, in stream order, into at most ``capacity``
    tokens; the first piece that does not fit waits for the next call (nothing lost, nothing reordered).
    At the end of the source the next pass starts (``epoch``, 0-based: the pass of the last document
    begun); ``tokens_served`` and ``batches_served`` count what was served.

    Order: local files are read in order; hub datasets are shuffled with ``seed + epoch`` (a buffer of
    10,000 documents when streamed). ``config``, ``split`` and ``streaming`` apply to hub datasets
    (``streaming`` defaults to True for ``"c4"``, else False). Nothing is read before the first batch.

    ``shard=(rank, world)``: this process reads only its share of the documents (every
    ``world``-th, by line or row number), so the processes of a distributed run see different text.

    Exact resume: ``state_dict()`` is JSON-serialisable (epoch, documents begun this epoch, the read
    position after the last document begun, its unserved pieces as token lists, counters); a stream
    built with the same arguments and given ``load_state_dict(state)`` serves exactly the batches the
    original would have, for the same capacities. Local files resume by seeking to a byte offset (gzip
    decompresses up to it); hub datasets by ``.skip(rows)``.
    """

    def __init__(self, source: str, tokenizer, max_length: int, *, text_field: str = "text",
                 streaming: bool | None = None, config: str | None = None, split: str = "train", seed: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token to close documents with")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.source, self.tokenizer, self.max_length, self.text_field = source, tokenizer, max_length, text_field
        self.split, self.seed, self.config, self.streaming = split, seed, config, streaming
        self.shard = shard
        self.bos: list[int] = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
        self.files: list[Path] | None = None
        self.hub: str | None = None
        if source == "c4":
            self.hub, self.config = "allenai/c4", config or "en"
            self.streaming = True if streaming is None else streaming
        elif source.startswith("hub:") or not (Path(source).exists() or source.endswith(_SUFFIXES)):
            self.hub, self.streaming = source.removeprefix("hub:"), bool(streaming)
        else:
            self.files = _local_files(Path(source))
        self.where = source if self.files else f"hub dataset {self.hub} ({self.config or 'default'}) split {split}"
        self._dataset, self._start = None, [0, 0, 0] if self.files else [0]  # hub dataset: loaded on first read
        self.load_state_dict({"epoch": 0, "documents": 0, "cursor": self._start, "pending": [],
                              "tokens_served": 0, "batches_served": 0})

    def next_batch(self, capacity: int, split_sequences: bool = False) -> dict[str, torch.Tensor]:
        """The next micro-batch (``collate_packed`` layout, ``split_sequences`` as there) of at most
        ``capacity`` tokens, which must be at least ``max_length`` so that every piece fits."""
        if capacity < self.max_length:
            raise ValueError(f"capacity {capacity} is smaller than max_length {self.max_length}")
        records, used = [], 0
        while used < capacity:
            if not self._pending:
                self._begin_next_document()
            piece = self._pending[0]
            if used + len(piece) > capacity:
                break
            records.append((self._pending.popleft(), [1] * len(piece)))
            used += len(piece)
        self.tokens_served, self.batches_served = self.tokens_served + used, self.batches_served + 1
        return collate_packed(records, split_sequences)

    def state_dict(self) -> dict:
        """Where the stream stands, JSON-serialisable (see the class docstring)."""
        return {"source": self.source, "max_length": self.max_length, "epoch": self.epoch,
                "documents": self._documents, "cursor": list(self._cursor), "pending": [list(p) for p in self._pending],
                "tokens_served": self.tokens_served, "batches_served": self.batches_served}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` of a stream built with the same arguments."""
        for key, mine in (("source", self.source), ("max_length", self.max_length)):
            if state.get(key, mine) != mine:
                raise ValueError(f"state is for {key} {state[key]!r}, this stream has {mine!r}")
        self.epoch, self._documents, self._cursor = state["epoch"], state["documents"], list(state["cursor"])
        self._pending = deque(list(p) for p in state["pending"])
        self.tokens_served, self.batches_served = state["tokens_served"], state["batches_served"]
        # Documents read ahead of the current one are not part of the state: they are read again.
        self._lookahead: deque[tuple[list[list[int]], int, list[int]]] = deque()
        self._reader = self._stream(self.epoch, self._cursor)

    def _begin_next_document(self) -> None:
        if not self._lookahead:
            batch = list(itertools.islice(self._reader, _TOKENIZE_BATCH))
            n = self.max_length
            for ids, (_, epoch, cursor) in zip(encode_texts(self.tokenizer, [text for text, _, _ in batch]), batch):
                doc = [*self.bos, *ids, self.tokenizer.eos_token_id]
                self._lookahead.append(([doc[i : i + n] for i in range(0, len(doc), n)], epoch, cursor))
        pieces, epoch, cursor = self._lookahead.popleft()
        self._documents = self._documents + 1 if epoch == self.epoch else 1
        self.epoch = epoch
        self._pending, self._cursor = deque(pieces), cursor

    def _stream(self, epoch: int, cursor: list[int]) -> Iterator[tuple[str, int, list[int]]]:
        """``(text, epoch, cursor after it)`` from ``cursor`` on, pass after pass, for ever."""
        while True:
            found = False
            rank, world = self.shard
            for text, after in self._read(epoch, cursor):
                found = True
                # Each process keeps every world-th document, by its line (or row) number and file:
                # disjoint shards, and the choice needs no state to resume.
                if (after[-1] + (after[0] if len(after) > 1 else 0)) % world == rank:
                    yield text, epoch, after
            # A pass may be empty when resumed at its very end; one from the start means there is nothing.
            if not found and cursor == self._start:
                raise DataError(self.where, None, None, "no documents (every one is blank)")
            epoch, cursor = epoch + 1, self._start

    def _read(self, epoch: int, cursor: list[int]) -> Iterator[tuple[str, list[int]]]:
        """Non-blank documents of one pass from ``cursor``, each with the cursor just after it:
        ``[file index, byte offset, line]`` for local files, ``[rows]`` for hub datasets."""
        if self.files is None:
            import datasets
            if self._dataset is None:
                try:
                    self._dataset = datasets.load_dataset(self.hub, self.config, split=self.split,
                                                          streaming=self.streaming)
                except Exception as e:  # datasets raises many types; say which dataset failed and why
                    raise DataError(self.where, None, None, f"cannot load: {type(e).__name__}: {e}") from None
            buffer = {"buffer_size": _SHUFFLE_BUFFER} if isinstance(self._dataset, datasets.IterableDataset) else {}
            ds = self._dataset.shuffle(seed=self.seed + epoch, **buffer)
            for row_number, row in enumerate(ds.skip(cursor[0]) if cursor[0] else ds, start=cursor[0] + 1):
                if (text := _text_field(row, self.text_field, self.where, row_number)).strip():
                    yield text, [row_number]
            return
        first, offset, line = cursor
        for index in range(first, len(self.files)):
            path, where = self.files[index], str(self.files[index])
            jsonl = path.name.endswith(JSONL_SUFFIXES)
            try:
                with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
                    f.seek(offset)  # binary readline/tell: byte offsets to resume from, gzip included
                    while raw := f.readline():
                        line += 1
                        text = _document(raw.removeprefix(_BOM) if line == 1 else raw, jsonl, self.text_field,
                                         where, line)
                        if text.strip():
                            yield text, [index, f.tell(), line]
            except (OSError, EOFError) as e:  # e.g. a .gz file that is not gzip, or a truncated one
                raise DataError(where, None, None, f"cannot read: {e}") from None
            offset = line = 0


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(str(path), None, None, "file not found")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES)) if path.is_dir() else [path]
    if not files or not files[0].name.endswith(_SUFFIXES):
        raise DataError(str(path), None, None, f"no data file: expected names ending in {', '.join(_SUFFIXES)}")
    return files


def _document(raw: bytes, jsonl: bool, field: str, where: str, line: int) -> str:
    """The document on one line: the line itself (``.txt``) or its ``field`` (JSON Lines); blank if none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(where, line, None, f"bytes that are not UTF-8 ({raw[e.start : e.start + 4]!r})") from None
    if not jsonl or not text.strip():
        return text.rstrip("\r\n")
    try:
        return _text_field(json.loads(text), field, where, line)
    except json.JSONDecodeError as e:
        raise DataError(where, line, None, f"malformed JSON ({e.msg} at column {e.colno})") from None


def _text_field(row: object, field: str, where: str, line: int) -> str:
    if not isinstance(row, dict):
        raise DataError(where, line, None, f"expected a JSON object, found {describe(row)}")
    if field not in row:
        raise DataError(where, line, field, f"missing (fields: {', '.join(map(str, row)) or 'none'})")
    if not isinstance(row[field], str):
        raise DataError(where, line, field, f"expected a string, found {describe(row[field])}")
    return row[field]
