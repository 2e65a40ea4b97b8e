"""`coh train` against TRL's SFTTrainer, side by side in one run: non-padding tokens/s and memory.

The same model configuration (a LLaMA built from config), the same tokenizer and the same
records: the real hh-rlhf sample (../shared/data) built by `coh data build` into CoH records and
tokenized once; TRL gets those very token ids with their loss masks as a pre-tokenized dataset
(`input_ids` + `completion_mask`), so both train on identical tokens and targets. Records longer
than --max-length are left out of both. One epoch each, fp32, AdamW, same lr, no evaluation.

Runs, each in its own process (so memory is its own):
  coh            `coh train` defaults: packed micro-batches of --micro-batch-tokens, FCM off
  coh-fcm        the same with random past-token masking (fcm_max_ratio 0.05, the paper's range)
  coh-gc         the same with gradient checkpointing, as TRL's default has it (memory like for like)
  trl-default    SFTTrainer in its default settings (batches of 8 padded rows; gradient checkpointing
                 on, its default) except bf16 off on CPU, where bf16 is emulated and ~25x slower
  trl-packed     the same with packing=True (its default strategy, bfd, padding-free position ids)
On a GPU, besides (each needs CUDA; without it the run is reported as skipped):
  coh-flex       flex attention, each micro-batch one padding-free packed sequence (block mask)
  coh-flex-fcm   the same with FCM (the random mask goes into the block mask)
  coh-liger      `coh` with --loss-kernel liger (Liger's fused linear cross-entropy)
  coh-compile    `coh` with --compile (torch.compile of each decoder layer)
  trl-packed-flex  trl-packed with the model loaded with flex attention

Throughput: non-padding tokens over the wall time of the training loop (model loading and data
preparation excluded; for coh its logging windows, for TRL its callbacks; coh's closing checkpoint
and final/, written after the last measured step, are skipped, as TRL's are with save_strategy no). ``--skip-steps N`` leaves
the first N optimizer steps out (compilation, kernel autotuning): coh then logs every N steps and
drops the first window; TRL's clock starts at the end of step N and its tokens are the share of
its counted input tokens seen after it. Memory: peak resident memory over the run, minus
the resident memory before the model was loaded (CPU) / peak allocated (GPU).

    python bench/train_throughput.py [--rows 400] [--hidden 256 --layers 4] [--repeats 1] [--plot FILE]
    python bench/train_throughput.py --preset gpu-1b --rows 2000 --plot FILE   # on a GPU: bf16, MFU
    python bench/train_throughput.py --runs coh,coh-flex,trl-packed --json out.json --work-dir DIR

``--json FILE`` writes every result (rewritten after each run: a run that fails or hangs loses
only itself) with the machine, the settings and the ratios; a failed run is recorded with its
error and the others go on (exit status 1). ``--work-dir DIR`` keeps the prepared tokenizer, model
and records there and reuses them when the settings match.

On a GPU both sides train in bf16 autocast over fp32 weights (``--dtype``), and the table adds
MFU: training FLOPs per token (``coh.train.metrics.flops_per_token``, mean record length as the
attention span) x tokens/s over the device's bf16 dense peak (989 TFLOP/s for an H100).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = [REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz",
           REPO / "src" / "coh" / "data" / "builtin" / "hh-rlhf-harmless-sample.jsonl.gz"]
RUNS = ("coh", "coh-fcm", "coh-gc", "trl-default", "trl-packed")
# What each run changes from `coh train`'s defaults / TRL's SFTTrainer defaults.
RUN_SETTINGS = {
    "coh": {}, "coh-fcm": {"fcm": True}, "coh-gc": {"gradient_checkpointing": True},
    "coh-flex": {"attention": "flex_attention", "cuda": True},
    "coh-flex-fcm": {"attention": "flex_attention", "fcm": True, "cuda": True},
    "coh-liger": {"loss_kernel": "liger", "cuda": True}, "coh-compile": {"compile": True},
    "trl-default": {"packing": False}, "trl-packed": {"packing": True},
    "trl-packed-flex": {"packing": True, "attention": "flex_attention", "cuda": True},
}
# gpu-1b: the GPU setting, a LLaMA of about 1B parameters (16 x 2048, gated MLP 8192,
# vocabulary up to 32k) at sequence length 2048.
PRESETS = {"gpu-1b": {"hidden": 2048, "layers": 16, "heads": 16, "vocab": 32000, "max_length": 2048,
                      "micro_batch_tokens": 16384}}


class PeakMemory:
    """Peak resident memory (CPU, sampled every 10 ms) or peak allocated memory (CUDA), in MB,
    above what was in use at start."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def stop(self) -> float:
        import torch

        if self.cuda:
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        self.running = False
        self.thread.join()
        return (max(self.peak, self._rss()) - self.base) / 2**20


