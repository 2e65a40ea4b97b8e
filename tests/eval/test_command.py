"""``coh eval`` from the command line, end to end on tiny models and the real hh-rlhf sample."""

from __future__ import annotations

import json

import pytest

from coh.cli import main
from tests.conftest import BUILTIN_HH, FIXTURES, HH_SAMPLE

HH = HH_SAMPLE if HH_SAMPLE.exists() else BUILTIN_HH


def test_dialogue_summarization_and_compare(tiny_bpe_dir, tmp_path, capsys):
    assert main(["eval", "feedback", "dialogue", "--model", str(tiny_bpe_dir), "--data", str(HH), "--limit", "5",
                 "-o", str(tmp_path / "dialogue")]) == 0
    result = json.loads((tmp_path / "dialogue" / "results.json").read_text())
    assert result["protocol"] == "dialogue" and result["counts"]["pairs"] == 5
    assert 0.0 <= result["metrics"]["preference_accuracy"] <= 1.0
    assert result["settings"]["phrases"]["good"] == "A helpful answer:"  # no coh.json: the defaults
    assert len((tmp_path / "dialogue" / "pairs.jsonl").read_text().splitlines()) == 5
    assert "| preference_accuracy |" in capsys.readouterr().out

    data = FIXTURES / "summarize_from_feedback_validation.jsonl.gz"
    assert main(["eval", "feedback", "summarization", "--model", str(tiny_bpe_dir), "--data", str(data),
                 "--max-new-tokens", "3", "--no-progress", "-o", str(tmp_path / "summary")]) == 0
    result = json.loads((tmp_path / "summary" / "results.json").read_text())
    assert set(result["metrics"]) == {"rouge1", "rouge2", "rougeL", "summary_words"}
    assert result["counts"]["posts"] == 6 and result["settings"]["max_new_tokens"] == 3
    assert len((tmp_path / "summary" / "generations.jsonl").read_text().splitlines()) == 6

    assert main(["eval", "compare", str(tmp_path / "dialogue"), str(tmp_path / "summary"),
                 "-o", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| metric | dialogue | summary |" in table and "| rouge1 | - |" in table
    assert (tmp_path / "cmp" / "compare.png").exists()


def test_bad_input_exits_1_naming_file_line_and_field(tiny_bpe_dir, tmp_path, capsys):
    bad = FIXTURES / "bad" / "hh_bad_transcript.jsonl"
    assert main(["eval", "feedback", "dialogue", "--model", str(tiny_bpe_dir), "--data", str(bad),
                 "--strict", "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("coh eval: error: ") and "hh_bad_transcript.jsonl, line 1, field 'chosen'" in err
    # without --strict every row is set aside: nothing to evaluate, and the first one is named
    assert main(["eval", "feedback", "dialogue", "--model", str(tiny_bpe_dir), "--data", str(bad),
                 "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no dialogue examples to evaluate (2 rows read; 2 unusable row(s) skipped" in err
    assert "the first: " in err and "hh_bad_transcript.jsonl, line 1, field 'chosen'" in err
    assert main(["eval", "compare", str(tmp_path / "missing"), "-o", str(tmp_path)]) == 1
    assert "no such results file" in capsys.readouterr().err


def test_table_and_its_old_name_compare(tmp_path, capsys, monkeypatch):
    """`coh eval table` writes table.md and table.png; `coh eval compare`, its old spelling, still
    runs (compare.md and compare.png, as before) with a deprecation note, and is no longer listed."""
    from coh.eval.report import EvalResult, write_result

    runs = []
    for name, value in (("coh", 0.7), ("sft", 0.55)):
        write_result(EvalResult("dialogue", name, None, {"preference_accuracy": value}), tmp_path / name)
        runs.append(str(tmp_path / name))
    assert main(["eval", "table", *runs, "-o", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert "| metric | coh | sft |" in out and "deprecated" not in err
    assert (tmp_path / "t" / "table.md").exists() and (tmp_path / "t" / "table.png").exists()
    assert main(["eval", "compare", *runs, "-o", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert "| metric | coh | sft |" in out and "`coh eval compare` is deprecated" in err and "coh eval table" in err
    assert (tmp_path / "c" / "compare.md").read_text() == (tmp_path / "t" / "table.md").read_text()
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    listed = capsys.readouterr().out
    assert "    table " in listed and "    compare " not in listed
