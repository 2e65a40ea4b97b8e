"""Evaluate models: lm-evaluation-harness, and the Chain-of-Hindsight paper's own protocols.

  coh eval harness --model DIR              lm-eval in this process (default tasks: the original's
  coh eval harness --base-url URL/v1        alignment-tax check, zero-shot), or against any
                                            OpenAI-compatible server (coh serve, vLLM)
  coh eval feedback dialogue ...            hh-rlhf: chosen-vs-rejected likelihood, "This dialogue is good/bad"
  coh eval feedback summarization ...       ROUGE of summaries generated after the positive phrase
  coh eval feedback controllability ...     positive vs negative phrase, scored by a judge
  coh eval feedback pairwise ...            win rate of model A over model B under a judge
  coh eval compare RUN RUN ...              runs side by side: compare.md and compare.png

Every run writes results.json and results.md to --output-dir (default coh-eval/PROTOCOL-TIME)
and prints the table. Data are local files in each dataset's raw schema; without --data the
paper's dataset is read from the hub (test / validation split). Rows that cannot be evaluated
(an empty reply, a missing field) are skipped, counted in results.md and listed in
invalid_rows.jsonl; --strict stops at the first instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from coh.cli import non_negative_float, non_negative_int, positive_int, probability, seed_int

PROTOCOLS = ("dialogue", "summarization", "controllability", "pairwise")


def feedback_phrase(text: str) -> str:
    """good, bad, none or a phrase; not blank (a blank phrase would silently mean none)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected good, bad, none or a phrase, got a blank one")
    return text


def _output_dir(args: argparse.Namespace, name: str) -> Path:
    """The run's folder, made now, so that a path that cannot be a folder fails before any work."""
    from coh.data.io import check_output_dir

    out = Path(args.output_dir or f"coh-eval/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output-dir {out}: cannot make the folder ({e.strerror})") from None
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", "-o", help="where results.json and results.md go (default coh-eval/NAME-TIME)")
    p.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when there is one)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed for sampling and bootstrap intervals (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _harness_args(p: argparse.ArgumentParser) -> None:
    from coh.eval.harness import DEFAULT_TASKS

    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="model folder or hub id, evaluated in this process (lm-eval's hf model)")
    where.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 "
                                          "(lm-eval's local-completions)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"comma list of lm-eval tasks (default: {','.join(DEFAULT_TASKS)}: they need the hub)")
    p.add_argument("--include-path", help="folder of your own task YAMLs (local data files run offline)")
    p.add_argument("--num-fewshot", type=non_negative_int, default=0, help="few-shot examples (default 0: zero-shot)")
    p.add_argument("--limit", type=positive_int, help="at most this many examples per task (quick checks)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="in-process batch size (default 8)")
    p.add_argument("--tokenizer", help="with --base-url: the served model's tokenizer (folder or hub id), so "
                                       "requests go as token ids; default: the server's tokenizer endpoints")
    p.add_argument("--served-model", help="with --base-url: the model name the server expects "
                                          "(default: the first of its /v1/models)")
    p.add_argument("--api-key-env", help="with --base-url: environment variable holding the bearer token")
    p.add_argument("--num-concurrent", type=positive_int, default=1,
                   help="with --base-url: requests in flight (default 1)")
    p.add_argument("--max-length", type=positive_int, help="longest context in tokens (default: lm-eval's)")
    p.add_argument("--log-samples", action="store_true", help="also write every request and answer")
    _common(p)


def _model_args(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("--model", required=True, help="model folder (coh train's OUTPUT/final, or any HF causal LM)")
    p.add_argument("--data", help=data_help)
    p.add_argument("--limit", type=positive_int, help="at most this many examples")
    _strict_arg(p)


def _strict_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="stop at the first row that cannot be evaluated (an empty reply, a missing field), naming "
                        "its file, line and field; by default such rows are skipped, counted in results.md and "
                        "listed in invalid_rows.jsonl")


def _kind_arg(p: argparse.ArgumentParser, default: str) -> None:
    from coh.data.sources import CONVERTERS

    p.add_argument("--kind", default=default, choices=sorted(CONVERTERS),
                   help=f"schema of --data (default {default}); the prompts are its contexts")


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                   help=f"longest reply in tokens (default {max_new_tokens})")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 (default): greedy; above 0: sampling")
    p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling, in (0, 1] (default 1.0)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts generated together (default 8)")


def _judge_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", required=True,
                   help="a reward model (any HF sequence-classification model, hub id or folder) or a Python "
                        "function MODULE:FUNCTION / FILE.py:FUNCTION, f(prompt: str, reply: str) -> float")
    p.add_argument("--judge-batch-size", type=positive_int, default=8, help="replies per reward-model batch (default 8)")


