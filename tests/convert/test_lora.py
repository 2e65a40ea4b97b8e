"""LoRA adapter + base -> merged HF folder: the merged model gives the adapted model's logits."""

from __future__ import annotations

import json

import pytest
import torch

from coh.cli import main

from .conftest import ATOL, logits_of, sample_ids, tiny_llama


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, llama_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora")
    tiny_llama(root / "base", llama_tokenizer)
    base = AutoModelForCausalLM.from_pretrained(root / "base")  # so the adapter records its base's path
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(5)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero (a no-op adapter); make it change the model
            torch.nn.init.normal_(p, std=0.2)
    peft_model.save_pretrained(root / "adapter")
    (root / "adapter" / "coh.json").write_text(json.dumps({"phrases": {"good": "A good reply:"}}))
    return root, peft_model.eval()


def test_merge_same_logits(tmp_path, adapter, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, peft_model = adapter
    out = tmp_path / "merged"
    assert main(["convert", "lora-merge", str(root / "adapter"), str(out), "--base", str(root / "base"),
                 "--check", "--no-progress"]) == 0
    assert "logits check OK" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(root / "base").eval()
    ids = sample_ids(merged.config.vocab_size)
    torch.testing.assert_close(logits_of(merged, ids), logits_of(peft_model, ids), atol=ATOL, rtol=0)
    assert (logits_of(merged, ids) - logits_of(base, ids)).abs().max() > 1e-2  # the adapter did something
    assert not any("lora" in n for n in merged.state_dict())
    assert json.loads((out / "coh.json").read_text())["phrases"]["good"] == "A good reply:"
    assert AutoTokenizer.from_pretrained(out)("hi").input_ids  # tokenizer came from the base folder


def test_base_from_adapter_config(tmp_path, adapter):
    root, _ = adapter
    assert main(["convert", "lora-merge", str(root / "adapter"), str(tmp_path / "merged"), "--no-progress"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").exists()


def test_not_an_adapter(tmp_path, adapter, capsys):
    root, _ = adapter
    assert main(["convert", "lora-merge", str(root / "base"), str(tmp_path / "merged")]) == 1
    assert "adapter_config.json: missing" in capsys.readouterr().err
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    assert main(["convert", "lora-merge", str(orphan), str(tmp_path / "merged")]) == 1
    assert "no base_model_name_or_path; give --base" in capsys.readouterr().err


def test_relative_base_path_from_another_directory(tmp_path, adapter, monkeypatch, capsys):
    """peft records the base path as training saw it (relative to its working directory); merging
    from elsewhere finds it from the adapter's folders, and a base found nowhere is said clearly."""
    import shutil

    root, _ = adapter
    project = tmp_path / "project"
    shutil.copytree(root / "base", project / "runs" / "base")
    shutil.copytree(root / "adapter", project / "runs" / "lora" / "final")
    config_path = project / "runs" / "lora" / "final" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "runs/base"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["convert", "lora-merge", str(project / "runs" / "lora" / "final"), str(tmp_path / "merged"),
                 "--no-progress"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").exists()
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "runs/missing"}))
    assert main(["convert", "lora-merge", str(project / "runs" / "lora" / "final"), str(tmp_path / "m2")]) == 1
    err = capsys.readouterr().err
    assert "base model 'runs/missing'" in err and "give --base" in err and "Traceback" not in err
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "./runs/missing"}))
    assert main(["convert", "lora-merge", str(project / "runs" / "lora" / "final"), str(tmp_path / "m3")]) == 1
    assert "is a relative path found from none of" in capsys.readouterr().err
