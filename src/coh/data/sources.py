"""Raw feedback rows of each supported source, normalised into ``FeedbackExample``.

Each converter takes one raw row (a dict, exactly as the dataset stores it) and returns a
``FeedbackExample``, or a ``Skip`` for rows the method leaves out on purpose (WebGPT ties). A
malformed row raises ``RowError`` naming the field; the reader adds the file and line.

Sources and their schemas:

- ``dialogue`` (Anthropic/hh-rlhf): ``chosen``, ``rejected``: transcripts
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The turns both share become context; the first
  reply where they differ, and any turns after it, are the outputs.
- ``webgpt`` (openai/webgpt_comparisons): ``question.full_text``, ``quotes_0/1.title`` and
  ``.extract`` (lists), ``answer_0/1``, ``score_0/1``. Ties are skipped, as in the original.
- ``summary`` (openai/summarize_from_feedback, ``comparisons``): ``info.post``,
  ``summaries[i].text``, ``choice`` (index of the preferred summary).
- ``preference`` (TRL): ``prompt`` (optional: implicit prompt), ``chosen``, ``rejected``; strings
  or lists of ``{"role", "content"}`` messages.
- ``unpaired`` (TRL): ``prompt``, ``completion``, ``label`` (true: desirable).
- ``rated``: ``prompt``, ``completions`` (two or more), ``scores`` (one number each).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from coh.data.errors import RowError, describe
from coh.data.feedback import Candidate, FeedbackExample, Turn


@dataclass(frozen=True)
class Skip:
    """A row left out on purpose; ``reason`` is counted in the build summary."""

    reason: str


Converter = Callable[[dict, str, str], "FeedbackExample | Skip"]


def _get(row: dict, path: str) -> object:
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


def _check_encodable(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. half an emoji escaped as "\ud83d"
        raise RowError(field, f"text holds a lone surrogate ({value[e.start]!r} at character {e.start})") from None


def _text(row: dict, path: str, allow_empty: bool = False) -> str:
    value = _get(row, path)
    if not isinstance(value, str):
        raise RowError(path, f"expected a string, got {describe(value)}")
    _check_encodable(value, path)
    value = value.strip()
    if not value and not allow_empty:
        raise RowError(path, "empty text")
    return value


def _finite(value: object, path: str) -> float:
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


def _number(row: dict, path: str) -> float:
    return _finite(_get(row, path), path)


# ---------------------------------------------------------------------------------------------
# Conversations: hh-rlhf transcripts and chat message lists


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


def _messages(value: object, field: str) -> list[Turn]:
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
        _check_encodable(content, f"{where}.content")
        turns.append(Turn(role, content.strip()))
    return turns


def _is_chat(row: dict, *keys: str) -> bool:
    """Whether the row holds chat message lists (then chat templates apply to its records)."""
    return any(isinstance(row.get(k), list) for k in keys)


def _turns(value: object, field: str, default_role: str) -> list[Turn]:
    """A string (one turn of ``default_role``) or a list of chat messages."""
    if isinstance(value, str):
        _check_encodable(value, field)
        return [Turn(default_role, value.strip())]
    return _messages(value, field)


def _split_shared(a: list[Turn], b: list[Turn]) -> int:
    """Length of the shared turn prefix of two conversations, cut back to end on a non-assistant turn."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    while i > 0 and a[i - 1].role == "assistant":
        i -= 1
    return i


def _candidate_from_turns(turns: list[Turn], field: str, score: float | None = None) -> Candidate:
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


def _check_context(context: list[Turn], field: str) -> None:
    if not context or context[-1].role != "user":
        raise RowError(field, "expected the prompt to end with a user turn")
    if not any(t.text for t in context if t.role == "user"):
        raise RowError(field, "empty prompt")


def _pair(
    context: list[Turn], chosen: list[Turn], rejected: list[Turn], fields: tuple[str, str], ex_id: str, source: str,
    split: str, transcripts: bool = False,
) -> FeedbackExample:
    good = _candidate_from_turns(chosen, fields[0])
    bad = _candidate_from_turns(rejected, fields[1])
    if good.text == bad.text and good.followup == bad.followup:
        raise RowError(f"{fields[0]}/{fields[1]}", "chosen and rejected are identical")
    return FeedbackExample(ex_id, source, split, tuple(context), (good, bad), transcripts=transcripts)


# ---------------------------------------------------------------------------------------------
# The paper's three datasets


def convert_dialogue(row: dict, ex_id: str, split: str) -> FeedbackExample:
    chosen = parse_hh_transcript(_text(row, "chosen"), "chosen")
    rejected = parse_hh_transcript(_text(row, "rejected"), "rejected")
    if chosen == rejected:
        raise RowError("chosen/rejected", "chosen and rejected are identical")
    n = _split_shared(chosen, rejected)
    context = chosen[:n]
    _check_context(context, "chosen")
    return _pair(context, chosen[n:], rejected[n:], ("chosen", "rejected"), ex_id, "dialogue", split,
                 transcripts=True)