def _protocol(protos, name: str, **kwargs) -> argparse.ArgumentParser:
    p = protos.add_parser(name, **kwargs)
    p.set_defaults(eval_func=_run_feedback)
    return p


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    p = sub.add_parser("harness", help="lm-evaluation-harness, in process or against a server",
                       description="lm-evaluation-harness on a model in this process or on an OpenAI-compatible "
                                   "server, one command line for both.")
    _harness_args(p)
    p.set_defaults(eval_func=_run_harness)

    fb = sub.add_parser("feedback", help="the paper's protocols: dialogue, summarization, controllability, pairwise",
                        description="The Chain-of-Hindsight paper's evaluations on a model in this process.")
    protos = fb.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    p = _protocol(protos, "dialogue", help="hh-rlhf pairs: chosen-vs-rejected likelihood, 'This dialogue is good/bad'",
                          description="On hh-rlhf pairs: how often the chosen reply gets a higher likelihood than "
                                      "the rejected one after the positive phrase (summed and per token), and the "
                                      "authors' protocol: log p(' good') - log p(' bad') after 'The following is a "
                                      "dialogue: {dialogue}. This dialogue is'.")
    _model_args(p, "hh-rlhf file (chosen/rejected transcripts; jsonl/json/parquet, gzip allowed); "
                   "default: Anthropic/hh-rlhf test from the hub")
    p.add_argument("--batch-tokens", type=positive_int, default=8192, help="tokens per packed scoring row (default 8192)")
    _common(p)

    p = _protocol(protos, "summarization", help="ROUGE-1/2/L of summaries generated after the positive phrase",
                          description="Generate a summary of each summarize_from_feedback post after the positive "
                                      "phrase; ROUGE-1/2/L F1 against the post's preferred summaries.")
    _model_args(p, "summarize_from_feedback comparisons file (info.post, summaries, choice); default: "
                   "openai/summarize_from_feedback validation from the hub")
    p.add_argument("--feedback", default="good", type=feedback_phrase,
                   help="phrase the summary follows: good (default), bad, none (an sft-mode model), or literal "
                        "text such as 'a good summary is:'")
    p.add_argument("--task-phrase", help="instruction before the post (default: the first training task phrase, "
                                         "'Write a summary of the following article: '); '' for none")
    _sampling_args(p, 64)
    _common(p)

    p = _protocol(protos, "controllability", help="replies under the positive and the negative phrase, judged",
                          description="Generate under the positive and under the negative phrase and score both "
                                      "with a judge; reports mean scores and the win rate of positive over negative.")
    _model_args(p, "prompts: a file of --kind's schema (default: Anthropic/hh-rlhf test from the hub)")
    _kind_arg(p, "dialogue")
    _judge_arg(p)
    _sampling_args(p, 128)
    _common(p)

    p = _protocol(protos, "pairwise", help="win rate of model A over model B under a judge",
                          description="Win rate of A over B (ties count half) under a judge, with a 95% "
                                      "percentile-bootstrap interval. A and B are model folders or OpenAI-compatible "
                                      "servers (they generate after --feedback), or generations.jsonl files of "
                                      "earlier runs.")
    p.add_argument("--a", required=True, help="model folder, server (http://HOST:PORT/v1) or generations file "
                                              "(id, context, reply per line)")
    p.add_argument("--b", required=True, help="model folder, server or generations file")
    p.add_argument("--api-key-env", help="environment variable holding the bearer token of server sides")
    p.add_argument("--data", help="prompts: a file of --kind's schema (default: the prompts of a generations "
                                  "file, else Anthropic/hh-rlhf test from the hub)")
    p.add_argument("--limit", type=positive_int, help="at most this many prompts")
    _strict_arg(p)
    _kind_arg(p, "dialogue")
    p.add_argument("--feedback", default="good", type=feedback_phrase,
                   help="phrase model and server sides generate after: good (default), bad, none, or literal text")
    _judge_arg(p)
    _sampling_args(p, 128)
    _common(p)

    p = sub.add_parser("compare", help="runs side by side: markdown table and PNG",
                       description="Put several runs side by side: compare.md (metrics as rows, runs as columns, "
                                   "95% intervals in brackets) and compare.png (one bar chart per metric).")
    p.add_argument("runs", nargs="+", help="run folders (or their results.json)")
    p.add_argument("--labels", help="comma list of column names (default: the run folders' names)")
    p.add_argument("--output-dir", "-o", help="where compare.md and compare.png go (default coh-eval/compare-TIME)")
    p.set_defaults(eval_func=_run_compare)


