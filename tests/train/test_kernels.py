"""The ``loss_kernel`` and ``compile`` options: Liger's fused loss gives the chunked loss (its
numbers and gradients on a GPU; its wiring on a CPU with a plain-torch stand-in for the kernel),
is refused clearly where it cannot run, and a compiled model trains to the same losses."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from coh.train.loss import check_loss_kernel, target_loss
from coh.train.packing import collate_packed
from coh.train.preflight import TrainingError
from coh.train.trainer import train

from .conftest import config
from .models import tiny_llama
from .test_loss import random_records

CUDA = torch.cuda.is_available()


def test_loss_kernel_is_an_option_with_choices():
    from coh.train.config import TrainConfig

    assert TrainConfig(model="m", train_data="d").loss_kernel == "chunked"
    assert TrainConfig(model="m", train_data="d").compile is False
    with pytest.raises(ValueError, match="loss_kernel must be one of"):
        TrainConfig(model="m", train_data="d", loss_kernel="fused")


@pytest.mark.skipif(CUDA, reason="the refusal on a CPU")
def test_liger_is_refused_on_a_cpu_before_any_model_loads(workspace, monkeypatch):
    import coh.train.trainer as trainer

    monkeypatch.setattr(trainer, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(TrainingError, match=r"loss_kernel liger runs on GPUs only.*--loss-kernel chunked"):
        train(config(workspace, "liger-cpu", loss_kernel="liger"))


def test_liger_without_the_package_names_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    with pytest.raises(ValueError, match="needs the liger-kernel package: pip install liger-kernel"):
        check_loss_kernel("liger", torch.device("cuda"))
    check_loss_kernel("chunked", torch.device("cpu"))  # the default runs anywhere


class TorchFusedLinearCrossEntropy(torch.nn.Module):
    """What Liger's ``LigerFusedLinearCrossEntropyLoss(reduction="none", return_token_accuracy=True)``
    computes, in plain torch: per-target NLL of ``input @ weight.T + bias`` and argmax hits."""

    def __init__(self, reduction: str, return_token_accuracy: bool, accum_dtype: torch.dtype):
        super().__init__()
        assert reduction == "none" and return_token_accuracy and accum_dtype == torch.float32

    def forward(self, weight, hidden, target, bias=None):
        logits = F.linear(hidden, weight, bias).float()
        return types.SimpleNamespace(loss=F.cross_entropy(logits, target, reduction="none"),
                                     token_accuracy=(logits.argmax(-1) == target).float())


@pytest.mark.parametrize("bf16", [False, True])
def test_liger_head_keeps_the_target_loss_contract_on_cpu(monkeypatch, bf16):
    """The wiring (which positions, which targets, per-record sums, hits, gradients, the dtype under
    autocast), with the kernel replaced by the same function in torch: liger-kernel needs CUDA."""
    seen = []

    class Recording(TorchFusedLinearCrossEntropy):
        def forward(self, weight, hidden, target, bias=None):
            seen.append((weight.dtype, hidden.dtype, torch.is_autocast_enabled("cpu")))
            return super().forward(weight, hidden, target, bias)

    module = types.ModuleType("liger_kernel.transformers.fused_linear_cross_entropy")
    module.LigerFusedLinearCrossEntropyLoss = Recording
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.fused_linear_cross_entropy", module)
    model = tiny_llama(97)
    batch = collate_packed(random_records(97, 6, seed=3), split_sequences=True)
    results = {}
    for kernel in ("chunked", "liger"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            r = target_loss(model, batch, kernel=kernel)
        r.loss_sum.backward()
        results[kernel] = (r, [p.grad.clone() for p in model.parameters()])
    (want, want_grads), (got, got_grads) = results["chunked"], results["liger"]
    # the kernel computes in the autocast dtype with autocast off inside, as Liger's Triton code needs
    assert seen == [(torch.bfloat16, torch.bfloat16, False)] if bf16 else [(torch.float32, torch.float32, False)]
    rel = 2e-2 if bf16 else 1e-6
    assert got.targets == want.targets
    assert abs(got.correct - want.correct) <= (2 if bf16 else 0)
    assert got.loss_sum.item() == pytest.approx(want.loss_sum.item(), rel=rel)
    assert got.per_record.tolist() == pytest.approx(want.per_record.tolist(), rel=rel)
    for a, b in zip(want_grads, got_grads):
        assert float((a - b).norm() / a.norm().clamp_min(1e-12)) < (5e-2 if bf16 else 1e-5)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the head is put back


def test_liger_refuses_models_that_transform_logits():
    model = tiny_llama(97)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="loss_kernel liger needs the output layer's logits untransformed"):
        target_loss(model, collate_packed(random_records(97, 2, seed=1)), kernel="liger")


@pytest.mark.skipif(not CUDA, reason="liger-kernel's kernels are Triton: a CUDA GPU is needed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_equals_chunked_on_a_gpu(dtype):
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
    model = tiny_llama(1000).cuda()
    batch = {k: v.cuda() for k, v in collate_packed(random_records(1000, 24, seed=5), split_sequences=True).items()}
    results = {}
    for kernel in ("chunked", "liger"):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            r = target_loss(model, batch, chunk=64, kernel=kernel)
        r.loss_sum.backward()
        results[kernel] = (r, [p.grad.clone() for p in model.parameters()])
    (a, ga), (b, gb) = results["chunked"], results["liger"]
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert b.loss_sum.item() == pytest.approx(a.loss_sum.item(), rel=tol)
    assert b.per_record.tolist() == pytest.approx(a.per_record.tolist(), rel=tol)
    assert abs(b.correct - a.correct) <= 0.01 * a.targets  # argmax ties may fall either way in bf16
    for x, y in zip(ga, gb):
        assert float((x - y).norm() / x.norm().clamp_min(1e-12)) < tol


def losses(run) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_compile_trains_to_the_same_losses(workspace):
    """Each decoder layer through torch.compile (inductor; on a CPU it compiles C++, so a few steps
    only): the same losses as eager, the same parameter names in final/."""
    from safetensors import safe_open

    common = dict(max_steps=2, save_every=2, eval_every=2, lr=3e-3, warmup_steps=0, micro_batch_tokens=600,
                  fcm_max_ratio=0.1)
    train(config(workspace, "eager", **common))
    train(config(workspace, "compiled", compile=True, **common))
    eager, compiled = losses(workspace / "eager"), losses(workspace / "compiled")
    assert eager.keys() == compiled.keys() == {1, 2}
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4)
    with safe_open(workspace / "eager" / "final" / "model.safetensors", "pt") as a, \
            safe_open(workspace / "compiled" / "final" / "model.safetensors", "pt") as b:
        assert set(a.keys()) == set(b.keys())  # no _orig_mod. in the names
