"""`coh data build` / `inspect` options (coh.data.config): help for each, recipes, old spellings."""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from coh.cli import build_parser, main
from coh.data.config import DataBuildConfig, DataInspectConfig
from coh.data.render import RenderSpec
from tests.conftest import FIXTURES

GOOD = f"preference:{FIXTURES / 'preference_strings.jsonl'}"


@pytest.mark.parametrize(("action", "cls"), [("build", DataBuildConfig), ("inspect", DataInspectConfig)])
def test_help_lists_every_option_with_its_help(action, cls, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", action, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(cls):
        assert f.metadata["help"], f.name
        spelled = f.name.upper() if f.metadata.get("positional") else f"--{f.name.replace('_', '-')}"
        assert spelled in text, f.name
    assert "--config FILE" in text and "--print-config" in text


def test_build_config_from_options():
    cfg = DataBuildConfig(source=[GOOD, {"kind": "preference", "files": {"eval": "x.jsonl"}, "name": "b"}],
                          output_dir="out", feedback=["pn", "np"], num_proc=None).build_config()
    assert [(s.kind, s.name, s.files) for s in cfg.sources] == [
        ("preference", "preference", {"train": str(FIXTURES / "preference_strings.jsonl")}),
        ("preference", "b", {"eval": "x.jsonl"})]
    assert cfg.render == RenderSpec(feedback=("pn", "np"))
    assert cfg.num_proc == min(8, os.cpu_count() or 1)
    assert (cfg.seed, cfg.eval_fraction, cfg.output_format, cfg.chat_template) == (0, 0.05, "coh", "auto")


def test_print_config_is_a_recipe_for_the_same_options(tmp_path, capsys):
    argv = ["data", "build", "-s", GOOD, "-o", str(tmp_path / "o"), "--feedback", "p,n", "--format", "fields",
            "--seed", "3", "--no-progress"]
    assert main([*argv, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["source"] == [GOOD] and printed["feedback"] == ["p", "n"]
    assert (printed["output_format"], printed["seed"], printed["progress"]) == ("fields", 3, False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(printed))
    assert main(["data", "build", "--config", str(recipe), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed


def test_old_recipe_key_no_progress_still_works(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"source: {GOOD}\noutput_dir: {tmp_path / 'o'}\nno_progress: true\n")
    assert main(["data", "build", "--config", str(recipe), "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["progress"] is False
    assert "no_progress is deprecated" in err and "progress: false" in err


def test_inspect_options_are_checked_in_python_too():
    with pytest.raises(ValueError, match="--record must be 0 or more"):
        DataInspectConfig(file="x.jsonl", record=-1)
    with pytest.raises(ValueError, match="option 'record': expected a whole number"):
        DataInspectConfig(file="x.jsonl", record="first")
