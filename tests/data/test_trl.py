"""TRL interop: TRL's own SFTTrainer trains on `to_trl_dataset`'s output, and the labels its collator
produces mask exactly the tokens our loss mask does (checked per record, against the character-level
reference mask of test_tokenize and against the ids and mask `coh train` itself trains on)."""

from __future__ import annotations

import json

import pytest

from coh.data.feedback import FeedbackExample
from coh.data.phrases import DEFAULT_PHRASES, phrases_for
from coh.data.records import read_records
from coh.data.render import RenderSpec, render_records
from coh.data.sources import convert_preference
from coh.data.tokenize import RecordTokenizer
from coh.data.trl import to_trl_dataset

from .test_tokenize import ascii_records, reference_mask

trl = pytest.importorskip("trl")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """TRL's trainer leaves accelerate's process-wide state (PartialState, AcceleratorState) set up
    its way; a later `coh train` in this process would inherit it and train differently."""
    yield
    reset_accelerate_state()


def reset_accelerate_state() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def chat_records() -> list:
    """Records of chat data (message lists): they go through the tokenizer's ChatML template."""
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
             "chosen": [{"role": "assistant", "content": f"It is {a + b}."}],
             "rejected": [{"role": "assistant", "content": f"Maybe {a * b + 1}."}]} for a, b in [(1, 2), (3, 4), (5, 6)]]
    out = []
    for i, row in enumerate(rows):
        ex: FeedbackExample = convert_preference(row, f"chat/{i}", "train")
        out += render_records(ex, RenderSpec(), phrases_for("preference", DEFAULT_PHRASES), 0)
    assert all(r.meta.get("chat") for r in out)
    return out


def labels_by_record(trainer) -> dict[tuple[int, ...], list[int]]:
    """Every sequence of an epoch of TRL's own dataloader: its input ids -> the positions its labels keep."""
    out = {}
    for batch in trainer.get_train_dataloader():
        for ids, labels, attention in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(attention.sum())
            assert (labels[n:] == -100).all()  # padding never trains
            out[tuple(ids[:n].tolist())] = [int(x != -100) for x in labels[:n]]
    return out


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, bpe_tokenizer):
    from coh.tiny import make_tiny_model

    path = tmp_path_factory.mktemp("tiny")
    make_tiny_model(path, bpe_tokenizer, "llama", hidden=32, layers=1)
    return path


def sft_trainer(model_dir, tokenizer, dataset, out):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    args = SFTConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                     completion_only_loss=True, max_length=None, report_to="none", use_cpu=True, logging_steps=1,
                     save_strategy="no", dataloader_drop_last=False, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def test_trl_sft_trainer_trains_on_our_masks(bpe_tokenizer, tiny_model_dir, tmp_path):
    records = ascii_records(120)[:24] + chat_records()
    dataset = to_trl_dataset(records, bpe_tokenizer)
    assert set(dataset.column_names) >= {"input_ids", "completion_mask"}
    ours = RecordTokenizer(bpe_tokenizer).batch(records)  # what coh train trains on
    for row, rec, tok in zip(dataset, records, ours):
        assert row["id"] == rec.id
        assert row["input_ids"] == tok.input_ids and row["completion_mask"] == tok.loss_mask
        if not rec.meta.get("chat"):
            assert row["completion_mask"] == reference_mask(rec, bpe_tokenizer, row["input_ids"])
    trainer = sft_trainer(tiny_model_dir, bpe_tokenizer, dataset, tmp_path / "trl")
    result = trainer.train()
    assert result.global_step == 2
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(loss == loss and 0 < loss < 100 for loss in losses)
    seen = labels_by_record(trainer)
    expected = {tuple(t.input_ids): t.loss_mask for t in ours}
    assert seen == expected  # every record, its mask exactly ours (mask[0] is 0: a label there is never used)


def test_trl_default_config_would_train_every_token(bpe_tokenizer, tiny_model_dir, tmp_path):
    """Why the docs insist on completion_only_loss=True: without it TRL ignores completion_mask."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    dataset = to_trl_dataset(ascii_records(60)[:4], bpe_tokenizer)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True, max_length=None)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                         train_dataset=dataset, processing_class=bpe_tokenizer)
    assert all(all(x != -100 for x in row["labels"]) for row in trainer.train_dataset)


def test_from_a_build_folder_and_modes(bpe_tokenizer, tmp_path):
    from coh.cli import main
    from coh.train.data import for_mode

    from ..conftest import hh_rows

    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hh_rows(40)), encoding="utf-8")
    assert main(["data", "build", "-s", f"dialogue:{path}", "-o", str(tmp_path / "data"), "--skip-invalid",
                 "--num-proc", "1", "--no-progress"]) == 0
    records = list(read_records(tmp_path / "data" / "train.jsonl"))
    assert to_trl_dataset(tmp_path / "data", bpe_tokenizer)["id"] == [r.id for r in records]
    sft = to_trl_dataset(tmp_path / "data", bpe_tokenizer, mode="sft")
    assert sft["input_ids"] == [t.input_ids for t in RecordTokenizer(bpe_tokenizer).batch(for_mode(records, "sft"))]
    longest = max(len(x) for x in sft["input_ids"])
    with pytest.raises(ValueError, match="longer than max_length"):
        to_trl_dataset(records, bpe_tokenizer, max_length=longest - 1)
    split = to_trl_dataset(records, bpe_tokenizer, max_length=64, overlong="split")
    assert max(len(x) for x in split["input_ids"]) <= 64
    assert sum(map(sum, split["completion_mask"])) == sum(t.loss_mask.count(1) for t in
                                                          RecordTokenizer(bpe_tokenizer).batch(records))
    with pytest.raises(ValueError, match="mode must be one of"):
        to_trl_dataset(records, bpe_tokenizer, mode="dpo")

