"""The ``coh`` command: one subcommand per pipeline stage. Argument parsing only; the work is in
``coh.data``, ``coh.train``, ``coh.serve``, ``coh.eval``, ``coh.convert``, ``coh.demo`` and ``coh.judge``.

Each stage owns a ``command`` module with ``add_arguments(parser)`` (its options, from its config
dataclass through ``coh.options``) and ``run(config) -> exit status`` (or one such function per
action, set as the action parser's ``func``); that module must import torch and friends inside
``run`` so that ``coh --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# stage -> (module with add_arguments/run, one-line help)
STAGES = {
    "data": ("coh.data.command", "raw feedback into CoH records"),
    "train": ("coh.train.command", "CoH fine-tuning of any Hugging Face causal LM"),
    "serve": ("coh.serve.command", "an OpenAI-compatible server with a chat page"),
    "eval": ("coh.eval.command", "lm-evaluation-harness and the paper's own evaluations"),
    "convert": ("coh.convert.command", "checkpoints in and out (Meta LLaMA, EasyLM, LoRA, sharded, HF)"),
    "demo": ("coh.demo.command", "the whole pipeline on a tiny model, in minutes on a laptop CPU"),
    "judge": ("coh.judge.command", "pairwise human evaluation in the browser"),
    "compare": ("coh.compare.command", "CoH vs conditional SFT, SFT, DPO and the base model: one recipe, one report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coh", description="Chain of Hindsight: align language models with feedback turned into text."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, text) in STAGES.items():
        module = importlib.import_module(module_name)
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
        if cls is None:  # coh compare resolves its own recipe (a file of its own schema) from the namespace
            return args.func(args)
        from coh.options import options_from_args, to_yaml

        config = options_from_args(cls, args)
        if args._print_config:
            print(to_yaml(config), end="")
            return 0
        return args.func(config)
    except (DataError, ValueError, OSError) as e:
        if os.environ.get("COH_TRACEBACK"):
            raise
        # an OS error on a named file (or a full disk) in words: "runs/x.jsonl: No space left on device"
        named = isinstance(e, OSError) and e.filename and e.strerror
        print(f"coh {args.command}: error: {f'{e.filename}: {e.strerror}' if named else e}", file=sys.stderr)
        return 1
    finally:  # after the outcome, so that an error is the first line on stderr
        if getattr(args, "_overrides", None):
            from coh.options import key_value_note

            print(key_value_note(args._overrides), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
