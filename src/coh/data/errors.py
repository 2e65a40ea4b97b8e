"""Errors for bad input data: every message names the file, the line, the field and what was expected."""

from __future__ import annotations


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
