"""Config fields and the command-line flags built from them (see :mod:`coh.options`)."""

# argparse over dataclass fields rather than transformers' HfArgumentParser: that one has no
# positional fields, no recipe-under-flags merge and no deprecated spellings, and shows `--a_b`.

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Sequence
from typing import Any

from coh.options.checks import out_of_range, span_text
from coh.options.values import (
    base_type,
    coerce,
    expected_words,
    hint_types,
    key_value_options,
    kind_error,
    read_recipe,
)

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, help: str = "", *, factory: Any = None, flags: Sequence[str] = (),
           deprecated: Sequence[str] = (), choices: Sequence[Any] | None = None, metavar: str | None = None,
           positional: bool = False, cli: bool = True, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, split: bool = True, expected: str | None = None,
           check: Any = None, allow_inf: bool = False, flag_checks: bool = True) -> Any:
    """A config field. ``flags``: extra spellings (``-o``); ``deprecated``: old spellings, still
    taken with a note on stderr; ``choices``: the allowed values; ``low`` / ``high`` (open ends
    with ``low_open`` / ``high_open``): a number's range. Choices and ranges are checked for flags
    (a usage error, exit status 2) and for recipe and Python values alike (:func:`check_fields`).
    ``positional``: a command-line argument without a flag (``coh serve MODEL``); ``split`` False:
    a list option whose values may hold commas (each flag occurrence is one item); ``cli`` False:
    recipe and Python only (values with no sensible flag form, such as a list of mappings).
    ``expected``: the words for a good value in error messages ("a port from 1 to 65535"); ``check``:
    a predicate a good value passes (with ``expected`` saying what it wants), tested at the flag and
    in :func:`check_fields` like the ranges; ``allow_inf``: a float that may be infinite (never NaN),
    such as a clipping norm; ``flag_checks`` False: the flag only turns the text into the declared
    type (NaN and infinities too), leaving finiteness and ranges to the dataclass, for a stage that
    refuses those in its own words with exit status 1 (``coh data``). A field without a default is
    required: from a flag or the recipe."""
    meta = {"help": help, "flags": tuple(flags), "deprecated": tuple(deprecated),
            "choices": tuple(choices) if choices is not None else None, "metavar": metavar,
            "positional": positional, "cli": cli, "split": split, "expected": expected, "check": check,
            "allow_inf": allow_inf, "flag_checks": flag_checks,
            "range": (low, high, low_open, high_open) if low is not None or high is not None else None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# -- building the parser ------------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks (examples), options are wrapped as usual."""


def add_options(parser: argparse.ArgumentParser, cls: type, recipe: bool = True,
                key_value_overrides: bool = False, recipe_flags: Sequence[str] = ()) -> None:
    """Flags for every field of the dataclass ``cls`` (see the module docstring). Every flag's
    default is ``SUPPRESS``: only what the user typed reaches the namespace, so a recipe's value is
    not overwritten by a default. ``recipe`` False: no ``--config`` (the stage takes its recipe
    as a positional argument itself); ``recipe_flags``: other spellings of ``--config`` (``-c``).
    ``key_value_overrides``: also take the old ``KEY=VALUE`` arguments (values parsed as YAML);
    ``coh.cli.main`` prints a deprecation note for them (:func:`key_value_note`) once the command
    is done, so that an error stays the first thing on stderr."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        hint = hints[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": _help_text(meta.get("help", ""), _default_of(f))}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        choices = meta.get("choices")
        base = base_type(hint)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is list:
            kwargs["action"] = _list_action(meta.get("split", True), choices)
            kwargs.setdefault("metavar", "A,B" if meta.get("split", True) else "VALUE")
        else:
            kwargs["type"] = _parse_value(f.name, hint, meta.get("range"), meta.get("expected"), meta.get("check"),
                                          meta.get("allow_inf", False), meta.get("flag_checks", True))
            if choices is not None:
                kwargs["choices"] = choices
        if meta.get("positional"):
            kwargs.pop("dest")
            # Optional for argparse even when required: a recipe may give it, and options_from_args
            # reports it missing as a usage error otherwise.
            if base is list:  # the remaining arguments, each one item (coh eval compare RUN RUN ...)
                kwargs.update(action="extend", nargs="*")
            else:
                kwargs["nargs"] = "?"
            kwargs.setdefault("metavar", f.name.upper())
            parser.add_argument(f.name, **kwargs)
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", *meta.get("flags", ()), **kwargs)
        for old in meta.get("deprecated", ()):
            parser.add_argument(old, **{**kwargs, "help": argparse.SUPPRESS,
                                        "action": _deprecated(kwargs.get("action", "store"), old,
                                                              f"--{f.name.replace('_', '-')}")})
    if recipe:
        parser.add_argument("--config", *recipe_flags, dest="_recipe", metavar="FILE", default=None,
                            help="YAML recipe whose keys are these options (underscores or dashes); "
                                 "flags given here override it")
    parser.add_argument("--print-config", dest="_print_config", action="store_true",
                        help="print the resolved options as YAML and exit")
    if key_value_overrides:
        parser.add_argument("_overrides", nargs="*", metavar="KEY=VALUE",
                            help="deprecated spelling of --key value (values parsed as YAML)")
    parser.set_defaults(_options=cls, _options_parser=parser)


def _help_text(text: str, default: Any) -> str:
    if default is MISSING:
        return f"{text} (required)" if text else "(required)"
    shown = "none" if default is None else (",".join(map(str, default)) if isinstance(default, list) else default)
    if isinstance(default, bool):
        shown = "on" if default else "off"
    return f"{text} (default: {shown})".replace("%", "%%")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _list_action(split: bool, choices: Sequence[Any] | None) -> type[argparse.Action]:
    """``--x a,b`` or ``--x a --x b`` (``split``; else one item per occurrence, commas and all):
    the values of every occurrence, in order, each among ``choices`` (a usage error otherwise;
    argparse's own ``choices`` would test the whole ``a,b``)."""

    class ListAction(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            items = [v.strip() for v in str(values).split(",") if v.strip()] if split else [values]
            bad = [v for v in items if choices is not None and str(v) not in map(str, choices)]
            if bad:
                parser.error(f"argument {option_string}: invalid choice: {bad[0]!r} "
                             f"(choose from {', '.join(map(str, choices))})")
            setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), *items])

    return ListAction


