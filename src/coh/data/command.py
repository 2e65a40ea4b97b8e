"""Raw feedback into Chain-of-Hindsight records, and a look at what came out.

  coh data build -s dialogue -s summary -s webgpt --feedback p,n,pn,np -o runs/coh-data
  coh data build -s dialogue:train=hh/train.jsonl.gz,eval=hh/test.jsonl.gz -s preference:prefs.parquet -o runs/mine
  coh data build -s preference:prefs.jsonl --tokenizer Qwen/Qwen2.5-0.5B -o runs/mine
  coh data build --config configs/data/hh-sample.yaml      # a YAML recipe; flags override its keys
  coh data inspect runs/mine/train.jsonl --tokenizer Qwen/Qwen2.5-0.5B

Every action also takes its options from a YAML recipe (--config FILE, keys as the option names)
and prints them resolved with --print-config (options: coh.data.config).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coh.data.config import DataBuildConfig, DataInspectConfig
from coh.options import add_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = sub.add_parser("build", help="build records from feedback datasets",
                       description="Build Chain-of-Hindsight records from feedback datasets.")
    add_options(p, DataBuildConfig)
    p.set_defaults(func=run_build)
    p = sub.add_parser("inspect", help="counts, one rendered record, lengths and problems of a records file",
                       description="Counts by source and feedback type, one record with its loss spans "
                                   "marked, a length histogram and the problems found. Exit status 0 when "
                                   "no problem was found, 1 otherwise.")
    add_options(p, DataInspectConfig)
    p.set_defaults(func=run_inspect)


def run_build(config: DataBuildConfig) -> int:
    from coh.data.build import build

    cfg = config.build_config()
    summary = build(cfg)
    print_build_summary(summary, cfg.output_dir)
    return 0


def run_inspect(config: DataInspectConfig) -> int:
    from coh.data.inspect import run_inspect as inspect_file

    return inspect_file(config.file, tokenizer=config.tokenizer, record_index=config.record,
                        max_length=config.max_length)


def print_build_summary(summary: dict, output_dir: str) -> None:
    """The build's counts as a table on stdout: rows, examples, skipped and invalid rows per source,
    records per split, tokens when tokenized."""
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
