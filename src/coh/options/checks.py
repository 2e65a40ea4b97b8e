"""Checks of a built config's values: types, finiteness, ranges, choices."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from typing import Any

from coh.data.errors import describe
from coh.options.values import base_type, kind_error


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
        self.span = span_text(*bounds) if bounds is not None else None


def check_fields(config: Any, finite_except: Sequence[str] = ()) -> None:
    """Refuse, naming the option (an :class:`OptionError`): a value of the wrong type, a float that
    is not finite (infinite is fine for the fields declared ``allow_inf`` or named in
    ``finite_except``; NaN never is), a value outside the field's range, failing its ``check`` or not
    among its ``choices``."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        expected = kind_error(hints[f.name], value)
        if expected is not None:
            expected = f.metadata.get("expected") or expected  # the words the flag's error uses too
            if base_type(hints[f.name]) is str and isinstance(value, (int, float)):
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
    if value is not None and out_of_range(value, low, high, low_open, high_open):
        bounds = (low, high, low_open, high_open)
        raise OptionError(f"option {name}: must be in {span_text(*bounds)}, got {value}", "range", name, value, bounds)


def out_of_range(value: Any, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    return too_low or too_high


def span_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
