"""The original CoH code's "fields" JSONL format, read and written for interoperability.

In the original (``coh/data/pack_hf.py`` and ``dataset.py``) each line holds text snippets under
keys plus a ``fields`` string saying how to assemble them::

    {"marker_user": "User:", "marker_gpt": "A helpful answer:", "human_0": "what are some pranks?",
     "gpt_1": "Sure, ...", "fields": "[marker_user+human_0+marker_gpt],gpt_1,<|eos|>"}

Rules of the original's ``TextProcessor``: ``fields`` is split on ``,``; a piece wrapped in
``[...]`` carries no loss, a bare piece carries loss; ``+`` joins several keys, their texts
separated by one space; ``<|eos|>`` / ``<|bos|>`` insert the EOS / BOS token with the loss of
their bracket state. Each comma piece is tokenized on its own. Key names: ``marker_user``,
``marker_gpt`` (good phrase), ``marker_gpt_bad`` (bad phrase), ``human_{k}`` (user text, or task
phrase plus post for summaries), ``gpt_{k}`` / ``gpt_bad_{k}`` (good / bad output), ``quote_{k}``
(WebGPT quotes). We add ``marker_gpt_better``, ``marker_gpt_context`` (the phrase before earlier, untrained assistant turns), ``system_{k}`` and the provenance keys ``id``,
``source``, ``feedback``, ``split`` (the original ignores unknown keys).

Differences, on purpose:

- The original's ``TextProcessor`` also appends one more EOS with loss at the end of every record
  (``add_eos_token=True``), after the ``<|eos|>`` the fields already end with: a doubled EOS we
  do not reproduce. Reading takes the fields as written and adds nothing.
- Reading puts one space between comma pieces (unless the piece follows an EOS or already starts
  with whitespace) so the record reads as text; the original tokenized pieces with nothing between.
- ``<|bos|>`` is accepted only first and dropped: our tokenizer adds BOS by the model's convention.
- Writing strips each segment's text, so separators other than one space (newlines between
  segments) become one space. Consecutive no-loss segments become one bracketed piece.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from coh.data.errors import DataError, describe
from coh.data.records import FeedbackRecord, Segment, separator

EOS, BOS = "<|eos|>", "<|bos|>"
PROVENANCE_KEYS = ("id", "source", "feedback", "split")
_MARKERS = {"good": "marker_gpt", None: "marker_gpt_context", "bad": "marker_gpt_bad", "better": "marker_gpt_better"}
_TEXT_KEYS = {"user": "human", "system": "system", "prompt": "quote"}


def _key(seg: Segment, k: int) -> str:
    if seg.role == "marker":
        return "marker_user"
    if seg.role == "feedback":
        return _MARKERS[seg.label]
    if seg.role == "assistant":
        return f"gpt_bad_{k}" if seg.label == "bad" else f"gpt_{k}"
    return f"{_TEXT_KEYS[seg.role]}_{k}"


def record_to_fields(record: FeedbackRecord) -> dict:
    """The record as an original-format object (see the module docstring)."""
    obj: dict = {}
    pieces: list[str] = []
    group: list[str] = []

    def flush() -> None:
        if group:
            pieces.append("[" + "+".join(group) + "]")
            group.clear()

    for k, seg in enumerate(record.segments):
        key, text = _key(seg, k), seg.text.strip()
        if key in obj and obj[key] != text:
            raise ValueError(f"record {record.id}: key {key!r} would need two texts, {obj[key]!r} and {text!r}")
        if not text and not seg.loss and not seg.eos:
            continue  # an empty no-loss piece would only add a space
        obj[key] = text
        if seg.loss:
            flush()
            pieces.append(key)
            if seg.eos:
                pieces.append(EOS)
        else:
            group.append(key)
            if seg.eos:
                flush()
                pieces.append(f"[{EOS}]")
    flush()
    obj.update(id=record.id, source=record.source, feedback=record.feedback, split=record.split)
    obj["fields"] = ",".join(pieces)
    return obj


def record_from_fields(
    obj: dict, where: str = "<fields>", line: int | None = None, source: str = "fields"
) -> FeedbackRecord:
    """Build a record from an original-format object; ``DataError`` names the file, line and field."""

    def fail(field: str | None, problem: str) -> DataError:
        return DataError(where, line, field, problem)

    if not isinstance(obj, dict):
        raise fail(None, f"expected a JSON object, got {describe(obj)}")
    spec = obj.get("fields")
    if not isinstance(spec, str) or not spec.strip():
        raise fail("fields", f"expected a non-empty string, got {describe(spec)}")
    prov = {"id": f"{source}/{line}", "source": source, "feedback": "fields", "split": "train"}
    for key in PROVENANCE_KEYS:
        if key in obj:
            if not isinstance(obj[key], str) or not obj[key]:
                raise fail(key, f"expected a non-empty string, got {describe(obj[key])}")
            prov[key] = obj[key]

    segments: list[Segment] = []
    for i, raw in enumerate(spec.split(",")):
        piece = raw.strip()
        loss = not (piece.startswith("[") and piece.endswith("]"))
        inner = piece if loss else piece[1:-1].strip()
        if not inner or any(c in inner for c in "[]"):
            raise fail("fields", f"piece {i + 1} {raw!r} is empty or has unbalanced brackets")
        if inner == BOS:
            if i == 0:
                continue
            raise fail("fields", f"piece {i + 1}: {BOS} is accepted only at the very start "
                                 "(the tokenizer adds BOS by the model's convention)")
        if inner == EOS:
            if not segments or segments[-1].eos:
                raise fail("fields", f"piece {i + 1}: {EOS} must follow a text piece, not "
                                     + ("another EOS" if segments else "start the record"))
            prev = segments[-1]
            if prev.loss != loss:
                raise fail("fields", f"piece {i + 1}: {raw.strip()!r} after a piece "
                           + ("without loss; our records only put an EOS with loss after a trained output"
                              if loss else "with loss; the EOS after a trained output must carry loss too"))
            segments[-1] = Segment(prev.text, prev.loss, prev.role, True, prev.label)
            continue
        keys = [k.strip() for k in inner.split("+")]
        for key in keys:
            if key not in obj:
                raise fail("fields", f"refers to key {key!r}, which the object lacks")
            if not isinstance(obj[key], str):
                raise fail(key, f"expected a string, got {describe(obj[key])}")
        text = " ".join(obj[key] for key in keys)
        if loss and not text.strip():
            raise fail("fields", f"piece {i + 1} {raw.strip()!r} is an output (loss) with empty text")
        if not text[:1].isspace():
            text = separator(segments[-1] if segments else None) + text
        if loss:
            label = "bad" if all(k.startswith("gpt_bad") for k in keys) else "good"
            segments.append(Segment(text, True, "assistant", False, label))
        else:
            segments.append(Segment(text, False, "prompt"))
    if not segments:
        raise fail("fields", "no text pieces")
    return FeedbackRecord(prov["id"], prov["source"], prov["feedback"], tuple(segments), prov["split"])


def read_fields_file(path: str | Path) -> Iterator[FeedbackRecord]:
    """Yield the records of an original-format JSONL file (gzip allowed)."""
    from coh.data.io import iter_json_lines

    for line_no, obj in iter_json_lines(path):
        yield record_from_fields(obj, str(path), line_no)  # type: ignore[arg-type]
