"""`coh judge`'s options: one config dataclass per action (coh.judge.config), every option in
--help with its default, a YAML recipe under the flags, the same checks from Python."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from coh.cli import main
from coh.judge.config import JudgeExportConfig, JudgePrepareConfig, JudgeResultsConfig, JudgeServeConfig
from tests.help_text import assert_lists_every_option, help_text

ACTIONS = {"prepare": JudgePrepareConfig, "serve": JudgeServeConfig, "results": JudgeResultsConfig,
           "export": JudgeExportConfig}
SYSTEMS = ["a:url=http://127.0.0.1:9/v1", "b:url=http://127.0.0.1:9/v1,feedback=bad"]


def _help(capsys, monkeypatch, action: str) -> str:
    return help_text(capsys, monkeypatch, ["judge", action])


@pytest.mark.parametrize("action", ACTIONS)
def test_help_lists_every_option_with_help_and_default(action, capsys, monkeypatch):
    text = _help(capsys, monkeypatch, action)
    assert assert_lists_every_option(text, ACTIONS[action]) == []
    assert "--config FILE" in text and "--print-config" in text


def test_recipe_under_flags(tmp_path, capsys):
    recipe = tmp_path / "prepare.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": "p.jsonl", "system": SYSTEMS, "output": "c.jsonl",
                                      "temperature": 0.2, "top-p": 0.9}))
    assert main(["judge", "prepare", "--config", str(recipe), "--temperature", "0.5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["system"] == SYSTEMS  # commas inside a spec are not list separators
    assert (printed["prompts"], printed["output"], printed["temperature"], printed["top_p"]) == \
        ("p.jsonl", "c.jsonl", 0.5, 0.9)
    assert printed == dataclasses.asdict(JudgePrepareConfig(**printed))  # the printed config is a recipe


def test_required_options_from_neither_flags_nor_recipe(tmp_path, capsys):
    recipe = tmp_path / "prepare.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": "p.jsonl", "system": SYSTEMS}))
    with pytest.raises(SystemExit) as stop:
        main(["judge", "prepare", "--config", str(recipe)])
    assert stop.value.code == 2
    assert "the following arguments are required: --output/-o" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["judge", "prepare", "-o", "c.jsonl"])
    assert "required: --prompts, --system" in capsys.readouterr().err


def test_recipe_values_are_checked_naming_the_option(tmp_path, capsys):
    recipe = tmp_path / "serve.yaml"
    recipe.write_text("port: 70000\n")
    assert main(["judge", "serve", "c.jsonl", "--config", str(recipe)]) == 1
    assert "option port: must be in [1, 65535], got 70000" in capsys.readouterr().err


def test_old_max_tokens_spelling_still_works_with_a_note(capsys):
    argv = ["judge", "prepare", "--prompts", "p.jsonl", "-o", "c.jsonl", "--max-tokens", "7", "--print-config"]
    assert main([*argv, *(a for s in SYSTEMS for a in ("--system", s))]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["max_new_tokens"] == 7
    assert "--max-tokens is deprecated" in err and "use --max-new-tokens" in err


def test_python_callers_get_the_same_checks():
    good = {"prompts": "p.jsonl", "system": SYSTEMS, "output": "c.jsonl"}
    assert JudgePrepareConfig(**good).systems()[1].feedback == "bad"
    for bad, message in (({"top_p": 1.5}, "option top_p: must be in (0, 1]"),
                         ({"seed": 2**32}, "option seed: must be in [0, 4294967295]"),
                         ({"temperature": float("nan")}, "option temperature: must be a finite number"),
                         ({"limit": 0}, "option limit: must be in [1, inf]"),
                         ({"system": ["a"]}, "expected NAME:url="),
                         ({"system": "a:url=http://x"}, "option system: expected a list of strings")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            JudgePrepareConfig(**{**good, **bad})
    with pytest.raises(ValueError, match="give a comparisons file"):
        JudgeServeConfig()
    with pytest.raises(ValueError, match="option aggregate: must be one of"):
        JudgeExportConfig("v.sqlite", "p.jsonl", aggregate="mean")
