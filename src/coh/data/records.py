"""Chain-of-Hindsight records: the text the model is trained on, with its loss flags.

One record per JSONL line::

    {"id": "dialogue/test/17/pn", "source": "dialogue", "split": "test", "feedback": "pn",
     "segments": [
       {"role": "marker",    "text": "User:",               "loss": false},
       {"role": "user",      "text": " How do I ...?",      "loss": false},
       {"role": "feedback",  "text": " A helpful answer:",  "loss": false, "label": "good"},
       {"role": "assistant", "text": " You could ...",      "loss": true,  "eos": true, "label": "good"},
       {"role": "feedback",  "text": "An unhelpful answer:", "loss": false, "label": "bad"},
       {"role": "assistant", "text": " No.",                "loss": true,  "eos": true, "label": "bad"}
     ]}

Contract:
- Joining the ``text`` of the segments (with an end-of-sequence token after each segment whose
  ``eos`` is true) gives the record's full text; separators are part of the texts.
- ``loss`` marks the tokens trained on. Model outputs (``assistant``) carry loss, and so does the
  end-of-sequence token after them; prompts, user turns, task phrases, quotes and feedback phrases
  never do. Assistant turns that are shared context carry no loss (and neither does their EOS).
- ``role`` is one of ``system``, ``marker``, ``user``, ``prompt``, ``feedback``, ``assistant``;
  ``label`` (``good``, ``bad``, ``better``) says which feedback an output was given.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from coh.data.errors import DataError, describe

SEGMENT_ROLES = ("system", "marker", "user", "prompt", "feedback", "assistant")
LABELS = ("good", "bad", "better")


class Segment(NamedTuple):
    """A piece of record text with one loss flag. ``eos``: an end-of-sequence token follows.

    A named tuple rather than a dataclass: records are built by the million, and tuples are
    several times faster to make and to pickle between processes."""

    text: str
    loss: bool = False
    role: str = "prompt"
    eos: bool = False
    label: str | None = None

    def to_json(self) -> dict:
        out: dict = {"role": self.role, "text": self.text, "loss": self.loss}
        if self.eos:
            out["eos"] = True
        if self.label is not None:
            out["label"] = self.label
        return out


def separator(previous: Segment | None) -> str:
    """What goes before a segment's text: a space, except at the start of a record and right
    after an EOS (as the original joins its pieces; the tokenizer's own spacing does the rest)."""
    return "" if previous is None or previous.eos else " "


def join_segments(segments: Iterable[Segment]) -> tuple[Segment, ...]:
    """``segments`` with their separators redone by :func:`separator` (after some were removed
    or reordered): each text's leading spaces are replaced by the separator it needs."""
    out: list[Segment] = []
    for seg in segments:
        out.append(seg._replace(text=separator(out[-1] if out else None) + seg.text.lstrip(" ")))
    return tuple(out)


@dataclass(frozen=True)
class FeedbackRecord:
    """One training record: segments plus where it came from and which feedback type made it."""

    id: str
    source: str
    feedback: str
    segments: tuple[Segment, ...]
    split: str = "train"
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        """The full text, with ``<eos>`` standing for each end-of-sequence token (for display)."""
        return "".join(s.text + ("<eos>" if s.eos else "") for s in self.segments)

    def to_json(self) -> dict:
        out = {
            "id": self.id,
            "source": self.source,
            "split": self.split,
            "feedback": self.feedback,
            "segments": [s.to_json() for s in self.segments],
        }
        if self.meta:
            out["meta"] = self.meta
        return out

    def to_line(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=False) + "\n"


def record_from_json(obj: object, where: str = "<record>", line: int | None = None) -> FeedbackRecord:
    """Validate and build a record from its JSON form; ``DataError`` names the bad field."""

    def fail(fieldname: str | None, problem: str) -> DataError:
        return DataError(where, line, fieldname, problem)

    if not isinstance(obj, dict):
        raise fail(None, f"expected a JSON object, got {describe(obj)}")
    for key in ("id", "source", "feedback"):
        if not isinstance(obj.get(key), str) or not obj.get(key):
            raise fail(key, f"expected a non-empty string, got {describe(obj.get(key))}")
    split = obj.get("split", "train")
    if not isinstance(split, str):
        raise fail("split", f"expected a string, got {describe(split)}")
    raw_segments = obj.get("segments")
    if not isinstance(raw_segments, list) or not raw_segments:
        raise fail("segments", f"expected a non-empty list of segments, got {describe(raw_segments)}")
    segments = []
    for i, seg in enumerate(raw_segments):
        path = f"segments[{i}]"
        if not isinstance(seg, dict):
            raise fail(path, f"expected an object, got {describe(seg)}")
        text = seg.get("text")
        if not isinstance(text, str):
            raise fail(f"{path}.text", f"expected a string, got {describe(text)}")
        if not text.isascii():  # isascii is O(1) in CPython; only other text can hold a lone surrogate
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise fail(f"{path}.text", f"text holds a lone surrogate ({text[e.start]!r} at character "
                                           f"{e.start})") from None
        loss = seg.get("loss", False)
        eos = seg.get("eos", False)
        if not isinstance(loss, bool):
            raise fail(f"{path}.loss", f"expected true or false, got {describe(loss)}")
        if not isinstance(eos, bool):
            raise fail(f"{path}.eos", f"expected true or false, got {describe(eos)}")
        role = seg.get("role", "assistant" if loss else "prompt")
        if role not in SEGMENT_ROLES:
            raise fail(f"{path}.role", f"expected one of {list(SEGMENT_ROLES)}, got {describe(role)}")
        label = seg.get("label")
        if label is not None and label not in LABELS:
            raise fail(f"{path}.label", f"expected one of {list(LABELS)} or null, got {describe(label)}")
        if loss and not text.strip():
            raise fail(f"{path}.text", "an output segment (loss true) must not be empty")
        segments.append(Segment(text=text, loss=loss, role=role, eos=eos, label=label))
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise fail("meta", f"expected an object, got {describe(meta)}")
    return FeedbackRecord(
        id=obj["id"], source=obj["source"], feedback=obj["feedback"], segments=tuple(segments), split=split, meta=meta
    )


def read_records(path: str | Path) -> Iterator[FeedbackRecord]:
    """Yield the records of a JSONL file (gzip allowed), failing with file and line on bad input."""
    from coh.data.io import iter_json_lines

    for line_no, obj in iter_json_lines(path):
        yield record_from_json(obj, str(path), line_no)
