"""Reading raw rows (local JSONL / JSON / parquet, gzip included, or a hub dataset) and writing files.

Local JSON and JSONL are read here line by line rather than through ``datasets``' json loader,
because that loader reports neither the line nor the field of a malformed row. Parquet files
and hub datasets go through ``datasets``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from coh.data.errors import DataError

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, written by some editors


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _decode(raw: bytes, where: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            where, line, None, f"bytes that are not UTF-8 ({raw[e.start : e.start + 4]!r} at byte {e.start} of the line)"
        ) from None


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield ``(line_number, parsed_object)`` for every non-blank line of a JSONL file.

    A ``.json`` file holding one JSON array is read whole, and its items are numbered by the line
    on which each item starts. Raises ``DataError`` with the file and line for unreadable bytes
    or malformed JSON.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise DataError(where, None, None, "file not found")
    try:
        with _open_binary(path) as f:
            if path.name.endswith((".json", ".json.gz")):
                yield from _iter_json_array(f.read(), where)
                return
            for line_no, raw in enumerate(f, start=1):
                if line_no == 1:
                    raw = raw.removeprefix(_BOM)
                text = _decode(raw, where, line_no).strip()
                if not text:
                    continue
                try:
                    yield line_no, json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(where, line_no, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    except (OSError, EOFError) as e:  # e.g. a .gz file that is not gzip, or a truncated one
        raise DataError(where, None, None, f"cannot read: {e}") from None


def _iter_json_array(data: bytes, where: str) -> Iterator[tuple[int, object]]:
    data = data.removeprefix(_BOM)
    # Decode first so a bad byte is reported with its line.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(where, line, None, f"bytes that are not UTF-8 ({data[e.start : e.start + 4]!r})") from None
    stripped = text.lstrip()
    if not stripped.startswith("["):
        # A single JSON object per line saved with a .json suffix: treat as JSONL.
        for line_no, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may be in strings
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(where, line_no, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
        return
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)

    def skip_ws(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip_ws(pos)
    if pos < n and text[pos] == "]":
        return
    line, counted = 1, 0  # newlines counted up to ``counted``, incrementally (linear, not quadratic)
    while True:
        pos = skip_ws(pos)
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(where, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
        yield line, obj
        pos = skip_ws(pos)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            if text[pos + 1 :].strip():
                raise DataError(where, text.count("\n", 0, pos) + 1, None, "text after the end of the JSON array")
            return
        raise DataError(where, text.count("\n", 0, pos) + 1, None, "malformed JSON array (expected ',' or ']')")


def iter_parquet_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(row_number, row)`` of a parquet file through ``datasets`` (1-based row numbers)."""
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    yield from enumerate(ds, start=1)


def iter_local_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    """Rows of a local file, chosen by suffix: JSON/JSONL (gzip included) or parquet."""
    path = Path(path)
    if path.name.endswith(PARQUET_SUFFIXES):
        if not path.exists():
            raise DataError(str(path), None, None, "file not found")
        return iter_parquet_rows(path)
    if path.name.endswith(JSON_SUFFIXES):
        return iter_json_lines(path)
    raise DataError(str(path), None, None, f"unknown file type; expected one of {JSON_SUFFIXES + PARQUET_SUFFIXES}")


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[str]]:
    """Open a text file for writing that appears at ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
