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
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from coh.data.conversations import (
    candidate_from_turns,
    check_context,
    check_encodable,
    completion_turns,
    field_value,
    finite_number,
    is_chat,
    message_turns,
    number_field,
    pair_example,
    parse_hh_transcript,
    prompt_turns,
    shared_prefix_length,
    text_field,
)
from coh.data.errors import DataError, RowError, SetAside, describe
from coh.data.feedback import Candidate, FeedbackExample, Turn


@dataclass(frozen=True)
class Skip:
    """A row left out on purpose; ``reason`` is counted in the build summary."""

    reason: str


Converter = Callable[[dict, str, str], "FeedbackExample | Skip"]


# ---------------------------------------------------------------------------------------------
# The paper's three datasets


def convert_dialogue(row: dict, ex_id: str, split: str) -> FeedbackExample:
    chosen = parse_hh_transcript(text_field(row, "chosen"), "chosen")
    rejected = parse_hh_transcript(text_field(row, "rejected"), "rejected")
    if chosen == rejected:
        raise RowError("chosen/rejected", "chosen and rejected are identical")
    n = shared_prefix_length(chosen, rejected)
    context = chosen[:n]
    check_context(context, "chosen")
    return pair_example(context, chosen[n:], rejected[n:], ("chosen", "rejected"), ex_id, "dialogue", split,
                 transcripts=True)


def _webgpt_quotes(row: dict, i: int) -> tuple[tuple[str, str], ...]:
    titles = field_value(row, f"quotes_{i}.title")
    extracts = field_value(row, f"quotes_{i}.extract")
    for name, value in (("title", titles), ("extract", extracts)):
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise RowError(f"quotes_{i}.{name}", f"expected a list of strings, got {describe(value)}")
        for k, text in enumerate(value):
            check_encodable(text, f"quotes_{i}.{name}[{k}]")
    if len(titles) != len(extracts):
        raise RowError(f"quotes_{i}", f"{len(titles)} titles but {len(extracts)} extracts")
    return tuple(zip(titles, extracts))


def convert_webgpt(row: dict, ex_id: str, split: str) -> FeedbackExample | Skip:
    question = text_field(row, "question.full_text")
    scores = (number_field(row, "score_0"), number_field(row, "score_1"))
    if scores[0] == scores[1]:
        return Skip("webgpt tie (equal scores)")
    answers = (text_field(row, "answer_0"), text_field(row, "answer_1"))
    if answers[0] == answers[1]:
        raise RowError("answer_0/answer_1", "the two answers are identical")
    quotes = (_webgpt_quotes(row, 0), _webgpt_quotes(row, 1))
    order = (0, 1) if scores[0] > scores[1] else (1, 0)
    candidates = tuple(Candidate(text=answers[i], score=scores[i], quotes=quotes[i]) for i in order)
    return FeedbackExample(ex_id, "webgpt", split, (Turn("user", question),), candidates)


