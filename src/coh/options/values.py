"""Values from recipes, KEY=VALUE arguments and flags, coerced to their declared types."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from coh.data.errors import describe


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
def hint_types(hint: Any) -> tuple:
    """The types a hint allows: ``int | None`` -> (int, NoneType); ``list[str]`` -> (list[str],)."""
    return (hint,) if typing.get_origin(hint) is list else typing.get_args(hint) or (hint,)


def base_type(hint: Any) -> Any:
    """bool, int, float, str or list for a field's hint (optional or not); else the hint itself."""
    for t in hint_types(hint):
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
    types = hint_types(hint)
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


def expected_words(hint: Any) -> str:
    t = base_type(hint)
    name = {bool: "true or false", float: "a number", int: "a whole number", str: "a string",
            list: "a list of strings"}.get(t, str(t))
    return name + (" or null" if type(None) in hint_types(hint) else "")


def kind_error(hint: Any, value: Any) -> str | None:
    """None when ``value`` holds the type ``hint`` declares (``int`` is fine for ``float``,
    ``bool`` for neither), else what was expected."""
    types = hint_types(hint)
    if value is None and type(None) in types:
        return None
    t = base_type(hint)
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
    return None if ok else expected_words(hint)
