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
import dataclasses
import sys
import time
from pathlib import Path

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
        (sub, "harness", HarnessConfig, _run_harness, "lm-evaluation-harness, in process or against a server",
         "lm-evaluation-harness on a model in this process or on an OpenAI-compatible server, one command line "
         "for both."),
        (protos, "dialogue", DialogueConfig, _run_dialogue,
         "hh-rlhf pairs: chosen-vs-rejected likelihood, 'This dialogue is good/bad'",
         "On hh-rlhf pairs: how often the chosen reply gets a higher likelihood than the rejected one after the "
         "positive phrase (summed and per token), and the authors' protocol: log p(' good') - log p(' bad') after "
         "'The following is a dialogue: {dialogue}. This dialogue is'."),
        (protos, "summarization", SummarizationConfig, _run_summarization,
         "ROUGE-1/2/L of summaries generated after the positive phrase",
         "Generate a summary of each summarize_from_feedback post after the positive phrase; ROUGE-1/2/L F1 "
         "against the post's preferred summaries."),
        (protos, "controllability", ControllabilityConfig, _run_controllability,
         "replies under the positive and the negative phrase, scored",
         "Generate under the positive and under the negative phrase and score both with a scorer (a reward model "
         "or a Python function); reports mean scores and the win rate of positive over negative."),
        (protos, "pairwise", PairwiseConfig, _run_pairwise, "win rate of model A over model B under a scorer",
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


# -- what every protocol run does ---------------------------------------------------------------------------
def _output_dir(output_dir: str | None, name: str) -> Path:
    """The run's folder, made now, so that a path that cannot be a folder fails before any work."""
    from coh.data.io import check_output_dir

    out = Path(output_dir or f"coh-eval/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output-dir {out}: cannot make the folder ({e.strerror})") from None
    return out


def _progress(config) -> bool:
    return config.progress and sys.stderr.isatty()


def _start(config, name: str):
    """The checks before any reading: the device is here, the output folder can be made. Returns
    the folder and where unusable rows go (None with ``--strict``: the first one stops the run)."""
    from coh.data.errors import SetAside
    from coh.models import pick_device

    pick_device(config.device)  # a device that is not there fails now, not after reading and loading
    return _output_dir(config.output_dir, name), None if config.strict else SetAside()


def _load_model(config):
    from coh.models import load_for_inference

    return load_for_inference(config.model, config.device, trust_remote_code=config.trust_remote_code,
                              label=f"model '{config.model}'")


def _load_scorer(config):
    from coh.eval.scorers import load_scorer

    return load_scorer(config.scorer, config.device, config.scorer_batch_size, _progress(config),
                       config.trust_remote_code)


def _result(protocol: str, config, model: str, metrics: dict, ci95: dict, counts: dict, lm=None):
    """The run's result; its settings are the options (a recipe that reruns it) and the phrases used."""
    from coh.eval.report import EvalResult

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"}
    if lm is not None:
        settings["phrases"] = {"user": lm.phrases.user, "good": lm.phrases.good, "bad": lm.phrases.bad}
    return EvalResult(protocol, model, config.data, metrics, ci95, counts, settings)


def _finish(result, out: Path, set_aside=None) -> int:
    from coh.eval.report import INVALID_ROWS, write_result

    if set_aside:
        set_aside.write(out / INVALID_ROWS)
        result.notes.append(f"{set_aside.summary(INVALID_ROWS)} (--strict stops at such a row instead)")
    path = write_result(result, out)
    print(result.to_markdown(), end="")
    print(f"\nwritten to {path} and {path.with_suffix('.md')}")
    return 0


# -- the actions ----------------------------------------------------------------------------------------------
def _run_harness(config: HarnessConfig) -> int:
    from coh.eval.harness import run_harness

    out = _output_dir(config.output_dir, "harness")
    result, _ = run_harness(config, out)
    return _finish(result, out)


def _run_dialogue(config: DialogueConfig) -> int:
    from coh.eval.dialogue import eval_dialogue
    from coh.eval.examples import read_examples

    out, set_aside = _start(config, "dialogue")
    examples, counts = read_examples("dialogue", config.data, config.limit, set_aside)  # data first: it is cheap
    lm = _load_model(config)
    metrics, ci95 = eval_dialogue(lm, examples, config.batch_tokens, out, _progress(config))
    counts["pairs"] = len(examples)
    return _finish(_result("dialogue", config, config.model, metrics, ci95, counts, lm), out, set_aside)


def _run_summarization(config: SummarizationConfig) -> int:
    from coh.eval.examples import read_examples
    from coh.eval.summarization import eval_summarization

    out, set_aside = _start(config, "summarization")
    examples, counts = read_examples("summary", config.data, config.limit, set_aside)
    lm = _load_model(config)
    metrics, ci95, more = eval_summarization(lm, examples, config, config.feedback, config.task_phrase, out,
                                             _progress(config))
    return _finish(_result("summarization", config, config.model, metrics, ci95, {**counts, **more}, lm), out,
                   set_aside)


def _run_controllability(config: ControllabilityConfig) -> int:
    from coh.eval.controllability import eval_controllability
    from coh.eval.examples import read_examples

    out, set_aside = _start(config, "controllability")
    examples, counts = read_examples(config.kind, config.data, config.limit, set_aside)
    scorer = _load_scorer(config)  # before the model: a scorer that cannot load fails in seconds
    lm = _load_model(config)
    metrics, ci95, more = eval_controllability(lm, examples, scorer, config, out, _progress(config))
    return _finish(_result("controllability", config, config.model, metrics, ci95, {**counts, **more}, lm), out,
                   set_aside)


def _run_pairwise(config: PairwiseConfig) -> int:
    from coh.eval.examples import read_examples
    from coh.eval.pairwise import Side, eval_pairwise

    out, set_aside = _start(config, "pairwise")
    a, b = Side.open(config.a, set_aside), Side.open(config.b, set_aside)
    need_prompts = config.data or (a.replies is None and b.replies is None)
    examples, counts = read_examples(config.kind, config.data, config.limit, set_aside) if need_prompts else (None, {})
    scorer = _load_scorer(config)
    metrics, ci95, more = eval_pairwise(a, b, scorer, examples, config, config.feedback, config.device, out,
                                        _progress(config), config.limit, config.api_key_env, config.trust_remote_code)
    return _finish(_result("pairwise", config, f"{config.a} vs {config.b}", metrics, ci95, {**counts, **more}), out,
                   set_aside)


def _run_table(config: TableConfig, name: str = "table") -> int:
    from coh.eval.report import write_table

    md, png = write_table(config.runs, _output_dir(config.output_dir, name), config.labels, name)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"\nwritten to {md} and {png}")
    return 0


def _run_compare(config: TableConfig) -> int:
    print("coh: `coh eval compare` is deprecated and will be removed in the next release; use `coh eval table` "
          "(it writes table.md and table.png)", file=sys.stderr)
    return _run_table(config, "compare")