def _webgpt_quotes(row: dict, i: int) -> tuple[tuple[str, str], ...]:
    titles = _get(row, f"quotes_{i}.title")
    extracts = _get(row, f"quotes_{i}.extract")
    for name, value in (("title", titles), ("extract", extracts)):
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise RowError(f"quotes_{i}.{name}", f"expected a list of strings, got {describe(value)}")
        for k, text in enumerate(value):
            _check_encodable(text, f"quotes_{i}.{name}[{k}]")
    if len(titles) != len(extracts):
        raise RowError(f"quotes_{i}", f"{len(titles)} titles but {len(extracts)} extracts")
    return tuple(zip(titles, extracts))


def convert_webgpt(row: dict, ex_id: str, split: str) -> FeedbackExample | Skip:
    question = _text(row, "question.full_text")
    scores = (_number(row, "score_0"), _number(row, "score_1"))
    if scores[0] == scores[1]:
        return Skip("webgpt tie (equal scores)")
    answers = (_text(row, "answer_0"), _text(row, "answer_1"))
    if answers[0] == answers[1]:
        raise RowError("answer_0/answer_1", "the two answers are identical")
    quotes = (_webgpt_quotes(row, 0), _webgpt_quotes(row, 1))
    order = (0, 1) if scores[0] > scores[1] else (1, 0)
    candidates = tuple(Candidate(text=answers[i], score=scores[i], quotes=quotes[i]) for i in order)
    return FeedbackExample(ex_id, "webgpt", split, (Turn("user", question),), candidates)


