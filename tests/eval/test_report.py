from __future__ import annotations

import json

import pytest

from coh.eval.report import EvalResult, read_result, write_result, write_table


def _run(tmp_path, name, metrics, ci95=None, protocol="dialogue"):
    out = tmp_path / name
    write_result(EvalResult(protocol, f"models/{name}", "hh.jsonl", metrics, ci95 or {}, {"pairs": 8}), out)
    return out


def test_results_round_trip_and_markdown(tmp_path):
    out = _run(tmp_path, "coh", {"preference_accuracy": 0.625, "x": float("nan")},
               {"preference_accuracy": (0.5, 0.75)})
    back = read_result(out)
    assert back.metrics["preference_accuracy"] == 0.625 and back.ci95["preference_accuracy"] == (0.5, 0.75)
    assert json.loads((out / "results.json").read_text())["counts"] == {"pairs": 8}
    md = (out / "results.md").read_text()
    assert "| preference_accuracy | 0.6250 | 0.5000 to 0.7500 |" in md
    assert "| x | n/a |" in md


def test_compare_puts_runs_side_by_side(tmp_path):
    a = _run(tmp_path, "coh", {"preference_accuracy": 0.7, "rouge1": 0.3}, {"preference_accuracy": (0.6, 0.8)})
    b = _run(tmp_path, "sft", {"preference_accuracy": 0.55})
    md, png = write_table([a, b / "results.json"], tmp_path / "cmp")
    table = md.read_text()
    assert "| metric | coh | sft |" in table
    assert "| preference_accuracy | 0.7000 [0.6000, 0.8000] | 0.5500 |" in table
    assert "| rouge1 | 0.3000 | - |" in table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    md2, _ = write_table([a, b], tmp_path / "cmp2", labels=["CoH", "SFT"])
    assert "| metric | CoH | SFT |" in md2.read_text()
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        write_table([a, b], tmp_path / "cmp3", labels=["one"])


def test_read_result_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such results file"):
        read_result(tmp_path / "nothing")
    bad = tmp_path / "bad.json"
    bad.write_text('{"protocol": "x",\n "metrics": }')
    with pytest.raises(ValueError, match=r"bad.json: malformed JSON \(line 2"):
        read_result(bad)
    other = tmp_path / "other.json"
    other.write_text('{"results": {}}')
    with pytest.raises(ValueError, match="not a coh eval results file"):
        read_result(other)
