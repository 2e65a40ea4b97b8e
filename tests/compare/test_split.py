"""The three-way split by prompt, on the real hh-rlhf sample: disjoint prompts, nothing lost."""

from __future__ import annotations

import json

import pytest

from coh.compare.split import SPLITS, split_of, split_rows
from tests.conftest import HH_SAMPLE


def _context(row: dict) -> str:
    from coh.data.sources import CONVERTERS

    ex = CONVERTERS["dialogue"](row, "x", "train")
    return json.dumps([list(t) for t in ex.context])


@pytest.fixture(scope="module")
def split(tmp_path_factory, bpe_tokenizer):
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} not present")
    out = tmp_path_factory.mktemp("split")
    summary = split_rows(str(HH_SAMPLE), "dialogue", out, bpe_tokenizer, 0, 0.15, 0.25, 400, skip_invalid=True)
    rows = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in SPLITS}
    return summary, rows, out


def test_prompts_are_disjoint_across_splits(split):
    _, rows, _ = split
    contexts = {s: {_context(r) for r in rows[s]} for s in SPLITS}
    assert all(contexts[s] for s in SPLITS)
    assert not contexts["policy"] & contexts["judge"]
    assert not contexts["policy"] & contexts["eval"]
    assert not contexts["judge"] & contexts["eval"]


def test_every_row_is_accounted_for(split):
    summary, rows, out = split
    assert summary["rows"] == 2312
    kept = sum(len(rows[s]) for s in SPLITS)
    too_long = sum(summary["left_out_too_long"].values())
    assert kept + too_long + summary["invalid"] + sum(summary["skipped"].values()) == summary["rows"]
    assert summary["invalid"] == len((out / "rejects.jsonl").read_text().splitlines())
    assert summary["rows_per_split"] == {s: len(rows[s]) for s in SPLITS}


def test_shares_follow_the_fractions(split):
    summary, _, _ = split
    n = {s: summary["rows_per_split"][s] + summary["left_out_too_long"][s] for s in SPLITS}
    total = sum(n.values())
    assert abs(n["eval"] / total - 0.15) < 0.04
    assert abs(n["judge"] / total - 0.25) < 0.04


def test_split_of_partitions_by_one_digest():
    """Raising a threshold moves prompts from policy to judge to eval, never elsewhere."""
    from coh.data.feedback import Candidate, FeedbackExample, Turn

    examples = [FeedbackExample(str(i), "d", "train", (Turn("user", f"question {i}"),), (Candidate("a"), Candidate("b")))
                for i in range(400)]
    small = [split_of(0, ex, 0.1, 0.2) for ex in examples]
    big = [split_of(0, ex, 0.2, 0.3) for ex in examples]
    order = {"policy": 0, "judge": 1, "eval": 2}
    assert all(order[b] >= order[a] or (a == "judge" and b == "eval") for a, b in zip(small, big))
    assert [s for s in small if s == "eval"] and all(b == "eval" for a, b in zip(small, big) if a == "eval")


def test_malformed_row_stops_with_file_and_line(tmp_path, bpe_tokenizer):
    from coh.data.errors import DataError

    data = tmp_path / "hh.jsonl"
    data.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"})
                    + "\n" + json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "x"}) + "\n")
    with pytest.raises(DataError, match=r"hh.jsonl.*line 2"):
        split_rows(str(data), "dialogue", tmp_path / "out", bpe_tokenizer, 0, 0.3, 0.3, None)
