"""The options of every ``coh eval`` action: one config dataclass per action, its fields made with
``coh.options.option`` (help text, default, spellings), so ``coh.options`` builds the flags, the
``--config`` recipe and ``--print-config`` from them. Each class checks itself in
``__post_init__``: the command line, a recipe and a Python caller get the same checks.

Option groups shared by several actions are small dataclasses of their own (``RunOptions``,
``ModelOptions``, ``ScorerOptions``, ``Sampling``) that an action's class inherits, so each
option is declared once (a dataclass lists inherited fields from the last base to the first,
so ``--help`` shows the model first); an option whose help depends on the action (``--data``,
``--feedback``) is made by one function here.

Nothing heavy is imported here: ``coh --help`` builds these parsers.
"""

from __future__ import annotations

from dataclasses import dataclass

from coh.data.sources import CONVERTERS
from coh.options import check_fields, option

DEFAULT_TASKS = ("wsc", "piqa", "winogrande", "openbookqa", "logiqa")  # the original's alignment-tax check
SEED_MAX = 2**32 - 1  # what numpy, torch and servers all take
AT_LEAST_1 = {"low": 1, "expected": "a whole number of at least 1"}


# -- options whose help or default depends on the action -----------------------------------------------
def _seed() -> int:
    return option(0, f"seed of sampling and bootstrap intervals, 0 to {SEED_MAX}", low=0, high=SEED_MAX,
                  expected=f"a seed from 0 to {SEED_MAX}")


def _limit(what: str) -> int | None:
    return option(None, f"at most this many {what} (none: all)", metavar="N", **AT_LEAST_1)


def _strict() -> bool:
    return option(False, "stop at the first row that cannot be evaluated (an empty reply, a missing field), naming "
                         "its file, line and field; by default such rows are skipped, counted in results.md and "
                         "listed in invalid_rows.jsonl")


def _trust_remote_code() -> bool:
    return option(False, "run the model's own code from its folder or hub repository (models that need it "
                         "to load); the code runs on this machine, so only for models you trust")


def _data(text: str) -> str | None:
    return option(None, text, metavar="FILE")


def _kind() -> str:
    return option("dialogue", "`coh data` source kind of --data; the prompts are its contexts",
                  choices=sorted(CONVERTERS))


def _feedback(text: str) -> str:
    return option("good", text, check=lambda phrase: bool(phrase.strip()),
                  expected="good, bad, none or a phrase")  # a blank phrase would silently mean none


def _max_new_tokens(default: int) -> int:
    return option(default, "longest reply in tokens", **AT_LEAST_1)


def _api_key_env(text: str) -> str | None:
    return option(None, f"{text}: the environment variable holding the bearer token", metavar="VAR")


# -- option groups ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RunOptions:
    """Where a run writes and what it runs on (every action but ``table``)."""

    output_dir: str | None = option(None, "where results.json and results.md go (none: coh-eval/ACTION-TIME)",
                                    flags=("-o",), metavar="DIR")
    device: str | None = option(None, "cuda, cuda:1, cpu ... (none: cuda when there is one)")
    progress: bool = option(True, "progress bars on a terminal (--no-progress: none, lm-eval's included)")


@dataclass(kw_only=True)
class ModelOptions:
    """The model a protocol scores or generates with, in this process, and which examples."""

    model: str = option(help="model folder (coh train's OUTPUT/final, or any HF causal LM) or hub id")
    trust_remote_code: bool = _trust_remote_code()
    limit: int | None = _limit("examples")
    strict: bool = _strict()


@dataclass(kw_only=True)
class ScorerOptions:
    """What scores a reply: a reward model or a Python function (``coh.eval.scorers``)."""

    scorer: str = option(help="a reward model (any HF sequence-classification model, hub id or folder) or a "
                              "Python function MODULE:FUNCTION / FILE.py:FUNCTION, f(prompt: str, reply: str) -> "
                              "float", deprecated=("--judge",))
    scorer_batch_size: int = option(8, "replies per reward-model batch", deprecated=("--judge-batch-size",),
                                    **AT_LEAST_1)


@dataclass(kw_only=True)
class Sampling:
    """How replies are generated (``coh.eval.generations.generate``): ``temperature`` 0 is greedy;
    ``seed`` seeds sampling (and the bootstrap intervals of a run)."""

    max_new_tokens: int = _max_new_tokens(128)
    temperature: float = option(0.0, "0: greedy; above 0: sampling", low=0, expected="a finite number of at least 0")
    top_p: float = option(1.0, "nucleus sampling, in (0, 1]", low=0, high=1, low_open=True,
                          expected="a number above 0 and at most 1")
    batch_size: int = option(8, "prompts generated together", **AT_LEAST_1)
    seed: int = _seed()

    def __post_init__(self) -> None:
        check_fields(self)


