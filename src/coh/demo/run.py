"""``coh demo``: the whole pipeline on a tiny model and a synthetic task, in minutes on a CPU.

Stages, each through the code users run:

1. task:  a seeded program writes preference rows (``coh.demo.task``): polite and correct replies
          preferred over rude and wrong ones.
2. base:  a small tokenizer trained on those rows and a tiny LLaMA built from config.
3. data:  ``coh data build --source preference:...`` (held-out prompts by hash, as for any user data).
4. train: ``coh train`` twice with the same budget (steps, tokens per step, learning rate): CoH on
          all feedback, and plain SFT on the preferred replies.
5. eval:  greedy replies to the held-out prompts under the positive phrase, the negative phrase and
          no phrase (``coh.eval.generations``), scored by the task's judge.

Writes ``results.json``, ``report.md`` and ``demo.png`` into the output folder, prints a table and
the command that serves the CoH model.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from coh.data.build import write_jsonl
from coh.demo import task
from coh.demo.config import DemoConfig
from coh.train.metrics import read_metrics

FEEDBACK = ("good", "bad", "none")  # phrase asked for at inference; none: the bare prompt
MODES = ("coh", "sft")
STAGE_DIRS = ("task", "base", "data", "coh", "sft", "eval")
MARKER = ".coh-demo"  # written first: only a folder that has it is cleared on a rerun


def _stage(n: int, text: str, t0: float) -> None:
    print(f"\n[{n}/5] {text}  ({time.perf_counter() - t0:.0f} s)", flush=True)


def _cli(argv: list[str]) -> None:
    """Run a ``coh`` command in this process, as a user would type it; stop on failure."""
    from coh.cli import main

    print("$ coh " + " ".join(argv), flush=True)
    status = main(argv)
    if status:
        raise RuntimeError(f"coh {argv[0]} failed with exit status {status}")


def held_out_prompts(rows_file: Path, seed: int, fraction: float) -> list[str]:
    """The distinct prompts ``coh data build`` put in the eval split (same seeded hash), in file order."""
    from coh.data.build import held_out
    from coh.eval.examples import read_examples, unique_contexts

    examples, _ = read_examples("preference", str(rows_file))
    return [ex.context[0].text for ex in unique_contexts(examples) if held_out(seed, ex, fraction)]


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns the results (also in ``results.json``)."""
    from coh.tiny import make_tiny_model, train_tiny_tokenizer

    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} is not empty and was not written by coh demo: choose another --output-dir")
    for name in STAGE_DIRS:  # a rerun starts afresh: coh train would otherwise resume the old run
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by coh demo; a rerun may replace this folder's stages\n", encoding="utf-8")

    _stage(1, f"synthetic feedback task: {cfg.rows} preference rows (seed {cfg.seed})", t0)
    rows = task.make_rows(cfg.rows, cfg.seed)
    rows_file = out / "task" / "feedback.jsonl"
    write_jsonl(rows, rows_file)
    example = rows[0]
    print(f"  prompt:   {example['prompt']}\n  chosen:   {example['chosen']}\n  rejected: {example['rejected']}")

    _stage(2, f"tokenizer ({cfg.vocab} tokens) and a tiny LLaMA ({cfg.layers} layers, width {cfg.hidden})", t0)
    texts = [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in rows] + ["User: A helpful answer: An unhelpful answer:"]
    tokenizer = train_tiny_tokenizer(texts, cfg.vocab, "llama")
    model = make_tiny_model(out / "base", tokenizer, "llama", hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    del model

    _stage(3, "coh data: preference rows into CoH records", t0)
    # with the tokenizer: the build writes tokenized/, which coh train maps instead of tokenizing again
    _cli(["data", "build", "--source", f"preference:{rows_file}", "--output-dir", str(out / "data"),
          "--tokenizer", str(out / "base"), "--seed", str(cfg.seed), "--eval-fraction", str(cfg.eval_fraction), "--num-proc", "1", "--no-progress"])
    build_summary = json.loads((out / "data" / "summary.json").read_text(encoding="utf-8"))

    train_args = ["--model", str(out / "base"), "--train-data", str(out / "data"), "--max-steps", str(cfg.steps),
                  "--micro-batch-tokens", str(cfg.micro_batch_tokens), "--max-length", "512", "--lr", str(cfg.lr),
                  "--warmup-steps", "10", "--seed", str(cfg.seed), "--eval-every", str(max(1, cfg.steps // 4)),
                  "--save-every", str(cfg.steps), "--log-every", str(max(1, cfg.steps // 50)), "--report-to", "none",
                  "--no-resume", "--no-progress"]
    for mode in MODES:
        _stage(4, f"coh train, mode {mode}: {cfg.steps} steps of {cfg.micro_batch_tokens} tokens", t0)
        _cli(["train", *train_args, "--mode", mode, "--output-dir", str(out / mode)])

    _stage(5, "evaluation: replies to held-out prompts under each phrase, scored by the task's judge", t0)
    prompts = held_out_prompts(rows_file, cfg.seed, cfg.eval_fraction)
    held = set(prompts)  # their rows, for `coh eval` by hand (see the report)
    write_jsonl([r for r in rows if r["prompt"] in held], out / "task" / "heldout.jsonl")
    scores = evaluate_models(out, prompts, cfg)

    results = {
        "config": asdict(cfg),
        "parameters": n_params,
        "example": example,
        "records": build_summary["records"],
        "eval_prompts": len(prompts),
        "training": {mode: training_summary(out / mode) for mode in MODES},
        "scores": scores,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot_demo(out, results, out / "demo.png")
    (out / "report.md").write_text(report_markdown(out, results), encoding="utf-8")
    print("\n" + score_table(scores))
    print(f"\nCoH gap (positive minus negative phrase): {gap(scores, 'coh'):+.2f}; "
          f"{len(prompts)} held-out prompts, seed {cfg.seed}, {results['seconds']:.0f} s")
    print(f"report: {out / 'report.md'}, plot: {out / 'demo.png'}")
    print(f"\nChat with the CoH model:\n  coh serve {out / 'coh' / 'final'}")
    return results


def evaluate_models(out: Path, prompts: list[str], cfg: DemoConfig) -> dict:
    """``{mode: {feedback: {"judge", "polite", "correct"}}}``, means over ``prompts``; the replies go
    to ``eval/<mode>_<feedback>.jsonl``."""
    from coh.data.feedback import Turn
    from coh.eval.config import Sampling
    from coh.eval.generations import generate, prompt_ids, write_generations
    from coh.models import load_for_inference

    contexts = [(Turn("user", p),) for p in prompts]
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, batch_size=32, seed=cfg.seed)
    scores: dict = {}
    for mode in MODES:
        lm = load_for_inference(str(out / mode / "final"), device="cpu")
        scores[mode] = {}
        for fb in FEEDBACK:
            replies = generate(lm, prompt_ids(lm, contexts, fb), sampling, cfg.progress, f"{mode}, phrase {fb}")
            judged = [{"judge": task.judge(p, r), "polite": float(task.is_polite(r)),
                       "correct": float(task.is_correct(p, r))} for p, r in zip(prompts, replies)]
            write_generations(out / "eval" / f"{mode}_{fb}.jsonl", [f"eval/{i}" for i in range(len(prompts))],
                              contexts, fb, replies, judged)
            n = max(1, len(judged))
            scores[mode][fb] = {k: sum(j[k] for j in judged) / n for k in ("judge", "polite", "correct")}
    return scores


def training_summary(run: Path) -> dict:
    """Loss curves and the last evaluation of a ``coh train`` output folder (its metrics.jsonl)."""
    rows = read_metrics(run / "metrics.jsonl")
    curve = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    last = {k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {}
    return {"train_loss": curve, "eval_loss": [(r["step"], r["eval/loss"]) for r in evals], "final_eval": last}


def gap(scores: dict, mode: str) -> float:
    return scores[mode]["good"]["judge"] - scores[mode]["bad"]["judge"]


def quality_sentence(scores: dict) -> str:
    """Compare CoH under its positive phrase with SFT unprompted, in words that follow the numbers."""
    c, f = scores["coh"]["good"]["judge"], scores["sft"]["none"]["judge"]
    verdict = "about the same" if abs(c - f) < 0.05 else "higher for CoH" if c > f else "higher for SFT"
    return (f"CoH with the positive phrase scores {c:.2f}, SFT with no phrase {f:.2f} ({verdict}). With the same "
            "token budget, SFT trains on preferred replies only, while CoH spends about half of its tokens on "
            "the dispreferred ones it learns to avoid.")


def score_table(scores: dict) -> str:
    """Markdown table: judge score (polite, correct) per model and phrase."""
    lines = ["| model | phrase | judge score | polite | correct |", "|---|---|---:|---:|---:|"]
    for mode in scores:
        for fb in FEEDBACK:
            s = scores[mode][fb]
            lines.append(f"| {mode} | {fb} | {s['judge']:.2f} | {s['polite']:.2f} | {s['correct']:.2f} |")
    return "\n".join(lines)


def report_markdown(out: Path, results: dict) -> str:
    cfg, scores = results["config"], results["scores"]
    example = results["example"]
    coh_eval = results["training"]["coh"]["final_eval"]
    lines = [
        "# coh demo",
        "",
        f"Seed {cfg['seed']}, {results['seconds']:.0f} s. A tiny LLaMA ({results['parameters'] / 1e6:.2f}M parameters, "
        f"{cfg['layers']} layers, width {cfg['hidden']}) trained from scratch on a synthetic feedback task: "
        f"{cfg['rows']} preference rows such as",
        "",
        f"- prompt: `{example['prompt']}`",
        f"- chosen: `{example['chosen']}`",
        f"- rejected: `{example['rejected']}`",
        "",
        f"`coh data` made {results['records']['train']} training and {results['records']['eval']} eval records "
        "(feedback p, n, pn, np). `coh train` then ran twice with the same budget "
        f"({cfg['steps']} steps of {cfg['micro_batch_tokens']} tokens, lr {cfg['lr']}): **coh** on all records, "
        "**sft** on the preferred replies only.",
        "",
        f"Each model answered the {results['eval_prompts']} held-out prompts (no prompt was trained on) greedily, "
        "after the positive phrase (`good`), the negative phrase (`bad`) and no phrase (`none`). The judge gives "
        "0.5 for a polite reply and 0.5 for the correct answer (`coh.demo.task.judge`).",
        "",
        score_table(scores),
        "",
        f"CoH's gap between positive and negative conditioning: **{gap(scores, 'coh'):+.2f}**. "
        f"SFT's: {gap(scores, 'sft'):+.2f}.",
        "",
        "CoH learned from the preferred and the dispreferred replies, and the feedback phrase selects which "
        "kind it writes. SFT never saw a phrase, so its meaningful row is `none`: " + quality_sentence(scores),
        "",
        f"CoH held-out preference accuracy (preferred reply more likely after the positive phrase): "
        f"{coh_eval.get('eval/preference_accuracy', float('nan')):.2f}.",
        "",
        "![loss curves and judge scores](demo.png)",
        "",
        "Files: `task/feedback.jsonl` (the rows; `task/heldout.jsonl` those of the held-out prompts), `data/` (CoH records), `coh/` and `sft/` (training runs, "
        "`final/` models), `eval/*.jsonl` (every reply with its scores), `results.json`.",
        "",
        "Next:",
        "",
        "```bash",
        f"coh serve {out / 'coh' / 'final'}",
        f"coh eval feedback controllability --model {out / 'coh' / 'final'} --data {out / 'task' / 'heldout.jsonl'} "
        f"--kind preference --scorer coh.demo.task:judge --max-new-tokens {cfg['max_new_tokens']}",
        "```",
        "",
    ]
    return "\n".join(lines)


def plot_demo(out: Path, results: dict, png: Path) -> Path | None:
    """Left: training loss of both runs (eval loss as markers); right: judge scores by phrase."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no demo.png")
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    colors = {"coh": "tab:blue", "sft": "tab:orange"}
    for mode, run in results["training"].items():
        if run["train_loss"]:
            left.plot(*zip(*run["train_loss"]), color=colors[mode], label=f"{mode} train")
        if run["eval_loss"]:
            left.plot(*zip(*run["eval_loss"]), "o", color=colors[mode], label=f"{mode} eval")
    left.set(xlabel="optimizer step", ylabel="loss (nats per target token)", title="training", yscale="log")
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    width = 0.38
    for k, mode in enumerate(results["scores"]):
        values = [results["scores"][mode][fb]["judge"] for fb in FEEDBACK]
        xs = [i + (k - 0.5) * width for i in range(len(FEEDBACK))]
        bars = right.bar(xs, values, width, color=colors[mode], label=mode)
        right.bar_label(bars, fmt="%.2f", fontsize="small")
    right.set_xticks(range(len(FEEDBACK)), ["positive phrase", "negative phrase", "no phrase"])
    right.set(ylim=(0, 1.1), ylabel="judge score (0 to 1)",
              title=f"held-out prompts (n={results['eval_prompts']}, seed {results['config']['seed']})")
    right.legend(fontsize="small")
    right.grid(axis="y", alpha=0.3)
    fig.savefig(png, dpi=110)
    return png