def run(args: argparse.Namespace) -> int:
    try:
        return args.eval_func(args)
    except OSError as e:  # FileNotFoundError included: a file named on the command line, or a disk that is full
        if isinstance(e, FileNotFoundError) and not e.filename:
            raise
        raise ValueError(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}") from e


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _finish(result, out: Path, set_aside=None) -> int:
    from coh.eval.report import INVALID_ROWS, write_result

    if set_aside:
        set_aside.write(out / INVALID_ROWS)
        result.notes.append(f"{set_aside.summary(INVALID_ROWS)} (--strict stops at such a row instead)")
    path = write_result(result, out)
    print(result.to_markdown(), end="")
    print(f"\nwritten to {path} and {path.with_suffix('.md')}")
    return 0


def _run_harness(args: argparse.Namespace) -> int:
    from coh.eval.harness import HarnessConfig, run_harness

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    cfg = HarnessConfig(model=args.model, base_url=args.base_url, served_model=args.served_model,
                        tokenizer=args.tokenizer, api_key_env=args.api_key_env, tasks=tasks, include_path=args.include_path,
                        num_fewshot=args.num_fewshot, limit=args.limit, batch_size=args.batch_size,
                        num_concurrent=args.num_concurrent, device=args.device, seed=args.seed,
                        max_length=args.max_length, log_samples=args.log_samples)
    out = _output_dir(args, "harness")
    result, _ = run_harness(cfg, out)
    return _finish(result, out)


def _run_feedback(args: argparse.Namespace) -> int:
    from coh.eval import feedback as fb
    from coh.eval.judges import load_judge
    from coh.eval.report import EvalResult
    from coh.judge.sources import SetAside
    from coh.models import load_for_inference, pick_device

    progress = _progress(args)
    pick_device(args.device)  # a device that is not there fails now, not after reading and loading
    out = _output_dir(args, args.protocol)
    kind = getattr(args, "kind", None) or fb.DEFAULT_KIND[args.protocol]
    set_aside = None if args.strict else SetAside()
    sampling = None
    if hasattr(args, "max_new_tokens"):
        sampling = fb.Sampling(args.max_new_tokens, args.temperature, args.top_p, args.batch_size, args.seed)
    hidden = ("func", "eval_func", "command", "eval_command", "no_progress")
    settings = {k: v for k, v in vars(args).items() if k not in hidden}
    # Data first (cheap), then the judge and the models: bad input fails before minutes of loading.
    if args.protocol == "pairwise":
        a, b = fb.Side.open(args.a, set_aside), fb.Side.open(args.b, set_aside)
        need_prompts = args.data or (a.replies is None and b.replies is None)
        examples, counts = fb.read_examples(kind, args.data, args.limit, set_aside) if need_prompts else (None, {})
    else:
        examples, counts = fb.read_examples(kind, args.data, args.limit, set_aside)
    judge = load_judge(args.judge, args.device, args.judge_batch_size, progress) if hasattr(args, "judge") else None
    if args.protocol == "pairwise":
        metrics, ci95, more = fb.eval_pairwise(a, b, judge, examples, sampling, args.feedback, args.device, out,
                                               progress, args.limit, args.api_key_env)
        result = EvalResult("pairwise", f"{args.a} vs {args.b}", args.data, metrics, ci95, {**counts, **more}, settings)
        return _finish(result, out, set_aside)
    lm = load_for_inference(args.model, args.device, label=f"model '{args.model}'")
    if args.protocol == "dialogue":
        metrics, ci95 = fb.eval_dialogue(lm, examples, args.batch_tokens, out, progress)
        more = {"pairs": len(examples)}
    elif args.protocol == "summarization":
        metrics, ci95, more = fb.eval_summarization(lm, examples, sampling, args.feedback, args.task_phrase, out,
                                                    progress)
    else:
        metrics, ci95, more = fb.eval_controllability(lm, examples, judge, sampling, out, progress)
    settings["phrases"] = {"user": lm.phrases.user, "good": lm.phrases.good, "bad": lm.phrases.bad}
    result = EvalResult(args.protocol, args.model, args.data, metrics, ci95, {**counts, **more}, settings)
    return _finish(result, out, set_aside)


def _run_compare(args: argparse.Namespace) -> int:
    from coh.eval.report import compare_runs

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    md, png = compare_runs(args.runs, _output_dir(args, "compare"), labels)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"\nwritten to {md} and {png}")
    return 0