# -- one class per action ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class HarnessConfig(RunOptions):
    """``coh eval harness``: lm-eval on a model in this process (``model``, a folder or hub id) or
    on an OpenAI-compatible server (``base_url``, ``http://HOST:PORT/v1``), exactly one of them.
    ``tokenizer``: for a server, the tokenizer its model uses; without it the server's
    tokenizer endpoints are used when it has them. ``limit``: examples per task."""

    model: str | None = option(None, "model folder or hub id, evaluated in this process (lm-eval's hf model); "
                                     "give this or --base-url")
    base_url: str | None = option(None, "an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (lm-eval's "
                                        "local-completions); give this or --model", metavar="URL")
    tasks: list[str] = option(factory=lambda: list(DEFAULT_TASKS),
                              help="lm-eval tasks, a comma list (the default ones need the hub)")
    include_path: str | None = option(None, "folder of your own task YAMLs (local data files run offline)",
                                      metavar="DIR")
    num_fewshot: int = option(0, "few-shot examples (0: zero-shot)", low=0, expected="a whole number of at least 0")
    limit: int | None = _limit("examples per task (quick checks)")
    batch_size: int = option(8, "in-process batch size", **AT_LEAST_1)
    tokenizer: str | None = option(None, "with --base-url: the served model's tokenizer (folder or hub id), so "
                                         "requests go as token ids (none: the server's tokenizer endpoints)")
    served_model: str | None = option(None, "with --base-url: the model name the server expects (none: the first "
                                            "of its /v1/models)")
    api_key_env: str | None = _api_key_env("with --base-url")
    num_concurrent: int = option(1, "with --base-url: requests in flight", **AT_LEAST_1)
    max_length: int | None = option(None, "longest context in tokens (none: lm-eval's)", metavar="N", **AT_LEAST_1)
    log_samples: bool = option(False, "also write every request and answer (lm_eval_samples.json)")
    trust_remote_code: bool = _trust_remote_code()
    seed: int = _seed()
    extra: dict = option(factory=dict, help="more model_args for lm-eval (recipe and Python only)", cli=False)

    def __post_init__(self) -> None:
        if isinstance(self.tasks, tuple):  # Python callers may give a tuple
            self.tasks = list(self.tasks)
        check_fields(self)
        if (self.model is None) == (self.base_url is None):
            raise ValueError("give exactly one of a model (--model) or a server (--base-url)")
        if not self.tasks:
            raise ValueError("no tasks given")


@dataclass(kw_only=True)
class DialogueConfig(RunOptions, ModelOptions):
    """``coh eval feedback dialogue``: preference accuracy on hh-rlhf pairs and the authors'
    'This dialogue is good/bad' protocol (``coh.eval.dialogue``)."""

    data: str | None = _data("hh-rlhf file (chosen/rejected transcripts; jsonl/json/parquet, gzip allowed); "
                             "none: Anthropic/hh-rlhf test from the hub")
    batch_tokens: int = option(8192, "tokens per packed scoring sequence (records share one without padding)", **AT_LEAST_1)
    seed: int = _seed()

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(kw_only=True)
class SummarizationConfig(RunOptions, Sampling, ModelOptions):
    """``coh eval feedback summarization``: ROUGE of summaries generated after a phrase
    (``coh.eval.summarization``)."""

    data: str | None = _data("summarize_from_feedback comparisons file (info.post, summaries, choice); none: "
                             "openai/summarize_from_feedback validation from the hub")
    feedback: str = _feedback("phrase the summary follows: good, bad, none (an sft-mode model), or literal text "
                              "such as 'a good summary is:'")
    task_phrase: str | None = option(None, "instruction before the post (none: the first training task phrase, "
                                           "'Write a summary of the following article: '); '' for no instruction")
    max_new_tokens: int = _max_new_tokens(64)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(kw_only=True)
class ControllabilityConfig(RunOptions, Sampling, ScorerOptions, ModelOptions):
    """``coh eval feedback controllability``: replies under the positive and the negative phrase,
    scored (``coh.eval.controllability``)."""

    data: str | None = _data("prompts: a file of --kind's schema (none: Anthropic/hh-rlhf test from the hub)")
    kind: str = _kind()

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(kw_only=True)
class PairwiseConfig(RunOptions, Sampling, ScorerOptions):
    """``coh eval feedback pairwise``: the win rate of A over B under a scorer (``coh.eval.pairwise``)."""

    a: str = option(help="model folder, server (http://HOST:PORT/v1) or generations file (id, context, reply per "
                         "line)")
    b: str = option(help="model folder, server or generations file")
    api_key_env: str | None = _api_key_env("server sides")
    data: str | None = _data("prompts: a file of --kind's schema (none: the prompts of a generations file, else "
                             "Anthropic/hh-rlhf test from the hub)")
    kind: str = _kind()
    limit: int | None = _limit("prompts")
    strict: bool = _strict()
    feedback: str = _feedback("phrase model and server sides generate after: good, bad, none, or literal text")
    trust_remote_code: bool = _trust_remote_code()

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(kw_only=True)
class TableConfig:
    """``coh eval table`` (old spelling ``coh eval compare``): several runs side by side
    (``coh.eval.report.write_table``)."""

    runs: list[str] = option(help="run folders (or their results.json)", positional=True, metavar="RUN")
    labels: list[str] | None = option(None, "column names, a comma list (none: the run folders' names)")
    output_dir: str | None = option(None, "where table.md and table.png go (none: coh-eval/table-TIME)",
                                    flags=("-o",), metavar="DIR")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.runs:
            raise ValueError("give at least one run folder")
