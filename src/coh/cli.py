"""The ``coh`` command: one subcommand per pipeline stage. Argument parsing only; the work is in
``coh.data``, ``coh.train``, ``coh.serve``, ``coh.eval``, ``coh.convert``, ``coh.demo`` and ``coh.judge``.

``coh data`` is parsed here. Each other stage owns a ``command`` module with two
functions, ``add_arguments(parser)`` and ``run(args) -> exit status``; that module must import
torch and friends inside ``run`` so that ``coh --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

# stage -> (module with add_arguments/run, one-line help)
STAGES = {
    "train": ("coh.train.command", "CoH fine-tuning of any Hugging Face causal LM"),
    "serve": ("coh.serve.command", "an OpenAI-compatible server with a chat page"),
    "eval": ("coh.eval.command", "lm-evaluation-harness and the paper's own evaluations"),
    "convert": ("coh.convert.command", "checkpoints in and out (Meta LLaMA, EasyLM, LoRA, sharded, HF)"),
    "demo": ("coh.demo.command", "the whole pipeline on a tiny model, in minutes on a laptop CPU"),
    "judge": ("coh.judge.command", "pairwise human evaluation in the browser"),
    "compare": ("coh.compare.command", "CoH vs conditional SFT, SFT, DPO and the base model: one recipe, one report"),
}


def _data_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML recipe whose keys are these options (underscores); flags override it")
    p.add_argument("--source", "-s", action="append", default=None, metavar="SPEC",
                   help="a dataset, repeatable: KIND (paper sets by hub name), KIND:FILE, KIND:train=FILE,eval=FILE, "
                        "or KIND:hub=NAME[@CONFIG]; add name=LABEL or limit=N to the comma list. KIND is one of "
                        "dialogue, webgpt, summary, preference, unpaired, rated")
    p.add_argument("--output-dir", "-o", help="where train.jsonl, eval.jsonl and summary.json go (moved into "
                                              "place at the end: a failed build leaves the folder as it was)")
    p.add_argument("--feedback", default=None,
                   help="feedback types, comma list of p, n, pn, np, aux, chain (default: p,n,pn,np)")
    p.add_argument("--shared-prefix", choices=["context", "original"], default=None,
                   help="hh-rlhf turns shared by chosen and rejected: context without loss (default), or the "
                        "original's behaviour (trained under both phrases)")
    p.add_argument("--resample", action="store_true", default=None,
                   help="one record per example, phrase pair and order drawn afresh each epoch (first release)")
    p.add_argument("--phrases", help="YAML or JSON file of feedback phrases per source")
    p.add_argument("--seed", type=int, default=None, help="seed for every random choice (default 0)")
    p.add_argument("--eval-fraction", type=float, default=None,
                   help="held-out share for datasets without an eval split (default 0.05)")
    p.add_argument("--skip-invalid", action="store_true", default=None,
                   help="set invalid rows aside in rejects.jsonl (lines that are not JSON included, kept byte "
                        "for byte) and go on, instead of stopping at the first; a file that cannot be read at "
                        "all still stops the build")
    p.add_argument("--num-proc", type=int, default=None,
                   help="worker processes that convert, render and tokenize rows (default: the CPU count, at most 8)")
    p.add_argument("--tokenizer", help="tokenizer (path or hub id): also write token ids and loss masks")
    p.add_argument("--chat-template", choices=["auto", "always", "never"], default=None,
                   help="tokenize through the tokenizer's chat template: auto (default) for chat data "
                        "(message lists), always, or never")
    p.add_argument("--format", dest="output_format", choices=["coh", "fields"], default=None,
                   help="record format: ours (segments) or the original's 'fields' format")
    p.add_argument("--no-progress", action="store_true", default=None, help="no progress bars")


# Types of the options a `coh data build` YAML recipe may give (argparse checks the flags' own).
_RECIPE_TYPES: dict[str, tuple[type, ...]] = {
    "source": (list, str), "output_dir": (str,), "feedback": (str, list), "shared_prefix": (str,),
    "resample": (bool,), "phrases": (str,), "seed": (int,), "eval_fraction": (int, float),
    "skip_invalid": (bool,), "num_proc": (int,), "tokenizer": (str,), "chat_template": (str,),
    "output_format": (str,), "no_progress": (bool,),
}


def _load_data_recipe(path: str, known: set[str]) -> dict:
    """The options of a `coh data build` YAML recipe, checked: parse errors with their line,
    unknown keys, and values of the wrong type are refused naming the file and the key."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the recipe: {e}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else path
        raise ValueError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(loaded).__name__}")
    opts = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(k for k in opts if k not in known)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; expected some of {sorted(known)}")
    for key, value in opts.items():
        types = _RECIPE_TYPES.get(key, (object,))
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            names = " or ".join({"str": "a string", "list": "a list", "bool": "true or false", "int": "a whole number",
                                 "float": "a number"}.get(t.__name__, t.__name__) for t in types)
            raise ValueError(f"{path}: option '{key}': expected {names}, got {type(value).__name__} {value!r}")
    if isinstance(opts.get("source"), str):  # one source given as a string, not as a list of one
        opts["source"] = [opts["source"]]
    return opts


