"""Evaluate models: lm-evaluation-harness, and the Chain-of-Hindsight paper's own protocols.

  coh eval harness --model DIR              lm-eval in this process (default tasks: the original's
  coh eval harness --base-url URL/v1        alignment-tax check, zero-shot), or against any
                                            OpenAI-compatible server (coh serve, vLLM)
  coh eval feedback dialogue ...            hh-rlhf: chosen-vs-rejected likelihood, "This dialogue is good/bad"
  coh eval feedback summarization ...       ROUGE of summaries generated after the positive phrase
  coh eval feedback controllability ...     positive vs negative phrase, replies ranked by a scorer
  coh eval feedback pairwise ...            win rate of model A over model B under a scorer
  coh eval table RUN RUN ...                runs side by side: table.md and table.png

Every run writes results.json and results.md to --output-dir (default coh-eval/PROTOCOL-TIME)
and prints the table. Data are local files in each dataset's raw schema; without --data the
paper's dataset is read from the hub (test / validation split). Rows that cannot be evaluated
(an empty reply, a missing field) are skipped, counted in results.md and listed in
invalid_rows.jsonl; --strict stops at the first instead. Every action also takes its options
from a YAML recipe (--config FILE, keys as the option names; flags override it) and prints them
resolved with --print-config (options: coh.eval.config).
"""

from __future__ import annotations

import argparse
import sys

from coh.eval.config import (
    ControllabilityConfig,
    DialogueConfig,
    HarnessConfig,
    PairwiseConfig,
    SummarizationConfig,
    TableConfig,
)
from coh.options import add_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    fb = sub.add_parser("feedback", help="the paper's protocols: dialogue, summarization, controllability, pairwise",
                        description="The Chain-of-Hindsight paper's evaluations on a model in this process.")
    protos = fb.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    # (parent, name, options, action, help, description)
    actions = [
        (sub, "harness", HarnessConfig, _run_protocol, "lm-evaluation-harness, in process or against a server",
         "lm-evaluation-harness on a model in this process or on an OpenAI-compatible server, one command line "
         "for both."),
        (protos, "dialogue", DialogueConfig, _run_protocol,
         "hh-rlhf pairs: chosen-vs-rejected likelihood, 'This dialogue is good/bad'",
         "On hh-rlhf pairs: how often the chosen reply gets a higher likelihood than the rejected one after the "
         "positive phrase (summed and per token), and the authors' protocol: log p(' good') - log p(' bad') after "
         "'The following is a dialogue: {dialogue}. This dialogue is'."),
        (protos, "summarization", SummarizationConfig, _run_protocol,
         "ROUGE-1/2/L of summaries generated after the positive phrase",
         "Generate a summary of each summarize_from_feedback post after the positive phrase; ROUGE-1/2/L F1 "
         "against the post's preferred summaries."),
        (protos, "controllability", ControllabilityConfig, _run_protocol,
         "replies under the positive and the negative phrase, scored",
         "Generate under the positive and under the negative phrase and score both with a scorer (a reward model "
         "or a Python function); reports mean scores and the win rate of positive over negative."),
        (protos, "pairwise", PairwiseConfig, _run_protocol, "win rate of model A over model B under a scorer",
         "Win rate of A over B (ties count half) under a scorer, with a 95% percentile-bootstrap interval. A and "
         "B are model folders or OpenAI-compatible servers (they generate after --feedback), or generations.jsonl "
         "files of earlier runs."),
        (sub, "table", TableConfig, _run_table, "runs side by side: markdown table and PNG",
         "Put several runs side by side: table.md (metrics as rows, runs as columns, 95% intervals in brackets) "
         "and table.png (one bar chart per metric)."),
    ]
    for parent, name, options, action, text, description in actions:
        p = parent.add_parser(name, help=text, description=description)
        add_options(p, options)
        p.set_defaults(func=action)
    # The old name of `table`, for one release; not listed (no help=), it says so when run.
    p = sub.add_parser("compare", description="Deprecated spelling of `coh eval table` (removed in the next "
                                              "release); it writes compare.md and compare.png, as before.")
    add_options(p, TableConfig)
    p.set_defaults(func=_run_compare)


# -- the actions: coh.eval.run.evaluate does the work (it is coh.evaluate in Python); this prints it -----------
def _run_protocol(config) -> int:
    from coh.eval.report import RESULTS_JSON
    from coh.eval.run import evaluate

    result, out = evaluate(config)
    print(result.to_markdown(), end="")
    path = out / RESULTS_JSON
    print(f"\nwritten to {path} and {path.with_suffix('.md')}")
    return 0


def _run_table(config: TableConfig, name: str = "table") -> int:
    from coh.eval.report import write_table
    from coh.eval.run import output_dir

    md, png = write_table(config.runs, output_dir(config.output_dir, name), config.labels, name)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"\nwritten to {md} and {png}")
    return 0


def _run_compare(config: TableConfig) -> int:
    print("coh: `coh eval compare` is deprecated and will be removed in the next release; use `coh eval table` "
          "(it writes table.md and table.png)", file=sys.stderr)
    return _run_table(config, "compare")
