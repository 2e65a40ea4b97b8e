"""Shared by the training tests: a tiny LLaMA and GPT-J, CoH records and pretraining text."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from coh.data.build import BuildConfig, SourceSpec, build
from coh.data.render import RenderSpec
from coh.tiny import make_tiny_model, train_tiny_tokenizer
from coh.train.config import TrainConfig

from ..conftest import hh_rows


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A tiny LLaMA and GPT-J with an offline tokenizer, CoH records and a pretraining text file."""
    root = tmp_path_factory.mktemp("train")
    rows = hh_rows(120)
    tok = train_tiny_tokenizer([r["chosen"] for r in rows], 400, "llama")
    make_tiny_model(root / "llama", tok, "llama", hidden=32, layers=2, heads=2)
    make_tiny_model(root / "gptj", tok, "gptj", hidden=32, layers=2, heads=2)
    raw = root / "hh.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build(BuildConfig([SourceSpec.parse(f"dialogue:{raw}")], str(root / "data"), eval_fraction=0.2, skip_invalid=True,
                      render=RenderSpec(feedback=("pn", "np")), progress=False))
    (root / "pretrain.txt").write_text("\n".join(r["rejected"].replace("\n", " ") for r in rows[:60]))
    return root


def config(ws: Path, out: str, **kw) -> TrainConfig:
    base = dict(model=str(ws / "llama"), train_data=str(ws / "data"), output_dir=str(ws / out), max_length=512,
                overlong="skip", micro_batch_tokens=1024, lr=3e-3, warmup_steps=1, max_steps=4, eval_every=2,
                save_every=2, log_every=1, report_to=["none"], eval_records=20)
    base.update(kw)
    return TrainConfig(**base)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def train_and_crash(cfg: TrainConfig, after: int) -> None:
    """``train(cfg)`` killed right after the checkpoint of step ``after`` is written, as a crash
    between two steps would: raises ``RuntimeError("stopped after step N (test)")``."""
    import coh.train.trainer as trainer

    real_save = trainer.save_checkpoint

    def save_then_crash(output_dir, step, *args, **kwargs):
        path = real_save(output_dir, step, *args, **kwargs)
        if step >= after:
            raise RuntimeError(f"stopped after step {step} (test)")
        return path

    with mock.patch.object(trainer, "save_checkpoint", save_then_crash):
        trainer.train(cfg)
