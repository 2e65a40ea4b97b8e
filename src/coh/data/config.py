"""The options of ``coh data build`` and ``coh data inspect``: one config dataclass per action, its
fields made with ``coh.options.option`` (help text, default, spellings), so ``coh.options`` builds
the flags, the ``--config`` recipe and ``--print-config`` from them. Each class checks itself in
``__post_init__``: the command line, a recipe and a Python caller get the same checks.

``DataBuildConfig`` holds the options as typed (source specs as text); ``build_config()`` turns
them into the ``coh.data.build.BuildConfig`` that ``coh.data.build.build`` takes (parsed
``SourceSpec`` s, a ``RenderSpec``). Bad values are refused in the words ``coh data`` has used
since before coh.options (docs/reliability.md), with exit status 1.

Nothing heavy is imported here: ``coh --help`` builds these parsers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coh.data.render import SHARED_PREFIX_MODES
from coh.data.tokenize import CHAT_TEMPLATE_MODES
from coh.options import OptionError, check_fields, coerce_options, option

OUTPUT_FORMATS = ("coh", "fields")  # ours (segments), or the original code's "fields" records

SOURCE_HELP = ("a dataset, repeatable: KIND (paper sets by hub name), KIND:FILE, KIND:train=FILE,eval=FILE, "
               "or KIND:hub=NAME[@CONFIG]; add name=LABEL or limit=N to the comma list. KIND is one of "
               "dialogue, webgpt, summary, preference, unpaired, rated. In a recipe: a list of such strings or "
               "of mappings (kind, files, hub, config, name, limit)")


def _in_data_words(e: OptionError) -> ValueError:
    """A value ``check_fields`` refused, in the words ``coh data`` used before coh.options."""
    return ValueError(str(e).replace(f"option {e.name}:", f"option '{e.name}':", 1))


@dataclass
class DataBuildConfig:
    """``coh data build``: raw feedback datasets into Chain-of-Hindsight records."""

    source: list[str | dict] = option(help=SOURCE_HELP, flags=("-s",), metavar="SPEC", split=False)
    output_dir: str = option(help="where train.jsonl, eval.jsonl and summary.json go (moved into place at the "
                                  "end: a failed build leaves the folder as it was)", flags=("-o",), metavar="DIR")
    feedback: list[str] = option(help="feedback types, comma list of p, n, pn, np, aux, chain",
                                 factory=lambda: ["p", "n", "pn", "np"])
    shared_prefix: str = option("context", "hh-rlhf turns shared by chosen and rejected: context without loss, or "
                                           "the original's behaviour (trained under both phrases)",
                                choices=SHARED_PREFIX_MODES)
    resample: bool = option(False, "one record per example, phrase pair and order drawn afresh each epoch")
    phrases: str | None = option(None, "YAML or JSON file of feedback phrases per source", metavar="FILE")
    seed: int = option(0, "seed for every random choice")
    eval_fraction: float = option(0.05, "held-out share for datasets without an eval split, from 0 up to (not "
                                        "including) 1", flag_checks=False)
    skip_invalid: bool = option(False, "set invalid rows aside in rejects.jsonl (lines that are not JSON included, "
                                       "kept byte for byte) and go on, instead of stopping at the first; a file "
                                       "that cannot be read at all still stops the build")
    num_proc: int | None = option(None, "worker processes that convert, render and tokenize rows; none: the CPU "
                                        "count, at most 8", metavar="N")
    tokenizer: str | None = option(None, "tokenizer (path or hub id): also write token ids and loss masks")
    chat_template: str = option("auto", "tokenize through the tokenizer's chat template: auto for chat data "
                                        "(message lists), always, or never", choices=CHAT_TEMPLATE_MODES)
    output_format: str = option("coh", "record format: ours (segments) or the original's 'fields' format",
                                flags=("--format",), choices=OUTPUT_FORMATS)
    progress: bool = option(True, "progress bars (on a terminal)")

    def __post_init__(self) -> None:
        try:
            check_fields(self)
        except OptionError as e:
            if e.problem != "finite":  # a NaN or infinite eval_fraction: BuildConfig words it
                raise _in_data_words(e) from None
        self.build_config()  # every source spec, the feedback types and the build's own checks, now

    def build_config(self):
        """The ``coh.data.build.BuildConfig`` these options describe."""
        from coh.data.build import BuildConfig, SourceSpec
        from coh.data.render import RenderSpec

        if not self.source:
            raise ValueError("give at least one --source (see --help)")
        render = RenderSpec(feedback=tuple(self.feedback), shared_prefix=self.shared_prefix, resample=self.resample)
        return BuildConfig(
            sources=[SourceSpec.from_config(s, f"source {i + 1}") for i, s in enumerate(self.source)],
            output_dir=self.output_dir, render=render, phrases_file=self.phrases, seed=self.seed,
            eval_fraction=self.eval_fraction, skip_invalid=self.skip_invalid,
            num_proc=min(8, os.cpu_count() or 1) if self.num_proc is None else self.num_proc,
            progress=self.progress and sys.stderr.isatty(), tokenizer=self.tokenizer,
            chat_template=self.chat_template, output_format=self.output_format)

    @classmethod
    def read_recipe(cls, path: str | Path) -> dict[str, Any]:
        """A ``coh data build`` YAML recipe's options (see ``coh.options.options_from_args``), its
        errors in the words ``coh data`` has used: ``FILE, line N: not valid YAML``, ``FILE: cannot
        read the recipe``. The old key ``no_progress`` is still taken, with a deprecation note."""
        import yaml

        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read the recipe: {e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
            raise ValueError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of option names to values, got {type(loaded).__name__}")
        values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        if "no_progress" in values:
            print(f"coh: {path}: no_progress is deprecated and will be removed in the next release; use "
                  "progress: false", file=sys.stderr)
            old = values.pop("no_progress")
            values.setdefault("progress", not old if isinstance(old, bool) else old)
        return coerce_options(cls, values, f"recipe {path}")


@dataclass
class DataInspectConfig:
    """``coh data inspect``: counts, one rendered record, lengths and problems of a records file."""

    file: str = option(help="records (ours or the original's 'fields' JSONL)", positional=True)
    tokenizer: str | None = option(None, "tokenizer (path or hub id): lengths in tokens")
    record: int = option(0, "index of the record to render, 0 or more")
    max_length: int | None = option(None, "report records longer than this (tokens with --tokenizer, else "
                                          "characters), at least 1", metavar="N")

    def __post_init__(self) -> None:
        try:
            check_fields(self)
        except OptionError as e:
            raise _in_data_words(e) from None
        if self.record < 0:
            raise ValueError(f"--record must be 0 or more, got {self.record}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"--max-length must be at least 1, got {self.max_length}")