def _deprecated(action: Any, old: str, new: str) -> type[argparse.Action]:
    base = {"store": argparse._StoreAction}.get(action, action) if isinstance(action, str) else action

    class Deprecated(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"coh: {old} is deprecated and will be removed in the next release; use {new}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return Deprecated


def _parse_value(name: str, hint: Any, bounds: tuple | None = None, expected: str | None = None, check: Any = None,
                 allow_inf: bool = False, checks: bool = True):
    """The argparse ``type`` of a field: text coerced to the declared type (``none`` for an
    optional field's null), finite (or infinite with ``allow_inf``, never NaN), within ``bounds``;
    ``checks`` False: the type only."""

    def parse(text: str) -> Any:
        if type(None) in hint_types(hint) and text.strip().lower() in ("none", "null"):
            return None
        value = coerce(name, hint, text, raw=text)
        wanted = expected or expected_words(hint) + (f" in {span_text(*bounds)}" if bounds is not None else "")
        if kind_error(hint, value) is not None:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        if not checks:
            return value
        if isinstance(value, float) and not math.isfinite(value) and not (allow_inf and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"expected {expected or 'a finite number'}, got {text!r}")
        if (bounds is not None and out_of_range(value, *bounds)) or (check is not None and not check(value)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = expected_words(hint)  # argparse names the type in its error message
    return parse


# -- resolving -------------------------------------------------------------------------------------------
def options_from_args(cls: type, args: argparse.Namespace, extra: dict | None = None) -> Any:
    """The config of ``cls``: its defaults, under ``args._recipe``'s YAML (if any), under
    ``extra`` (values gathered by the stage itself, e.g. deprecated ``KEY=VALUE`` arguments), under
    the flags present in ``args``. The dataclass validates itself as it is built."""
    values: dict[str, Any] = {}
    recipe = getattr(args, "_recipe", None)
    if recipe:
        reader = getattr(cls, "read_recipe", None)  # a stage that words its recipe errors itself (coh data)
        values.update(reader(recipe) if reader is not None else read_recipe(recipe, cls))
    values.update(extra or {})
    if getattr(args, "_overrides", None):
        values.update(key_value_options(cls, args._overrides))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    missing = [f for f in dataclasses.fields(cls) if f.name not in values
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        spell = ", ".join(f.name.upper() if f.metadata.get("positional") else
                          "/".join([f"--{f.name.replace('_', '-')}", *f.metadata.get("flags", ())]) for f in missing)
        message = f"the following arguments are required: {spell} (as flags or in the --config recipe)"
        parser = getattr(args, "_options_parser", None)
        if parser is not None:
            parser.error(message)  # a usage error, as argparse's own required=True gives
        raise ValueError(message)
    return cls(**values)
