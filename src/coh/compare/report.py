"""The comparison's report: ``results.json``, ``report.md`` (one table, methods x metrics, 95 %
intervals in brackets), ``loss_curves.png`` and ``metrics.png``.

Win rates are computed here, prompt by prompt, from the scores each evaluation saved
(``coh.stats.win_rate``: ties count half, percentile-bootstrap interval over prompts).

The scorer's results keep the keys of earlier runs: ``judge`` (its spec and own accuracy),
``judge_mean`` (a model's mean score), the split ``judge`` (its training rows).
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from coh.compare.config import CompareConfig

# (results key, column title); "preference_accuracy*" are taken after each model's own prompt
COLUMNS = (
    ("pref_acc", "pref. acc."),
    ("pref_acc_per_token", "pref. acc. per token"),
    ("dialogue_is_good_accuracy", "'This dialogue is' acc."),
    ("win_vs_base", "win vs base"),
    ("win_vs_sft", "win vs SFT"),
    ("judge_mean", "scorer mean"),
    ("good_over_bad_win_rate", "control (+ over -)"),
    ("plain_text_loss", "plain-text loss"),
)
INTERVAL_NOTE = (
    "Brackets are 95 % intervals: Wilson for accuracies (pairs are independent yes/no outcomes), "
    "percentile bootstrap over prompts for win rates (ties count half) and over documents for the plain-text "
    "loss. Two methods whose difference is smaller than these intervals are not distinguished by this run: "
    "with this many held-out rows the difference may be noise, and another split or seed may reverse it. "
    "(Comparing two rows' intervals is conservative; overlapping intervals do not prove the methods equal.)"
)


def _win(scores_a: dict, scores_b: dict, seed: int) -> dict:
    from coh.stats import win_rate

    ids = [i for i in scores_a if i in scores_b]
    w = win_rate([scores_a[i] for i in ids], [scores_b[i] for i in ids], seed)
    return {"rate": w.rate, "ci95": [w.low, w.high], "wins": w.wins, "ties": w.ties, "losses": w.losses, "n": w.n}


def git_commit() -> str:
    """The source checkout's commit (``+changes`` with uncommitted edits), or ``unknown``."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
        return done.stdout.strip() + ("+changes" if dirty else "") if done.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_results(cfg: CompareConfig, runs: dict, split: dict, text: dict, scorer: dict, out: Path,
                  seconds: float, partial: bool = False, commit: str | None = None) -> dict:
    """Everything the report shows: per run its metrics, intervals, win rates and training cost.
    ``partial``: some methods are still to come (the report says so)."""
    scores = {label: json.loads((out / "eval" / label / "scores.json").read_text(encoding="utf-8")) for label in runs}
    base = next((label for label, r in runs.items() if r["method"] == "base"), None)
    rows = {}
    for label, r in runs.items():
        m, ci = r["metrics"], r["ci95"]
        own = "" if "plain_preference_accuracy" not in m else "plain_"
        row = {"method": r["method"], "name": r["name"], "seed": r["seed"], "train": r["train"], "counts": r["counts"],
               "values": {}, "ci95": {}}
        for key, src in (("pref_acc", f"{own}preference_accuracy"), ("pref_acc_per_token", f"{own}preference_accuracy_per_token"),
                         ("pref_acc_positive_phrase", "preference_accuracy"),
                         ("dialogue_is_good_accuracy", "dialogue_is_good_accuracy"), ("judge_mean", "judge_mean"),
                         ("good_over_bad_win_rate", "good_over_bad_win_rate"), ("plain_text_loss", "plain_text_loss")):
            if src in m:
                row["values"][key] = m[src]
                if src in ci:
                    row["ci95"][key] = ci[src]
        sft = next((lab for lab, q in runs.items() if q["method"] == "sft" and q["seed"] == r["seed"]), None)
        for key, other in (("win_vs_base", base), ("win_vs_sft", sft)):
            if other is not None and other != label:
                w = _win(scores[label], scores[other], r["seed"])
                row["values"][key], row["ci95"][key] = w["rate"], w["ci95"]
                row.setdefault("wins", {})[key] = w
        rows[label] = row
    if base is not None:
        for row in rows.values():
            row["values"]["plain_text_loss_change"] = row["values"]["plain_text_loss"] - rows[base]["values"]["plain_text_loss"]
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit or git_commit(),
        "machine": f"{platform.node()}: {platform.machine()}, {_cpu_count()} CPU cores, {_device()}",
        "seconds": round(seconds, 1), "partial": partial, "config": cfg.to_dict(), "split": split, "plain_text": text, "judge": scorer,
        "runs": rows,
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def _cell(row: dict, key: str) -> str:
    v = row["values"].get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    ci = row["ci95"].get(key)
    return f"{v:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _per_split(counts: dict) -> str:
    """Counts per split in words (the split ``judge`` trains the scorer)."""
    names = {"policy": "policy", "judge": "scorer", "eval": "held out"}
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in counts.items())


