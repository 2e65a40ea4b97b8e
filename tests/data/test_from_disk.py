"""`coh data build` on `datasets` folders (save_to_disk): HH transcripts, TRL preference data (strings and
conversations, implicit and explicit prompt) and UltraFeedback-binarized-style DatasetDicts. The folders are
written by datasets' own save_to_disk from the real hh-rlhf sample; TRL's own extract_prompt makes the
explicit-prompt form. Each must give the records the same rows give from a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from coh.cli import main
from coh.data.errors import DataError
from coh.data.sources import parse_hh_transcript

from ..conftest import hh_rows


def good_hh_rows(n: int = 40) -> list[dict]:
    """hh-rlhf rows that convert (the sample holds a few with an empty reply)."""
    from coh.data.sources import convert_dialogue

    out = []
    for row in hh_rows(3 * n):
        try:
            convert_dialogue(row, "x", "train")
        except ValueError:
            continue
        out.append({"chosen": row["chosen"], "rejected": row["rejected"]})
    return out[:n]


def messages(transcript: str) -> list[dict]:
    return [{"role": t.role, "content": t.text} for t in parse_hh_transcript(transcript, "x")]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build(source: str, out: Path, *more: str) -> tuple[dict, dict[str, list[dict]]]:
    assert main(["data", "build", "-s", source, "-o", str(out), "--num-proc", "1", "--no-progress",
                 "--eval-fraction", "0.2", *more]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = {s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "eval")}
    return summary, records


def without_where(records: dict[str, list[dict]]) -> dict[str, list[tuple]]:
    """What a record says, without its id (which holds the row number) and meta."""
    return {s: [(r["source"], r["split"], r["feedback"], json.dumps(r["segments"])) for r in rs]
            for s, rs in records.items()}


def test_hh_dataset_folder_gives_the_records_of_its_jsonl(tmp_path):
    rows = good_hh_rows()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hh"))
    write_jsonl(rows, tmp_path / "hh.jsonl")
    from_disk = build(f"dialogue:{tmp_path / 'hh'}", tmp_path / "a")
    from_file = build(f"dialogue:{tmp_path / 'hh.jsonl'}", tmp_path / "b")
    assert from_disk[1] == from_file[1]  # ids too: rows are numbered from 1 as lines are
    assert from_disk[0]["sources"]["dialogue"]["rows"] == len(rows)
    assert sum(from_disk[0]["records"].values()) == 4 * len(rows)


def test_dataset_dict_folder_brings_its_splits(tmp_path, capsys):
    rows = good_hh_rows()
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:30]),
                               "test": datasets.Dataset.from_list(rows[30:])})
    dd.save_to_disk(str(tmp_path / "hh"))
    summary, records = build(f"dialogue:{tmp_path / 'hh'}", tmp_path / "a")
    assert summary["sources"]["dialogue"]["examples"] == {"train": 30, "eval": len(rows) - 30}
    assert {r["split"] for r in records["eval"]} == {"eval"}
    assert "not read" not in capsys.readouterr().err


def test_trl_conversational_implicit_and_explicit_prompt(tmp_path):
    from trl.data_utils import maybe_extract_prompt

    rows = [{"chosen": messages(r["chosen"]), "rejected": messages(r["rejected"])} for r in good_hh_rows()]
    implicit = datasets.Dataset.from_list(rows)
    explicit = implicit.map(maybe_extract_prompt)  # TRL's own code splits the shared prompt off
    assert set(explicit.column_names) == {"prompt", "chosen", "rejected"}
    implicit.save_to_disk(str(tmp_path / "implicit"))
    explicit.save_to_disk(str(tmp_path / "explicit"))
    a = build(f"preference:{tmp_path / 'implicit'}", tmp_path / "a")[1]
    b = build(f"preference:{tmp_path / 'explicit'}", tmp_path / "b")[1]
    assert a == b and a["train"]
    assert all(r["meta"].get("chat") for r in a["train"])  # message lists: chat data (chat templates apply)
    # the same conversations as hh transcripts, rendered by the dialogue source, say the same text
    hh = tmp_path / "hh.jsonl"
    write_jsonl(good_hh_rows(), hh)
    c = build(f"preference:{hh}", tmp_path / "c")[1]
    assert without_where(a) == without_where(c)


def test_trl_strings_with_prompt(tmp_path):
    rows = [{"prompt": "What is the capital of Peru?", "chosen": "Lima.", "rejected": "Quito."},
            {"prompt": "Which is larger, 3 or 5?", "chosen": "5 is larger.", "rejected": "3."}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "trl"))
    from_disk = build(f"preference:train={tmp_path / 'trl'}", tmp_path / "a", "--eval-fraction", "0")
    from_file = build(f"preference:train={write_jsonl(rows, tmp_path / 'trl.jsonl')}", tmp_path / "b",
                      "--eval-fraction", "0")
    assert from_disk[1] == from_file[1] and len(from_disk[1]["train"]) == 8


def ultrafeedback_row(i: int, row: dict) -> dict:
    """A row in HuggingFaceH4/ultrafeedback_binarized's schema: chosen and rejected repeat the prompt."""
    chosen, rejected = messages(row["chosen"]), messages(row["rejected"])
    prompt = chosen[0]["content"]
    return {"prompt": prompt, "prompt_id": f"{i:064x}", "chosen": chosen[:2], "rejected": [chosen[0], rejected[1]],
            "messages": chosen[:2], "score_chosen": 8.0, "score_rejected": 3.5}


