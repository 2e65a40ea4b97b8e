"""Recipes: the presets validate (every run's TrainConfig included), errors name the problem; the
command line: every option in --help, --print-config prints the resolved recipe, old spellings work."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from coh.compare.config import CompareConfig, MethodSpec
from coh.compare.recipe import PRESETS_DIR as PRESETS


@pytest.mark.parametrize("preset", ["smoke", "cpu", "cpu-knobs", "gpu"])
def test_presets_validate(preset):
    cfg = CompareConfig.load(preset)
    assert {m.method for m in cfg.methods} >= {"coh", "conditional-sft", "sft", "dpo", "base"}
    for m in cfg.methods:
        if m.method not in ("dpo", "base"):
            tc = cfg.train_config(m, 0, "data", "out", "model", "text.txt")
            assert tc.max_steps == cfg.steps and tc.micro_batch_tokens == cfg.tokens_per_step
            assert tc.lora_r == cfg.lora_r and tc.lr == cfg.lr


def test_gpu_preset_is_full_fine_tuning_with_seeds():
    cfg = CompareConfig.load("gpu")
    assert cfg.lora_r == 0 and cfg.dtype == "bfloat16" and len(cfg.seeds) == 3
    assert cfg.eval_pairs is None and cfg.steps > CompareConfig.load("cpu").steps


def test_knobs_extend_cpu():
    cpu, knobs = CompareConfig.load("cpu"), CompareConfig.load("cpu-knobs")
    assert knobs.output_dir == cpu.output_dir  # so the cpu run's stages are reused
    assert [m.name for m in knobs.methods[: len(cpu.methods)]] == [m.name for m in cpu.methods]
    fcm = next(m for m in knobs.methods if m.name == "coh-fcm5")
    assert cfg_fcm(knobs, fcm) == 0.05
    pretrain = next(m for m in knobs.methods if m.name == "coh-pretrain")
    assert knobs.train_config(pretrain, 0, "d", "o", "m", "text.txt").pretrain_data == "text.txt"


def cfg_fcm(cfg, method):
    return cfg.train_config(method, 0, "d", "o", "m").fcm_max_ratio


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        CompareConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="method 'ppo'"):
        MethodSpec("ppo")
    with pytest.raises(ValueError, match="names must differ"):
        CompareConfig.from_dict({"methods": ["coh", "coh"]})
    with pytest.raises(ValueError, match="unknown train option"):
        CompareConfig.from_dict({"methods": [{"method": "coh", "train": {"fcm": 1}}]})
    with pytest.raises(ValueError, match="feedback"):
        MethodSpec("sft", feedback="p,n")
    with pytest.raises(ValueError, match="sum < 1"):
        CompareConfig.from_dict({"eval_fraction": 0.5, "scorer_fraction": 0.5})
    with pytest.raises(FileNotFoundError, match="presets"):
        CompareConfig.load(str(tmp_path / "nothing.yaml"))
    loop = tmp_path / "a.yaml"
    loop.write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops"):
        CompareConfig.load(loop)


def test_recipe_values_are_checked_naming_the_recipe(tmp_path):
    """The checks every stage's options get (coh.options), with the recipe's name in the error."""
    recipe = tmp_path / "r.yaml"
    for text, message in ((f"extends: {PRESETS / 'smoke.yaml'}\nsteps: many\n", "option steps: expected a whole number"),
                          ("extends: nothing.yaml\n", "extends: no such recipe file"),
                          ("steps: 0\n", "option steps: must be in"),
                          ("eval_fraction: 1.5\n", "option eval_fraction: must be in"),
                          ("methods: [{method: coh, bogus: 1}]\n", r"unknown option\(s\) \['bogus'\] in methods\[0\]"),
                          ("scorer: {steps: 0}\n", "option steps: must be in"),
                          ("scorer: 3\n", "scorer: expected a spec string or a mapping"),
                          ("methods: [{method: coh, train: 5}]\n", "'train': expected a mapping"),
                          ("train: [1]\n", "option train: expected a mapping"),
                          ("seeds: [0, one]\n", "option seeds: expected a list of whole numbers"),
                          ("steps: [1\n", "not valid YAML"),
                          ("- steps\n", "expected a mapping")):
        recipe.write_text(text)
        with pytest.raises(ValueError, match=f"recipe {recipe}: .*{message}"):
            CompareConfig.load(recipe)
    # YAML reads 1e-5 as text: it is the number the option declares
    recipe.write_text(f"extends: {PRESETS / 'smoke.yaml'}\nlr: 1e-5\nlora_alpha: 8\nscorer: {{lr: 2e-5}}\n")
    cfg = CompareConfig.load(recipe)
    assert (cfg.lr, cfg.lora_alpha, cfg.scorer.lr) == (1e-5, 8.0, 2e-5)


def test_old_judge_spellings_still_read_with_a_note(tmp_path, capsys):
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"extends: {PRESETS / 'smoke.yaml'}\njudge_fraction: 0.2\njudge:\n  steps: 2\n")
    cfg = CompareConfig.load(recipe)
    assert (cfg.scorer_fraction, cfg.scorer.steps, cfg.scorer.tokens_per_step) == (0.2, 2, 512)  # merged with smoke's
    err = capsys.readouterr().err
    assert "'judge' is deprecated" in err and "use 'scorer'" in err and "use 'scorer_fraction'" in err
    assert CompareConfig.from_dict({"judge": "tests.compare.judge_functions:reply_words"}).scorer.spec == \
        "tests.compare.judge_functions:reply_words"
    with pytest.raises(ValueError, match="give 'scorer' only"):
        CompareConfig.from_dict({"judge": "a:b", "scorer": "a:b"})


def test_help_lists_every_option_with_help_and_default(capsys, monkeypatch):
    from coh.cli import main
    from coh.compare.config import CompareOptions

    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit) as stop:
        main(["compare", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(CompareOptions):
        shown = "RECIPE" if f.metadata["positional"] else "--" + f.name.replace("_", "-")
        assert shown in text and " ".join(f.metadata["help"].split()) in text, f.name
    for spelling in ("--output-dir DIR, -o DIR", "--data FILE", "--seeds", "--device", "--no-progress",
                     "--print-config", "(default: none)", "(default: on)"):
        assert spelling in text


def test_print_config_is_the_resolved_recipe(tmp_path, capsys):
    from coh.cli import main

    assert main(["compare", "smoke", "--seeds", "3,4", "-o", str(tmp_path), "--data", "d.jsonl", "--device", "cpu",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["seeds"], printed["output_dir"], printed["data"], printed["device"]) == \
        ([3, 4], str(tmp_path), "d.jsonl", "cpu")
    smoke = CompareConfig.load("smoke")
    assert printed["steps"] == smoke.steps and printed["scorer"] == dataclasses.asdict(smoke.scorer)
    assert CompareConfig.from_dict(printed).to_dict() == printed  # a recipe that reproduces the run
    with pytest.raises(SystemExit) as stop:
        main(["compare", "smoke", "--seeds", "one", "--print-config"])
    assert stop.value.code == 2
    assert "option seeds: expected whole numbers" in capsys.readouterr().err
