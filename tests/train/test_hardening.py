"""`coh train` on bad input: every bad option refused before any compute with a clear message;
non-finite numbers stop the run at the step, keeping the last good checkpoint; a resume with other
settings refused unless asked for (and then recorded, and really applied); final/ written atomically."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import coh.train.trainer as trainer
from coh.cli import main
from coh.train.config import TrainConfig
from coh.train.trainer import NonFiniteError, TrainingError, train

from .bad_options import CASES, argv, prepare
from .conftest import config, weights


class ComputeStarted(AssertionError):
    """Raised by the patched model loader / training step: the case was not refused in time."""


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test the moment a model is loaded or a training step runs."""
    def refuse(*args, **kwargs):
        raise ComputeStarted("a model was loaded or a training step ran before the bad option was refused")

    monkeypatch.setattr(trainer, "load_model", refuse)
    monkeypatch.setattr(trainer, "accumulate_gradients", refuse)


@pytest.fixture(scope="module")
def bad_ws(workspace):
    prepare(workspace)
    return workspace


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_option_is_refused_before_any_compute(case, bad_ws, tmp_path, no_compute, capsys):
    out = tmp_path / "run"
    status = main(argv(case, bad_ws, out))  # a traceback would escape main and fail the test here
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.startswith("coh train: error: ") and "Traceback" not in err
    assert re.search(case.expect, err), f"message does not match {case.expect!r}: {err}"
    assert not out.exists()  # nothing written either


def test_the_table_covers_the_issue():
    names = {c.name for c in CASES}
    assert len(CASES) >= 60 and len(names) == len(CASES)
    for issue_case in ("max_steps-fraction", "report_to-number", "model-mapping", "override-not-yaml",
                       "recipe-not-yaml", "output_dir-a-file", "lr-inf", "max_steps-negative", "max_steps-zero",
                       "epochs-zero", "warmup-negative", "keep_last-zero", "eval_data-missing", "train_data-raw",
                       "model-without-tokenizer"):
        assert issue_case in names


def test_the_base_run_of_the_table_trains(bad_ws, tmp_path):
    """The cases add one problem each to a run that is fine: without the problem it trains."""
    from .bad_options import base_args

    assert main(["train", *base_args(bad_ws, tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "final" / "COMPLETE").exists()


def test_good_values_next_to_the_bad_ones_are_accepted():
    base = ["model=m", "train_data=d"]
    cfg = TrainConfig.load(None, [*base, "max_steps=3.0", "lr=1e-5", "report_to=none", "max_grad_norm=.inf",
                                  "train_data=2024", "output_dir=0.10", "eval_records=null", "epochs=1"])
    assert (cfg.max_steps, cfg.lr, cfg.report_to, cfg.max_grad_norm) == (3, 1e-5, ["none"], math.inf)
    assert (cfg.train_data, cfg.output_dir) == ("2024", "0.10")  # string options keep the text as typed
    with pytest.raises(ValueError, match="option max_steps: expected a whole number"):
        TrainConfig(model="m", train_data="d", max_steps=2.5)  # the Python API is checked the same way


# -- non-finite numbers -------------------------------------------------------------------------------
def test_a_non_finite_gradient_stops_the_run_at_its_step(workspace, capsys):
    """lr=1e30 is finite, so accepted; the first update blows the weights up and step 2's gradient
    norm is NaN: the run stops there (exit 1), naming the step and the last good checkpoint, which
    survives whole; nothing of step 2 is saved and no final/ is written."""
    out = workspace / "nonfinite"
    args = [f"model={workspace / 'llama'}", f"train_data={workspace / 'data'}", f"output_dir={out}", "lr=1e30",
            "max_steps=5", "warmup_steps=0", "save_every=1", "keep_last=1", "eval_every=100", "log_every=1",
            "max_length=512", "overlong=skip", "micro_batch_tokens=1024", "report_to=[none]"]
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"step 2: the gradient norm is nan.*stopped before the update", err), err
    assert f"last good checkpoint is {out / 'checkpoint-1'}" in err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint", ".checkpoint"))) == ["checkpoint-1"]
    assert (out / "checkpoint-1" / "COMPLETE").exists() and not (out / "final").exists()
    saved = weights(out / "checkpoint-1")
    assert all(torch.isfinite(t).all() for t in saved.values())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]


def test_non_finite_weights_are_never_saved(workspace, monkeypatch):
    """An update that leaves a weight NaN (here forced into AdamW's second step) is caught before
    the checkpoint of that step is written."""
    original = torch.optim.AdamW.step
    calls = []

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[:3] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = workspace / "nan-weights"
    with pytest.raises(NonFiniteError, match=r"step 2: after the update, 3 weights are NaN or infinite") as e:
        train(config(workspace, "nan-weights", max_steps=4, save_every=1, eval_every=100))
    assert "checkpoint-1" in str(e.value)
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"] and not (out / "final").exists()


def test_a_non_finite_loss_names_the_step_and_the_losses():
    class OneProcess:
        num_processes = 1

    cfg = TrainConfig(model="m", train_data="d", lr=0.5)
    with pytest.raises(NonFiniteError, match=r"step 7: the loss is not finite .*\[1\.0, nan\].*checkpoint-6"):
        trainer._stop_if_not_finite(7, [1.0, math.nan], 0.3, cfg, OneProcess(), Path("run/checkpoint-6"))
    with pytest.raises(NonFiniteError, match=r"step 1: the gradient norm is inf .*No checkpoint was written"):
        trainer._stop_if_not_finite(1, [1.0], math.inf, cfg, OneProcess(), None)
    trainer._stop_if_not_finite(3, [1.0, 2.0], 0.5, cfg, OneProcess(), None)  # finite: goes on