def table_markdown(results: dict) -> str:
    """Methods as rows, metrics as columns, then training cost."""
    head = ["method", *(title for _, title in COLUMNS), "train tokens", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, row in results["runs"].items():
        t = row["train"]
        lines.append(f"| {label} | " + " | ".join(_cell(row, k) for k, _ in COLUMNS)
                     + f" | {t.get('tokens', 0):,} | {t.get('seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    curves = plot_loss_curves(results, out, out / "loss_curves.png")
    bars = plot_metrics(results, out / "metrics.png")
    (out / "report.md").write_text(report_markdown(results, curves, bars), encoding="utf-8")


def report_markdown(results: dict, curves: Path | None, bars: Path | None) -> str:
    cfg, split, scorer, text = results["config"], results["split"], results["judge"], results["plain_text"]
    runs = results["runs"]
    n_pairs = next(iter(runs.values()))["counts"]["pairs"]
    n_prompts = next(iter(runs.values()))["counts"]["prompts"]
    lora = f"LoRA r{cfg['lora_r']} (alpha {cfg['lora_alpha']}, {cfg['lora_target_modules']})" if cfg["lora_r"] else "full fine-tuning"
    lines = [
        "# coh compare" + (" (in progress: the methods finished so far)" if results.get("partial") else ""),
        "",
        f"- base model `{cfg['model']}`; data `{cfg['data']}` ({split['rows']} rows), split by prompt (seed "
        f"{split['seed']}): {_per_split(split['rows_per_split'])} rows; left out as longer than "
        f"{split['max_record_tokens']} tokens: {_per_split(split['left_out_too_long'])}; skipped by the converter: "
        f"{split['skipped'] or 'none'}",
        f"- every trained method: {cfg['steps']} optimizer steps of about {cfg['tokens_per_step']} tokens, lr {cfg['lr']} "
        f"(warmup {cfg['warmup_steps']}, cosine to {cfg['min_lr_ratio']} x), {lora}, seeds {cfg['seeds']}; CoH "
        f"feedback mix {cfg['feedback']}",
        f"- scorer: `{scorer['spec']}`, its own accuracy on the held-out pairs {scorer['accuracy']:.3f} "
        f"[{scorer['ci95'][0]:.2f}, {scorer['ci95'][1]:.2f}] (n={scorer['pairs']})"
        + (f"; a reward model trained with TRL's RewardTrainer on {scorer['pairs_per_step'] * scorer['steps']} pair "
           f"presentations ({scorer['epochs']} epochs of the {scorer['train_pairs']} scorer rows)"
           if "epochs" in scorer else ""),
        f"- held out: {n_pairs} pairs for likelihoods, {n_prompts} prompts answered greedily (at most "
        f"{cfg['max_new_tokens']} new tokens) and scored; plain text: {text['source']}, "
        f"{next(iter(runs.values()))['counts']['plain_text_tokens']} held-out tokens",
        f"- commit {results['commit']}, {results['machine']}, {results['created']}, {results['seconds'] / 60:.1f} minutes",
        "",
        table_markdown(results),
        INTERVAL_NOTE,
        "",
        "Columns: **pref. acc.**: the preferred reply gets a higher log-likelihood than the dispreferred one (summed "
        "over tokens; per token: mean), after the positive phrase for coh and conditional-sft, after the plain prompt "
        "for the others. **'This dialogue is' acc.**: the authors' protocol, log p(good) - log p(bad) after "
        "`The following is a dialogue: ... This dialogue is` is higher for the chosen dialogue. **win vs base / SFT**: "
        "the scorer prefers this method's reply to the other's on the same prompt. **scorer mean**: the mean score "
        "of its replies. **control**: replies under the "
        "positive phrase beat replies under the negative one (coh, conditional-sft). **plain-text loss**: nats per "
        "token on held-out plain text (lower is better; the base model's is the reference: rises show forgetting).",
        "",
        "Preference accuracy after the positive phrase for every model (diagnostic), and the change in plain-text loss:",
        "",
        "| method | pref. acc. after positive phrase | plain-text loss change vs base |",
        "|---|---:|---:|",
    ]
    for label, row in runs.items():
        change = row["values"].get("plain_text_loss_change")
        lines.append(f"| {label} | {_cell(row, 'pref_acc_positive_phrase')} | "
                     + ("-" if change is None else f"{change:+.4f}") + " |")
    lines.append("")
    if curves:
        lines += [f"![loss curves]({curves.name})", ""]
    if bars:
        lines += [f"![metrics]({bars.name})", ""]
    lines += ["Files: `split/` (the rows of each split), `runs/<method>/` (training runs, `metrics.jsonl`, final models), "
              "`eval/<method>/` (`results.json` per model, readable by `coh eval table`; every reply with its score), "
              "`judge/` (the scorer: its reward-model training run, if any, and its held-out accuracy), "
              "`results.json`.", ""]
    return "\n".join(lines)


def plot_loss_curves(results: dict, out: Path, png: Path) -> Path | None:
    """Left: token NLL of the ``coh train`` runs (pretraining loss dashed); right: the DPO loss and
    the reward model's loss, both logistic losses on pairs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from coh.train.metrics import read_metrics

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    nll, pairs = fig.subplots(1, 2)
    drawn = False
    for k, (label, row) in enumerate(results["runs"].items()):
        path = out / "runs" / label / "metrics.jsonl"
        if row["method"] == "base" or not path.exists():
            continue
        metrics = read_metrics(path)
        ax = pairs if row["method"] == "dpo" else nll
        for key, style in (("train/loss", "-"), ("train/pretrain_loss", "--")):
            points = [(r["step"], r[key]) for r in metrics if key in r]
            if points:
                ax.plot(*zip(*points), style, color=f"C{k % 10}", label=f"{label}" + (" (plain text)" if "pretrain" in key else ""))
                drawn = True
    scorer_log = out / "judge" / "metrics.jsonl"
    if scorer_log.exists():
        points = [(r["step"], r["train/loss"]) for r in read_metrics(scorer_log) if "train/loss" in r]
        if points:
            pairs.plot(*zip(*points), ":", color="black", label="reward model (scorer)")
            drawn = True
    if not drawn:
        return None
    nll.set(xlabel="optimizer step", ylabel="nats per target token", title="coh train runs: training loss")
    pairs.set(xlabel="optimizer step", ylabel="loss per pair", title="DPO and reward-model loss")
    for ax in (nll, pairs):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.savefig(png, dpi=110)
    return png


def plot_metrics(results: dict, png: Path) -> Path | None:
    """One bar chart per metric with 95 % intervals (``coh eval table``'s plot)."""
    from coh.eval.report import EvalResult, metrics_plot

    labels = list(results["runs"])
    if not labels:
        return None
    keys = [k for k, _ in COLUMNS]
    evals = [EvalResult("compare", label, None, {k: row["values"][k] for k in keys if k in row["values"]},
                        {k: tuple(row["ci95"][k]) for k in keys if k in row["ci95"]})
             for label, row in results["runs"].items()]
    return metrics_plot(evals, labels, png)
