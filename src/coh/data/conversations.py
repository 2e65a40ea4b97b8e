"""The parts of a raw row that the converters of ``coh.data.sources`` share: reading its fields
(text, numbers) with errors that name them, and conversations as ``Turn`` s (hh-rlhf transcripts,
chat message lists, TRL's ``prompt`` / completion fields) with the checks every source makes on
them. Every function raises ``RowError`` naming the field; the reader adds the file and line.
"""

from __future__ import annotations

import math
import re

from coh.data.errors import RowError, describe
from coh.data.feedback import Candidate, FeedbackExample, Turn

# ---------------------------------------------------------------------------------------------
# Fields of a row


def field_value(row: dict, path: str) -> object:
    """Fetch a dotted field (``info.post``), raising ``RowError`` if any part is missing."""
    value: object = row
    walked = []
    for part in path.split("."):
        walked.append(part)
        if not isinstance(value, dict):
            raise RowError(".".join(walked[:-1]), f"expected an object, got {describe(value)}")
        if part not in value:
            raise RowError(".".join(walked), "missing")
        value = value[part]
    return value


def check_encodable(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. half an emoji escaped as "\ud83d"
        raise RowError(field, f"text holds a lone surrogate ({value[e.start]!r} at character {e.start})") from None


def text_field(row: dict, path: str, allow_empty: bool = False) -> str:
    value = field_value(row, path)
    if not isinstance(value, str):
        raise RowError(path, f"expected a string, got {describe(value)}")
    check_encodable(value, path)
    value = value.strip()
    if not value and not allow_empty:
        raise RowError(path, "empty text")
    return value


def finite_number(value: object, path: str) -> float:
    """A finite number (JSON's ``NaN``, ``Infinity`` and ``1e400``, which Python reads as
    infinity, are refused: they cannot rank outputs, nor be written back as standard JSON)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(path, f"expected a number, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise RowError(path, f"expected a finite number, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(number):
        raise RowError(path, f"expected a finite number, got {describe(value)}")
    return number


def number_field(row: dict, path: str) -> float:
    return finite_number(field_value(row, path), path)


# ---------------------------------------------------------------------------------------------
# Conversations: hh-rlhf transcripts, chat message lists, TRL's prompt and completion fields


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str, field: str) -> list[Turn]:
    """Split an hh-rlhf transcript into turns. It must start with ``Human:`` (after blank lines)."""
    parts = _HH_TURN.split("\n\n" + text.lstrip())
    if parts[0].strip() or (len(parts) > 1 and parts[1] != "Human"):
        raise RowError(field, "expected the transcript to start with '\\n\\nHuman:'")
    if len(parts) < 3:
        raise RowError(field, "expected at least one '\\n\\nHuman:' turn")
    return [Turn(_HH_ROLE[role], body.strip()) for role, body in zip(parts[1::2], parts[2::2])]


def message_turns(value: object, field: str) -> list[Turn]:
    if not isinstance(value, list) or not value:
        raise RowError(field, f"expected a string or a non-empty list of messages, got {describe(value)}")
    turns = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise RowError(where, f"expected a message object with 'role' and 'content', got {describe(msg)}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant"):
            raise RowError(f"{where}.role", f"expected 'system', 'user' or 'assistant', got {describe(role)}")
        if not isinstance(content, str):
            raise RowError(f"{where}.content", f"expected a string, got {describe(content)}")
        check_encodable(content, f"{where}.content")
        turns.append(Turn(role, content.strip()))
    return turns


def is_chat(row: dict, *keys: str) -> bool:
    """Whether the row holds chat message lists (then chat templates apply to its records)."""
    return any(isinstance(row.get(k), list) for k in keys)


def turns_of(value: object, field: str, default_role: str) -> list[Turn]:
    """A string (one turn of ``default_role``) or a list of chat messages."""
    if isinstance(value, str):
        check_encodable(value, field)
        return [Turn(default_role, value.strip())]
    return message_turns(value, field)


def shared_prefix_length(a: list[Turn], b: list[Turn]) -> int:
    """Length of the shared turn prefix of two conversations, cut back to end on a non-assistant turn."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    while i > 0 and a[i - 1].role == "assistant":
        i -= 1
    return i


def candidate_from_turns(turns: list[Turn], field: str, score: float | None = None) -> Candidate:
    """An output made of the turns after the context: the first must be an assistant reply."""
    if not turns:
        raise RowError(field, "no reply after the shared conversation")
    if turns[0].role != "assistant":
        raise RowError(field, f"expected the reply to be an assistant turn, got a {turns[0].role} turn")
    if not turns[0].text:
        raise RowError(field, "empty reply")
    for t in turns[1:]:
        if t.role == "assistant" and not t.text:
            raise RowError(field, "empty reply")
    return Candidate(text=turns[0].text, score=score, followup=tuple(turns[1:]))


def check_context(context: list[Turn], field: str) -> None:
    if not context or context[-1].role != "user":
        raise RowError(field, "expected the prompt to end with a user turn")
    if not any(t.text for t in context if t.role == "user"):
        raise RowError(field, "empty prompt")


def pair_example(
    context: list[Turn], chosen: list[Turn], rejected: list[Turn], fields: tuple[str, str], ex_id: str, source: str,
    split: str, transcripts: bool = False,
) -> FeedbackExample:
    """A two-output example: ``chosen`` and ``rejected`` (the turns after ``context``, read from the
    row's ``fields``) as the good and the bad candidate; identical outputs are refused."""
    good = candidate_from_turns(chosen, fields[0])
    bad = candidate_from_turns(rejected, fields[1])
    if good.text == bad.text and good.followup == bad.followup:
        raise RowError(f"{fields[0]}/{fields[1]}", "chosen and rejected are identical")
    return FeedbackExample(ex_id, source, split, tuple(context), (good, bad), transcripts=transcripts)


def prompt_turns(row: dict) -> list[Turn]:
    """The ``prompt`` field of a TRL-style row as turns (a string is one user turn), checked."""
    context = turns_of(field_value(row, "prompt"), "prompt", "user")
    check_context(context, "prompt")
    return context


def completion_turns(value: object, field: str) -> list[Turn]:
    """A completion field (a string is one assistant turn, else chat messages), not empty."""
    turns = turns_of(value, field, "assistant")
    if isinstance(value, str) and not turns[0].text:
        raise RowError(field, "empty text")
    return turns