def convert_summary(row: dict, ex_id: str, split: str) -> FeedbackExample:
    info = field_value(row, "info")
    # CNN/DailyMail rows of the validation split keep their text in info.article, with post null.
    cnndm = isinstance(info, dict) and info.get("post") is None and info.get("article") is not None
    post = text_field(row, "info.article" if cnndm else "info.post")
    summaries = field_value(row, "summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise RowError("summaries", f"expected a list of two summaries, got {describe(summaries)}")
    texts = ["", ""]
    for i, s in enumerate(summaries):
        if not isinstance(s, dict) or not isinstance(s.get("text"), str):
            raise RowError(f"summaries[{i}].text", f"expected a string, got {describe(s)}")
        check_encodable(s["text"], f"summaries[{i}].text")
        texts[i] = s["text"].strip()
        if not texts[i]:
            raise RowError(f"summaries[{i}].text", "empty text")
    choice = field_value(row, "choice")
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
    chosen_raw, rejected_raw = field_value(row, "chosen"), field_value(row, "rejected")
    if row.get("prompt") is not None:  # a null prompt (parquet rows without one) means implicit
        context = prompt_turns(row)
        chosen = _without_prompt(completion_turns(chosen_raw, "chosen"), context)
        rejected = _without_prompt(completion_turns(rejected_raw, "rejected"), context)
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
        full_chosen = message_turns(chosen_raw, "chosen")
        full_rejected = message_turns(rejected_raw, "rejected")
        n = shared_prefix_length(full_chosen, full_rejected)
        context, chosen, rejected = full_chosen[:n], full_chosen[n:], full_rejected[n:]
        check_context(context, "chosen")
    ex = pair_example(context, chosen, rejected, ("chosen", "rejected"), ex_id, "preference", split)
    return dataclasses.replace(ex, chat=is_chat(row, "prompt", "chosen", "rejected"))


def convert_unpaired(row: dict, ex_id: str, split: str) -> FeedbackExample:
    context = prompt_turns(row)
    label = field_value(row, "label")
    if not isinstance(label, bool):
        raise RowError("label", f"expected true or false, got {describe(label)}")
    cand = candidate_from_turns(completion_turns(field_value(row, "completion"), "completion"), "completion")
    return FeedbackExample(ex_id, "unpaired", split, tuple(context), (cand,), label=label,
                           chat=is_chat(row, "prompt", "completion"))


def convert_rated(row: dict, ex_id: str, split: str) -> FeedbackExample | Skip:
    context = prompt_turns(row)
    completions, scores = field_value(row, "completions"), field_value(row, "scores")
    if not isinstance(completions, list) or len(completions) < 2:
        raise RowError("completions", f"expected a list of two or more completions, got {describe(completions)}")
    if not isinstance(scores, list) or len(scores) != len(completions):
        raise RowError("scores", f"expected a list of {len(completions)} numbers (one per completion), got {describe(scores)}")
    cands = []
    for i, (comp, score) in enumerate(zip(completions, scores)):
        score = finite_number(score, f"scores[{i}]")
        cands.append(candidate_from_turns(completion_turns(comp, f"completions[{i}]"), f"completions[{i}]", score))
    if len({(c.text, c.followup) for c in cands}) < len(cands):
        raise RowError("completions", "two completions are identical")
    if len({c.score for c in cands}) == 1:
        return Skip("rated: all scores equal")
    # Best first; a stable sort keeps the file's order among equal scores.
    order = sorted(range(len(cands)), key=lambda i: -cands[i].score)
    chat = is_chat(row, "prompt") or any(isinstance(c, list) for c in completions)
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


# ---------------------------------------------------------------------------------------------
# Rows through a converter, the unusable ones set aside

T = TypeVar("T")
NESTED_TOO_DEEPLY = "nested too deeply"


def convert_row(convert: Callable[[dict, int], T | Skip], row: object, where: str, line: int
                ) -> T | Skip | DataError:
    """One raw row as read (a ``DataError`` for a line that could not be read) through ``convert``
    (``convert(row, line)``, raising ``RowError`` for a row it cannot use): its result, a ``Skip``,
    or the ``DataError`` naming ``where``, ``line`` and the field of a row that cannot be used (not
    a JSON object, refused by the converter, or nested too deeply for it: ``NESTED_TOO_DEEPLY``)."""
    if isinstance(row, DataError):
        return row
    try:
        if not isinstance(row, dict):
            raise RowError(None, f"expected a JSON object, got {describe(row)}")
        return convert(row, line)
    except RecursionError:  # the reader bounds nesting; this guards a deep parquet or hub row
        return DataError(where, line, None, NESTED_TOO_DEEPLY)
    except RowError as e:
        return e.at(where, line)


def convert_rows(rows: Iterable[tuple[str, int, object]], convert: Callable[[dict, int], T | Skip],
                 set_aside: SetAside | None = None, skipped: dict[str, int] | None = None) -> Iterator[T]:
    """The usable rows of ``rows`` (``(where, line, row)``) through ``convert`` (see ``convert_row``),
    in order. A row that cannot be used raises its ``DataError``, or with ``set_aside`` is recorded
    there and left out; rows left out on purpose (``Skip``) are counted in ``skipped`` by reason."""
    for where, line, row in rows:
        out = convert_row(convert, row, where, line)
        if isinstance(out, DataError):
            if set_aside is None:
                raise out
            set_aside.add(out)
        elif isinstance(out, Skip):
            if skipped is not None:
                skipped[out.reason] = skipped.get(out.reason, 0) + 1
        else:
            yield out
