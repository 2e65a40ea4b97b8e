"""Recipes: the presets validate (every run's TrainConfig included), errors name the problem."""

from __future__ import annotations

import pytest

from coh.compare.config import CompareConfig, MethodSpec


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
        CompareConfig.from_dict({"eval_fraction": 0.5, "judge_fraction": 0.5})
    with pytest.raises(FileNotFoundError, match="presets"):
        CompareConfig.load(str(tmp_path / "nothing.yaml"))
    loop = tmp_path / "a.yaml"
    loop.write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops"):
        CompareConfig.load(loop)