def _run_data_build(args: argparse.Namespace) -> int:
    from coh.data.build import BuildConfig, SourceSpec, build
    from coh.data.render import RenderSpec

    opts = {}
    if args.config:
        known = set(vars(args)) - {"config", "func", "command", "data_command"}
        opts.update({k: v for k, v in _load_data_recipe(args.config, known).items() if v is not None})
    opts.update({k: v for k, v in vars(args).items() if v is not None and k not in ("config", "func", "command")})
    if not opts.get("source"):
        print("coh data build: give at least one --source (see --help)", file=sys.stderr)
        return 2
    if not opts.get("output_dir"):
        print("coh data build: give --output-dir", file=sys.stderr)
        return 2
    origin = "--source" if args.source else args.config
    specs = [SourceSpec.from_config(s, f"{origin}: source {i + 1}") for i, s in enumerate(opts["source"])]
    feedback = opts.get("feedback", "p,n,pn,np")
    if isinstance(feedback, list) and not all(isinstance(f, str) for f in feedback):
        raise ValueError(f"{args.config}: option 'feedback': expected a list of strings, got {feedback!r}")
    render = RenderSpec(
        feedback=RenderSpec.parse_feedback(feedback) if isinstance(feedback, str) else tuple(feedback),
        shared_prefix=opts.get("shared_prefix", "context"),
        resample=bool(opts.get("resample", False)),
    )
    cfg = BuildConfig(
        sources=specs, output_dir=opts["output_dir"], render=render, phrases_file=opts.get("phrases"),
        seed=opts.get("seed", 0), eval_fraction=opts.get("eval_fraction", 0.05),
        skip_invalid=bool(opts.get("skip_invalid", False)), num_proc=opts.get("num_proc", min(8, os.cpu_count() or 1)),
        progress=not opts.get("no_progress", False) and sys.stderr.isatty(),
        tokenizer=opts.get("tokenizer"), chat_template=opts.get("chat_template", "auto"),
        output_format=opts.get("output_format", "coh"),
    )
    summary = build(cfg)
    print_build_summary(summary, cfg.output_dir)
    return 0


def print_build_summary(summary: dict, output_dir: str) -> None:
    print(f"{'source':<16}{'rows':>9}{'train ex':>10}{'eval ex':>9}{'skipped':>9}{'invalid':>9}{'no rec':>8}")
    for name, s in summary["sources"].items():
        print(f"{name:<16}{s['rows']:>9}{s['examples'].get('train', 0):>10}{s['examples'].get('eval', 0):>9}"
              f"{sum(s['skipped'].values()):>9}{s['invalid']:>9}{s['no_record']:>8}")
        for reason, n in s["skipped"].items():
            print(f"  skipped {n}: {reason}")
    print(f"records: train {summary['records']['train']}, eval {summary['records']['eval']} "
          f"(feedback {','.join(summary['feedback'])}, seed {summary['seed']})")
    if summary["invalid_rows"]:
        print(f"invalid rows set aside: {summary['invalid_rows']} -> {Path(output_dir) / 'rejects.jsonl'}")
    if "tokens" in summary:
        for split in ("train", "eval"):
            t = summary["tokens"][split]
            print(f"tokens {split}: {t['tokens']} ({t['loss_tokens']} with loss), longest record {t['max_length']}")
    print(f"written to {output_dir}")


def _data_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="records (ours or the original's 'fields' JSONL)")
    p.add_argument("--tokenizer", help="tokenizer (path or hub id): lengths in tokens")
    p.add_argument("--record", type=int, default=0, help="index of the record to render (default 0)")
    p.add_argument("--max-length", type=int, default=None,
                   help="report records longer than this (tokens with --tokenizer, else characters)")


def _run_data_inspect(args: argparse.Namespace) -> int:
    from coh.data.inspect import run_inspect

    if args.record < 0:
        raise ValueError(f"--record must be 0 or more, got {args.record}")
    if args.max_length is not None and args.max_length < 1:
        raise ValueError(f"--max-length must be at least 1, got {args.max_length}")

    return run_inspect(args.file, tokenizer=args.tokenizer, record_index=args.record, max_length=args.max_length)


def _not_built(name: str, text: str):
    def run(args: argparse.Namespace) -> int:
        print(f"coh {name}: {text} -- not built yet.", file=sys.stderr)
        return 2

    return run


def _stage_module(module: str):
    """The stage's command module, or None while that stage is not built."""
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # the stage's package itself is missing
        return None
    return importlib.import_module(module) if found is not None else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coh", description="Chain of Hindsight: align language models with feedback turned into text."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data = sub.add_parser("data", help="raw feedback into CoH records", description="Raw feedback into CoH records.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("build", help="build records from feedback datasets",
                            description="Build Chain-of-Hindsight records from feedback datasets.")
    _data_build_args(p)
    p.set_defaults(func=_run_data_build)
    p = data_sub.add_parser("inspect", help="counts, one rendered record, lengths and problems of a records file",
                            description="Counts by source and feedback type, one record with its loss spans "
                                        "marked, a length histogram and the problems found. Exit status 0 when "
                                        "no problem was found, 1 otherwise.")
    _data_inspect_args(p)
    p.set_defaults(func=_run_data_inspect)
    for name, (module_name, text) in STAGES.items():
        module = _stage_module(module_name)
        if module is None:
            sub.add_parser(name, help=f"{text} (not built yet)").set_defaults(func=_not_built(name, text))
            continue
        doc = (module.__doc__ or text).strip()
        p = sub.add_parser(name, help=text, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        if hasattr(module, "run"):  # else each action's parser sets its own func
            p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from coh.data.errors import DataError

    try:
        cls = getattr(args, "_options", None)
        if cls is None:  # a stage not yet on coh.options: its run takes the namespace
            return args.func(args)
        from coh.options import options_from_args, to_yaml

        config = options_from_args(cls, args)
        if args._print_config:
            print(to_yaml(config), end="")
            return 0
        return args.func(config)
    except (DataError, ValueError, FileNotFoundError) as e:
        if os.environ.get("COH_TRACEBACK"):
            raise
        print(f"coh {args.command}: error: {e}", file=sys.stderr)
        return 1
    finally:  # after the outcome, so that an error is the first line on stderr
        if getattr(args, "_overrides", None):
            from coh.options import key_value_note

            print(key_value_note(args._overrides), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
