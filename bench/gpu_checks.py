"""Two checks of bench/gpu.sh, each writing one JSON file (``--json``):

  fsdp    `coh train --distributed fsdp` under torchrun on one device, bf16 (FSDP2's mixed
          precision): a straight run of 4 steps, and a run cut at step 2 and resumed from its
          sharded checkpoint to step 4. Reports each step's loss, the largest weight difference
          between the two runs' step-4 shards, tokens/s and peak memory of the straight run.
  loss    the chunked loss against Liger's fused linear cross-entropy (``loss_kernel=liger``) on
          one packed micro-batch of a LLaMA head at the gpu-1b preset's width and vocabulary: loss,
          per-record losses, argmax hits and gradients (relative error), time of forward+backward
          and peak memory of each. Needs CUDA and liger-kernel (else reported as skipped).

    python bench/gpu_checks.py fsdp --json out/fsdp.json [--work-dir DIR] [--hidden 512 --layers 4]
    python bench/gpu_checks.py loss --json out/loss.json [--tokens 16384]

Both exit 1 when a check fails; the JSON says which and why.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import prepared

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def coh_train(flags: dict, log: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 1 -m coh train --flag value ...``, output to ``log``."""
    args = [f"--{'' if v else 'no-'}{k.replace('_', '-')}" if isinstance(v, bool) else f"--{k.replace('_', '-')}={v}"
            for k, v in flags.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COH_TRACEBACK": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "-m", "coh", "train", *args], capture_output=True, text=True, env=env)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_fsdp(args) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        prepared(work, args)
        common = dict(model=work / "model", train_data=work / "data" / "train.jsonl", max_length=args.max_length,
                      overlong="skip", micro_batch_tokens=args.micro_batch_tokens, distributed="fsdp",
                      dtype="bfloat16", lr=1e-4, warmup_steps=0, min_lr_ratio=1.0, max_steps=4, save_every=2,
                      eval_every=10**9, log_every=1, report_to="none", fcm_max_ratio=0.05, progress=False)
        runs = {"straight": dict(common, output_dir=work / "fsdp-straight"),
                "cut": dict(common, output_dir=work / "fsdp-resumed", max_steps=2),
                "resumed": dict(common, output_dir=work / "fsdp-resumed")}
        result: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": "bfloat16",
                        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab}}
        for name, flags in runs.items():
            start = time.perf_counter()
            proc = coh_train(flags, work / f"{name}.log")
            result[f"{name}_seconds"] = time.perf_counter() - start
            if proc.returncode != 0:
                return {**result, "passed": False, "failed": f"{name} run: exit status {proc.returncode}",
                        "stderr_tail": proc.stderr[-2000:]}
        if "resuming from checkpoint-2" not in proc.stdout:
            return {**result, "passed": False, "failed": "the second run did not resume from checkpoint-2"}
        straight, resumed = metrics(work / "fsdp-straight"), metrics(work / "fsdp-resumed")
        loss_a = {r["step"]: r["train/loss"] for r in straight if "train/loss" in r}
        loss_b = {r["step"]: r["train/loss"] for r in resumed if "train/loss" in r}
        weights = {}
        for name, folder in (("straight", "fsdp-straight"), ("resumed", "fsdp-resumed")):
            dcp_to_torch_save(work / folder / "checkpoint-4" / "model_sharded", work / f"{name}.pt")
            weights[name] = torch.load(work / f"{name}.pt", weights_only=True)
        worst = max(float((weights["straight"][k].float() - weights["resumed"][k].float()).abs().max())
                    for k in weights["straight"])
        windows = [r for r in straight if "perf/tokens_per_s" in r]
        loss_diff = max(abs(loss_a[s] - loss_b[s]) for s in loss_a)
        result.update(losses_straight=loss_a, losses_resumed=loss_b, max_loss_difference=loss_diff,
                      max_weight_difference=worst, same_keys=weights["straight"].keys() == weights["resumed"].keys(),
                      tokens_per_s=sum(r["perf/tokens_per_s"] for r in windows[1:]) / max(1, len(windows) - 1),
                      peak_memory_gb=max(r.get("perf/peak_memory_gb", 0) for r in straight),
                      final_exported=(work / "fsdp-straight" / "final" / "model.safetensors").exists())
        # bf16 on a GPU: the same kernels on the same data give the same numbers, up to the
        # nondeterministic reductions of some attention backwards.
        result["passed"] = bool(result["same_keys"] and result["final_exported"] and sorted(loss_a) == [1, 2, 3, 4]
                                and loss_a.keys() == loss_b.keys() and loss_diff <= 1e-3 * max(1.0, loss_a[4])
                                and worst <= 1e-3)
        return result


