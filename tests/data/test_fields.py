"""The original CoH "fields" format: round trips both ways and errors naming file, line and field."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from coh.data.errors import DataError, RowError
from coh.data.fields import read_fields_file, record_from_fields, record_to_fields
from coh.data.phrases import DEFAULT_PHRASES
from coh.data.records import FeedbackRecord, Segment
from coh.data.render import RenderSpec, render_records
from coh.data.sources import convert_dialogue
from tests.data.helpers import write_fields_file

HH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"

MARKERS = {"marker_user": "User:", "marker_gpt": "A helpful answer:", "marker_gpt_bad": "An unhelpful answer:"}

# Objects as the original's pack_hf.py writes them.
ORIGINAL = [
    {  # dialogue, p, two turns
        **MARKERS,
        "human_0": "what are some pranks with a pen i can do?",
        "gpt_1": "Are you looking for practical joke ideas?",
        "human_2": "yep",
        "gpt_3": "Ok, I'll give you a couple examples, and you can choose if you like any of them.",
        "fields": "[marker_user+human_0+marker_gpt],gpt_1,<|eos|>,[marker_user+human_2+marker_gpt],gpt_3,<|eos|>",
    },
    {  # summary, pn
        **MARKERS,
        "human_0": "Summarize the following text: My landlord keeps the deposit after I moved out early.",
        "gpt_0": "Landlord kept deposit; is that legal?",
        "gpt_bad_1": "I moved.",
        "fields": "[marker_user+human_0+marker_gpt],gpt_0,<|eos|>,[marker_gpt_bad],gpt_bad_1,<|eos|>",
    },
    {  # webgpt with quotes, np
        **MARKERS,
        "human_0": "Why is the sky blue?",
        "quote_0": "Use the following sources in your answer: [1] title: Rayleigh content: Short waves scatter.",
        "gpt_bad_0": "Because of the ocean.",
        "gpt_1": "Blue light is scattered more by air molecules [1].",
        "fields": "[marker_user+human_0+quote_0+marker_gpt_bad],gpt_bad_0,<|eos|>,[marker_gpt],gpt_1,<|eos|>",
    },
    {  # BOS first, accepted and dropped
        **MARKERS,
        "human_0": "hi",
        "gpt_0": "Hello!",
        "fields": "<|bos|>,[marker_user+human_0+marker_gpt],gpt_0,<|eos|>",
    },
]


def rendered(obj: dict) -> list[tuple[str, bool]]:
    """Each comma piece as (text, loss), the way the original's TextProcessor assembles it."""
    out = []
    for piece in obj["fields"].split(","):
        loss = not piece.startswith("[")
        inner = piece if loss else piece[1:-1]
        if inner == "<|bos|>":
            continue
        out.append((inner if inner == "<|eos|>" else " ".join(obj[k] for k in inner.split("+")), loss))
    return out


@pytest.mark.parametrize("obj", ORIGINAL, ids=["dialogue-p", "summary-pn", "webgpt-np", "bos"])
def test_original_objects_round_trip(obj: dict) -> None:
    record = record_from_fields(obj, "orig.jsonl", 3)
    assert record.id == "fields/3" and record.feedback == "fields"
    assert rendered(record_to_fields(record)) == rendered(obj)
    outputs = [s for s in record.segments if s.loss]
    assert all(s.eos and s.role == "assistant" for s in outputs)
    assert [s.label for s in outputs] == ["bad" if k.startswith("gpt_bad") else "good"
                                          for k in obj["fields"].split(",") if k.startswith("gpt")]
    assert record.text.startswith("User: ") and " A" in record.text


def test_reading_adds_readable_separators() -> None:
    record = record_from_fields(ORIGINAL[1])
    assert record.text == (
        "User: Summarize the following text: My landlord keeps the deposit after I moved out early. "
        "A helpful answer: Landlord kept deposit; is that legal?<eos>An unhelpful answer: I moved.<eos>"
    )


def _hh_records() -> list[FeedbackRecord]:
    if not HH.exists():
        pytest.skip(f"shared data file {HH} not available")
    records = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for i, line in zip(range(50), f):
            try:
                ex = convert_dialogue(json.loads(line), f"dialogue/test/{i}", "test")
            except RowError:
                continue
            spec = RenderSpec(feedback=("p", "n", "pn", "np"))
            records.extend(render_records(ex, spec, DEFAULT_PHRASES["dialogue"], seed=0))
    assert records
    return records


def _chunks(record: FeedbackRecord) -> list[str]:
    return [" ".join(chunk.split()) for chunk in record.text.split("<eos>")]


