"""Votes out as preference rows, and back in through `coh data build` (the round trip)."""

from __future__ import annotations

import json

import pytest

from coh.cli import main
from coh.data.build import BuildConfig, SourceSpec, build
from coh.data.records import read_records
from coh.data.render import RenderSpec
from coh.judge.export import export_preferences
from coh.judge.store import JudgeStore

from .conftest import comparison_rows, write_jsonl


def voted_store(tmp_path) -> JudgeStore:
    """Three voters on 4 prompts x 1 pair; a multi-turn prompt among them."""
    rows = comparison_rows(4)
    rows[3]["prompt"] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
                         {"role": "user", "content": "Name a colour."}]
    from coh.judge.sources import read_comparisons

    store = JudgeStore(tmp_path / "v.sqlite")
    store.add_comparisons(read_comparisons(write_jsonl(tmp_path / "c.jsonl", rows)))
    ada, bob, cy = (store.voter(n).id for n in ("Ada", "Bob", "Cy"))
    store.record_vote(ada, 1, "a", "coh is clearer")
    store.record_vote(bob, 1, "b", "sft is shorter")
    store.record_vote(cy, 1, "a")
    store.record_vote(ada, 2, "tie", "both fine")
    store.record_vote(bob, 2, "neither")
    store.record_vote(ada, 3, "b")
    store.record_vote(bob, 3, "a")  # split evenly
    store.record_vote(ada, 4, "b", "sft answers the question")
    return store


def test_rows_one_per_decisive_vote(tmp_path):
    store = voted_store(tmp_path)
    summary = export_preferences(store, tmp_path / "prefs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert summary == {"votes": 8, "rows": 6, "tie": 1, "neither": 1, "comments": 3, "comments_left_out": 1}
    assert len(rows) == 6
    for r in rows:
        c = next(store.comparison(i) for i in range(1, 5) if store.comparison(i).prompt_id == r["judge"]["prompt_id"])
        outputs = {c.system_a: c.output_a, c.system_b: c.output_b}
        assert r["chosen"] == outputs[r["judge"]["systems"]["chosen"]]
        assert r["rejected"] == outputs[r["judge"]["systems"]["rejected"]]
        assert len(r["judge"]["voters"]) == 1 and len(r["judge"]["voters"][0]) == 16
    first = rows[0]
    assert first["prompt"] == "Question 0: how do I </div><b>bold?</b> & &amp; \"quotes\" 'single' <!-- comment -->?"
    assert first["comment"] == "coh is clearer" and first["judge"]["systems"] == {"chosen": "coh", "rejected": "sft"}
    assert rows[1]["comment"] == "sft is shorter" and "comment" not in rows[2]
    assert rows[-1]["prompt"][-1] == {"role": "user", "content": "Name a colour."}  # multi-turn: messages
    assert "Ada" not in json.dumps(rows) and rows[0]["judge"]["voters"] == [store.voter_hash(store.voter("Ada").id)]


def test_majority(tmp_path):
    store = voted_store(tmp_path)
    summary = export_preferences(store, tmp_path / "m.jsonl", aggregate="majority")
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert summary["rows"] == len(rows) == 2 and summary["split_evenly"] == 1
    assert rows[0]["judge"]["votes"] == {"a": 2, "b": 1} and rows[0]["judge"]["systems"]["chosen"] == "coh"
    assert rows[0]["comment"] == "coh is clearer" and len(rows[0]["judge"]["voters"]) == 2
    assert summary["comments_left_out"] == 2  # Bob's (losing side) and the tie's
    with pytest.raises(ValueError, match="aggregate"):
        export_preferences(store, tmp_path / "x.jsonl", aggregate="mean")


def test_round_trip_through_coh_data_build(tmp_path):
    store = voted_store(tmp_path)
    export_preferences(store, tmp_path / "prefs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    cfg = BuildConfig([SourceSpec("preference", files={"train": str(tmp_path / "prefs.jsonl")})],
                      str(tmp_path / "data"), render=RenderSpec(feedback=("pn",)), eval_fraction=0.0, progress=False)
    summary = build(cfg)
    assert summary["sources"]["preference"]["rows"] == 6 and summary["invalid_rows"] == 0
    records = list(read_records(tmp_path / "data" / "train.jsonl"))
    assert len(records) == 6
    expected = sorted((r["chosen"], r["rejected"]) for r in rows)
    got = []
    for rec in records:
        outputs = [s for s in rec.segments if s.loss and s.role == "assistant"]
        phrases = [s.text.strip() for s in rec.segments if s.role == "feedback" and s.label in ("good", "bad")]
        assert phrases[-2:] == ["A helpful answer:", "An unhelpful answer:"]
        got.append((outputs[0].text.strip(), outputs[1].text.strip()))
    assert sorted(got) == expected  # the chosen output under the helpful phrase, the rejected one after


def test_cli_export_and_results(tmp_path, capsys):
    store = voted_store(tmp_path)
    assert main(["judge", "export", str(store.path), "-o", str(tmp_path / "p.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "preference rows written: 6" in out and "tie 1, neither 1" in out
    assert main(["data", "build", "-s", f"preference:{tmp_path / 'p.jsonl'}", "-o", str(tmp_path / "d"),
                 "--feedback", "p", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["records"]["train"] + summary["records"]["eval"] == 6
    assert main(["judge", "results", str(store.path), "--plot", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "coh" in out and "sft" in out and "   8  " in out and (tmp_path / "r.png").exists()
    assert main(["judge", "results", str(store.path), "--json"]) == 0
    pairs = json.loads(capsys.readouterr().out)["pairs"]
    assert pairs[0]["counts"] == {"win": 3, "tie": 1, "loss": 3, "neither": 1}
    assert main(["judge", "results", str(tmp_path / "missing.sqlite")]) == 1
    assert "no votes database" in capsys.readouterr().err
