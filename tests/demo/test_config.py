"""`coh demo`'s options (coh.demo.config.DemoConfig): --quick sizes under the flags, every option
in --help with its default, recipes and --print-config."""

from __future__ import annotations

import pytest
import yaml

from coh.cli import main
from coh.demo.config import QUICK_SIZES, SIZES, DemoConfig
from tests.help_text import assert_lists_every_option, help_text


def test_quick_sizes_unless_given():
    assert {k: getattr(DemoConfig(), k) for k in SIZES} == SIZES
    assert {k: getattr(DemoConfig(quick=True), k) for k in SIZES} == QUICK_SIZES
    assert DemoConfig(quick=True, steps=5).steps == 5 and DemoConfig(steps=5).rows == SIZES["rows"]
    with pytest.raises(ValueError, match=r"option steps: must be in \[1, inf\]"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match=r"option eval_fraction: must be in \(0, 1\)"):
        DemoConfig(eval_fraction=1.0)


def test_help_lists_every_option_with_its_default(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, ["demo"])
    assert assert_lists_every_option(text, DemoConfig) == []
    assert "--output-dir DIR, -o DIR" in text and "--no-progress" in text and "--print-config" in text


def test_recipe_under_flags_and_print_config(tmp_path, capsys):
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(yaml.safe_dump({"quick": True, "seed": 3, "steps": 7}))
    assert main(["demo", "--config", str(recipe), "--steps", "9", "-o", str(tmp_path / "d"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["seed"], printed["steps"], printed["rows"], printed["output_dir"]) == \
        (3, 9, QUICK_SIZES["rows"], str(tmp_path / "d"))
    assert DemoConfig(**printed) == DemoConfig(quick=True, seed=3, steps=9, output_dir=str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()  # --print-config runs nothing
