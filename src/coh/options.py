"""One way to configure every stage: a config dataclass whose fields carry their help text.

A stage declares its options as a dataclass whose fields are made with :func:`option` (a
default, a help line, and optionally short or old spellings, choices, a positional slot). From it:

- :func:`add_options` builds the stage's flags, one ``--field-name`` per field, with the help and
  the default shown in ``--help``, plus ``--config FILE`` (a YAML recipe whose keys are the field
  names) and ``--print-config`` (print the resolved options as YAML and exit);
- :func:`options_from_args` resolves them: the dataclass defaults, under the recipe, under the
  flags given on the command line; then the dataclass checks itself (``__post_init__``, usually
  through :func:`check_fields` plus the stage's own rules);
- :func:`read_recipe` reads a recipe alone (``coh train --config``, ``coh compare RECIPE``).

Values are checked for their declared type wherever they come from; recipe errors name the file,
the line where YAML itself failed, and the key. Old spellings stay accepted for a release and print
a deprecation note naming the new one.
"""

# argparse over dataclass fields rather than transformers' HfArgumentParser: that one has no
# positional fields, no recipe-under-flags merge and no deprecated spellings, and shows `--a_b`.

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from coh.data.errors import describe

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
        base = _base_type(hint)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is list:
            kwargs["action"] = _ListAction if meta.get("split", True) else _AppendAction
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


class _ListAction(argparse.Action):
    """``--x a,b`` or ``--x a --x b``: the values of every occurrence, in order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v.strip() for v in str(values).split(",") if v.strip()]
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), *items])


class _AppendAction(argparse.Action):
    """``--x a --x b``: one item per occurrence, commas and all."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), values])


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
        if type(None) in _types(hint) and text.strip().lower() in ("none", "null"):
            return None
        value = coerce(name, hint, text, raw=text)
        wanted = expected or _expected(hint) + (f" in {_span(*bounds)}" if bounds is not None else "")
        if _kind_error(hint, value) is not None:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        if not checks:
            return value
        if isinstance(value, float) and not math.isfinite(value) and not (allow_inf and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"expected {expected or 'a finite number'}, got {text!r}")
        if (bounds is not None and _out_of_range(value, *bounds)) or (check is not None and not check(value)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = _expected(hint)  # argparse names the type in its error message
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


def read_recipe(path: str | Path, cls: type) -> dict[str, Any]:
    """The options of a YAML recipe for ``cls``, keyed by field name and coerced to the declared
    types. Raises ``ValueError`` naming the file (and the line where YAML failed, or the key)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"recipe {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"recipe {path}: cannot read it ({e})") from None
    loaded = parse_yaml(text, f"recipe {path}")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"recipe {path}: expected a mapping of option to value, got {describe(loaded)}")
    return coerce_options(cls, {str(k): v for k, v in loaded.items()}, f"recipe {path}")


def coerce_options(cls: type, values: dict[str, Any], where: str, raw: dict[str, str] | None = None) -> dict:
    """``values`` (names with dashes or underscores) checked against the fields of ``cls`` and
    coerced to their types; unknown names are a ``ValueError`` naming ``where`` and listing the
    known ones."""
    hints = typing.get_type_hints(cls)
    out = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(out) - set(hints))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {where}; expected some of {sorted(hints)}")
    raw = {k.replace("-", "_"): v for k, v in (raw or {}).items()}
    whole = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("split", True)}
    return {k: [v] if k in whole and isinstance(v, str) else coerce(k, hints[k], v, raw.get(k)) for k, v in out.items()}


def key_value_options(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """The old ``KEY=VALUE`` arguments as options of ``cls`` (values parsed as YAML, a string
    option keeps its text as typed). The deprecation note is :func:`key_value_note`'s."""
    values: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"override {item!r}: expected key=value (or the flag --{key.strip().replace('_', '-')} "
                             "VALUE)")
        key = key.strip()
        try:
            values[key] = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)}); quote it if it "
                             "is meant as a string") from None
        raw[key] = text
    return coerce_options(cls, values, "the KEY=VALUE arguments", raw)


def key_value_note(items: Sequence[str]) -> str:
    """The deprecation note for ``KEY=VALUE`` arguments, with the flags that say the same."""
    flags = []
    for item in items:
        key, eq, text = item.partition("=")
        name = "--" + key.strip().replace("_", "-")
        try:
            value = yaml.safe_load(text) if eq and text.strip() else text
        except yaml.YAMLError:
            value = text
        if isinstance(value, bool):
            flags.append(name if value else f"--no-{name[2:]}")
        elif isinstance(value, list):
            flags.append(f"{name} {','.join(map(str, value))}" if value else f"{name} ''")
        else:
            flags.append(f"{name} {'none' if value is None else text}")
    return ("coh: KEY=VALUE arguments are deprecated and will be removed in the next release; the same as flags: "
            + " ".join(flags))


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with an error naming ``where`` and the line and column at fault."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML: {_yaml_problem(e)}") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What PyYAML found wrong, and where (1-based line and column)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def to_yaml(config: Any) -> str:
    """The config as the YAML recipe that reproduces it (``--print-config``)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True)


# -- types ----------------------------------------------------------------------------------------------
def _types(hint: Any) -> tuple:
    """The types a hint allows: ``int | None`` -> (int, NoneType); ``list[str]`` -> (list[str],)."""
    return (hint,) if typing.get_origin(hint) is list else typing.get_args(hint) or (hint,)


def _base_type(hint: Any) -> Any:
    """bool, int, float, str or list for a field's hint (optional or not); else the hint itself."""
    for t in _types(hint):
        if t is type(None):
            continue
        return list if typing.get_origin(t) is list else t
    return hint


