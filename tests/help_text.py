"""What every stage's ``--help`` must show, checked one way for all (tests/*/test_config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from coh.cli import main


def help_text(capsys, monkeypatch, argv: list[str]) -> str:
    """``coh ARGV --help`` with its whitespace folded (argparse wraps to the terminal: a wide one)."""
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def assert_lists_every_option(text: str, cls: type) -> list[str]:
    """Every command-line field of ``cls`` is in ``text``: its flag (a positional by its metavar or
    NAME), its help and, after the help, "(required)" or its "(default: ...)". Returns the names of
    the recipe-only fields (``cli=False``), which have no flag."""
    recipe_only = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta["cli"]:
            recipe_only.append(f.name)
            continue
        shown = (meta["metavar"] or f.name.upper()) if meta["positional"] else "--" + f.name.replace("_", "-")
        assert shown in text, f"{cls.__name__}: {f.name}"
        words = " ".join(meta["help"].split())
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        assert words + (" (required)" if required else " (default: ") in text, f"{cls.__name__}: help of {f.name}"
    return recipe_only
