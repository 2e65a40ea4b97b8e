"""Bad `coh train` options, one table: the test (test_hardening.py) runs every case in-process and
checks that it is refused before any compute with a clear message; run as a script, it tries
every case as a user would, one `coh train` process each, and counts the outcomes (the figures in
docs/reliability.md):

    python tests/train/bad_options.py WORKDIR          # this checkout (PYTHONPATH=src)
    PYTHONPATH=/other/checkout/src python tests/train/bad_options.py WORKDIR   # another one

A case is the options added to a small, valid run (``base_args``), optionally a recipe, and a
regular expression its error message must match. Outcomes: ``clear error`` (exit 1, no traceback,
the expected message), ``other error`` (refused, but with another message), ``traceback``,
``exit 0`` (accepted); and whether the model was loaded before the refusal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RECIPES = {
    "not-yaml.yaml": "lr: [1\nmax_steps: 2\n",
    "not-a-mapping.yaml": "- lr\n- 1e-5\n",
    "unknown-key.yaml": "learning_rate: 1e-5\n",
    "number-for-a-path.yaml": "tokenizer: 5\n",
    "list-for-a-number.yaml": "lr: [1, 2]\n",
    "tabs.yaml": "lr:\t1e-5\n\tmax_steps: 2\n",
}


@dataclass(frozen=True)
class Case:
    """``args``: overrides after the base run's (``{ws}`` is the workspace); ``recipe``: a file
    under ``{ws}/recipes`` given with -c; ``expect``: a regex the message must match."""

    name: str
    args: tuple[str, ...]
    expect: str
    recipe: str | None = None


CASES = [
    # the tracebacks
    Case("max_steps-fraction", ("max_steps=2.5",), r"option max_steps: expected a whole number"),
    Case("report_to-number", ("report_to=5",), r"option report_to: expected a list of names"),
    Case("model-mapping", ("model={a: 1}",), r"option model: expected a string, got dict"),
    Case("override-not-yaml", ("lr=[1",), r"override 'lr=\[1': the value is not valid YAML"),
    Case("recipe-not-yaml", (), r"recipe .*not-yaml.yaml: not valid YAML: .* at line 2", recipe="not-yaml.yaml"),
    Case("output_dir-a-file", ("output_dir={ws}/a-file",), r"output_dir .*a-file is a file, not a folder"),
    Case("output_dir-under-a-file", ("output_dir={ws}/a-file/run",), r"a-file is a file, not a folder"),
    # the wrong models at exit status 0
    Case("lr-inf", ("lr=.inf",), r"lr must be a finite number, got inf"),
    Case("max_steps-negative", ("max_steps=-1",), r"max_steps must be at least 1"),
    Case("max_steps-zero", ("max_steps=0",), r"max_steps must be at least 1"),
    Case("epochs-zero", ("max_steps=null", "epochs=0"), r"epochs must be positive"),
    Case("epochs-negative", ("epochs=-1",), r"epochs must be positive"),
    Case("warmup-negative", ("warmup_steps=-5",), r"warmup_steps must be at least 0"),
    Case("keep_last-zero", ("keep_last=0",), r"keep_last must be at least 1"),
    Case("keep_last-negative", ("keep_last=-2",), r"keep_last must be at least 1"),
    Case("eval_data-missing", ("eval_data={ws}/nowhere.jsonl",), r"eval_data .*nowhere.jsonl: no such records file"),
    Case("eval_data-empty", ("eval_data={ws}/empty.jsonl",), r"eval_data .*empty.jsonl: the file is empty"),
    Case("eval_data-folder-without-eval", ("eval_data={ws}/empty-folder",), r"eval_data .*eval.jsonl: no such records"),
    # the unclear messages
    Case("train_data-raw", ("train_data={ws}/raw-hh.jsonl",), r"line 1: not a CoH record.*coh data build --source"),
    Case("model-without-tokenizer", ("model={ws}/no-tokenizer",), r"model .*no-tokenizer: the model folder has no "
         r"tokenizer files"),
    # more of the same kinds
    Case("max_steps-inf", ("max_steps=.inf",), r"option max_steps: expected a whole number"),
    Case("max_steps-text", ("max_steps=many",), r"option max_steps: expected a whole number"),
    Case("report_to-unknown", ("report_to=[mlflow]",), r"report_to: unknown \['mlflow'\]"),
    Case("report_to-mapping", ("report_to={a: 1}",), r"option report_to: expected a list of names"),
    Case("model-list", ("model=[a, b]",), r"option model: expected a string, got list"),
    Case("lr-nan", ("lr=.nan",), r"lr must be a finite number"),
    Case("lr-zero", ("lr=0",), r"lr must be positive"),
    Case("lr-negative", ("lr=-1e-5",), r"lr must be positive"),
    Case("lr-text", ("lr=fast",), r"option lr: expected a number, got str 'fast'"),
    Case("lr-bool", ("lr=true",), r"option lr: expected a number, got bool"),
    Case("epochs-inf", ("epochs=.inf",), r"epochs must be a finite number"),
    Case("min_lr_ratio-above-1", ("min_lr_ratio=2",), r"min_lr_ratio must be in \[0, 1\]"),
    Case("adam_beta1-one", ("adam_beta1=1",), r"adam_beta1 must be in \[0, 1\)"),
    Case("adam_beta2-negative", ("adam_beta2=-0.1",), r"adam_beta2 must be in \[0, 1\)"),
    Case("weight_decay-negative", ("weight_decay=-0.1",), r"weight_decay must be at least 0"),
    Case("max_grad_norm-zero", ("max_grad_norm=0",), r"max_grad_norm must be positive"),
    Case("max_grad_norm-nan", ("max_grad_norm=.nan",), r"max_grad_norm must be a finite number"),
    Case("pretrain_lambda-inf", ("pretrain_lambda=.inf",), r"pretrain_lambda must be a finite number"),
    Case("pretrain_ratio-one", ("pretrain_mode=ratio", "pretrain_ratio=1"), r"pretrain_ratio must be in \(0, 1\)"),
    Case("fcm-above-1", ("fcm_max_ratio=1.5",), r"fcm_max_ratio < 1"),
    Case("fcm-min-above-max", ("fcm_min_ratio=0.3", "fcm_max_ratio=0.1"), r"fcm_min_ratio <= fcm_max_ratio"),
    Case("lora_dropout-one", ("lora_r=4", "lora_dropout=1"), r"lora_dropout must be in \[0, 1\)"),
    Case("lora_r-negative", ("lora_r=-4",), r"lora_r must be at least 0"),
    Case("lora_alpha-zero", ("lora_r=4", "lora_alpha=0"), r"lora_alpha must be positive"),
    Case("gradient_accumulation-zero", ("gradient_accumulation_steps=0",), r"gradient_accumulation_steps must be at"),
    Case("max_length-zero", ("max_length=0",), r"max_length must be at least 1"),
    Case("micro_batch_tokens-below-max_length", ("micro_batch_tokens=100",), r"micro_batch_tokens \(100\) must be"),
    Case("eval_records-zero", ("eval_records=0",), r"eval_records must be at least 1"),
    Case("eval_records-negative", ("eval_records=-1",), r"eval_records must be at least 1"),
    Case("loss_chunk-zero", ("loss_chunk=0",), r"loss_chunk must be at least 1"),
    Case("log_every-zero", ("log_every=0",), r"log_every must be at least 1"),
    Case("save_every-negative", ("save_every=-1",), r"save_every must be at least 1"),
    Case("seed-negative", ("seed=-1",), r"seed must be at least 0"),
    Case("seed-too-big", ("seed=4294967296",), r"seed must be below 2\*\*32"),
    Case("mode-unknown", ("mode=dpo",), r"mode must be one of"),
    Case("dtype-unknown", ("dtype=float16",), r"dtype must be one of"),
    Case("overlong-unknown", ("overlong=truncate",), r"overlong must be one of"),
    Case("resume-not-bool", ("resume=maybe",), r"option resume: expected true or false"),
    Case("gradient_checkpointing-number", ("gradient_checkpointing=2",), r"option gradient_checkpointing: expected"),
    Case("unknown-option", ("learning_rate=1e-5",), r"unknown option\(s\) \['learning_rate'\]"),
    Case("override-without-equals", ("max_steps",), r"override 'max_steps': expected key=value"),
    Case("train_data-missing", ("train_data={ws}/nowhere",), r"train_data .*nowhere: no such records file"),
    Case("model-empty-folder", ("model={ws}/empty-folder",), r"model .*empty-folder: no config.json"),
    Case("model-missing-folder", ("model={ws}/no/such/model",), r"model .*no/such/model: no such folder"),
    Case("model-a-file", ("model={ws}/a-file",), r"model .*a-file: a file"),
    Case("tokenizer-empty-folder", ("tokenizer={ws}/empty-folder",), r"tokenizer .*empty-folder: the tokenizer "
         r"folder has no tokenizer files"),
    Case("pretrain_data-missing", ("pretrain_data={ws}/nowhere.txt",), r"pretrain_data .*nowhere.txt: no such file"),
    Case("recipe-missing", (), r"recipe .*nowhere.yaml: no such file", recipe="nowhere.yaml"),
    Case("recipe-a-folder", (), r"recipe .*: cannot read it", recipe="."),
    Case("recipe-not-a-mapping", (), r"expected a mapping of option to value, got list", recipe="not-a-mapping.yaml"),
    Case("recipe-unknown-key", (), r"unknown option\(s\) \['learning_rate'\] in", recipe="unknown-key.yaml"),
    Case("recipe-number-for-a-path", (), r"option tokenizer: expected a string or null \(quote it in YAML\)",
         recipe="number-for-a-path.yaml"),
    Case("recipe-list-for-a-number", (), r"option lr: expected a number, got list", recipe="list-for-a-number.yaml"),
    Case("recipe-tabs", (), r"recipe .*tabs.yaml: not valid YAML", recipe="tabs.yaml"),
]


def prepare(ws: Path) -> None:
    """The files the cases point at, beside the tiny model (``ws/llama``) and data (``ws/data``)."""
    (ws / "a-file").write_text("not a folder\n")
    (ws / "empty.jsonl").write_text("")
    (ws / "empty-folder").mkdir(exist_ok=True)
    notok = ws / "no-tokenizer"
    notok.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        (notok / name).write_bytes((ws / "llama" / name).read_bytes())
    raw = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}]
    (ws / "raw-hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    (ws / "recipes").mkdir(exist_ok=True)
    for name, text in RECIPES.items():
        (ws / "recipes" / name).write_text(text)


def base_args(ws: Path, out: Path) -> list[str]:
    """A small run that trains fine on the workspace: every case adds one problem to it."""
    return [f"model={ws / 'llama'}", f"train_data={ws / 'data'}", f"output_dir={out}", "report_to=[none]",
            "max_length=512", "overlong=skip", "micro_batch_tokens=1024", "max_steps=2", "warmup_steps=0",
            "eval_every=1", "save_every=1", "log_every=1", "eval_records=8"]


def argv(case: Case, ws: Path, out: Path) -> list[str]:
    """``coh train`` arguments of a case: the recipe first, then the base run's options, then the case's."""
    recipe = ["-c", str(ws / "recipes" / case.recipe)] if case.recipe else []
    return ["train", *recipe, *base_args(ws, out), *(a.replace("{ws}", str(ws)) for a in case.args)]


def _workspace(root: Path) -> Path:
    """A tiny LLaMA and CoH records built from the bundled hh-rlhf sample, then ``prepare``."""
    import gzip

    from coh.data.build import BuildConfig, SourceSpec, build
    from coh.data.render import RenderSpec
    from coh.tiny import make_tiny_model, train_tiny_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    sample = Path(__file__).resolve().parents[2] / "src" / "coh" / "data" / "builtin" / "hh-rlhf-harmless-sample.jsonl.gz"
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:120]
    if not (root / "llama").exists():
        tok = train_tiny_tokenizer([r["chosen"] for r in rows], 400, "llama")
        make_tiny_model(root / "llama", tok, "llama", hidden=32, layers=2, heads=2)
    if not (root / "data").exists():
        (root / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        build(BuildConfig([SourceSpec.parse(f"dialogue:{root / 'hh.jsonl'}")], str(root / "data"), eval_fraction=0.2,
                          skip_invalid=True, render=RenderSpec(feedback=("pn", "np")), progress=False))
    prepare(root)
    return root


def main(workdir: str) -> int:
    """Every case as its own ``coh train`` process: exit status, traceback or not, the message."""
    ws = _workspace(Path(workdir).resolve())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("COH_TRACEBACK", None)
    counts = {"clear error": 0, "traceback": 0, "exit 0": 0, "other error": 0}
    loaded = 0  # cases that got as far as loading the model (transformers' "Loading weights" bar)
    for case in CASES:
        out = ws / "runs" / case.name
        proc = subprocess.run([sys.executable, "-m", "coh", *argv(case, ws, out)], capture_output=True, text=True,
                              env=env, cwd=ws, timeout=900)
        lines = proc.stderr.strip().splitlines() or [""]
        last = next((line for line in reversed(lines) if line.startswith("coh train: error:")), lines[-1])
        if "Traceback (most recent call last)" in proc.stderr:
            outcome = "traceback"
        elif proc.returncode == 0:
            outcome = "exit 0"
        else:
            outcome = "clear error" if re.search(case.expect, proc.stderr) else "other error"
        counts[outcome] += 1
        model = "Loading weights" in proc.stderr
        loaded += model
        print(f"{case.name:<38} {outcome:<12} rc={proc.returncode:<2} {'model loaded' if model else '':<13}"
              f"{last[:140]}")
    print(f"{len(CASES)} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; model loaded in {loaded}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/bad-options"))
