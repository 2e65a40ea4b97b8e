"""The last step of bench/gpu.sh: every part's JSON and exit status into ``$OUT/gpu.json``, and a
summary table with the issue's targets (>= 40 % MFU for the 1B model at sequence length 2048,
>= 1.2x TRL packed). Exit status 1 when a part failed or timed out (skipped items are not failures).

    python bench/gpu_summary.py --out OUT --status STATUS_DIR --smoke 0|1 --seconds N
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PARTS = {"env": [], "a": ["a_train.json"], "b": ["b_fsdp.json"], "c": ["c_parity.json", "c_train.json"],
         "d": ["d_compile.json"], "e": ["e_serve.json"]}
TITLES = {"env": "environment", "a": "train throughput (gpu-1b)", "b": "FSDP2, 1 device, bf16 resume",
          "c": "chunked loss vs Liger", "d": "torch.compile", "e": "coh serve throughput"}
MFU_TARGET, TRL_TARGET = 0.40, 1.2


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train_lines(report: dict | None) -> list[str]:
    if not report:
        return ["no results"]
    lines = []
    for name, r in report.get("results", {}).items():
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        lines.append(f"{name}: {r['tokens_per_s']:.0f} tokens/s, peak {r['peak_mb']:.0f} MB{mfu}")
    for name, why in report.get("problems", {}).items():
        lines.append(f"{name}: {why.get('skipped') or why.get('failed')}")
    return lines


def summarize(out: Path, status: Path, smoke: bool, seconds: int) -> tuple[dict, list[tuple[str, str, str]]]:
    summary: dict = {"smoke": smoke, "seconds": seconds, "environment": load(status / "env-info.json"), "parts": {},
                     "targets": {}}
    rows: list[tuple[str, str, str]] = []
    failed = False
    for part, files in PARTS.items():
        state = load(status / f"{part}.json") or {"exit_status": None, "note": "did not run"}
        results = {f: load(out / f) for f in files}
        ok = state.get("exit_status") == 0
        failed |= not ok
        summary["parts"][part] = {"title": TITLES[part], **state, "files": results}
        word = "ok" if ok else ("timed out" if state.get("timed_out") else
                                "did not run" if state.get("exit_status") is None else f"failed ({state['exit_status']})")
        details: list[str] = []
        if part == "env" and summary["environment"]:
            env = summary["environment"]
            details = [f"{env.get('device', 'no CUDA')}, python {env['python']}, torch {env['versions'].get('torch')}",
                       "missing: " + (", ".join(k for k, v in env["versions"].items() if v is None) or "nothing")]
        elif part == "a":
            details = train_lines(results["a_train.json"])
            ratios = (results["a_train.json"] or {}).get("ratios", {})
            details += [f"{k}: {v:.2f}x" for k, v in ratios.items() if k.endswith("speed")]
        elif part == "b" and results["b_fsdp.json"]:
            r = results["b_fsdp.json"]
            details = [f"passed: {r.get('passed')}" + (f" ({r['failed']})" if r.get("failed") else "")]
            if "max_weight_difference" in r:
                details.append(f"resume: largest loss difference {r['max_loss_difference']:.2e}, weight "
                               f"{r['max_weight_difference']:.2e}; {r['tokens_per_s']:.0f} tokens/s, "
                               f"peak {r['peak_memory_gb']:.2f} GB")
        elif part == "c":
            p = results["c_parity.json"] or {}
            if p.get("skipped"):
                details.append(f"parity: skipped: {p['skipped']}")
            elif p:
                details.append(f"parity passed: {p.get('passed')}" + (f" ({p['failed']})" if p.get("failed") else ""))
                if "loss_relative_error" in p:
                    details.append(f"loss rel. error {p['loss_relative_error']:.1e}, grads {p['max_grad_relative_error']:.1e}; "
                                   f"liger {p['liger_speedup']:.2f}x the speed, {p['liger_memory_ratio']:.2f}x the memory")
            details += train_lines(results["c_train.json"])
            details += variant_ratio(results["c_train.json"], results.get("a_train.json") or load(out / "a_train.json"),
                                     "coh-liger")
        elif part == "d":
            details = train_lines(results["d_compile.json"])
            details += variant_ratio(results["d_compile.json"], load(out / "a_train.json"), "coh-compile")
        elif part == "e" and results["e_serve.json"]:
            r = results["e_serve.json"]
            details = [f"{x['clients']} clients: {x['tokens_per_s']:.0f} tokens/s" for x in r.get("results", [])]
            if "speedup" in r:
                details.append(f"{r['speedup']:.1f}x with more clients")
        rows.append((part, word, "; ".join(details)))
    train = load(out / "a_train.json") or {}
    best = max((r.get("mfu") or 0 for n, r in train.get("results", {}).items() if n.startswith("coh")), default=None)
    ratios = train.get("ratios", {})
    vs_trl = max((v for k, v in ratios.items() if k.endswith("/trl-packed speed")), default=None)
    summary["targets"] = {"best_coh_mfu": best, "mfu_target": MFU_TARGET, "mfu_met": bool(best and best >= MFU_TARGET),
                          "best_coh_vs_trl_packed": vs_trl, "trl_target": TRL_TARGET,
                          "trl_met": bool(vs_trl and vs_trl >= TRL_TARGET)}
    summary["failed"] = failed
    return summary, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--status", type=Path, required=True)
    ap.add_argument("--smoke", type=int, default=0)
    ap.add_argument("--seconds", type=int, default=0)
    args = ap.parse_args()
    summary, rows = summarize(args.out, args.status, bool(args.smoke), args.seconds)
    (args.out / "gpu.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n=== bench/gpu.sh{' --smoke' if args.smoke else ''}: {args.seconds} s; JSON in {args.out}")
    print(f"{'part':<5}{'status':<13}details")
    for part, word, details in rows:
        print(f"{part:<5}{word:<13}{details}")
    t = summary["targets"]
    mfu = f"{t['best_coh_mfu']:.1%}" if t["best_coh_mfu"] else "n/a"
    trl = f"{t['best_coh_vs_trl_packed']:.2f}x" if t["best_coh_vs_trl_packed"] else "n/a"
    print(f"targets: MFU {mfu} (target >= {MFU_TARGET:.0%}: {'met' if t['mfu_met'] else 'not met'}); "
          f"coh / TRL packed {trl} (target >= {TRL_TARGET}x: {'met' if t['trl_met'] else 'not met'})")
    return 1 if summary["failed"] else 0


def variant_ratio(variant: dict | None, base: dict | None, name: str) -> list[str]:
    """The variant's tokens/s over part a's plain coh run (same prepared data and settings)."""
    try:
        ratio = variant["results"][name]["tokens_per_s"] / base["results"]["coh"]["tokens_per_s"]
    except (KeyError, TypeError, ZeroDivisionError):
        return []
    return [f"{name}/coh (part a) speed: {ratio:.2f}x"]


if __name__ == "__main__":
    sys.exit(main())
