"""Evaluate models: lm-evaluation-harness, and the Chain-of-Hindsight paper's own protocols.

  coh eval harness --model DIR              lm-eval in this process (default tasks: the original's
  coh eval harness --base-url URL/v1        alignment-tax check, zero-shot), or against any
                                            OpenAI-compatible server (coh serve, vLLM)
  coh eval feedback dialogue ...            hh-rlhf: chosen-vs-rejected likelihood, "This dialogue is good/bad"
  coh eval feedback summarization ...       ROUGE of summaries generated after the positive phrase
  coh eval feedback controllability ...     positive vs negative phrase, replies ranked by a scorer
  coh eval feedback pairwise ...            win rate of model A over model B under a scorer
  coh eval compare RUN RUN ...              runs side by side: compare.md and compare.png

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
import functools

from coh.eval.config import (
    CompareConfig,
    ControllabilityConfig,
    DialogueConfig,
    HarnessConfig,
    PairwiseConfig,
    SummarizationConfig,
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
        (sub, "compare", CompareConfig, _run_compare, "runs side by side: markdown table and PNG",
         "Put several runs side by side: compare.md (metrics as rows, runs as columns, 95% intervals in brackets) "
         "and compare.png (one bar chart per metric)."),
    ]
    for parent, name, options, action, text, description in actions:
        p = parent.add_parser(name, help=text, description=description)
        add_options(p, options)
        p.set_defaults(func=_reporting_os_errors(action))


def _reporting_os_errors(func):
    """``func`` with an OS error on a named file (or a full disk) raised as ``ValueError``, which
    ``cli.main`` prints as ``coh eval: error: ...``."""

    @functools.wraps(func)
    def reported(config) -> int:
        try:
            return func(config)
        except OSError as e:  # FileNotFoundError included: a file named on the command line, or a full disk
            if isinstance(e, FileNotFoundError) and not e.filename:
                raise
            raise ValueError(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}") from e

    return reported


# -- the actions: coh.eval.run.evaluate does the work (it is coh.evaluate in Python); this prints it -----------
def _output_dir(output_dir: str | None, name: str):
    from coh.eval.run import output_dir as make_output_dir

    return make_output_dir(output_dir, name)


def _run_protocol(config) -> int:
    from coh.eval.report import RESULTS_JSON
    from coh.eval.run import evaluate

    result, out = evaluate(config)
    print(result.to_markdown(), end="")
    path = out / RESULTS_JSON
    print(f"\nwritten to {path} and {path.with_suffix('.md')}")
    return 0


def _run_compare(config: CompareConfig) -> int:
    from coh.eval.report import compare_runs

    md, png = compare_runs(config.runs, _output_dir(config.output_dir, "compare"), config.labels)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"\nwritten to {md} and {png}")
    return 0
