"""Compare alignment methods on the same base model, data, budget and held-out prompts.

  coh compare smoke                 a tiny model, seconds (the test suite runs it)
  coh compare cpu                   SmolLM2-135M-Instruct with LoRA on the hh-rlhf sample, on a CPU
  coh compare gpu                   a larger budget with full fine-tuning, for a GPU
  coh compare RECIPE.yaml           your own recipe (see configs/compare/)

Methods: coh, conditional-sft and sft (coh train's modes), dpo (TRL's DPOTrainer: pip install
'chain-of-hindsight[compare]') and the untrained base. Each is evaluated by the same protocols on
the same held-out rows: preference accuracy by likelihood, the paper's 'This dialogue is'
protocol, judged replies (win rates against the base and SFT), controllability and the loss on
held-out plain text. Writes report.md, results.json and plots into the output folder; a rerun
reuses every finished stage.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe YAML file, or a preset name: smoke, cpu, gpu, cpu-knobs")
    parser.add_argument("--output-dir", "-o", help="where everything goes (default: the recipe's output_dir)")
    parser.add_argument("--data", help="raw hh-rlhf rows (default: the recipe's data)")
    parser.add_argument("--seeds", help="comma list of training seeds (default: the recipe's)")
    parser.add_argument("--device", help="cuda, cpu ... for evaluation (default: cuda when there is one)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import yaml

    from coh.compare.config import CompareConfig

    overrides: dict = {}
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.data:
        overrides["data"] = args.data
    if args.seeds:
        overrides["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.device:
        overrides["device"] = args.device
    cfg = CompareConfig.load(args.recipe, overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if any(m.method == "dpo" for m in cfg.methods) or cfg.judge.spec is None:
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            print("coh compare: the dpo method and the trained judge need TRL: pip install 'chain-of-hindsight[compare]'",
                  file=sys.stderr)
            return 2
    from coh.compare.runner import run_compare

    run_compare(cfg, progress=not args.no_progress and sys.stderr.isatty())
    return 0
