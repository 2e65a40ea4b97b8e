"""Feedback datasets already on disk in ``datasets`` format: folders that ``Dataset.save_to_disk``
or ``DatasetDict.save_to_disk`` wrote, read with ``datasets.load_from_disk``.

Any source kind reads them; the usual ones are

- TRL preference data (``prompt``, ``chosen``, ``rejected``; strings or lists of ``{"role",
  "content"}`` messages, with or without an explicit prompt): kind ``preference``;
- UltraFeedback binarized (``HuggingFaceH4/ultrafeedback_binarized``: ``prompt``, ``chosen`` and
  ``rejected`` as whole conversations that repeat the prompt, splits ``train_prefs`` /
  ``test_prefs``): kind ``preference``;
- Anthropic HH (``chosen``, ``rejected`` as ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``
  transcripts): kind ``dialogue`` (the paper's rendering) or ``preference``.

A ``Dataset`` folder is one split: give it as ``KIND:PATH`` (train) or ``KIND:train=PATH,eval=PATH``.
A ``DatasetDict`` folder brings its own splits (``dataset_splits``): ``train`` (or ``train_prefs``)
becomes train, the first of ``test_prefs``, ``test``, ``validation``, ``eval``, ``dev`` becomes eval,
and the splits left unread are named on stderr (give ``PATH/SPLIT`` to read one of them).

Rows are numbered from 1 (the ``line`` of errors and rejects); the converters of
``coh.data.sources`` check them as they check JSONL rows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from coh.data.errors import DataError

TRAIN_SPLITS = ("train", "train_prefs")
EVAL_SPLITS = ("test_prefs", "test", "validation", "eval", "dev")


def is_dataset_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder that ``Dataset.save_to_disk`` wrote (one split)."""
    path = Path(path)
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def is_dataset_dict_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder that ``DatasetDict.save_to_disk`` wrote (a split per subfolder)."""
    return Path(path).is_dir() and (Path(path) / "dataset_dict.json").is_file()


def _split_names(path: Path) -> list[str]:
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(str(path / "dataset_dict.json"), None, "splits", f"cannot read the split names: {e}") from None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise DataError(str(path / "dataset_dict.json"), None, "splits", f"expected a list of names, got {splits!r}")
    return splits


def dataset_splits(files: dict[str, str]) -> dict[str, str]:
    """A source's ``files`` (split -> path) with a ``DatasetDict`` folder replaced by its train and
    eval split folders (see the module docstring); other paths are kept as they are. A folder
    given for the eval split gives only its eval split."""
    out: dict[str, str] = {}
    for split, path in files.items():
        if not is_dataset_dict_folder(path):
            out[split] = path
            continue
        names = _split_names(Path(path))
        train = next((n for n in TRAIN_SPLITS if n in names), None) if split == "train" else None
        evals = next((n for n in EVAL_SPLITS if n in names), None)
        if train is None and evals is None:
            raise DataError(path, None, None, f"a DatasetDict folder with splits {names}, none of which is a "
                                              f"{split} split ({', '.join(TRAIN_SPLITS + EVAL_SPLITS)}); give one "
                                              f"split's folder, e.g. {Path(path) / names[0]}")
        chosen = {"train": train, "eval": evals}
        for ours, theirs in chosen.items():
            if theirs is not None and (ours == split or ours not in files):  # a split given apart wins
                out[ours] = str(Path(path) / theirs)
        unread = [n for n in names if n not in chosen.values()]
        if unread:
            print(f"{path}: reading split(s) {', '.join(f'{t} ({o})' for o, t in chosen.items() if t)}; not read: "
                  f"{', '.join(unread)} (give {Path(path)}/SPLIT to read one)", file=sys.stderr)
    return out


def iter_disk_rows(path: str | Path) -> Iterator:
    """Every row of a ``Dataset`` folder as ``coh.data.io.RawRow`` (1-based row numbers, no raw
    text). A folder that ``datasets.load_from_disk`` cannot read, or that holds several splits,
    raises ``DataError`` naming it."""
    import datasets

    from coh.data.io import RawRow

    where = str(path)
    if is_dataset_dict_folder(path):
        raise DataError(where, None, None, f"a DatasetDict folder (splits {_split_names(Path(path))}): give one "
                                           "split's folder, or the folder itself as a source's train file")
    if not is_dataset_folder(path):
        from coh.data.io import JSON_SUFFIXES, PARQUET_SUFFIXES

        raise DataError(where, None, None, "unknown file type: a folder, but not one that datasets' save_to_disk "
                                           "wrote (no state.json and dataset_info.json); expected a file ending in "
                                           f"{', '.join(JSON_SUFFIXES + PARQUET_SUFFIXES)} or such a folder")
    try:
        ds = datasets.load_from_disk(where)
    except Exception as e:  # datasets raises FileNotFoundError, ArrowInvalid, ...: say which folder and why
        raise DataError(where, None, None, f"cannot read with datasets.load_from_disk: {type(e).__name__}: {e}"
                        ) from None
    if not isinstance(ds, datasets.Dataset):
        raise DataError(where, None, None, f"expected one split (a Dataset), got {type(ds).__name__}")
    for i, row in enumerate(ds, start=1):
        yield RawRow(i, row, None)