def prepare(work: Path, args) -> None:
    """Tokenizer, model and records, once for every run."""
    import gzip

    from coh.data.build import BuildConfig, SourceSpec, build
    from coh.data.render import RenderSpec
    from coh.tiny import make_tiny_model, train_tiny_tokenizer

    sample = next(p for p in SAMPLES if p.exists())
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()][: args.rows]
    raw = work / "hh.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tiny_tokenizer((r["chosen"] for r in rows), args.vocab, "bpe", work / "tokenizer")
    make_tiny_model(work / "model", tok, "llama", hidden=args.hidden, layers=args.layers, heads=args.heads)
    build(BuildConfig([SourceSpec.parse(f"dialogue:train={raw}")], str(work / "data"), skip_invalid=True,
                      render=RenderSpec(feedback=("p", "n", "pn", "np")), tokenizer=str(work / "tokenizer"),
                      progress=False, num_proc=1))


def prepared(work: Path, args) -> None:
    """``prepare`` once per settings in a kept ``--work-dir``: reused when its settings match."""
    keys = ("rows", "vocab", "hidden", "layers", "heads")
    stamp = work / "prepared.json"
    want = {k: getattr(args, k) for k in keys}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return
    import shutil

    for sub in ("model", "tokenizer", "data"):
        shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args)
    stamp.write_text(json.dumps(want))


def run_coh(work: Path, args, name: str) -> dict:
    import shutil

    from coh.train.config import TrainConfig
    from coh.train.trainer import train

    out = work / name
    settings = RUN_SETTINGS[name]
    skip = args.skip_steps
    cfg = TrainConfig(model=str(work / "model"), train_data=str(work / "data" / "train.jsonl"), output_dir=str(out),
                      max_length=args.max_length, overlong="skip", micro_batch_tokens=args.micro_batch_tokens,
                      lr=args.lr, warmup_steps=0, epochs=1, save_every=10**9, eval_every=10**9,
                      log_every=skip or 10**9, report_to=["none"], fcm_max_ratio=0.05 if settings.get("fcm") else 0.0,
                      gradient_checkpointing=settings.get("gradient_checkpointing", False), resume=False,
                      dtype=args.dtype, attention=settings.get("attention", args.attention),
                      loss_kernel=settings.get("loss_kernel", "chunked"), compile=settings.get("compile", False),
                      progress=False)
    # What train() imports lazily is imported before the baseline, as TRL's run imports trl first:
    # memory then counts the training alone on both sides.
    import accelerate  # noqa: F401
    import matplotlib.pyplot  # noqa: F401  (the loss plot at the end)
    import transformers  # noqa: F401

    import coh.train.metrics  # noqa: F401

    memory = PeakMemory()
    # The last checkpoint and final/ come after the last measured step: not part of the figure, but
    # for a 1B model ~18 GB of writes per run, minutes of a short GPU lease. The bench skips them.
    import coh.train.trainer as trainer

    trainer.save_checkpoint = lambda *a, **k: None
    trainer.save_final = lambda *a, **k: None
    train(cfg)
    peak = memory.stop()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in rows if "perf/tokens" in r]
    final_loss = windows[-1]["train/loss"]
    if skip and len(windows) > 1:  # the first window holds the warm-up steps
        windows = windows[1:]
    tokens = sum(r["perf/tokens"] for r in windows)
    seconds = sum(r["perf/tokens"] / r["perf/tokens_per_s"] for r in windows)
    shutil.rmtree(out, ignore_errors=True)
    return {"tokens": tokens, "seconds": seconds, "peak_mb": peak, "final_loss": final_loss,
            "steps": rows[-1].get("step") if rows else None, "skipped_steps": skip if len(windows) else 0}


