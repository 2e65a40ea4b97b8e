"""What ``coh data build`` streams into its staging folder besides the records: JSON lines files
written as rows come (``JsonlSink``: the rejects, the examples kept for resampling), the rejects'
lines (``reject_entry``), and the error of a build that made nothing (``nothing_built``).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coh.data.errors import DataError
from coh.data.spill import Spill
from coh.data.writing import atomic_writer

if TYPE_CHECKING:
    from coh.data.build import SourceReport

MAX_LISTED = 3  # invalid rows listed in the error of a build that produced nothing


class JsonlSink:
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
        self._file.write(jsonl_line(row))
        if self.count < self._keep:
            self.head.append(row)
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class BuildOutputs:
    """Where a build streams what it makes, all under its staging folder: per split, the records
    in file order (``spills``, before the final shuffle) and, with resample, the examples;
    the rejects."""

    spills: dict[str, Spill]
    examples: dict[str, JsonlSink] | None
    rejects: JsonlSink

    def close(self) -> None:
        for sink in [self.rejects, *(self.examples or {}).values()]:
            sink.close()
        for spill in self.spills.values():
            spill.close()


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


def jsonl_line(row: object) -> str:
    """A row as one JSON line (a string is taken as a ready line); standard JSON only (a NaN or
    infinity raises ``ValueError``)."""
    # default=str: hub and parquet rows may hold dates and other non-JSON values
    return row if isinstance(row, str) else json.dumps(row, ensure_ascii=False, default=str, allow_nan=False) + "\n"


def write_jsonl(rows: Iterable, path: str | Path) -> None:
    """Write JSON lines (rows given as objects or as ready lines, see ``jsonl_line``), atomically."""
    with atomic_writer(path) as f:
        for row in rows:
            f.write(jsonl_line(row))


def nothing_built(reports: dict[str, SourceReport], rejects: JsonlSink, feedback: tuple[str, ...]) -> str:
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