# -- resuming with other settings ------------------------------------------------------------------------
def test_resume_with_other_settings_is_refused_then_continued_on_request(workspace, monkeypatch, capsys):
    kw = dict(max_steps=2, save_every=2, eval_every=100, warmup_steps=0, min_lr_ratio=1.0, lr=1e-3)
    out = workspace / "changed"
    train(config(workspace, "changed", **kw))

    loaded = []
    real_load = trainer.load_model
    monkeypatch.setattr(trainer, "load_model", lambda *a, **k: loaded.append(a) or real_load(*a, **k))
    with pytest.raises(TrainingError) as refused:
        train(config(workspace, "changed", **{**kw, "max_steps": 4, "lr": 2e-3, "mode": "sft"}))
    message = str(refused.value)
    assert f"output_dir {out} holds checkpoint-2 of a run with other settings" in message
    assert "lr: 0.001 (checkpoint) -> 0.002 (now)" in message and "mode: 'coh' (checkpoint) -> 'sft' (now)" in message
    assert "max_steps" not in message  # a longer run is a continuation, not a change of run
    assert "resume_with_changes=true" in message and not loaded

    # Rebuilt data at the same path is a change too.
    data = workspace / "changed-data"
    shutil.copytree(workspace / "data", data)
    train(config(workspace, "changed-2", **{**kw, "train_data": str(data)}))
    rows = (data / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(rows[:-3]) + "\n")
    loaded.clear()
    with pytest.raises(TrainingError, match=r"train_data contents: 'sha256 \w+' \(checkpoint\) -> 'sha256 \w+'"):
        train(config(workspace, "changed-2", **{**kw, "train_data": str(data), "max_steps": 4}))
    assert not loaded

    # Asked for: the new lr really applies from step 3, and coh.json says what ran.
    capsys.readouterr()
    train(config(workspace, "changed", **{**kw, "max_steps": 4, "lr": 2e-3, "resume_with_changes": True}))
    assert "settings changed since checkpoint-2: lr 0.001 -> 0.002, max_steps 2 -> 4" in capsys.readouterr().out
    lrs = {r["step"]: r["train/lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if "train/lr" in r}
    assert lrs == {1: 1e-3, 2: 1e-3, 3: 2e-3, 4: 2e-3}
    info = json.loads((out / "final" / "coh.json").read_text())
    assert info["training"]["lr"] == 2e-3
    assert info["resumed"] == [{"step": 2, "checkpoint": "checkpoint-2", "changes": {
        "lr": {"checkpoint": 1e-3, "now": 2e-3}, "max_steps": {"checkpoint": 2, "now": 4}}}]
    assert info["data"]["sha256"] and info["data"]["bytes"] > 0


def test_resume_past_the_end_of_a_shorter_run_is_refused(workspace):
    train(config(workspace, "shorter", max_steps=4, save_every=4, eval_every=100))
    with pytest.raises(TrainingError, match="holds checkpoint-4, past the 2 steps of this run"):
        train(config(workspace, "shorter", max_steps=2, save_every=4, eval_every=100))


def test_the_exact_resume_of_the_same_settings_applies_nothing(workspace):
    """Unchanged settings: no change is recorded, so nothing is re-applied to the optimizer."""
    train(config(workspace, "same", max_steps=2, save_every=2, eval_every=100))
    train(config(workspace, "same", max_steps=2, save_every=2, eval_every=100))  # finished: final/ again
    info = json.loads((workspace / "same" / "final" / "coh.json").read_text())
    assert info["resumed"] == [{"step": 2, "checkpoint": "checkpoint-2", "changes": {}}]


# -- final/ ------------------------------------------------------------------------------------------------
def test_final_is_replaced_only_when_the_new_one_is_whole(workspace, monkeypatch):
    """A run killed while writing final/ leaves the earlier final/ whole (not half of each); the
    next run writes the new one, with its COMPLETE marker, and leaves no temporary folder."""
    out = workspace / "atomic"
    train(config(workspace, "atomic", max_steps=2, save_every=2, eval_every=100))
    before = weights(out / "final")
    real_save = trainer.save_model_folder

    def killed_midway(folder, model, tokenizer, info):
        real_save(folder, model, tokenizer, info)
        (folder / "model.safetensors").write_bytes(b"torn")  # as if the process died while writing
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_model_folder", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        train(config(workspace, "atomic", max_steps=4, save_every=2, eval_every=100))
    assert (out / "final" / "COMPLETE").exists()
    after_kill = weights(out / "final")
    assert all(torch.equal(before[k], after_kill[k]) for k in before)

    monkeypatch.setattr(trainer, "save_model_folder", real_save)
    train(config(workspace, "atomic", max_steps=4, save_every=2, eval_every=100))  # resumes at 4, writes final/
    final, ckpt = weights(out / "final"), load_file(out / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(final[k], ckpt[k]) for k in final)
    assert (out / "final" / "COMPLETE").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_every_process_stops_at_the_same_non_finite_step(workspace):
    """Two DDP processes (torchrun, gloo): both see the NaN gradient norm of step 2 and stop with
    the message, rather than one stopping and the other waiting in a collective."""
    import os
    import subprocess
    import sys

    out = workspace / "nonfinite-ddp"
    args = [f"model={workspace / 'llama'}", f"train_data={workspace / 'data'}", f"output_dir={out}", "lr=1e30",
            "max_steps=4", "warmup_steps=0", "save_every=1", "eval_every=100", "max_length=512", "overlong=skip",
            "micro_batch_tokens=1024", "report_to=[none]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("COH_TRACEBACK", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "coh", "train", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("coh train: error: step 2: the gradient norm is nan") == 2, proc.stderr[-3000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"] and not (out / "final").exists()