def test_our_records_round_trip_through_fields() -> None:
    from coh.data.tokenize import RecordTokenizer
    from coh.tiny import train_tiny_tokenizer

    records = _hh_records()
    back = [record_from_fields(record_to_fields(r)) for r in records]
    tok = RecordTokenizer(train_tiny_tokenizer([r.text for r in records], 500, "bpe"))
    for r, b in zip(records, back):
        assert (b.id, b.source, b.feedback, b.split) == (r.id, r.source, r.feedback, r.split)
        assert _chunks(b) == _chunks(r)
        assert [(s.loss, s.eos) for s in b.segments if s.loss] == [(s.loss, s.eos) for s in r.segments if s.loss]
        assert [s.label for s in b.segments if s.loss] == [s.label for s in r.segments if s.loss]
        a, c = tok(r), tok(b)
        assert a.input_ids == c.input_ids, r.id
        assert a.loss_mask == c.loss_mask, r.id


def test_history_turns_get_bracketed_eos() -> None:
    records = [r for r in _hh_records() if any(s.eos and not s.loss for s in r.segments)]
    assert records, "expected multi-turn rows in the first 50"
    fields = record_to_fields(records[0])["fields"]
    assert "[<|eos|>]" in fields and fields.endswith(",<|eos|>")


def test_file_round_trip(tmp_path: Path) -> None:
    records = [record_from_fields(o, line=i) for i, o in enumerate(ORIGINAL, start=1)]
    path = tmp_path / "out.jsonl"
    assert write_fields_file(records, path) == len(records)
    assert list(read_fields_file(path)) == records


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"fields": "[marker_user+human_0],gpt_3,<|eos|>"}, "fields", "refers to key 'gpt_3', which the object lacks"),
        ({"gpt_0": 5}, "gpt_0", "expected a string, got int 5"),
        ({"fields": "[marker_user+human_0,gpt_0,<|eos|>"}, "fields", "unbalanced brackets"),
        ({"fields": "marker_user+human_0],gpt_0,<|eos|>"}, "fields", "unbalanced brackets"),
        ({"fields": "[marker_user+human_0],<|eos|>,gpt_0"}, "fields", "only put an EOS with loss after a trained"),
        ({"fields": "[marker_user+human_0],<|bos|>,gpt_0,<|eos|>"}, "fields", "<|bos|> is accepted only at the very"),
        ({"fields": "<|eos|>,gpt_0"}, "fields", "must follow a text piece"),
        ({"fields": "[marker_user+human_0],gpt_0,[<|eos|>]"}, "fields", "must carry loss too"),
        ({"gpt_0": "  "}, "fields", "empty text"),
        ({"fields": 3}, "fields", "expected a non-empty string"),
        ({"id": 7}, "id", "expected a non-empty string"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, change: dict, field: str, problem: str) -> None:
    good = {**MARKERS, "human_0": "hi", "gpt_0": "Hello!", "fields": "[marker_user+human_0+marker_gpt],gpt_0,<|eos|>"}
    path = tmp_path / "orig.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, **change}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(read_fields_file(path))
    err = info.value
    assert (err.where, err.line, err.field) == (str(path), 3, field)
    assert str(path) in str(err) and "line 3" in str(err) and f"field '{field}'" in str(err)
    assert problem in err.problem


def test_conflicting_marker_texts_raise() -> None:
    record = record_from_fields(ORIGINAL[0])
    segs = list(record.segments)
    segs[0] = Segment("User:", role="marker")
    segs.insert(1, Segment(" Human:", role="marker"))
    with pytest.raises(ValueError, match="marker_user"):
        record_to_fields(FeedbackRecord("x", "s", "p", tuple(segs)))


# -- the original's own pack_hf output (tests/fixtures/reference/coh/pack_hf, made by its process_dialogue) ----
REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "coh" / "pack_hf"
ORIGINAL_ORDER = ("p", "n", "np", "pn")  # the order process_dialogue writes, whatever --include_feedback says


def assembled(obj: dict) -> list[list]:
    """An original-format object as the original's ``TextProcessor`` assembles it: per comma piece of
    ``fields``, [its text (keys joined by one space) or the token name, loss 0/1]."""
    out = []
    for piece in obj["fields"].split(","):
        loss = 0 if piece.startswith("[") and piece.endswith("]") else 1
        inner = piece[1:-1] if not loss else piece
        out.append([inner if inner in ("<|bos|>", "<|eos|>") else " ".join(obj[k] for k in inner.split("+")), loss])
    return out


def digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(assembled(obj), ensure_ascii=False).encode()).hexdigest()[:16]


def inline_marker(row: dict) -> bool:
    """A ``Human:`` or ``Assistant:`` without the blank line before it, which the original splits on."""
    return any(len(re.findall(r"Human:|Assistant:", row[k])) != len(re.findall(r"\n\n(?:Human|Assistant):", row[k]))
               for k in ("chosen", "rejected"))


def assistant_twice(row: dict) -> bool:
    """Two ``Assistant:`` turns in a row: the original keeps only the first of them."""
    return any(re.search(r"\n\nAssistant:(?:(?!\n\nHuman:).)*\n\nAssistant:", row[k], flags=re.S)
               for k in ("chosen", "rejected"))