def test_ultrafeedback_binarized_dataset_dict(tmp_path, capsys):
    rows = [r for r in good_hh_rows(60) if len(messages(r["chosen"])) == 2 and len(messages(r["rejected"])) == 2]
    rows = [ultrafeedback_row(i, r) for i, r in enumerate(rows)]
    assert len(rows) >= 10
    half = len(rows) // 2
    dd = datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows[:half]),
                               "test_prefs": datasets.Dataset.from_list(rows[half:]),
                               "train_sft": datasets.Dataset.from_list(rows[:2]),
                               "test_gen": datasets.Dataset.from_list(rows[:1])})
    dd.save_to_disk(str(tmp_path / "uf"))
    summary, records = build(f"preference:{tmp_path / 'uf'}", tmp_path / "a")
    err = capsys.readouterr().err
    assert "train_prefs (train)" in err and "test_prefs (eval)" in err and "not read: train_sft, test_gen" in err
    assert summary["sources"]["preference"]["examples"] == {"train": half, "eval": len(rows) - half}
    # the prompt repeated in chosen/rejected is context, not output: same records as the explicit TRL form
    explicit = [{"prompt": [r["chosen"][0]], "chosen": r["chosen"][1:], "rejected": r["rejected"][1:]} for r in rows]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(explicit[:half]),
                          "test": datasets.Dataset.from_list(explicit[half:])}).save_to_disk(str(tmp_path / "trl"))
    assert without_where(build(f"preference:{tmp_path / 'trl'}", tmp_path / "b")[1]) == without_where(records)
    # one split of the folder by itself
    summary, _ = build(f"preference:train={tmp_path / 'uf' / 'train_sft'}", tmp_path / "c", "--eval-fraction", "0")
    assert summary["sources"]["preference"]["examples"]["train"] == 2


def test_bad_folder_and_bad_row_are_named(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["data", "build", "-s", f"preference:{tmp_path / 'plain'}", "-o", str(tmp_path / "a")]) == 1
    assert "not one that datasets' save_to_disk wrote" in capsys.readouterr().err
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "", "rejected": "b"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    assert main(["data", "build", "-s", f"preference:{tmp_path / 'bad'}", "-o", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bad'}, line 2, field 'chosen'" in err
    assert main(["data", "build", "-s", f"preference:{tmp_path / 'bad'}", "-o", str(tmp_path / "c"),
                 "--skip-invalid", "--eval-fraction", "0"]) == 0
    reject = json.loads((tmp_path / "c" / "rejects.jsonl").read_text())
    assert reject["line"] == 2 and reject["row"] == rows[1]  # the row as read: nothing lost
    with pytest.raises(DataError, match="DatasetDict folder"):
        from coh.data.from_disk import iter_disk_rows

        datasets.DatasetDict({"a": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
        list(iter_disk_rows(tmp_path / "dd"))
