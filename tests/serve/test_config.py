"""`coh serve`'s options: one config dataclass (coh.serve.config.ServeConfig, the engine's
EngineConfig and the server's own), every option in --help with its help and default, a YAML recipe
under the flags, --print-config, the old --max-tokens spelling, the same checks from Python, and a
parser that imports no model code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from coh.cli import main
from coh.generation.config import EngineConfig
from coh.serve.config import ServeConfig
from tests.help_text import assert_lists_every_option, help_text


def test_help_lists_every_option_with_help_and_default(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, ["serve"])
    assert assert_lists_every_option(text, ServeConfig) == []
    assert "--config FILE" in text and "--print-config" in text
    assert "--max-tokens" not in text  # the old spelling works but is not advertised


def test_recipe_under_flags_and_the_printed_config_is_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "serve.yaml"
    recipe.write_text(yaml.safe_dump({"port": 9000, "max-batch-size": 4, "prompt_format": "coh",
                                      "served_model_name": "coh-tiny"}))
    assert main(["serve", "runs/x/final", "--config", str(recipe), "--port", "9001", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["model"], printed["port"], printed["max_batch_size"], printed["prompt_format"]) == \
        ("runs/x/final", 9001, 4, "coh")
    assert printed["served_model_name"] == "coh-tiny" and printed["max_new_tokens"] == 512
    assert printed == dataclasses.asdict(ServeConfig(**printed))


def test_old_max_tokens_spelling_still_works_with_a_note(capsys):
    assert main(["serve", "m", "--max-tokens", "7", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["max_new_tokens"] == 7
    assert "--max-tokens is deprecated" in err and "use --max-new-tokens" in err


def test_bad_values_are_usage_errors_or_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "m", "--max-new-tokens", "0"])
    assert stop.value.code == 2 and "--max-new-tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "m", "--port", "70000"])
    assert "a port from 0 to 65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "m", "--prompt-format", "xml"])
    assert "invalid choice" in capsys.readouterr().err
    recipe = tmp_path / "serve.yaml"
    recipe.write_text("max_body_mb: 0\n")
    assert main(["serve", "m", "--config", str(recipe), "--print-config"]) == 1
    assert "option max_body_mb: must be in (0, inf]" in capsys.readouterr().err
    recipe.write_text("queue_size: four\n")
    assert main(["serve", "m", "--config", str(recipe), "--print-config"]) == 1
    assert "option queue_size: expected a whole number" in capsys.readouterr().err


def test_python_callers_get_the_same_checks_and_the_engine_its_part():
    config = ServeConfig("m", max_batch_size=2, slice_steps=3, port=0)
    engine = config.engine_config()
    assert type(engine) is EngineConfig
    assert dataclasses.asdict(engine) == {f.name: getattr(config, f.name) for f in dataclasses.fields(EngineConfig)}
    for bad, message in (({"max_batch_size": 0}, "max_batch_size must be at least 1"),
                         ({"max_running_batches": 0}, "max_running_batches must be at least 1"),
                         ({"batch_wait_ms": -1.0}, "batch_wait_ms must be >= 0"),
                         ({"dtype": "int8"}, "option dtype: must be one of"),
                         ({"log_level": "loud"}, "option log_level: must be one of"),
                         ({"batch_wait_ms": float("nan")}, "option batch_wait_ms: must be a finite number")):
        with pytest.raises(ValueError, match=message):
            ServeConfig("m", **bad)
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        EngineConfig(max_batch_size=0)


def test_the_api_key_comes_from_the_flag_else_the_named_variable(monkeypatch):
    monkeypatch.delenv("COH_API_KEY", raising=False)
    assert ServeConfig("m").required_api_key() is None
    monkeypatch.setenv("COH_API_KEY", "from-env")
    assert ServeConfig("m").required_api_key() == "from-env"
    assert ServeConfig("m", api_key="flag").required_api_key() == "flag"
    monkeypatch.setenv("OTHER_KEY", "other")
    assert ServeConfig("m", api_key_env="OTHER_KEY").required_api_key() == "other"


def test_building_the_parser_imports_no_model_code():
    code = ("import sys; from coh.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'coh.generation.engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