def ours_original_mode(tmp_path: Path, rows_file: Path, feedback: str) -> dict[int, dict[str, dict]]:
    """``python -m coh.data.pack_hf --shared_prefix=original`` on ``rows_file``: row -> record key -> object."""
    from coh.data.pack_hf import main

    out = tmp_path / "packed"
    assert main([f"--output_dir={out}", f"--dataset=dialogue:train={rows_file}", f"--include_feedback={feedback}",
                 "--shared_prefix=original"]) == 0
    found: dict[int, dict[str, dict]] = {}
    for split in ("train", "eval"):
        for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            _, row, kind, *aux = obj["id"].split("/")
            found.setdefault(int(row) - 1, {})["/".join([kind, *aux])] = obj
    return found


def _their_keys(feedback: str) -> list[str]:
    if "aux" not in feedback:
        return list(ORIGINAL_ORDER)
    return [f"{kind}/aux{i}" for i in range(len(DEFAULT_PHRASES["dialogue"].aux)) for kind in ORIGINAL_ORDER]


def _compare(rows: list[dict], theirs: list[list[str]], ours: dict[int, dict[str, dict]], feedback: str) -> dict:
    """Rows by outcome: equal (every record), set aside by us (no record), differing; and which differing
    rows hold the documented irregularities."""
    keys = _their_keys(feedback)
    outcome: dict[str, list[int]] = {"equal": [], "set_aside": [], "inline": [], "assistant_twice": [], "other": []}
    for i, (row, digests) in enumerate(zip(rows, theirs)):
        assert len(digests) == len(keys), i
        if i not in ours:
            outcome["set_aside"].append(i)
        elif all(digest(ours[i][k]) == d for k, d in zip(keys, digests)):
            outcome["equal"].append(i)
        else:
            outcome["inline" if inline_marker(row) else "assistant_twice" if assistant_twice(row) else "other"].append(i)
    return outcome


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_original_pack_hf_on_the_slice(tmp_path: Path) -> None:
    """Rows 0-119: the objects the original wrote, piece for piece, against ours in original mode."""
    rows = _rows(REFERENCE / "hh_slice.jsonl.gz")
    theirs = [r["outputs"] for r in _rows(REFERENCE / "original_p_n_pn_np.jsonl.gz")]
    ours = ours_original_mode(tmp_path, REFERENCE / "hh_slice.jsonl.gz", "p,n,pn,np")
    equal, differing, set_aside = 0, [], []
    for i, (row, objects) in enumerate(zip(rows, theirs)):
        if i not in ours:
            set_aside.append(i)
            continue
        same = [assembled(ours[i][k]) == assembled(o) for k, o in zip(ORIGINAL_ORDER, objects)]
        if all(same):
            equal += 1
            assert not inline_marker(row) and not assistant_twice(row), i
        else:
            differing.append(i)
            assert inline_marker(row) or assistant_twice(row), f"row {i} differs without a documented reason"
    assert (equal, differing, set_aside) == (117, [29, 105], [86])
    # what differs in row 29: the original splits on an inline "Human:" the transcript quotes
    assert "Human:" in rows[29]["chosen"].replace("\n\nHuman:", "")


def test_original_pack_hf_on_every_row(tmp_path: Path) -> None:
    """All 2,312 rows of the sample against the original's digests: the counts docs/data.md gives."""
    if not HH.exists():
        pytest.skip(f"shared data file {HH} not available")
    rows = _rows(HH)
    with gzip.open(REFERENCE / "digests_p_n_pn_np.json.gz", "rt") as f:
        theirs = json.load(f)["digests"]
    outcome = _compare(rows, theirs, ours_original_mode(tmp_path, HH, "p,n,pn,np"), "p,n,pn,np")
    counts = {k: len(v) for k, v in outcome.items()}
    assert counts == {"equal": 2255, "set_aside": 4, "inline": 49, "assistant_twice": 4, "other": 0}, counts
    assert outcome["set_aside"] == [86, 516, 925, 1103] and outcome["assistant_twice"] == [763, 1319, 1849, 1952]


def test_original_pack_hf_with_aux_on_the_slice(tmp_path: Path) -> None:
    """With ``aux``: 12 phrase pairs x 4 records a row, the original's pairs in the original's order."""
    rows = _rows(REFERENCE / "hh_slice.jsonl.gz")
    with gzip.open(REFERENCE / "digests_p_n_pn_np_aux.json.gz", "rt") as f:
        theirs = json.load(f)["digests"]
    outcome = _compare(rows, theirs, ours_original_mode(tmp_path, REFERENCE / "hh_slice.jsonl.gz", "p,n,pn,np,aux"),
                       "p,n,pn,np,aux")
    assert {k: len(v) for k, v in outcome.items()} == {"equal": 117, "set_aside": 1, "inline": 2,
                                                       "assistant_twice": 0, "other": 0}