def check_loss(args) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    try:
        import liger_kernel
    except ImportError:
        return {"passed": False, "failed": "liger-kernel is not installed (bench/gpu_wheels.sh brings it)"}
    from transformers import LlamaConfig, LlamaForCausalLM

    from coh.train.loss import target_loss
    from coh.train.packing import collate_packed

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                         num_key_value_heads=args.hidden // 128, max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).cuda()
    g = torch.Generator().manual_seed(1)
    records, total = [], 0
    while total < args.tokens:  # records of 64-1024 tokens, the second half targets
        n = int(torch.randint(64, 1024, (1,), generator=g))
        ids = torch.randint(0, args.vocab, (n,), generator=g).tolist()
        records.append((ids, [0] * (n // 2) + [1] * (n - n // 2)))
        total += n
    batch = {k: v.cuda() for k, v in collate_packed(records, split_sequences=True).items()}
    out: dict = {"liger_kernel": getattr(liger_kernel, "__version__", None) or _version("liger-kernel"),
                 "device": torch.cuda.get_device_name(), "tokens": total, "records": len(records),
                 "targets": int(batch["target_mask"].sum()), "vocab": args.vocab, "hidden": args.hidden}

    def run(kernel: str):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            r = target_loss(model, batch, chunk=1024, kernel=kernel)
        r.loss_sum.backward()
        return r

    for kernel in ("chunked", "liger"):
        run(kernel)  # warm-up: Triton compiles
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for _ in range(5):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            r = run(kernel)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        out[kernel] = {"ms": sorted(times)[2], "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20,
                       "loss_sum": float(r.loss_sum), "correct": r.correct,
                       "grads": {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}}
    a, b = out["chunked"], out["liger"]
    grad_error = max(float((a["grads"][n] - b["grads"][n]).norm() / a["grads"][n].norm().clamp_min(1e-12))
                     for n in a["grads"])
    for side in (a, b):
        del side["grads"]
    loss_error = abs(a["loss_sum"] - b["loss_sum"]) / abs(a["loss_sum"])
    out.update(loss_relative_error=loss_error, max_grad_relative_error=grad_error,
               hits_difference=abs(a["correct"] - b["correct"]), liger_speedup=a["ms"] / b["ms"],
               liger_memory_ratio=b["peak_mb"] / max(a["peak_mb"], 1e-9))
    # bf16 operands: relative errors of 1e-3 to 1e-2 are rounding (see /work docs on GPU method)
    out["passed"] = loss_error < 1e-2 and grad_error < 3e-2 and out["hits_difference"] <= 0.01 * out["targets"]
    return out


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("check", choices=["fsdp", "loss"])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=60, help="fsdp: hh-rlhf rows (4 CoH records each)")
    ap.add_argument("--hidden", type=int, default=None, help="fsdp: 512; loss: 2048 (gpu-1b)")
    ap.add_argument("--layers", type=int, default=None, help="fsdp: 4; loss: 2")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=None, help="fsdp: 8000; loss: 32000 (gpu-1b)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--micro-batch-tokens", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=16384, help="loss: tokens in the micro-batch")
    args = ap.parse_args()
    fsdp = args.check == "fsdp"
    args.hidden = args.hidden or (512 if fsdp else 2048)
    args.layers = args.layers or (4 if fsdp else 2)
    args.vocab = args.vocab or (8000 if fsdp else 32000)
    try:
        result = check_fsdp(args) if fsdp else check_loss(args)
    except Exception as e:  # reported in the JSON: the other parts of gpu.sh go on
        import traceback

        result = {"passed": False, "failed": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    write(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("traceback", "stderr_tail")}, indent=1))
    return 1 if result.get("passed") is False else 0


if __name__ == "__main__":
    sys.exit(main())
