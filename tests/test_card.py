"""coh.card without a training run: Hub ids of base models, the card of a plain conversion, and
the prompting words per mode and prompt format (the cards of real runs: tests/train/test_card.py)."""

from __future__ import annotations

from huggingface_hub import ModelCard

from coh.card import RunFacts, hub_model_id, model_card, write_card
from coh.cohjson import CohJson
from coh.data.phrases import PhraseSet


def test_hub_model_id(tmp_path):
    assert hub_model_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model_id("gpt2") == "gpt2"
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_model_id(str(snapshot)) == "org/name"
    assert hub_model_id(str(tmp_path)) is None  # a local folder is no Hub id
    assert hub_model_id("./relative/../path") is None and hub_model_id(None) is None


def test_a_plain_conversion_card_parses(tmp_path):
    card = model_card(None, None, model_id=str(tmp_path), title="llama-7b-hf",
                      converted_from={"action": "llama", "source": "/meta/7B"})
    write_card(tmp_path, card)
    loaded = ModelCard.load(tmp_path / "README.md")
    meta = loaded.data.to_dict()
    assert meta["tags"] == ["chain-of-hindsight", "coh", "text-generation"] and "base_model" not in meta
    assert "model-index" not in meta and "coh" not in meta
    assert loaded.text.startswith("\n# llama-7b-hf\n") and "`coh convert llama` from `/meta/7B`" in loaded.text
    assert "How to prompt it" not in loaded.text  # nothing says how it was trained


def test_prompting_words_follow_mode_and_prompt_format():
    facts = RunFacts(records=2, by_source={"a": 2}, by_feedback={"p": 2})
    phrases = PhraseSet(user="Human:", good="A good one:", bad="A bad one:")
    coh = model_card(CohJson(phrases=phrases, training={"model": "org/base", "lr": 1e-5}), facts,
                     model_id="me/m", title="m").text
    assert "`Human: How do I apologise to a friend? A good one:`" in coh and "`A bad one:`" in coh
    chat = model_card(CohJson(phrases=phrases, prompt_format="chat-template", training={"model": "org/base"}),
                      facts, model_id="me/m", title="m").text
    assert "base model's chat template" in chat and "How do I apologise to a friend? A good one:" not in chat
    sft = model_card(CohJson(mode="sft", training={"model": "org/base"}), facts, model_id="me/m", title="m").text
    assert "trained without feedback phrases" in sft
    assert "| `lora_r` |" not in coh and "| `pretrain_lambda` |" not in coh  # options that changed nothing


def test_run_facts_from_the_build_when_the_run_read_token_ids(tmp_path):
    import json

    from coh.card import run_facts

    summary = {"feedback": ["p", "n"], "records": {"train": 5, "eval": 1}, "invalid_rows": 0, "skipped_rows": 2,
               "sources": {"hh": {"rows": 4, "records": {"train": {"p": 2, "n": 1}, "eval": {"p": 1}},
                                  "spec": {"kind": "dialogue", "hub": "Anthropic/hh-rlhf", "files": {}}},
                           "shp": {"rows": 2, "records": {"train": {"p": 2}}, "spec": {"kind": "preference"}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "metrics.jsonl").write_text('{"step": 2, "eval/loss": 3.0}\n{"step": 3, "train/loss": 1.0}\n')
    facts = run_facts(tmp_path / "train.jsonl", {"sha256": "ab" * 32}, None, {}, tmp_path)
    assert (facts.records, facts.by_source, facts.by_feedback) == (5, {"hh": 3, "shp": 2}, {"p": 4, "n": 1})
    assert (facts.metrics, facts.step) == ({"eval/loss": 3.0}, 2)  # the last evaluation logged
    card = model_card(CohJson(training={"model": "org/base"}), facts, model_id="me/m", title="m")
    assert card.data.datasets == ["Anthropic/hh-rlhf"]
    assert "| hh | dialogue | [Anthropic/hh-rlhf](https://huggingface.co/datasets/Anthropic/hh-rlhf) | 4 |" in card.text