def convert_summary(row: dict, ex_id: str, split: str) -> FeedbackExample:
    info = _get(row, "info")
    # CNN/DailyMail rows of the validation split keep their text in info.article, with post null.
    cnndm = isinstance(info, dict) and info.get("post") is None and info.get("article") is not None
    post = _text(row, "info.article" if cnndm else "info.post")
    summaries = _get(row, "summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise RowError("summaries", f"expected a list of two summaries, got {describe(summaries)}")
    texts = ["", ""]
    for i, s in enumerate(summaries):
        if not isinstance(s, dict) or not isinstance(s.get("text"), str):
            raise RowError(f"summaries[{i}].text", f"expected a string, got {describe(s)}")
        _check_encodable(s["text"], f"summaries[{i}].text")
        texts[i] = s["text"].strip()
        if not texts[i]:
            raise RowError(f"summaries[{i}].text", "empty text")
    choice = _get(row, "choice")
    if isinstance(choice, float) and choice.is_integer():  # parquet / pandas may store 1.0
        choice = int(choice)
    if isinstance(choice, bool) or not isinstance(choice, int) or choice not in (0, 1):
        raise RowError("choice", f"expected 0 or 1, got {describe(choice)}")
    if texts[0] == texts[1]:
        raise RowError("summaries", "the two summaries are identical")
    good, bad = texts[choice], texts[1 - choice]
    return FeedbackExample(ex_id, "summary", split, (Turn("user", post),), (Candidate(good), Candidate(bad)))


# ---------------------------------------------------------------------------------------------
# Generic sources with TRL's column names


def prompt_turns(row: dict) -> list[Turn]:
    """The ``prompt`` field of a TRL-style row as turns (a string is one user turn), checked."""
    context = _turns(_get(row, "prompt"), "prompt", "user")
    _check_context(context, "prompt")
    return context


def _completion_turns(value: object, field: str) -> list[Turn]:
    turns = _turns(value, field, "assistant")
    if isinstance(value, str) and not turns[0].text:
        raise RowError(field, "empty text")
    return turns


_ASSISTANT_CUE = re.compile(r"(?:^|\s)(?:Assistant|AI|Bot):")
_USER_CUE = re.compile(r"^\s*(?:Human|User):\s*")


def _implicit_string_prompt(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen output, rejected output) from two texts that start with the same prompt.

    TRL's rule (the longest common prefix), moved back to a word boundary so no word is split,
    and, where the shared text holds an assistant cue (``Assistant:``), back to just after the last
    one, so words both outputs happen to start with stay in the outputs. The cue and a leading
    ``User:``/``Human:`` are dropped from the prompt: our own phrases take their place.
    """
    i = 0
    while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
        i += 1
    while i > 0 and not chosen[i - 1].isspace():
        i -= 1
    cues = list(_ASSISTANT_CUE.finditer(chosen, 0, i))
    if cues:
        prompt, i = chosen[: cues[-1].start()], cues[-1].end()
    else:
        prompt = chosen[:i]
    prompt = _USER_CUE.sub("", prompt).strip()
    return (prompt, chosen[i:].strip(), rejected[i:].strip()) if prompt else None


def _without_prompt(turns: list[Turn], context: list[Turn]) -> list[Turn]:
    """Completions that repeat the whole conversation (UltraFeedback-binarized style): drop the
    leading copy of the prompt."""
    n = len(context)
    return turns[n:] if len(turns) > n and turns[:n] == context else turns


def convert_preference(row: dict, ex_id: str, split: str) -> FeedbackExample:
    chosen_raw, rejected_raw = _get(row, "chosen"), _get(row, "rejected")
    if row.get("prompt") is not None:  # a null prompt (parquet rows without one) means implicit
        context = prompt_turns(row)
        chosen = _without_prompt(_completion_turns(chosen_raw, "chosen"), context)
        rejected = _without_prompt(_completion_turns(rejected_raw, "rejected"), context)
    elif isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
        hh_style = all(t.lstrip().startswith("Human:") and "\n\nAssistant:" in t for t in (chosen_raw, rejected_raw))
        if hh_style:
            # hh-rlhf-style transcripts: split into turns like the dialogue source
            ex = convert_dialogue(row, ex_id, split)
            return dataclasses.replace(ex, source="preference", transcripts=False)
        parts = _implicit_string_prompt(chosen_raw, rejected_raw)
        if parts is None:
            raise RowError("prompt", "missing, and chosen and rejected share no prompt text")
        context = [Turn("user", parts[0])]
        chosen, rejected = [Turn("assistant", parts[1])], [Turn("assistant", parts[2])]
    elif isinstance(chosen_raw, str) or isinstance(rejected_raw, str):
        raise RowError("chosen/rejected", "without a prompt, chosen and rejected must both be strings or both "
                                          "message lists")
    else:
        full_chosen = _messages(chosen_raw, "chosen")
        full_rejected = _messages(rejected_raw, "rejected")
        n = _split_shared(full_chosen, full_rejected)
        context, chosen, rejected = full_chosen[:n], full_chosen[n:], full_rejected[n:]
        _check_context(context, "chosen")
    ex = _pair(context, chosen, rejected, ("chosen", "rejected"), ex_id, "preference", split)
    return dataclasses.replace(ex, chat=_is_chat(row, "prompt", "chosen", "rejected"))


def convert_unpaired(row: dict, ex_id: str, split: str) -> FeedbackExample:
    context = prompt_turns(row)
    label = _get(row, "label")
    if not isinstance(label, bool):
        raise RowError("label", f"expected true or false, got {describe(label)}")
    cand = _candidate_from_turns(_completion_turns(_get(row, "completion"), "completion"), "completion")
    return FeedbackExample(ex_id, "unpaired", split, tuple(context), (cand,), label=label,
                           chat=_is_chat(row, "prompt", "completion"))


def convert_rated(row: dict, ex_id: str, split: str) -> FeedbackExample | Skip:
    context = prompt_turns(row)
    completions, scores = _get(row, "completions"), _get(row, "scores")
    if not isinstance(completions, list) or len(completions) < 2:
        raise RowError("completions", f"expected a list of two or more completions, got {describe(completions)}")
    if not isinstance(scores, list) or len(scores) != len(completions):
        raise RowError("scores", f"expected a list of {len(completions)} numbers (one per completion), got {describe(scores)}")
    cands = []
    for i, (comp, score) in enumerate(zip(completions, scores)):
        score = _finite(score, f"scores[{i}]")
        cands.append(_candidate_from_turns(_completion_turns(comp, f"completions[{i}]"), f"completions[{i}]", score))
    if len({(c.text, c.followup) for c in cands}) < len(cands):
        raise RowError("completions", "two completions are identical")
    if len({c.score for c in cands}) == 1:
        return Skip("rated: all scores equal")
    # Best first; a stable sort keeps the file's order among equal scores.
    order = sorted(range(len(cands)), key=lambda i: -cands[i].score)
    chat = _is_chat(row, "prompt") or any(isinstance(c, list) for c in completions)
    return FeedbackExample(ex_id, "rated", split, tuple(context), tuple(cands[i] for i in order), chat=chat)


CONVERTERS: dict[str, Converter] = {
    "dialogue": convert_dialogue,
    "webgpt": convert_webgpt,
    "summary": convert_summary,
    "preference": convert_preference,
    "unpaired": convert_unpaired,
    "rated": convert_rated,
}


@dataclass(frozen=True)
class HubDefault:
    """Where a paper dataset lives on the hub (its ``train`` split becomes train and its
    ``test`` / ``validation`` split eval: ``coh.data.build.read_source_rows``)."""

    name: str
    config: str | None


HUB_DEFAULTS: dict[str, HubDefault] = {
    "dialogue": HubDefault("Anthropic/hh-rlhf", None),
    "webgpt": HubDefault("openai/webgpt_comparisons", None),
    "summary": HubDefault("openai/summarize_from_feedback", "comparisons"),
}
