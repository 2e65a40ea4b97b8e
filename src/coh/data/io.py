"""Reading raw rows of local files (JSONL / JSON / parquet, gzip included); the files a build
writes are written through ``coh.data.writing`` (its names are importable from here too).

Local JSON and JSONL are read here line by line rather than through ``datasets``' json loader,
because that loader reports neither the line nor the field of a malformed row, and cannot hand
back a bad line so that the build can set it aside. Parquet files and hub datasets go through
``datasets``.

Two kinds of bad input:

- a bad *line* (malformed JSON, bytes that are not UTF-8, nesting deeper than ``MAX_DEPTH``) is
  yielded by ``iter_json_rows`` as a ``DataError`` together with the line's exact text (or bytes),
  so that a caller may set it aside and read on;
- a bad *file* (missing, unreadable, a truncated gzip stream, a JSON array broken mid-way, a
  corrupt parquet file) raises ``DataError``: nothing after that point can be read.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

from coh.data.errors import DataError
from coh.data.writing import (  # their home
    atomic_writer,
    check_output_dir,
    staged_outputs,
    write_dataset_folder,
)

__all__ = ["JSON_SUFFIXES", "MAX_DEPTH", "PARQUET_SUFFIXES", "RawRow", "atomic_writer", "check_output_dir",
           "iter_json_lines", "iter_json_rows", "iter_local_raw_rows", "iter_local_rows", "iter_parquet_rows",
           "staged_outputs", "write_dataset_folder"]

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
MAX_DEPTH = 100  # no source nests deeper than 4; far deeper rows overflow Python's stack downstream
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, written by some editors
_JSON_SPACE = " \t\r\n"  # the only whitespace JSON allows; other blank-looking lines are rows, and bad
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, kept by errors="surrogateescape"


class RawRow(NamedTuple):
    """One row as read: ``line`` (1-based; the row index for parquet), ``value`` (the parsed JSON
    value, or a ``DataError`` for a line that could not be read as one), ``raw`` (the exact text
    of the line, its line ending included, or of the JSON array item; ``bytes`` when it is not
    UTF-8; ``None`` for parquet rows, which have no text)."""

    line: int
    value: object
    raw: str | bytes | None


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _too_deep(value: object, text: str) -> bool:
    """Whether lists and objects in ``value`` (parsed from ``text``) nest more than ``MAX_DEPTH``
    levels. Counting brackets in the text first keeps this cheap for the usual flat rows; the walk
    itself is iterative (a recursive one would overflow on the very rows it looks for)."""
    if not isinstance(value, (dict, list)) or text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v
        if depth > MAX_DEPTH:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _malformed(e: json.JSONDecodeError) -> str:
    return f"malformed JSON ({e.msg} at column {e.colno})"


def _nested_too_deeply(where: str, line: int) -> DataError:
    return DataError(where, line, None, f"JSON nested too deeply (more than {MAX_DEPTH} levels)")


def _parse_line(raw: bytes, where: str, line: int) -> RawRow | None:
    """A JSON line (its line ending kept in ``raw``) as a ``RawRow``, bad or not; ``None`` for a
    blank line (JSON whitespace only)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if not raw.strip(_JSON_SPACE.encode()):
            return None
        bad = raw[e.start : e.start + 4]
        return RawRow(line, DataError(where, line, None, f"bytes that are not UTF-8 ({bad!r} at byte {e.start} of the "
                                                         "line)"), raw)
    if not text.strip(_JSON_SPACE):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return RawRow(line, DataError(where, line, None, _malformed(e)), text)
    except RecursionError:
        return RawRow(line, _nested_too_deeply(where, line), text)
    if _too_deep(value, text):
        return RawRow(line, _nested_too_deeply(where, line), text)
    return RawRow(line, value, text)


def iter_json_rows(path: str | Path) -> Iterator[RawRow]:
    """Every row of a JSONL file (gzip allowed), bad lines included (see the module docstring).

    A ``.json`` file holding one JSON array is read whole, and its items are numbered by the line
    on which each item starts. Blank lines are not rows. A UTF-8 byte-order mark at the start is
    dropped. Raises ``DataError`` for a file that cannot be read (on from the point it fails).
    """
    path = Path(path)
    where = str(path)
    if path.is_dir():
        raise DataError(where, None, None, "is a folder, not a file")
    if not path.exists():
        raise DataError(where, None, None, "file not found")
    line_no = 0
    try:
        with _open_binary(path) as f:
            if path.name.endswith((".json", ".json.gz")):
                yield from _iter_json_file(f.read().removeprefix(_BOM), where)
                return
            for line_no, raw in enumerate(f, start=1):
                if line_no == 1:
                    raw = raw.removeprefix(_BOM)
                # The common case inline (a quarter of the reading time): json.loads itself allows
                # only JSON whitespace around the value. Anything else takes the slow path.
                try:
                    text = raw.decode("utf-8")
                    value = json.loads(text)
                except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                    row = _parse_line(raw, where, line_no)
                    if row is not None:
                        yield row
                    continue
                if _too_deep(value, text):
                    value = _nested_too_deeply(where, line_no)
                yield RawRow(line_no, value, text)
    except (OSError, EOFError, zlib.error) as e:  # a .gz file that is not gzip, a truncated one, ...
        after = f" after line {line_no}" if line_no else ""
        end = " (the file is cut short)" if isinstance(e, EOFError) else ""
        raise DataError(where, None, None, f"cannot read{after}: {e}{end}") from None


