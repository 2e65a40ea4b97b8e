"""Feedback phrases: the natural-language markers placed before each output.

The defaults are the original's (``pack_hf.py``): markers ``User:``, ``A helpful answer:``,
``An unhelpful answer:``, the alternative (good, bad) pairs used by feedback type ``aux``, and the
task phrases drawn per record for summaries and WebGPT's quoted sources.

Users can replace any of it with a YAML or JSON file keyed by source kind (``dialogue``,
``webgpt``, ``summary``, ``preference``, ``unpaired``, ``rated``) or ``default``, whose entries
apply to every source before each source's own::

    default:
      good: "A good reply:"
      bad: "A bad reply:"
    summary:
      aux: [["A better summary:", "A worse summary:"]]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from coh.data.errors import DataError, describe


@dataclass(frozen=True)
class PhraseSet:
    """Phrases for one source.

    ``good`` / ``bad`` introduce preferred / dispreferred outputs; ``better`` introduces an output
    that is better than the one before it in a chain of more than two (rated data); ``aux`` lists
    alternative (good, bad) pairs; ``task`` instructions drawn per record before the first user
    text; ``quote_intro`` phrases drawn per output before its quoted sources.
    """

    user: str = "User:"
    good: str = "A helpful answer:"
    bad: str = "An unhelpful answer:"
    better: str = "A better answer:"
    aux: tuple[tuple[str, str], ...] = ()
    task: tuple[str, ...] = ()
    quote_intro: tuple[str, ...] = ()

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The default pair followed by the alternative pairs: the pool drawn from per epoch."""
        return ((self.good, self.bad), *self.aux)


def _response_pairs(noun: str, adjectives: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((f"The following is a {g} {noun}.", f"The following is a {b} {noun}.") for g, b in adjectives)


def _generate_pairs(noun: str, adjectives: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((f"Generate a {g} {noun}.", f"Generate a {b} {noun}.") for g, b in adjectives)


_DIALOGUE_ADJ = [("better", "worse"), ("more helpful", "less helpful"), ("more harmless", "more harmful")]
_QA_ADJ = [("better", "worse"), ("more accurate", "less accurate"), ("more correct", "less correct")]

DEFAULT_PHRASES: dict[str, PhraseSet] = {
    "default": PhraseSet(),
    "dialogue": PhraseSet(
        aux=(
            *_response_pairs("response", _DIALOGUE_ADJ),
            *_response_pairs("chat", _DIALOGUE_ADJ),
            *_generate_pairs("response", _DIALOGUE_ADJ),
            *_generate_pairs("chat", _DIALOGUE_ADJ),
        )
    ),
    "webgpt": PhraseSet(
        aux=(*_response_pairs("answer", _QA_ADJ), *_generate_pairs("answer", _QA_ADJ)),
        quote_intro=(
            "Quote the following sources in your answer: ",
            "Use the following sources in your answer: ",
            "You may use the following sources in your answer: ",
            "You may quote the following sources in your answer: ",
            "The following sources may be helpful: ",
        ),
    ),
    "summary": PhraseSet(
        better="A better summary:",
        aux=(*_response_pairs("summary", _QA_ADJ), *_generate_pairs("summary", _QA_ADJ)),
        task=(
            "Write a summary of the following article: ",
            "Generate a summary of the following text: ",
            "Summarize the following article: ",
            "Summarize the following text: ",
            "Write a summary of the following text: ",
            "Here is a news article, please summarize it: ",
            "Please write a summary of the following paragraph: ",
            "Please summarize the following paragraph: ",
        ),
    ),
}


PHRASE_SOURCES = ("default", "dialogue", "webgpt", "summary", "preference", "unpaired", "rated")


def phrases_for(source: str, table: dict[str, PhraseSet]) -> PhraseSet:
    """The phrase set of ``source``, falling back to ``default``."""
    return table.get(source, table["default"])


def load_phrases(path: str | Path, base: dict[str, PhraseSet] | None = None) -> dict[str, PhraseSet]:
    """Read a YAML or JSON phrase file and lay it over ``base`` (the built-in defaults).

    Keys not given keep their base value. Raises ``DataError`` naming the file and field on
    anything malformed.
    """
    path = Path(path)
    base = dict(DEFAULT_PHRASES if base is None else base)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(str(path), None, None, "phrase file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        mark = getattr(e, "problem_mark", None)  # YAML errors carry a 0-based mark, JSON ones a lineno
        line = mark.line + 1 if mark is not None else getattr(e, "lineno", None)
        what = getattr(e, "problem", None) or getattr(e, "msg", None) or str(e)  # the gist, on one line
        raise DataError(str(path), line, None, f"cannot parse: {what}") from None
    if not isinstance(raw, dict):
        raise DataError(str(path), None, None, f"expected a mapping of source name to phrases, got {describe(raw)}")
    known = {f.name for f in fields(PhraseSet)}
    unknown = sorted(str(k) for k in raw if k not in PHRASE_SOURCES)
    if unknown:
        raise DataError(str(path), None, unknown[0], f"unknown source; expected some of {list(PHRASE_SOURCES)}")
    # ``default`` first, laid over every source; then each source's own entries on top.
    for source, entries in sorted(raw.items(), key=lambda kv: kv[0] != "default"):
        if not isinstance(entries, dict):
            raise DataError(str(path), None, str(source), f"expected a mapping of phrases, got {describe(entries)}")
        changes: dict = {}
        for key, value in entries.items():
            where = f"{source}.{key}"
            if key not in known:
                raise DataError(str(path), None, where, f"unknown phrase key; expected one of {sorted(known)}")
            if key == "aux":
                if not isinstance(value, list) or not all(
                    isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) and s for s in p)
                    for p in value
                ):
                    raise DataError(str(path), None, where, "expected a list of [good, bad] pairs of non-empty strings")
                changes[key] = tuple((g, b) for g, b in value)
            elif key in ("task", "quote_intro"):
                if not isinstance(value, list) or not value or not all(isinstance(s, str) and s for s in value):
                    raise DataError(str(path), None, where, "expected a non-empty list of non-empty strings")
                changes[key] = tuple(value)
            else:
                if not isinstance(value, str) or not value.strip():
                    raise DataError(str(path), None, where, f"expected a non-empty string, got {describe(value)}")
                changes[key] = value
        if source == "default":
            for name in list(base):
                base[name] = replace(base[name], **changes)
        else:
            base[source] = replace(base.get(source, base["default"]), **changes)
    return base
