"""The options of ``coh judge prepare | serve | results | export``: one config dataclass per
action, its fields made with ``coh.options.option`` (help text, default, spellings), so
``coh.options`` builds the flags, the ``--config`` recipe and ``--print-config`` from them.
Each class checks itself in ``__post_init__``: the command line, a recipe and a Python caller
get the same checks.

Nothing heavy is imported here: ``coh --help`` builds these parsers.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, fields
from types import SimpleNamespace
from typing import NamedTuple

from coh.options import add_options, check_fields, check_range, option, read_recipe

DEFAULT_PORT = 8010
PASSWORD_ENV = "COH_JUDGE_PASSWORD"

# The one description of a system spec (parsed by ``coh.judge.systems.SystemSpec.parse``).
SYSTEM_SPEC_HELP = (
    "a system, twice or more: NAME:url=URL[,model=M][,feedback=good|bad|none|PHRASE][,api_key_env=VAR] "
    "(URL as for the OpenAI client, e.g. http://127.0.0.1:8000/v1; model: default the first one the server "
    "lists; feedback: the body field coh serve reads; api_key_env: the environment variable that holds the "
    "API key) or NAME:file=PATH (prepared outputs: rows with 'prompt' and 'output'). NAME: 1-64 letters, "
    "digits and _ . + -. In a recipe: a list of such strings")


class Bound(NamedTuple):
    """A numeric option's range, and the words for a value outside it."""

    low: float | None
    high: float | None
    low_open: bool
    expected: str


# One table of the numeric options' ranges, read by the configs' ``__post_init__`` and by the
# flags (``bounded_flags``), so a bad number on the command line is a usage error naming the
# flag (exit status 2) before any work, as it is from a recipe or Python (a ValueError).
BOUNDS = {
    "limit": Bound(1, None, False, "a whole number of at least 1"),
    "max_new_tokens": Bound(1, None, False, "a whole number of at least 1"),
    "concurrency": Bound(1, None, False, "a whole number of at least 1"),
    "max_votes": Bound(1, None, False, "a whole number of at least 1"),
    "temperature": Bound(0, None, False, "a finite number of at least 0"),
    "top_p": Bound(0, 1, True, "a number above 0 and at most 1"),
    "timeout": Bound(0, None, True, "a finite number above 0"),
    "seed": Bound(0, 2**32 - 1, False, f"a seed from 0 to {2**32 - 1}"),
    "port": Bound(1, 65535, False, "a port from 1 to 65535"),
}


def check_config(config) -> None:
    """The checks every judge config makes: types, finite numbers, choices, ``BOUNDS``."""
    check_fields(config)
    for f in fields(config):
        if f.name in BOUNDS:
            b = BOUNDS[f.name]
            check_range(config, f.name, b.low, b.high, low_open=b.low_open)


@dataclass
class JudgePrepareConfig:
    """``coh judge prepare``: every system's reply to every prompt, written as comparisons."""

    prompts: str = option(help="prompts: JSONL/JSON/parquet rows with 'prompt' (a string or chat messages) and "
                               "an optional 'id'; or KIND:FILE for a `coh data` source kind (e.g. "
                               "dialogue:hh-test.jsonl.gz), whose context becomes the prompt", metavar="FILE")
    # its flag is added by hand (`add_arguments`): a spec holds commas, which list flags split at
    system: list[str] = option(help=SYSTEM_SPEC_HELP, metavar="SPEC", cli=False)  # noqa: RUF009 (no default)
    output: str = option(help="comparisons file to write (.jsonl)", flags=("-o",), metavar="FILE")
    limit: int | None = option(None, "the first N usable prompts only (none: all)", metavar="N")
    strict: bool = option(False, "stop at the first prompt row that cannot be used (an empty reply of a dialogue "
                                 "row, a missing field), naming its file, line and field; else such rows are "
                                 "skipped and counted")
    max_new_tokens: int = option(256, "longest reply in tokens (sent as max_tokens)", deprecated=("--max-tokens",))
    temperature: float = option(0.7, "sampling temperature, at least 0")
    top_p: float = option(1.0, "nucleus sampling, in (0, 1]")
    seed: int = option(0, f"sampling seed sent with each request, 0 to {2**32 - 1}")
    concurrency: int = option(4, "requests in flight per system")
    timeout: float = option(300.0, "seconds per request")
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
    port: int = option(DEFAULT_PORT, "port, 1 to 65535")
    password: str | None = option(None, f"shared password for voters (none: ${PASSWORD_ENV} if set, else no "
                                        "password)")
    max_votes: int | None = option(None, "stop showing a comparison once it has this many votes (none: everyone "
                                         "judges all)", metavar="N")
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


# -- the flags -------------------------------------------------------------------------------------
# Two things coh.options does not do yet, kept here until it does: refuse (exit status 2) a number
# outside BOUNDS while parsing its flag, and refuse a missing required option as argparse does
# rather than with the dataclass's TypeError.
def add_config_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """``coh.options.add_options`` for ``cls``, with ``BOUNDS`` checked as each flag is parsed."""
    add_options(parser, cls)
    for action in parser._actions:  # argparse keeps no public list of a parser's arguments
        if action.dest in BOUNDS and action.type is not None:
            action.type = _bounded(action.type, action.dest, BOUNDS[action.dest])


def _bounded(parse, name: str, bound: Bound):
    def checked(text: str):
        try:
            value = parse(text)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{value} is not finite")
            check_range(SimpleNamespace(**{name: value}), name, bound.low, bound.high, low_open=bound.low_open)
        except (argparse.ArgumentTypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {bound.expected}, got {text!r}") from None
        return value

    checked.__name__ = parse.__name__
    return checked


class ConfigParser(argparse.ArgumentParser):
    """A parser for one judge action: as argparse's ``required=True`` would, it refuses a run
    whose required options (the config's fields without a default) are given neither as flags
    nor in the ``--config`` recipe."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        cls = getattr(parsed, "_options", None)
        if cls is None:
            return parsed, extras
        given = set(vars(parsed))
        if getattr(parsed, "_recipe", None):
            try:
                given |= set(read_recipe(parsed._recipe, cls))
            except ValueError:  # reported by cli.main, which reads the recipe again
                return parsed, extras
        missing = [f.name for f in fields(cls)
                   if f.default is MISSING and f.default_factory is MISSING and f.name not in given]
        if missing:
            flags: dict[str, str] = {}
            for a in self._actions:  # the first spelling of each: argparse's name for it
                if a.option_strings:
                    flags.setdefault(a.dest, "/".join(a.option_strings))
            self.error("the following arguments are required: " + ", ".join(flags.get(n, n) for n in missing))
        return parsed, extras
