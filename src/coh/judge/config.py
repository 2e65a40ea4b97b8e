"""The options of ``coh judge prepare | serve | results | export``: one config dataclass per
action, its fields made with ``coh.options.option`` (help text, default, spellings), so
``coh.options`` builds the flags, the ``--config`` recipe and ``--print-config`` from them.
Each class checks itself in ``__post_init__``: the command line, a recipe and a Python caller
get the same checks.

Nothing heavy is imported here: ``coh --help`` builds these parsers.
"""

from __future__ import annotations

from dataclasses import dataclass

from coh.options import check_fields, option

DEFAULT_PORT = 8010
PASSWORD_ENV = "COH_JUDGE_PASSWORD"

# The one description of a system spec (parsed by ``coh.judge.systems.SystemSpec.parse``).
SYSTEM_SPEC_HELP = (
    "a system, twice or more: NAME:url=URL[,model=M][,feedback=good|bad|none|PHRASE][,api_key_env=VAR] "
    "(URL as for the OpenAI client, e.g. http://127.0.0.1:8000/v1; model: default the first one the server "
    "lists; feedback: the body field coh serve reads; api_key_env: the environment variable that holds the "
    "API key) or NAME:file=PATH (prepared outputs: rows with 'prompt' and 'output'). NAME: 1-64 letters, "
    "digits and _ . + -. In a recipe: a list of such strings")


def check_config(config) -> None:
    """The checks every judge config makes: types, finite numbers, choices and ranges."""
    check_fields(config)


AT_LEAST_1 = {"low": 1, "expected": "a whole number of at least 1"}


@dataclass
class JudgePrepareConfig:
    """``coh judge prepare``: every system's reply to every prompt, written as comparisons."""

    prompts: str = option(help="prompts: JSONL/JSON/parquet rows with 'prompt' (a string or chat messages) and "
                               "an optional 'id'; or KIND:FILE for a `coh data` source kind (e.g. "
                               "dialogue:hh-test.jsonl.gz), whose context becomes the prompt", metavar="FILE")
    system: list[str] = option(help=SYSTEM_SPEC_HELP, metavar="SPEC", split=False)  # a spec holds commas
    output: str = option(help="comparisons file to write (.jsonl)", flags=("-o",), metavar="FILE")
    limit: int | None = option(None, "the first N usable prompts only (none: all)", metavar="N", **AT_LEAST_1)
    strict: bool = option(False, "stop at the first prompt row that cannot be used (an empty reply of a dialogue "
                                 "row, a missing field), naming its file, line and field; else such rows are "
                                 "skipped and counted")
    max_new_tokens: int = option(256, "longest reply in tokens (sent as max_tokens)", deprecated=("--max-tokens",),
                                 **AT_LEAST_1)
    temperature: float = option(0.7, "sampling temperature, at least 0", low=0,
                                expected="a finite number of at least 0")
    top_p: float = option(1.0, "nucleus sampling, in (0, 1]", low=0, high=1, low_open=True,
                          expected="a number above 0 and at most 1")
    seed: int = option(0, f"sampling seed sent with each request, 0 to {2**32 - 1}", low=0, high=2**32 - 1,
                       expected=f"a seed from 0 to {2**32 - 1}")
    concurrency: int = option(4, "requests in flight per system", **AT_LEAST_1)
    timeout: float = option(300.0, "seconds per request", low=0, low_open=True, expected="a finite number above 0")
    progress: bool = option(True, "a progress bar on a terminal")

    def __post_init__(self) -> None:
        check_config(self)
        self.systems()  # each spec's syntax, before any request

    def systems(self):
        """The parsed ``system`` specs (``coh.judge.systems.SystemSpec``)."""
        from coh.judge.systems import SystemSpec

        return [SystemSpec.parse(s) for s in self.system]


@dataclass
class JudgeServeConfig:
    """``coh judge serve``: the voting page, votes into an SQLite database."""

    comparisons: str | None = option(None, "comparisons file (from `coh judge prepare`, or written by hand); may be "
                                           "left out when --db already holds them", positional=True)
    db: str | None = option(None, "votes database (none: the comparisons file with suffix .sqlite)")
    host: str = option("127.0.0.1", "address to bind (127.0.0.1: this machine only)")
    port: int = option(DEFAULT_PORT, "port, 1 to 65535", low=1, high=65535, expected="a port from 1 to 65535")
    password: str | None = option(None, f"shared password for voters (none: ${PASSWORD_ENV} if set, else no "
                                        "password)")
    max_votes: int | None = option(None, "stop showing a comparison once it has this many votes (none: everyone "
                                         "judges all)", metavar="N", **AT_LEAST_1)
    hide_results: bool = option(False, "no results page while the study runs (so voters are not swayed)")

    def __post_init__(self) -> None:
        check_config(self)
        if not self.comparisons and not self.db:
            raise ValueError("give a comparisons file (from `coh judge prepare`) or --db with comparisons in it")


@dataclass
class JudgeResultsConfig:
    """``coh judge results``: win / tie / loss per pair of systems, with intervals and a plot."""

    db: str = option(help="votes database", positional=True)
    plot: str | None = option(None, "write the plot here (PNG)", metavar="PNG")
    json: bool = option(False, "print JSON instead of the table")

    def __post_init__(self) -> None:
        check_config(self)


@dataclass
class JudgeExportConfig:
    """``coh judge export``: decisive votes as preference rows for ``coh data build``."""

    db: str = option(help="votes database", positional=True)
    output: str = option(help="preference file to write (.jsonl)", flags=("-o",), metavar="FILE")
    aggregate: str = option("vote", "one row per decisive vote, or one per comparison by majority",
                            choices=("vote", "majority"))

    def __post_init__(self) -> None:
        check_config(self)
