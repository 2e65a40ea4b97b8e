"""`coh convert`'s options: one config dataclass per action (coh.convert.config), every option in
--help with its default, a YAML recipe under the flags, the same checks from Python."""

from __future__ import annotations

import pytest
import yaml

from coh.cli import main
from coh.convert.command import ACTIONS
from coh.convert.config import EasyLMConvertConfig, MetaLlamaConvertConfig, ShardedConvertConfig
from tests.help_text import assert_lists_every_option, help_text


@pytest.mark.parametrize("action", ACTIONS)
def test_help_lists_every_option_with_help_and_default(action, capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, ["convert", action])
    assert assert_lists_every_option(text, ACTIONS[action][0]) == []
    assert "--print-config" in text
    assert ("--config FILE" in text) == (action != "easylm")  # easylm's --config is the model's config


def test_recipe_under_flags(tmp_path, capsys):
    recipe = tmp_path / "llama.yaml"
    recipe.write_text("dtype: bfloat16\nmax-shard-size: 2GB\ncheck: true\n")
    assert main(["convert", "llama", "meta", "hf", "--config", str(recipe), "--max-shard-size", "500MB",
                 "--no-progress", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["meta_dir"], printed["output_dir"], printed["dtype"], printed["max_shard_size"],
            printed["check"], printed["progress"], printed["tolerance"]) == \
        ("meta", "hf", "bfloat16", "500MB", True, False, 1e-4)


def test_easylm_config_is_the_model_config(capsys):
    assert main(["convert", "easylm", "s", "hf", "--config", "7b", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model_config"] == "7b"


def test_checks_from_the_command_line_and_from_python(capsys):
    assert main(["convert", "sharded", "ckpt", "hf", "--max-shard-size", "lots"]) == 1
    assert "max shard size: expected a size such as 5GB" in capsys.readouterr().err
    assert main(["convert", "llama", "meta", "hf", "--tolerance", "0"]) == 1
    assert "option tolerance: must be in (0, inf]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="option max_position_embeddings: must be in"):
        MetaLlamaConvertConfig("meta", "hf", max_position_embeddings=0)
    with pytest.raises(ValueError, match="option dtype: must be one of"):
        ShardedConvertConfig("ckpt", "hf", dtype="int8")
    assert EasyLMConvertConfig("s", "hf", progress=False).progress_bars is False
