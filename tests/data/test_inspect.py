"""``coh data inspect``: counts, rendering, histogram and problems, on records rendered from real hh-rlhf rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coh.cli import main
from coh.data.inspect import histogram, inspect_records, render_record
from coh.data.phrases import DEFAULT_PHRASES
from coh.data.records import FeedbackRecord, Segment
from coh.data.render import RenderSpec, render_records
from coh.data.sources import convert_dialogue
from coh.data.tokenize import RecordTokenizer
from tests.conftest import hh_rows

from .helpers import write_fields_file, write_records


@pytest.fixture(scope="module")
def records() -> list[FeedbackRecord]:
    out = []
    for i, row in enumerate(hh_rows(30)):
        try:
            ex = convert_dialogue(row, f"dialogue/test/{i}", "test")
        except ValueError:
            continue
        out.extend(render_records(ex, RenderSpec(), DEFAULT_PHRASES["dialogue"], seed=0))
    assert len(out) > 40
    return out


@pytest.fixture
def clean_file(tmp_path: Path, records) -> Path:
    path = tmp_path / "train.jsonl"
    write_records(records, path)
    return path


def _seg(text: str, loss: bool = False, eos: bool = False, role: str = "prompt", label: str | None = None) -> dict:
    return Segment(text, loss, role, eos, label).to_json()


def _bad_file(tmp_path: Path) -> Path:
    ok = [_seg("User:", role="marker"), _seg(" hi", role="user"), _seg(" A helpful answer:", role="feedback"),
          _seg(" Hello there, how can I help you today?", True, True, "assistant", "good")]
    rows = [
        {"id": "a", "source": "dialogue", "feedback": "p", "segments": ok},
        {"id": "a", "source": "dialogue", "feedback": "p", "segments": ok},  # duplicate id
        {"id": "b", "source": "dialogue", "feedback": "p",  # output without EOS
         "segments": [_seg("User: hi"), _seg(" Hello", True, False, "assistant", "good")]},
        {"id": "c", "source": "dialogue", "feedback": "pn",  # same good and bad output, leaked token
         "segments": [_seg("User: hi"), _seg(" Hi</s>", True, True, "assistant", "good"),
                      _seg(" Hi</s>", True, True, "assistant", "bad")]},
        {"id": "d", "source": "dialogue", "feedback": "p", "segments": [_seg("User: hi")]},  # no loss
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, '{"id": "broken", "segments": [')  # line 3: malformed JSON
    lines.append(json.dumps({"id": "e", "source": "x", "feedback": "p", "segments": []}))  # line 7: invalid record
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_counts_lengths_and_no_problems(clean_file, records) -> None:
    report = inspect_records(clean_file)
    assert report.n_records == len(records)
    assert report.by_source == {"dialogue": len(records)}
    assert sum(report.by_feedback.values()) == len(records)
    assert set(report.by_feedback) == {"p", "n", "pn", "np"}
    assert report.by_source_feedback["dialogue", "pn"] == report.by_feedback["pn"]
    assert report.char_lengths == [sum(len(s.text) for s in r.segments) for r in records]
    assert report.token_lengths is None and report.loss_tokens is None
    assert not report.problems, report.examples
    assert report.record == records[0]


def test_fields_format_gives_the_same_counts(tmp_path, clean_file, records) -> None:
    fields = tmp_path / "fields.jsonl"
    write_fields_file(records, fields)
    ours, theirs = inspect_records(clean_file), inspect_records(fields)
    assert theirs.n_records == ours.n_records
    assert theirs.by_source_feedback == ours.by_source_feedback
    assert not theirs.problems, theirs.examples


def test_render_record_marks_loss_spans(records) -> None:
    rec = next(r for r in records if r.feedback == "pn")
    text = render_record(rec, color=False)
    outputs = [s.text for s in rec.segments if s.loss]
    for out in outputs:
        assert f"⟦{out}⟨eos⟩⟧" in text
    assert text.count("⟦") == len(outputs) and "\x1b[" not in text
    assert text.splitlines()[-1] == (
        f"-- {len(rec.segments)} segments, {len(outputs)} with loss; "
        f"{sum(len(s.text) for s in rec.segments)} characters, {sum(len(o) for o in outputs)} with loss"
    )
    colored = render_record(rec, color=True)
    assert "\x1b[32m" + outputs[0] in colored and "⟦" not in colored


def test_histogram_bins_and_stats() -> None:
    text = histogram(list(range(1, 101)), "tokens")
    lines = text.splitlines()
    assert lines[0] == "lengths (tokens):" and len(lines) == 12
    assert all(line.count("█") == 40 and line.endswith(" 10") for line in lines[1:11])
    assert lines[1].strip().startswith("1–10") and lines[10].strip().startswith("91–100")
    assert lines[-1].strip() == "min 1, median 50.5, p95 95, max 100"
    skewed = histogram([5] * 9 + [50], "characters").splitlines()
    assert skewed[1].count("█") == 40 and skewed[-2].count("█") == 4 and skewed[-2].endswith(" 1")
    assert histogram([7, 7], "tokens").splitlines()[1].strip().startswith("7–7")


def test_problems_of_a_bad_file(tmp_path) -> None:
    report = inspect_records(_bad_file(tmp_path), max_length=20)
    path = str(tmp_path / "bad.jsonl")
    assert report.n_records == 5
    assert report.problems["duplicate_id"] == 1 and report.examples["duplicate_id"] == ["a (line 2)"]
    assert report.examples["no_eos"] == ["b (line 4)"]
    assert report.examples["same_good_bad"] == ["c (line 5)"]
    assert report.examples["leaked_token"] == ["c (line 5)"]
    assert report.examples["no_loss"] == ["d (line 6)"]
    assert report.problems["invalid"] == 2
    assert report.examples["invalid"][0].startswith(f"{path}:3: malformed JSON")
    assert report.examples["invalid"][1].startswith(f"{path}:7: field 'segments'")
    assert report.examples["too_long"] == [  # no tokenizer: in characters
        "a (line 1): 65 characters > 20", "a (line 2): 65 characters > 20", "c (line 5): 22 characters > 20"]


def test_token_lengths(clean_file, records, bpe_tokenizer) -> None:
    report = inspect_records(clean_file, bpe_tokenizer, max_length=10**6)
    rt = RecordTokenizer(bpe_tokenizer)
    expected = [rt(r) for r in records]
    assert report.token_lengths == [len(t) for t in expected]
    assert report.loss_tokens == [sum(t.loss_mask) for t in expected]
    assert all(0 < n < m for n, m in zip(report.loss_tokens, report.token_lengths))
    assert not report.problems
    cut = sorted(report.token_lengths)[-3]
    long = inspect_records(clean_file, bpe_tokenizer, max_length=cut - 1)
    assert long.problems["too_long"] == sum(n >= cut for n in report.token_lengths)
    assert long.examples["too_long"][0].endswith(f"tokens > {cut - 1}")


def test_cli_clean_file_exits_0(clean_file, records, capsys) -> None:
    assert main(["data", "inspect", str(clean_file)]) == 0
    out = capsys.readouterr().out
    assert f"{clean_file}: {len(records)} records" in out
    assert out.splitlines()[1].split() == ["source", "p", "n", "pn", "np", "total"]
    assert f"record 0: {records[0].id}" in out and "⟦" in out and "\x1b[" not in out
    assert "lengths (characters):" in out and "█" in out and "p95" in out
    assert out.rstrip().endswith("no problems found")


def test_cli_bad_file_exits_1(tmp_path, capsys) -> None:
    assert main(["data", "inspect", str(_bad_file(tmp_path)), "--record", "99"]) == 1
    out = capsys.readouterr().out
    assert "record 99: out of range: the file has 5 valid records (indices 0 to 4)" in out
    assert "1 duplicate ids" in out and "bad.jsonl:3: malformed JSON" in out
    assert "no problems found" not in out


def test_cli_with_tokenizer(tmp_path, clean_file, bpe_tokenizer, capsys) -> None:
    bpe_tokenizer.save_pretrained(tmp_path / "tok")
    assert main(["data", "inspect", str(clean_file), "--tokenizer", str(tmp_path / "tok"), "--record", "1"]) == 0
    out = capsys.readouterr().out
    assert "lengths (tokens):" in out and "with loss (" in out
    assert main(["data", "inspect", str(clean_file), "--tokenizer", str(tmp_path / "tok"), "--max-length", "8"]) == 1
    assert "records longer than max_length" in capsys.readouterr().out


def test_empty_and_missing_files(tmp_path, capsys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert inspect_records(empty).problems == {"empty": 1}
    assert main(["data", "inspect", str(empty)]) == 1
    assert main(["data", "inspect", str(tmp_path / "missing.jsonl")]) == 1
    assert f"{tmp_path / 'missing.jsonl'}: file not found" in capsys.readouterr().err