def run_trl(work: Path, args, name: str) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    data = datasets.load_from_disk(str(work / "data" / "tokenized" / "train"))
    data = data.filter(lambda r: r["length"] <= args.max_length)
    tokens = int(sum(data["length"]))
    data = data.rename_column("loss_mask", "completion_mask").select_columns(["input_ids", "completion_mask"])

    settings = RUN_SETTINGS[name]
    skip = args.skip_steps

    class Clock(TrainerCallback):
        start = seen_at_start = None

        def on_train_begin(self, args, state, control, **k):
            self.start, self.seen_at_start = time.perf_counter(), 0

        def on_step_end(self, args, state, control, **k):
            if skip and state.global_step == skip:
                self.start, self.seen_at_start = time.perf_counter(), state.num_input_tokens_seen
                self.steps_at_start = state.global_step

        def on_train_end(self, args, state, control, **k):
            self.seconds = time.perf_counter() - self.start
            self.seen, self.steps = state.num_input_tokens_seen, state.global_step

    memory = PeakMemory()
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    # fp32 weights, bf16 by autocast, as coh
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32,
                                                 attn_implementation=settings.get("attention", "sdpa"))
    cfg = SFTConfig(output_dir=str(work / name), packing=settings["packing"],
                    max_length=args.max_length, completion_only_loss=True, learning_rate=args.lr,
                    lr_scheduler_type="cosine", warmup_steps=0, num_train_epochs=1, save_strategy="no",
                    report_to="none", logging_steps=10**9, bf16=args.dtype == "bfloat16", seed=0,
                    dataloader_num_workers=0, include_num_input_tokens_seen="non_padding", disable_tqdm=True)
    clock = Clock()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tokenizer, callbacks=[clock])
    result = trainer.train()
    peak = memory.stop()
    if clock.seen_at_start and clock.seen:  # the share of the tokens trained on after the skipped steps
        tokens = round(tokens * (clock.seen - clock.seen_at_start) / clock.seen)
    return {"tokens": tokens, "seconds": clock.seconds, "peak_mb": peak, "final_loss": result.training_loss,
            "steps": clock.steps, "skipped_steps": skip if clock.seen_at_start else 0}


def child(name: str, work: Path, args) -> None:
    result = (run_trl if name.startswith("trl") else run_coh)(work, args, name)
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    print("RESULT " + json.dumps({"run": name, **result}), flush=True)


