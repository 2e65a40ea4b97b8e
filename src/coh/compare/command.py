"""Compare alignment methods on the same base model, data, budget and held-out prompts.

  coh compare smoke                 a tiny model, seconds (the test suite runs it)
  coh compare cpu                   SmolLM2-135M-Instruct with LoRA on the hh-rlhf sample, on a CPU
  coh compare gpu                   a larger budget with full fine-tuning, for a GPU
  coh compare RECIPE.yaml           your own recipe (see configs/compare/)

Methods: coh, conditional-sft and sft (coh train's modes), dpo (TRL's DPOTrainer: pip install
'chain-of-hindsight[compare]') and the untrained base. Each is evaluated by the same protocols on
the same held-out rows: preference accuracy by likelihood, the paper's 'This dialogue is'
protocol, scored replies (win rates against the base and SFT, under a reward model or a Python
scorer), controllability and the loss on held-out plain text. Writes report.md, results.json and
plots into the output folder; a rerun reuses every finished stage. The recipe's keys are the
fields of coh.compare.config.CompareConfig; --print-config prints the resolved recipe.
"""

from __future__ import annotations

import argparse
import sys

from coh.compare.config import CompareOptions
from coh.options import add_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, CompareOptions, recipe=False)  # the recipe is the positional argument
    # No ``_options``: coh.cli.main would print these flags for --print-config; run resolves them
    # itself and prints the recipe they pick and override.
    parser.set_defaults(_options=None, func=run)


def run(args: argparse.Namespace) -> int:
    from coh.options import options_from_args, to_yaml

    try:
        options = options_from_args(CompareOptions, args)
    except ValueError as e:  # a flag's value: a usage error, as argparse's own checks give
        args._options_parser.error(str(e))
    cfg = options.resolve()
    if args._print_config:
        print(to_yaml(cfg), end="")
        return 0
    if any(m.method == "dpo" for m in cfg.methods) or cfg.scorer.spec is None:
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            print("coh compare: the dpo method and the trained reward model need TRL: "
                  "pip install 'chain-of-hindsight[compare]'", file=sys.stderr)
            return 2
    from coh.compare.runner import run_compare

    run_compare(cfg, progress=options.progress and sys.stderr.isatty())
    return 0
