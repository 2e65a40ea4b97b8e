"""Evaluation examples: read from a local file in a dataset's raw schema, or from the paper
dataset's test / validation split on the hub, through the converters ``coh data build`` uses;
and the conversation of an example as plain text (the authors' dialogue prompt, text scorers).
"""

from __future__ import annotations

from collections.abc import Sequence

from coh.data.errors import DataError, SetAside
from coh.data.feedback import FeedbackExample, Turn


def read_examples(kind: str, data: str | None, limit: int | None = None, set_aside: SetAside | None = None
                  ) -> tuple[list[FeedbackExample], dict]:
    """Evaluation examples of a source kind from a local file in the dataset's raw schema (jsonl,
    json or parquet, gzip allowed), or with ``data`` None from the paper dataset's test /
    validation split on the hub. Stops after ``limit`` examples. Rows the method leaves out
    (WebGPT ties) are counted in ``skipped``. A row that cannot be evaluated (an empty reply, a
    missing field, a line that is not JSON) stops with its file, line and field, or with
    ``set_aside`` is recorded there, counted in ``invalid`` and left out."""
    from coh.data.reading import SourceSpec, read_source_rows
    from coh.data.sources import CONVERTERS, convert_rows

    spec = SourceSpec(kind, files={"eval": data}) if data else SourceSpec(kind)
    examples: list[FeedbackExample] = []
    skipped: dict[str, int] = {}
    rows = 0
    mine = None if set_aside is None else SetAside()  # this file's rows, counted apart from others'

    def eval_rows():
        nonlocal rows
        for split, where, line, row, _ in _hinted(read_source_rows(spec), data is None):
            if split != "train":  # a hub dataset's training split: not for evaluation
                rows += 1
                yield where, line, row

    def convert(row: dict, line: int):
        return CONVERTERS[kind](row, f"{kind}/{line}", "eval")

    for ex in convert_rows(eval_rows(), convert, mine, skipped):
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    if set_aside is not None:
        set_aside.rows.extend(mine.rows)
    if not examples:
        why = f"; {mine.summary()}; is the kind '{kind}' right for this file?" if mine else ""
        raise ValueError(f"{data or spec.hub}: no {kind} examples to evaluate ({rows} rows read{why})")
    counts = {"rows": rows, "examples": len(examples), "skipped": sum(skipped.values()),
              **{f"skipped: {k}": v for k, v in skipped.items()}}
    if mine is not None:
        counts["invalid"] = len(mine)
        counts.update({f"invalid: {k}": v for k, v in mine.reasons().items()})
    return examples, counts


def _hinted(rows, from_hub: bool):
    """``rows``, with a hint on a hub dataset that cannot be had (offline, say): give a file."""
    try:
        yield from rows
    except DataError as e:
        if not from_hub:
            raise
        raise DataError(e.where, e.line, e.field, f"{e.problem}; give --data FILE to use a local copy") from None


def unique_contexts(examples: Sequence[FeedbackExample]) -> list[FeedbackExample]:
    """One example per distinct context (summarize_from_feedback holds many comparisons per post)."""
    seen: dict[tuple[Turn, ...], FeedbackExample] = {}
    for ex in examples:
        seen.setdefault(ex.context, ex)
    return list(seen.values())


def conversation_text(turns: Sequence[Turn]) -> str:
    """A conversation as plain text: a lone user turn as it is, longer ones in hh-rlhf's
    ``Human: ... / Assistant: ...`` form (blank line between turns)."""
    if len(turns) == 1 and turns[0].role == "user":
        return turns[0].text
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[t.role]}: {t.text}" for t in turns)
