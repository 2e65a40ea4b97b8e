"""`coh data build` streams records to disk and shuffles them there: the outputs are those of the
in-memory build whatever the bucket size, the tokenized rows are those of the JSONL records, and
``tokenized/coh_tokenize.json`` says what made them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest

import coh.data.spill as spill_module
from coh.cli import main
from coh.data.build import BuildConfig, SourceSpec, build
from coh.data.records import read_records
from coh.data.render import RenderSpec
from coh.data.tokenize import (
    TOKENIZE_CONFIG,
    RecordTokenizer,
    read_tokenize_config,
    tokenize_config,
    tokenize_config_mismatch,
    tokenizer_fingerprint,
)
from coh.models import load_tokenizer

from ..conftest import hh_rows
from .helpers import tokenize_records

COLUMNS = ["id", "source", "feedback", "input_ids", "loss_mask", "length", "loss_tokens"]


@pytest.fixture(scope="module")
def hh_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hh") / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in hh_rows(150):
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tok")
    bpe_tokenizer.save_pretrained(path)
    return path


def files_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def run(hh_file, tok_dir, out: Path, num_proc: int = 1, tokenizer: bool = True) -> dict[str, bytes]:
    specs = [SourceSpec.parse(f"dialogue:{hh_file},name=a"), SourceSpec.parse(f"dialogue:eval={hh_file},name=b,limit=60")]
    build(BuildConfig(specs, str(out), seed=3, eval_fraction=0.2, skip_invalid=True, num_proc=num_proc,
                      tokenizer=str(tok_dir) if tokenizer else None, progress=False,
                      render=RenderSpec(feedback=("p", "n", "pn", "np"))))
    return files_of(out)


def test_buckets_on_disk_give_the_outputs_of_one_bucket(hh_file, tok_dir, tmp_path, monkeypatch):
    whole = run(hh_file, tok_dir, tmp_path / "whole")
    monkeypatch.setattr(spill_module, "BUCKET_BYTES", 20_000)  # some 50 buckets a split
    bucketed = run(hh_file, tok_dir, tmp_path / "bucketed")
    assert bucketed.keys() == whole.keys()
    for name in ("train.jsonl", "eval.jsonl", "rejects.jsonl", "summary.json", "tokenized/coh_tokenize.json"):
        assert bucketed[name] == whole[name], name
    for split in ("train", "eval"):  # the same rows (the files differ only in Arrow's buffer padding)
        a = datasets.load_from_disk(str(tmp_path / "whole" / "tokenized" / split))
        b = datasets.load_from_disk(str(tmp_path / "bucketed" / "tokenized" / split))
        assert a.features == b.features and a.data.table.equals(b.data.table)
    # and byte for byte the same across processes, JSONL alone too
    assert run(hh_file, tok_dir, tmp_path / "bucketed2", num_proc=2) == bucketed
    plain = run(hh_file, tok_dir, tmp_path / "plain", num_proc=2, tokenizer=False)
    assert plain["train.jsonl"] == whole["train.jsonl"] and "tokenized/coh_tokenize.json" not in plain


def test_tokenized_rows_are_the_records_of_the_jsonl_tokenized(hh_file, tok_dir, tmp_path, monkeypatch):
    """Reference: each split's JSONL records tokenized one batch in memory, in file order."""
    monkeypatch.setattr(spill_module, "BUCKET_BYTES", 50_000)
    run(hh_file, tok_dir, tmp_path / "o", num_proc=2)
    rt = RecordTokenizer(load_tokenizer(str(tok_dir)))
    for split in ("train", "eval"):
        records = list(read_records(tmp_path / "o" / f"{split}.jsonl"))
        assert len(records) > 40 and len({r.source for r in records}) == (2 if split == "eval" else 1)
        expected = tokenize_records(records, rt)
        got = datasets.load_from_disk(str(tmp_path / "o" / "tokenized" / split))
        assert got.column_names == COLUMNS
        assert got.to_dict() == expected.to_dict()


def test_coh_tokenize_json_says_what_made_the_ids(hh_file, tok_dir, tmp_path, bpe_tokenizer, llama_tokenizer):
    summary = build(BuildConfig([SourceSpec.parse(f"dialogue:eval={hh_file},limit=20")], str(tmp_path / "o"),
                                skip_invalid=True, tokenizer=str(tok_dir), progress=False))
    saved = read_tokenize_config(tmp_path / "o" / "tokenized")
    tok = load_tokenizer(str(tok_dir))
    assert saved["tokenizer"]["name_or_path"] == str(tok_dir)
    assert saved["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tok) == tokenizer_fingerprint(bpe_tokenizer)
    assert saved["tokenizer"]["eos_token_id"] == tok.eos_token_id and saved["tokenizer"]["adds_bos"] is False
    assert saved["chat_template"] == "auto" and saved["chat_template_used"] == "auto"
    assert saved["chat_template_sha256"] and saved["max_length"] is None
    assert saved["splits"]["eval"] == {k: v for k, v in summary["tokens"]["eval"].items()}
    # the same tokenizer from another folder (a checkpoint's copy) matches; another does not
    copy = tmp_path / "copy"
    tok.save_pretrained(copy)
    same = tokenize_config(RecordTokenizer(load_tokenizer(str(copy))), str(copy), "auto")
    assert tokenize_config_mismatch(saved, same) == []
    other = tokenize_config(RecordTokenizer(llama_tokenizer), "llama", "auto")
    assert any(line.startswith("tokenizer fingerprint") for line in tokenize_config_mismatch(saved, other))
    never = tokenize_config(RecordTokenizer(tok, chat_template="never"), str(tok_dir), "never")
    assert [line.split(":")[0] for line in tokenize_config_mismatch(saved, never)] == ["chat template used",
                                                                                       "chat template"]


def test_a_tokenized_folder_without_its_config(tmp_path):
    (tmp_path / "tokenized").mkdir()
    with pytest.raises(ValueError, match=f"{TOKENIZE_CONFIG}: not found"):
        read_tokenize_config(tmp_path / "tokenized")
    (tmp_path / "tokenized" / TOKENIZE_CONFIG).write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_tokenize_config(tmp_path / "tokenized")


def test_an_empty_split_is_a_loadable_folder(tmp_path, tok_dir):
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    build(BuildConfig([SourceSpec.parse(f"preference:train={fixtures / 'preference_strings.jsonl'}")],
                      str(tmp_path / "o"), render=RenderSpec(feedback=("p",)), tokenizer=str(tok_dir),
                      progress=False))
    assert (tmp_path / "o" / "eval.jsonl").read_bytes() == b""
    assert datasets.load_from_disk(str(tmp_path / "o" / "tokenized" / "eval")).num_rows == 0


def test_a_failed_build_leaves_no_folder_of_its_own(hh_file, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert main(["data", "build", "-s", f"dialogue:eval={hh_file}", "-o", str(out), "--no-progress"]) == 1
    assert "line 87" in capsys.readouterr().err
    assert not out.exists()
