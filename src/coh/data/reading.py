"""What a source of ``coh data build`` is and how its rows are read (stage 1 of the build):
``SourceSpec``, one input dataset (local files per split, or a hub dataset), and
``read_source_rows``, its rows with the file and line of each and their raw text. ``coh eval``
reads its evaluation examples through the same reader.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from coh.data.errors import DataError, describe
from coh.data.io import iter_local_raw_rows
from coh.data.sources import CONVERTERS, HUB_DEFAULTS

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
        if not isinstance(self.kind, str) or self.kind not in CONVERTERS:
            raise ValueError(f"unknown source kind {self.kind!r}; expected one of {sorted(CONVERTERS)}")
        if not isinstance(self.files, dict) or not all(isinstance(v, (str, os.PathLike)) for v in self.files.values()):
            raise ValueError(f"source {self.kind}: files must map a split to a path, e.g. {{train: data.jsonl}}; "
                             f"got {describe(self.files)}")
        for key in ("hub", "config", "name"):
            if getattr(self, key) is not None and not (isinstance(getattr(self, key), str) and getattr(self, key)):
                raise ValueError(f"source {self.kind}: {key} must be a non-empty string, got {describe(getattr(self, key))}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"source {self.kind}: limit must be a positive whole number, got {describe(self.limit)}")
        self.files = {split: str(path) for split, path in self.files.items()}
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
            if not eq or key in SPLITS:
                split, path = (key, value) if eq else ("train", part)
                if split in spec["files"]:
                    raise ValueError(f"source '{text}': two files for split '{split}'; give one file per split "
                                     "(or one source per file, each with name=LABEL)")
                spec["files"][split] = path
            elif key == "hub":
                spec["hub"], _, config = value.partition("@")
                spec["config"] = config or None
            elif key == "name":
                spec["name"] = value
            elif key == "limit":
                if not value.isdigit() or int(value) < 1:
                    raise ValueError(f"source '{text}': limit must be a positive whole number, got {value!r}")
                spec["limit"] = int(value)
            else:
                raise ValueError(f"source '{text}': unknown option '{key}'; expected train=, eval=, hub=, name=, limit=")
        return SourceSpec(**spec)

    @staticmethod
    def from_config(entry: object, where: str) -> SourceSpec:
        """A source of a YAML recipe: a spec string (see ``parse``) or a mapping of this class's
        fields (``kind``, ``files``, ``hub``, ``config``, ``name``, ``limit``). ``where`` names the
        entry in errors (file and index)."""
        if isinstance(entry, str):
            return SourceSpec.parse(entry)
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a source spec string or a mapping, got {describe(entry)}")
        known = [f.name for f in dataclasses.fields(SourceSpec)]
        unknown = sorted(str(k) for k in entry if k not in known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {known}")
        if "kind" not in entry:
            raise ValueError(f"{where}: missing 'kind'; expected one of {sorted(CONVERTERS)}")
        try:
            return SourceSpec(**entry)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


# -- reading ------------------------------------------------------------------------------------
class SourceRow(NamedTuple):
    """One row of a source: ``split`` (train/eval for the dataset's own splits, ``""`` where it
    has none), ``where`` (file or hub dataset and split), ``line`` (1-based), ``row`` (the parsed
    row, or a ``DataError`` for a line that could not be read) and ``raw`` (the line's exact text,
    ``bytes`` when it is not UTF-8, ``None`` for parquet and hub rows; see ``coh.data.io.RawRow``)."""

    split: str
    where: str
    line: int
    row: object
    raw: str | bytes | None = None


def read_source_rows(spec: SourceSpec) -> Iterator[SourceRow]:
    """Every row of a source, bad lines included as ``DataError`` values (for callers that set
    them aside). A file that holds no rows, or cannot be read, raises ``DataError`` naming it."""
    if spec.files:
        own_eval = "eval" in spec.files
        for split, path in spec.files.items():
            empty = True
            for line, row, raw in _limited(iter_local_raw_rows(path), spec.limit):
                empty = False
                yield SourceRow(split if own_eval else "", path, line, row, raw)
            if empty:
                raise DataError(path, None, None, "holds no rows (the file is empty)")
        return
    import datasets

    where = f"hub dataset {spec.hub}" + (f" ({spec.config})" if spec.config else "")
    try:
        splits = datasets.load_dataset(spec.hub, spec.config)
    except Exception as e:  # datasets raises many types; report which dataset failed and why
        raise DataError(where, None, None, f"cannot load: {type(e).__name__}: {e}") from None
    eval_name = next((n for n in _EVAL_SPLIT_NAMES if n in splits), None)
    if "train" not in splits:
        raise DataError(where, None, None, f"has no 'train' split (splits: {list(splits)})")
    for ours, theirs in (("train", "train"), ("eval", eval_name)):
        if theirs is None:
            continue
        for line, row in _limited(enumerate(splits[theirs], start=1), spec.limit):
            yield SourceRow(ours if eval_name else "", f"{where} split {theirs}", line, row)


def _limited(rows: Iterator, limit: int | None) -> Iterator:
    for i, item in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield item