def plot(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "tokens_per_s", "non-padding tokens/s"), (axes[1], "peak_mb", "peak memory (MB)")):
        values = [results[n][key] for n in names]
        bars = ax.bar(names, values, color=["#2b6cb0", "#63b3ed", "#90cdf4", "#c05621", "#ed8936"][: len(names)])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=15)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ratios(results: dict[str, dict]) -> dict[str, float]:
    """Speed (tokens/s) and memory ratios of coh's runs over the peers', and of the variants over coh."""
    out: dict[str, float] = {}

    def ratio(a: str, b: str) -> None:
        if a in results and b in results:
            out[f"{a}/{b} speed"] = results[a]["tokens_per_s"] / results[b]["tokens_per_s"]
            out[f"{a}/{b} memory"] = results[a]["peak_mb"] / max(results[b]["peak_mb"], 1e-9)

    for ours in ("coh", "coh-flex", "coh-flex-fcm"):
        for peer in ("trl-default", "trl-packed", "trl-packed-flex"):
            ratio(ours, peer)
    ratio("coh-gc", "trl-default")
    for variant in ("coh-fcm", "coh-liger", "coh-compile"):
        ratio(variant, "coh")
    ratio("coh-flex-fcm", "coh-flex")
    ratio("coh-flex", "coh")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), help="model and batch sizes of a named setting "
                                                            "(flags given explicitly still win)")
    ap.add_argument("--rows", type=int, default=400, help="hh-rlhf rows (4 CoH records each)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--micro-batch-tokens", type=int, default=4096, help="coh train's (its default)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="auto: bfloat16 autocast on a GPU, float32 on a CPU (bf16 is emulated there)")
    ap.add_argument("--attention", default="sdpa", help="coh's attention backend (sdpa, eager, flex_attention) "
                                                        "where the run does not name one")
    ap.add_argument("--skip-steps", type=int, default=0, help="leave the first N optimizer steps out of the "
                                                               "throughput (compilation, autotuning)")
    ap.add_argument("--repeats", type=int, default=1, help="run every configuration this many times, interleaved; "
                                                            "the best time counts")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma list of: {', '.join(RUN_SETTINGS)}")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (after every run)")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the prepared model and records here "
                                                                "(default: a temporary folder)")
    ap.add_argument("--plot", type=Path, default=None, help="bar chart PNG (tokens/s and memory)")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.preset:
        explicit = {a.split("=")[0].lstrip("-").replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
        for key, value in PRESETS[args.preset].items():
            if key not in explicit:
                setattr(args, key, value)
    if args.dtype == "auto":
        import torch

        args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    if args.run:
        child(args.run, args.work, args)
        return 0
    names = args.runs.split(",")
    unknown = [n for n in names if n not in RUN_SETTINGS]
    if unknown:
        ap.error(f"unknown runs {unknown}; choose from {list(RUN_SETTINGS)}")

    import torch

    from coh.train.metrics import device_peak_flops, flops_per_token, mfu

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    peak = device_peak_flops()
    results: dict[str, dict] = {}
    problems: dict[str, dict] = {}  # runs skipped (no CUDA) or failed, with why
    report = {"machine": platform.node(), "device": device, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                           if k not in ("run", "work")}}

    def write_json() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**report, "results": results, "problems": problems,
                                             "ratios": ratios(results)}, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        prepared(work, args)
        import datasets
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(work / "model")
        lengths = [n for n in datasets.load_from_disk(str(work / "data" / "tokenized" / "train"))["length"]
                   if n <= args.max_length]
        mean_length = sum(lengths) / max(1, len(lengths))
        flops = flops_per_token(model_config, mean_length)
        report.update(parameters=sum(p.numel() for p in _meta_model(model_config).parameters()),
                      mean_record_tokens=mean_length, records=len(lengths), gflop_per_token=flops / 1e9,
                      peak_tflops=peak / 1e12 if peak else None)
        passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                       if k not in ("plot", "run", "work", "repeats", "runs", "preset", "json", "work_dir")
                       and v is not None]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        for _ in range(args.repeats):
            for name in names:
                if RUN_SETTINGS[name].get("cuda") and not cuda:
                    problems[name] = {"skipped": "no CUDA"}
                    continue
                proc = subprocess.run([sys.executable, __file__, *passthrough, "--run", name, "--work", str(work)],
                                      capture_output=True, text=True, env=env)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    print(f"run {name} failed (exit status {proc.returncode})", file=sys.stderr)
                    problems[name] = {"failed": f"exit status {proc.returncode}", "stderr_tail": proc.stderr[-1500:]}
                    write_json()
                    continue
                got = json.loads(line[7:])
                if peak:
                    got["mfu"] = mfu(got["tokens_per_s"], flops, peak)
                if name not in results or got["seconds"] < results[name]["seconds"]:
                    results[name] = got
                problems.pop(name, None)
                write_json()
    write_json()

    print(f"\n{platform.node()} | {device} | torch {torch.__version__} | LLaMA hidden {args.hidden} x {args.layers} "
          f"layers, vocab {args.vocab} | {args.rows} hh-rlhf rows, max length {args.max_length}")
    print(f"{'run':<16}{'tokens':>9}{'seconds':>9}{'tokens/s':>10}{'peak MB':>9}{'final loss':>11}"
          + (f"{'MFU':>8}" if peak else ""))
    for name, r in results.items():
        print(f"{name:<16}{r['tokens']:>9}{r['seconds']:>9.1f}{r['tokens_per_s']:>10.0f}{r['peak_mb']:>9.0f}"
              f"{r['final_loss']:>11.3f}" + (f"{r['mfu']:>8.1%}" if peak else ""))
    for name, why in problems.items():
        print(f"{name:<16}{why.get('skipped') or why.get('failed')}")
    if peak:
        print(f"MFU: {flops / 1e9:.2f} GFLOP per token (mean record {mean_length:.0f} tokens) against "
              f"{peak / 1e12:.0f} TFLOP/s bf16 dense peak")
    for key, value in ratios(results).items():
        print(f"{key}: {value:.2f}x")
    if args.plot and results:
        plot(results, args.plot, f"{device}, LLaMA {args.hidden}x{args.layers}, {args.rows} hh-rlhf rows")
        print(f"plot: {args.plot}")
    return 1 if any("failed" in why for why in problems.values()) else 0


def _meta_model(config):
    """The model of ``config`` on the meta device (no memory), to count its parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


if __name__ == "__main__":
    sys.exit(main())