def _iter_json_file(data: bytes, where: str) -> Iterator[RawRow]:
    first = data.lstrip(_JSON_SPACE.encode())[:1]
    if first != b"[":
        # One JSON value per line saved with a .json suffix. Split bytes on "\n" only: U+2028 and
        # other line breaks may be inside strings.
        rows = (row for i, raw in enumerate(data.split(b"\n"), start=1) if (row := _parse_line(raw, where, i)))
        first_row = next(rows, None)
        if first_row is None:
            return
        if isinstance(first_row.value, DataError) and first == b"{" and _one_json_value(data):
            raise DataError(where, None, None, "holds one JSON object spread over several lines; expected a JSON "
                                               "array of rows or one JSON object per line")
        yield first_row
        yield from rows
        return
    # surrogateescape keeps bytes that are not UTF-8 as lone surrogates (U+DC80..U+DCFF), which
    # valid UTF-8 text never holds, so the item they are in can be set aside with its exact bytes.
    text = data.decode("utf-8", "surrogateescape")
    has_bad_bytes = _ESCAPED_BYTE.search(text) is not None
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)

    def skip_ws(p: int) -> int:
        while p < n and text[p] in _JSON_SPACE:
            p += 1
        return p

    def line_at(p: int) -> int:
        return text.count("\n", 0, p) + 1

    def broken(p: int, problem: str) -> DataError:
        return DataError(where, line_at(p), None, problem + "; a JSON array cannot be read past it (--skip-invalid "
                                                            "sets aside whole rows only): mend the file")

    pos = skip_ws(pos)
    if pos < n and text[pos] == "]":
        return
    line, counted = 1, 0  # newlines counted up to ``counted``, incrementally (linear, not quadratic)
    while True:
        pos = skip_ws(pos)
        line += text.count("\n", counted, pos)
        counted = pos
        start = pos
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:  # named by the line its item starts on, where the mistake usually is
            found = f" at line {e.lineno}" if e.lineno != line else ""
            raise broken(start, f"malformed JSON in the item starting on this line ({e.msg}{found}, column "
                                f"{e.colno})") from None
        except RecursionError:
            raise broken(start, _nested_too_deeply(where, line).problem) from None
        item = text[start:pos]
        if has_bad_bytes and (m := _ESCAPED_BYTE.search(item)):
            raw = item.encode("utf-8", "surrogateescape")
            at = len(item[: m.start()].encode("utf-8", "surrogateescape"))
            yield RawRow(line, DataError(where, line, None, f"bytes that are not UTF-8 ({raw[at : at + 4]!r} at byte "
                                                            f"{at} of the item)"), raw)
        elif _too_deep(obj, item):
            yield RawRow(line, _nested_too_deeply(where, line), item)
        else:
            yield RawRow(line, obj, item)
        pos = skip_ws(pos)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            if (rest := skip_ws(pos + 1)) < n:
                raise broken(rest, "text after the end of the JSON array")
            return
        raise broken(pos, "malformed JSON array (expected ',' or ']'" + (", found the end of the file)" if pos >= n
                                                                          else ")"))


def _one_json_value(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return True


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield ``(line_number, parsed_object)`` for every non-blank line of a JSONL file (or item
    of a JSON array, see ``iter_json_rows``). Raises ``DataError`` with the file and line for
    unreadable bytes or malformed JSON: for callers that stop at the first bad line."""
    for line, value, _ in iter_json_rows(path):
        if isinstance(value, DataError):
            raise value
        yield line, value


def iter_parquet_rows(path: str | Path) -> Iterator[RawRow]:
    """Every row of a parquet file through ``datasets`` (1-based row numbers). A file that is not
    parquet, is truncated or cannot be decoded raises ``DataError`` naming it."""
    import datasets
    import pyarrow.parquet as pq  # datasets' own backend; only to check the footer and count rows

    where = str(path)
    try:
        n_rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
        raise DataError(where, None, None, f"cannot read as parquet: {e}") from None
    if n_rows == 0:
        return
    try:
        ds = datasets.load_dataset("parquet", data_files=where, split="train")
    except Exception as e:  # datasets wraps the reader's error; show the cause
        cause = e.__cause__ or e
        raise DataError(where, None, None, f"cannot read as parquet: {type(cause).__name__}: {cause}") from None
    for i, row in enumerate(ds, start=1):
        yield RawRow(i, row, None)


def iter_local_raw_rows(path: str | Path) -> Iterator[RawRow]:
    """Rows of a local file, chosen by suffix: JSON/JSONL (gzip included) or parquet, bad lines
    included (see the module docstring)."""
    path = Path(path)
    if path.name.endswith(PARQUET_SUFFIXES):
        if not path.exists():
            raise DataError(str(path), None, None, "file not found")
        return iter_parquet_rows(path)
    if path.name.endswith(JSON_SUFFIXES):
        return iter_json_rows(path)
    raise DataError(str(path), None, None, f"unknown file type; expected one of {JSON_SUFFIXES + PARQUET_SUFFIXES}")


def iter_local_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    """``(line, row)`` of a local file (see ``iter_local_raw_rows``); a bad line raises ``DataError``."""
    for line, value, _ in iter_local_raw_rows(path):
        if isinstance(value, DataError):
            raise value
        yield line, value
