"""`--trust-remote-code` reaches every loader of `coh eval`: the protocols' model, the scorer and
lm-eval. The models here are tiny LLaMAs saved as a model type of their own whose classes live in
the folder (``auto_map``), so transformers loads them only when allowed to run that code."""

from __future__ import annotations

import json

import pytest

from coh.cli import main
from coh.eval.config import HarnessConfig
from coh.eval.harness import run_harness
from coh.eval.scorers import RewardModelScorer, load_scorer
from tests.eval.conftest import HH_81_92, MC_TASK

REMOTE_CODE = '''from transformers import AutoModel, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel


class RemoteLlamaConfig(LlamaConfig):
    model_type = "coh_remote_llama"


class RemoteLlamaModel(LlamaModel):
    config_class = RemoteLlamaConfig


AutoModel.register(RemoteLlamaConfig, RemoteLlamaModel)  # the classification head builds its base through AutoModel


class RemoteLlamaForCausalLM(LlamaForCausalLM):
    config_class = RemoteLlamaConfig


class RemoteLlamaForSequenceClassification(LlamaForSequenceClassification):
    config_class = RemoteLlamaConfig
'''


def _as_remote_code(folder, architecture: str) -> None:
    (folder / "remote_llama.py").write_text(REMOTE_CODE)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="coh_remote_llama", architectures=[architecture],
                  auto_map={"AutoConfig": "remote_llama.RemoteLlamaConfig",
                            "AutoModelForCausalLM": "remote_llama.RemoteLlamaForCausalLM",
                            "AutoModelForSequenceClassification": "remote_llama.RemoteLlamaForSequenceClassification"})
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def remote(tmp_path_factory, llama_tokenizer):
    """``{"lm": causal LM folder, "rm": reward model folder}``, both needing their own code; the
    code transformers copies out of them goes to a temporary folder."""
    import torch
    import transformers.dynamic_module_utils as dynamic
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from coh.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("remote_code")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamic, "HF_MODULES_CACHE", str(root / "modules"))
        lm = root / "lm"
        make_tiny_model(lm, llama_tokenizer, hidden=32, layers=1, heads=2, seed=4)
        _as_remote_code(lm, "RemoteLlamaForCausalLM")
        rm = root / "rm"
        torch.manual_seed(5)
        LlamaForSequenceClassification(LlamaConfig(
            vocab_size=len(llama_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, num_labels=1,
            pad_token_id=llama_tokenizer.pad_token_id)).save_pretrained(rm)
        llama_tokenizer.save_pretrained(rm)
        _as_remote_code(rm, "RemoteLlamaForSequenceClassification")
        yield {"lm": lm, "rm": rm}


def test_protocols_load_the_model_with_its_own_code_only_when_trusted(remote, tmp_path, capsys):
    argv = ["eval", "feedback", "dialogue", "--model", str(remote["lm"]), "--data", str(HH_81_92), "--limit", "2",
            "--no-progress", "-o", str(tmp_path / "run")]
    assert main(argv) == 1
    assert "contains custom code" in capsys.readouterr().err
    assert main([*argv, "--trust-remote-code"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["counts"]["pairs"] == 2


def test_the_scorer_loads_with_its_own_code_only_when_trusted(remote, tiny_llama_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="custom code"):
        load_scorer(str(remote["rm"]), device="cpu")
    assert isinstance(load_scorer(str(remote["rm"]), device="cpu", trust_remote_code=True), RewardModelScorer)
    out = tmp_path / "ctl"
    assert main(["eval", "feedback", "controllability", "--model", str(tiny_llama_dir), "--data", str(HH_81_92),
                 "--limit", "2", "--scorer", str(remote["rm"]), "--max-new-tokens", "2", "--trust-remote-code",
                 "--no-progress", "-o", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["counts"]["prompts"] == 2


def test_lm_eval_gets_trust_remote_code(remote, mc_task_dir):
    cfg = {"model": str(remote["lm"]), "tasks": [MC_TASK], "include_path": str(mc_task_dir), "device": "cpu",
           "limit": 2, "progress": False}
    with pytest.raises(ValueError, match="custom code"):
        run_harness(HarnessConfig(**cfg))
    result, _ = run_harness(HarnessConfig(**cfg, trust_remote_code=True))
    assert result.settings["model_args"]["trust_remote_code"] is True
    assert result.counts == {f"{MC_TASK}/examples": 2}