def coerce(key: str, hint: Any, value: Any, raw: str | None = None) -> Any:
    """Give a value its declared type where that is unambiguous: YAML reads ``1e-5`` as a string
    and ``1`` as an int; command-line text is a string. Anything else is left for
    :func:`check_fields` to refuse by name. ``raw``: the value as typed, kept for string options
    (``train_data=2024`` is a folder, not 2024)."""
    if value is None:
        return None
    types = _types(hint)
    if isinstance(value, bool):
        return value
    if bool in types and isinstance(value, str):
        low = value.strip().lower()
        return {"true": True, "yes": True, "on": True, "1": True,
                "false": False, "no": False, "off": False, "0": False}.get(low, value)
    if float in types and isinstance(value, (int, float, str)):
        try:
            return float(value)
        except ValueError:
            return value
    if int in types and isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if math.isfinite(number) and number == int(number) else number
    if str in types and isinstance(value, (int, float)) and raw is not None:
        return raw.strip()
    if list[str] in types and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _expected(hint: Any) -> str:
    t = _base_type(hint)
    name = {bool: "true or false", float: "a number", int: "a whole number", str: "a string",
            list: "a list of strings"}.get(t, str(t))
    return name + (" or null" if type(None) in _types(hint) else "")


def _kind_error(hint: Any, value: Any) -> str | None:
    """None when ``value`` holds the type ``hint`` declares (``int`` is fine for ``float``,
    ``bool`` for neither), else what was expected."""
    types = _types(hint)
    if value is None and type(None) in types:
        return None
    t = _base_type(hint)
    if t is bool:
        ok = isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is str:
        ok = isinstance(value, str)
    elif t is list:
        item = typing.get_args(next(x for x in types if x is not type(None)))
        ok = isinstance(value, list) and (not item or item[0] is not str or all(isinstance(v, str) for v in value))
    else:  # a type this check does not know (a mapping, a nested config): the stage checks it
        return None
    return None if ok else _expected(hint)


class OptionError(ValueError):
    """A value :func:`check_fields` or :func:`check_range` refused, read ``option NAME: ...``.
    ``problem``: ``type``, ``finite``, ``range``, ``check`` or ``choice``; ``name`` and ``value`` the option;
    what was allowed: ``bounds`` ``(low, high, low_open, high_open)`` and ``span`` (``[0, 1)``) for
    a range, ``choices`` for a choice. A stage whose messages were worded before coh.options
    existed words them from these (``coh.train.config``)."""

    def __init__(self, message: str, problem: str, name: str, value: Any, bounds: tuple | None = None,
                 choices: Sequence[Any] | None = None) -> None:
        super().__init__(message)
        self.problem, self.name, self.value, self.bounds, self.choices = problem, name, value, bounds, choices
        self.span = _span(*bounds) if bounds is not None else None


def check_fields(config: Any, finite_except: Sequence[str] = ()) -> None:
    """Refuse, naming the option (an :class:`OptionError`): a value of the wrong type, a float that
    is not finite (infinite is fine for the fields declared ``allow_inf`` or named in
    ``finite_except``; NaN never is), a value outside the field's range, failing its ``check`` or not
    among its ``choices``."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        expected = _kind_error(hints[f.name], value)
        if expected is not None:
            expected = f.metadata.get("expected") or expected  # the words the flag's error uses too
            if _base_type(hints[f.name]) is str and isinstance(value, (int, float)):
                expected += " (quote it in YAML)"
            raise OptionError(f"option {f.name}: expected {expected}, got {describe(value)}", "type", f.name, value)
        infinite_ok = f.metadata.get("allow_inf", False) or f.name in finite_except
        if isinstance(value, float) and not math.isfinite(value) and not (infinite_ok and math.isinf(value)):
            raise OptionError(f"option {f.name}: must be a finite number, got {value}", "finite", f.name, value)
        bounds = f.metadata.get("range")
        if bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            check_range(config, f.name, *bounds)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise OptionError(f"option {f.name}: expected {f.metadata.get('expected') or 'another value'}, "
                              f"got {describe(value)}", "check", f.name, value)
        choices = f.metadata.get("choices")
        if choices is not None and value is not None:
            bad = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
            if bad:
                raise OptionError(f"option {f.name}: must be one of {list(choices)}, got {bad[0]!r}", "choice",
                                  f.name, value, choices=choices)


def check_range(config: Any, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Refuse ``config.name`` outside [low, high] (open ends when asked); None passes."""
    value = getattr(config, name)
    if value is not None and _out_of_range(value, low, high, low_open, high_open):
        bounds = (low, high, low_open, high_open)
        raise OptionError(f"option {name}: must be in {_span(*bounds)}, got {value}", "range", name, value, bounds)


def _out_of_range(value: Any, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    return too_low or too_high


def _span(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"

