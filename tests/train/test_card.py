"""The model card of every `coh train` run (coh.card), and --push-to-hub (coh.hub) against a local
fake of the Hub's HTTP API (tests/fake_hub.py): which files went to which repository."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from coh.cli import main
from coh.train.config import TrainConfig
from coh.train.trainer import train

from ..fake_hub import fake_hub
from .conftest import config


@pytest.fixture(scope="module")
def hub_base(workspace) -> Path:
    """The tiny LLaMA laid out as a folder of the Hub cache, with a card naming its license."""
    folder = workspace / "hub-cache" / "models--coh-test--tiny-llama" / "snapshots" / "0123abcd"
    if not folder.exists():
        shutil.copytree(workspace / "llama", folder)
        (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny llama\n")
    return folder


def _records(workspace: Path) -> list[dict]:
    return [json.loads(line) for line in (workspace / "data" / "train.jsonl").read_text().splitlines()]


def _metadata(folder: Path) -> dict:
    return ModelCard.load(folder / "README.md").data.to_dict()


def test_card_says_base_data_phrases_options_metrics_and_how_to_prompt(workspace, hub_base):
    metrics = train(config(workspace, "card", model=str(hub_base)))
    final = workspace / "card" / "final"
    card = ModelCard.load(final / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "coh-test/tiny-llama" and meta["base_model_relation"] == "finetune"
    assert meta["license"] == "apache-2.0"
    assert {"chain-of-hindsight", "coh"} <= set(meta["tags"])
    assert (meta["library_name"], meta["pipeline_tag"]) == ("transformers", "text-generation")
    # the data the run read: every training record, per source and per feedback type
    records = _records(workspace)
    run = meta["coh"]["run"]
    assert run["records"] == len(records) > 0
    assert run["by_source"] == dict(Counter(r["source"] for r in records))
    assert run["by_feedback"] == dict(Counter(r["feedback"] for r in records)) and set(run["by_feedback"]) == {"pn", "np"}
    summary = json.loads((workspace / "data" / "summary.json").read_text())
    assert run["build"]["feedback"] == ["pn", "np"] and run["build"]["records"] == summary["records"]
    assert run["train_file"] == str(workspace / "data" / "train.jsonl")
    # the final evaluation, as the Hub's model-index
    assert metrics and {r.metric_name: r.metric_value for r in card.data.eval_results} == pytest.approx(metrics)
    assert all(r.dataset_name == "held-out CoH records" for r in card.data.eval_results)
    text = card.text
    phrases = json.loads((final / "coh.json").read_text())["phrases"]
    for phrase in phrases.values():
        assert f"`{phrase}`" in text
    for words in ("apply_chat_template(messages, add_generation_prompt=True, feedback=feedback", f"coh serve {final}",
                  f"vllm serve {final}", '"chat_template_kwargs": {"feedback": "bad"}', "| `lr` | `0.003` |",
                  "| `mode` | `coh` |", "arXiv:2302.02676"):
        assert words in text, words
    for source, n in run["by_source"].items():
        assert f"| {source} | {n} |" in text


def test_a_run_resumed_at_its_end_keeps_the_last_evaluation(workspace):
    first = train(config(workspace, "card-again"))
    before = _metadata(workspace / "card-again" / "final")
    assert train(config(workspace, "card-again")) == {}  # resumed at step 4 of 4: nothing evaluated
    after = _metadata(workspace / "card-again" / "final")
    assert after["coh"]["run"]["metrics"] == pytest.approx(first) and after["coh"]["run"]["step"] == 4
    assert after["model-index"] == before["model-index"]
    with fake_hub() as hub:  # a new push_to_hub is no change that refuses the resume
        train(config(workspace, "card-again", push_to_hub="coh-user/again"))
    assert "README.md" in hub.repos["coh-user/again"]["files"]


def test_lora_cards_adapter_and_merged(workspace, hub_base):
    train(config(workspace, "card-lora", model=str(hub_base), lora_r=4, lora_alpha=8, max_steps=2))
    adapter, merged = _metadata(workspace / "card-lora" / "final"), _metadata(workspace / "card-lora" / "final-merged")
    assert (adapter["library_name"], adapter["base_model_relation"]) == ("peft", "adapter")
    assert (merged["library_name"], merged["base_model_relation"]) == ("transformers", "finetune")
    assert adapter["base_model"] == merged["base_model"] == "coh-test/tiny-llama"
    assert "--enable-lora" in ModelCard.load(workspace / "card-lora" / "final" / "README.md").text


def _train_argv(workspace: Path, out: str, *extra: str) -> list[str]:
    return ["train", "--model", str(workspace / "llama"), "--train-data", str(workspace / "data"), "-o",
            str(workspace / out), "--max-length", "512", "--overlong", "skip", "--micro-batch-tokens", "1024",
            "--max-steps", "2", "--eval-records", "10", "--report-to", "none", "--no-progress", *extra]


def test_push_to_hub_uploads_final_to_the_repository(workspace, capsys):
    with fake_hub() as hub:
        assert main(_train_argv(workspace, "pushed", "--push-to-hub", "coh-user/tiny-coh", "--hub-private")) == 0
    final = workspace / "pushed" / "final"
    assert list(hub.repos) == ["coh-user/tiny-coh"] and hub.repos["coh-user/tiny-coh"]["private"] is True
    uploaded = hub.repos["coh-user/tiny-coh"]["files"]
    local = {p.name for p in final.iterdir()} - {"COMPLETE"}
    assert set(uploaded) == local and {"README.md", "model.safetensors", "coh.json", "config.json"} <= local
    for name, content in uploaded.items():
        assert content == (final / name).read_bytes(), name
    assert {token for _, _, token in hub.requests} == {"hf_fake_token"}
    card = ModelCard(uploaded["README.md"].decode())
    assert 'from_pretrained("coh-user/tiny-coh")' in card.text and "coh serve coh-user/tiny-coh" in card.text
    assert hub.validated == [uploaded["README.md"].decode()]  # the Hub's metadata check accepted it
    assert f"pushed {final} to {hub.url}/coh-user/tiny-coh" in capsys.readouterr().out


def test_a_failed_push_is_one_clear_error_and_keeps_the_model(workspace, capsys):
    with fake_hub(fail_with=500):
        assert main(_train_argv(workspace, "push-fails", "--push-to-hub", "coh-user/tiny-coh")) == 1
    err = capsys.readouterr().err
    final = workspace / "push-fails" / "final"
    err = err[err.index("coh train: error:"):]  # after transformers' loading bars
    assert err.startswith(f"coh train: error: pushing {final} to the Hub repository coh-user/tiny-coh failed: ")
    assert "500" in err and "the fake hub is down" in err and "Traceback" not in err
    assert f"The model is kept in {final}; push it again with `hf upload coh-user/tiny-coh {final} .`" in err
    assert (final / "model.safetensors").is_file() and (final / "README.md").is_file()


def test_push_needs_a_token_and_a_repo_id_before_training(workspace, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(_train_argv(workspace, "no-token", "--push-to-hub", "coh-user/x", "--hub-token-env", "MY_TOKEN")) == 1
    assert "push_to_hub coh-user/x: no Hugging Face token; set MY_TOKEN" in capsys.readouterr().err
    assert not (workspace / "no-token").exists()  # found before any compute
    with pytest.raises(ValueError, match="push_to_hub 'not a/repo id' is not a Hub repo id"):
        TrainConfig(model="m", train_data="d", push_to_hub="not a/repo id")


def test_a_conversion_of_a_run_carries_its_card(workspace, hub_base, tmp_path):
    adapter = workspace / "card-lora" / "final"
    if not adapter.exists():
        train(config(workspace, "card-lora", model=str(hub_base), lora_r=4, lora_alpha=8, max_steps=2))
    out = tmp_path / "merged"
    assert main(["convert", "lora-merge", str(adapter), str(out), "--no-progress"]) == 0
    before, after = _metadata(adapter), _metadata(out)
    assert after["coh"] == before["coh"] and after["model-index"][0]["results"] == before["model-index"][0]["results"]
    assert after["base_model"] == "coh-test/tiny-llama" and after["library_name"] == "transformers"
    assert f"from `{adapter}`" in ModelCard.load(out / "README.md").text
