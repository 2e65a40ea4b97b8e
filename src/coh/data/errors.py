"""Errors for bad input data: every message names the file, the line, the field and what was
expected; and ``SetAside``, the rows a reader leaves out, counted and pointed at."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A problem with one input row.

    ``where`` names the file (or hub dataset and split), ``line`` is 1-based (a row index for
    datasets without lines), ``field`` the dotted path of the offending field (``None`` for the
    whole row), and ``problem`` what was expected and what was found.
    """

    def __init__(self, where: str, line: int | None, field: str | None, problem: str):
        self.where = where
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(self.message)

    def __reduce__(self):  # picklable across worker processes
        return (DataError, (self.where, self.line, self.field, self.problem))

    @property
    def message(self) -> str:
        place = self.where
        if self.line is not None:
            place += f", line {self.line}"
        if self.field:
            place += f", field '{self.field}'"
        return f"{place}: {self.problem}"

    def as_dict(self) -> dict:
        return {"file": self.where, "line": self.line, "field": self.field, "problem": self.problem}


class RowError(ValueError):
    """Raised by a row converter, which does not know the file and line; the reader adds them."""

    def __init__(self, field: str | None, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"field '{field}': {problem}" if field else problem)

    def __reduce__(self):
        return (RowError, (self.field, self.problem))

    def at(self, where: str, line: int | None) -> DataError:
        return DataError(where, line, self.field, self.problem)


def describe(value: object) -> str:
    """A short description of a value for error messages: its type and a clipped repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


@dataclass
class SetAside:
    """Rows left out because they cannot be used (an empty reply, a missing field, ...), each as
    ``DataError.as_dict()``: file, line, field, problem. Readers given one record such a row here
    and go on; readers given none stop at it. Rows are only pointed at, never copied or changed."""

    rows: list[dict] = field(default_factory=list)

    def add(self, error: DataError) -> None:
        self.rows.append(error.as_dict())

    def __len__(self) -> int:
        return len(self.rows)

    def reasons(self) -> dict[str, int]:
        """Counts by field and problem, most common first (the value found is left out: ``expected
        a string, got int 5`` counts as ``expected a string``)."""
        counts: dict[str, int] = {}
        for r in self.rows:
            key = (f"{r['field']}: " if r["field"] else "") + r["problem"].split(", got ")[0]
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def summary(self, listed_in: str | None = None) -> str:
        """One line: how many, why, where they are listed, and the first one's place and problem."""
        if not self.rows:
            return "no rows set aside"
        first = self.rows[0]
        why = "; ".join(f"{n} x {k}" for k, n in self.reasons().items())
        place = DataError(first["file"], first["line"], first["field"], first["problem"]).message
        listed = f", listed in {listed_in}" if listed_in else ""
        return f"{len(self.rows)} unusable row(s) skipped ({why}){listed}; the first: {place}"

    def write(self, path: str | Path) -> None:
        """The rows as JSON lines, written atomically."""
        from coh.data.outputs import write_jsonl  # coh.data.outputs imports this module

        write_jsonl(self.rows, path)
