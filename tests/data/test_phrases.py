"""Phrase files (``--phrases``): overriding the built-in phrases per source, their use in rendering,
and errors that name the file and the field."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from coh.cli import main
from coh.data.errors import DataError
from coh.data.feedback import Candidate, FeedbackExample, Turn
from coh.data.phrases import DEFAULT_PHRASES, PhraseSet, load_phrases, phrases_for
from coh.data.records import read_records
from coh.data.render import RenderSpec, render_records

from ..conftest import FIXTURES

YAML_TEXT = """\
# phrases for a test
default:
  good: "A good reply:"
  bad: "A bad reply:"
summary:
  aux:
    - ["A fine summary:", "A poor summary:"]
    - ["Summary, liked:", "Summary, disliked:"]
"""

JSON_OBJ = {
    "default": {"good": "A good reply:", "bad": "A bad reply:"},
    "summary": {"aux": [["A fine summary:", "A poor summary:"], ["Summary, liked:", "Summary, disliked:"]]},
}

QA = FeedbackExample(
    id="p/1", source="preference", split="train", context=(Turn("user", "What is 2+2?"),),
    candidates=(Candidate("4."), Candidate("5.")),
)
POST = FeedbackExample(
    id="s/1", source="summary", split="train", context=(Turn("user", "A long post about cats."),),
    candidates=(Candidate("Cats are great."), Candidate("Cats.")),
)


def text_of(record) -> str:
    return "".join(s.text + ("<eos>" if s.eos else "") for s in record.segments)


@pytest.fixture(params=["yaml", "json"])
def phrase_file(request, tmp_path) -> Path:
    if request.param == "yaml":
        path = tmp_path / "phrases.yaml"
        path.write_text(YAML_TEXT, encoding="utf-8")
    else:
        path = tmp_path / "phrases.json"
        path.write_text(json.dumps(JSON_OBJ, indent=2), encoding="utf-8")
    return path


def test_file_overrides_given_keys_and_keeps_the_rest(phrase_file):
    table = load_phrases(phrase_file)
    default = table["default"]
    assert (default.good, default.bad) == ("A good reply:", "A bad reply:")
    assert default.user == "User:" and default.better == PhraseSet().better  # not given: kept
    summary = table["summary"]
    assert summary.aux == (("A fine summary:", "A poor summary:"), ("Summary, liked:", "Summary, disliked:"))
    # the rest of the summary set is the built-in one, with the file's default entries laid over it
    assert summary.task == DEFAULT_PHRASES["summary"].task
    assert summary.better == DEFAULT_PHRASES["summary"].better
    assert (summary.good, summary.bad) == ("A good reply:", "A bad reply:")
    # sources the file does not name get the default entries and keep the rest of their own set
    for name in ("dialogue", "webgpt"):
        assert table[name] == replace(DEFAULT_PHRASES[name], good="A good reply:", bad="A bad reply:")
    # the built-in table itself is not modified
    assert DEFAULT_PHRASES["default"] == PhraseSet()
    assert DEFAULT_PHRASES["summary"].aux != summary.aux


def test_sources_without_their_own_set_fall_back_to_default(phrase_file):
    table = load_phrases(phrase_file)
    for source in ("preference", "unpaired", "rated"):
        assert phrases_for(source, table) is table["default"]


def test_unknown_source_is_refused(tmp_path):
    """Phrases are looked up by source kind: any other name would be silently unused (a typo)."""
    path = tmp_path / "phrases.yaml"
    path.write_text('default:\n  bad: "A bad reply:"\nsumary:\n  good: "Nice:"\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_phrases(path)
    assert err.value.where == str(path) and err.value.field == "sumary" and "unknown source" in err.value.problem


def test_base_table_is_laid_over(tmp_path):
    path = tmp_path / "phrases.yaml"
    path.write_text("default:\n  user: 'Q:'\n", encoding="utf-8")
    base = {"default": PhraseSet(good="G:")}
    table = load_phrases(path, base=base)
    assert table["default"] == PhraseSet(good="G:", user="Q:")
    assert set(table) == {"default"} and base["default"] == PhraseSet(good="G:")


def test_rendering_uses_the_loaded_phrases(phrase_file):
    table = load_phrases(phrase_file)
    (pn,) = render_records(QA, RenderSpec(feedback=("pn",)), phrases_for("preference", table), seed=0)
    assert text_of(pn) == "User: What is 2+2? A good reply: 4.<eos>A bad reply: 5.<eos>"
    labels = {s.text.strip(): s.label for s in pn.segments if s.role == "feedback"}
    assert labels == {"A good reply:": "good", "A bad reply:": "bad"}

    records = render_records(POST, RenderSpec(feedback=("aux", "pn")), phrases_for("summary", table), seed=0)
    assert [r.id for r in records] == ["s/1/pn/aux0", "s/1/pn/aux1"]
    assert text_of(records[0]).endswith(" A fine summary: Cats are great.<eos>A poor summary: Cats.<eos>")
    assert text_of(records[1]).endswith(" Summary, liked: Cats are great.<eos>Summary, disliked: Cats.<eos>")
    # the summary task phrases (kept from the defaults) still come first
    assert any(text_of(records[0]).startswith("User: " + t) for t in DEFAULT_PHRASES["summary"].task)


def test_task_and_quote_intro_lists(tmp_path):
    path = tmp_path / "phrases.yaml"
    path.write_text("summary:\n  task: ['TL;DR this: ']\nwebgpt:\n  quote_intro: ['Sources: ']\n", encoding="utf-8")
    table = load_phrases(path)
    assert table["summary"].task == ("TL;DR this: ",)
    assert table["webgpt"].quote_intro == ("Sources: ",)
    (p,) = render_records(POST, RenderSpec(feedback=("p",)), table["summary"], seed=3)
    assert text_of(p).startswith("User: TL;DR this: A long post about cats. A helpful answer:")


BAD_FILES = [
    # (name, content, field, words in the problem)
    ("not_utf8.yaml", b"default:\n  good: \xff\xfe\n", None, "UTF-8"),
    ("syntax.yaml", b"default:\n  good: [\n  bad: x\n", None, "cannot parse"),
    ("syntax.json", b'{"default": {"good": "x",}}', None, "cannot parse"),
    ("list.yaml", b"- good: x\n", None, "mapping"),
    ("empty.yaml", b"", None, "mapping"),
    ("entries.yaml", b"summary: just a string\n", "summary", "mapping"),
    ("unknown_key.yaml", b"default:\n  gud: x\n", "default.gud", "unknown phrase key"),
    ("aux_not_pairs.yaml", b"summary:\n  aux: ['A', 'B']\n", "summary.aux", "pairs"),
    ("aux_triple.yaml", b"summary:\n  aux: [['A', 'B', 'C']]\n", "summary.aux", "pairs"),
    ("aux_empty_side.yaml", b"dialogue:\n  aux: [['A', '']]\n", "dialogue.aux", "pairs"),
    ("aux_mapping.json", b'{"summary": {"aux": {"good": "A", "bad": "B"}}}', "summary.aux", "pairs"),
    ("empty_string.yaml", b"default:\n  good: ''\n", "default.good", "non-empty string"),
    ("blank_string.yaml", b"rated:\n  better: '   '\n", "rated.better", "non-empty string"),
    ("number.yaml", b"default:\n  bad: 3\n", "default.bad", "non-empty string"),
    ("task_empty.yaml", b"summary:\n  task: []\n", "summary.task", "non-empty list"),
    ("task_string.yaml", b"summary:\n  task: 'Summarize: '\n", "summary.task", "non-empty list"),
    ("quote_intro_numbers.yaml", b"webgpt:\n  quote_intro: [1, 2]\n", "webgpt.quote_intro", "non-empty strings"),
]


@pytest.mark.parametrize(("name", "content", "field", "problem"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_names_file_and_field(tmp_path, name, content, field, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_phrases(path)
    err = info.value
    assert err.where == str(path)
    assert err.field == field
    assert problem in err.problem
    assert str(path) in str(err)
    if field:
        assert f"field '{field}'" in str(err)


def test_json_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "phrases.json"
    path.write_text('{\n  "default": {\n    "good": "x",\n  }\n}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_phrases(path)
    assert info.value.line == 4 and "line 4" in str(info.value)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "phrases.yaml"
    path.write_text('default:\n  good: "x"\n  bad: [unclosed\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_phrases(path)
    assert info.value.line is not None and f"line {info.value.line}" in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(DataError) as info:
        load_phrases(path)
    assert info.value.where == str(path) and info.value.field is None
    assert "not found" in info.value.problem


# -- the command line -----------------------------------------------------------------------------
def test_cli_build_uses_the_phrase_file(tmp_path, capsys):
    phrases = tmp_path / "phrases.yaml"
    phrases.write_text("default:\n  good: 'A reply we liked:'\n", encoding="utf-8")
    out = tmp_path / "out"
    fixture = FIXTURES / "preference_strings.jsonl"
    assert main(["data", "build", "-s", f"preference:eval={fixture}", "-o", str(out),
                 "--phrases", str(phrases), "--feedback", "p"]) == 0
    records = list(read_records(out / "eval.jsonl"))
    assert len(records) == 8 and not (out / "train.jsonl").read_text()
    for rec in records:
        (feedback,) = [s for s in rec.segments if s.role == "feedback"]
        assert feedback.text == " A reply we liked:" and feedback.label == "good"
    assert "A helpful answer:" not in (out / "eval.jsonl").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phrases_file"] == str(phrases)


@pytest.mark.parametrize(("content", "field"), [("default:\n  good: ''\n", "default.good"),
                                                 ("summary:\n  aux: [[x]]\n", "summary.aux")])
def test_cli_build_with_a_bad_phrase_file(tmp_path, capsys, content, field):
    phrases = tmp_path / "phrases.yaml"
    phrases.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    fixture = FIXTURES / "preference_strings.jsonl"
    assert main(["data", "build", "-s", f"preference:eval={fixture}", "-o", str(out),
                 "--phrases", str(phrases), "--feedback", "p", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(phrases) in err and f"field '{field}'" in err
    assert not (out / "eval.jsonl").exists()


def test_cli_build_with_a_missing_phrase_file(tmp_path, capsys):
    phrases = tmp_path / "missing.yaml"
    fixture = FIXTURES / "preference_strings.jsonl"
    assert main(["data", "build", "-s", f"preference:eval={fixture}", "-o", str(tmp_path / "out"),
                 "--phrases", str(phrases), "--feedback", "p", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(phrases) in err and "not found" in err
