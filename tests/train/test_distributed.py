"""Several processes on CPU (gloo), launched with torchrun as users do: DDP and FSDP2 give the
updates one process gives, and an FSDP run resumes from its sharded checkpoint exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coh.train.trainer import train

from .conftest import config, weights

# Constant learning rate (min_lr_ratio 1, no warmup): a run cut at step 2 and continued with
# max_steps=4 follows the same schedule as a run of 4 steps.
COMMON = dict(max_steps=4, save_every=2, eval_every=2, lr=3e-3, warmup_steps=0, min_lr_ratio=1.0,
              fcm_min_ratio=0.0, fcm_max_ratio=0.2, micro_batch_tokens=600, loss_chunk=16)


def torchrun(cfg, nproc: int = 2) -> str:
    """``torchrun --standalone --nproc_per_node N -m coh train KEY=VALUE...`` for ``cfg``."""
    overrides = [f"{k}={json.dumps(v)}" for k, v in cfg.to_dict().items() if v is not None]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COH_TRACEBACK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "coh",
         "train", *overrides],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def evals(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["eval/loss"] for r in rows if "eval/loss" in r]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, f"largest weight difference {worst}"


@pytest.fixture(scope="module")
def one_process(workspace):
    """The reference: one process, two micro-batches accumulated per step."""
    cfg = config(workspace, "one-process", gradient_accumulation_steps=2, **COMMON)
    train(cfg)
    return workspace / "one-process"


def test_ddp_two_processes_equal_one_process_with_accumulation(workspace, one_process):
    out = torchrun(config(workspace, "ddp", gradient_accumulation_steps=1, **COMMON))
    assert "2 micro-batches per step" in out
    run = workspace / "ddp"
    # The same micro-batches, FCM masks and normalisation: only the order of float sums differs.
    ref, got = losses(one_process), losses(run)
    assert ref.keys() == got.keys() and all(abs(ref[s] - got[s]) < 1e-5 for s in ref)
    assert evals(run) == pytest.approx(evals(one_process), abs=1e-5)
    assert_same_weights(weights(one_process / "final"), weights(run / "final"), atol=1e-5)


def test_fsdp_equals_one_process_and_resumes_from_shards(workspace, one_process):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    torchrun(config(workspace, "fsdp", distributed="fsdp", **COMMON))
    run = workspace / "fsdp"
    ckpt = run / "checkpoint-4"
    assert (ckpt / "model_sharded" / ".metadata").exists() and (ckpt / "optim_sharded" / ".metadata").exists()
    assert {p.name for p in ckpt.glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    assert not (ckpt / "model.safetensors").exists()  # shards only: never gathered for a checkpoint
    dcp_to_torch_save(ckpt / "model_sharded", run / "gathered.pt")
    gathered = torch.load(run / "gathered.pt", weights_only=True)
    reference = weights(one_process / "final")
    assert_same_weights(reference, {k: gathered[k] for k in reference}, atol=1e-5)
    ref, got = losses(one_process), losses(run)
    assert all(abs(ref[s] - got[s]) < 1e-5 for s in ref)

    # Cut at step 2, then continue to 4 from the shards: the same weights as the straight run.
    torchrun(config(workspace, "fsdp-resumed", distributed="fsdp", **{**COMMON, "max_steps": 2}))
    out = torchrun(config(workspace, "fsdp-resumed", distributed="fsdp", **COMMON))
    assert "resuming from checkpoint-2" in out
    dcp_to_torch_save(workspace / "fsdp-resumed" / "checkpoint-4" / "model_sharded", run / "resumed.pt")
    resumed = torch.load(run / "resumed.pt", weights_only=True)
    assert_same_weights(gathered, resumed, atol=0.0)
