"""``coh convert`` keeps the CoH chat template a checkpoint carries, and gives one to CoH weights
it converts (``--coh-phrases``): the real SentencePiece tokenizer of a Meta folder renders, token
for token, the prompt training renders."""

from __future__ import annotations

import json

import pytest

from coh.cli import main
from coh.cohjson import CohJson
from coh.data.chat_template import base_chat_template, checkpoint_chat_template, is_coh_template
from coh.data.feedback import Turn
from coh.data.phrases import PhraseSet
from coh.data.render import prompt_record
from coh.data.tokenize import RecordTokenizer
from tests.convert.test_easylm import _config_json, _load
from tests.convert.test_lora import adapter  # noqa: F401 (a fixture)
from tests.convert.test_meta_llama import hf_llama  # noqa: F401 (a fixture)

from .conftest import easylm_llama_params, tiny_llama, write_easylm_stream, write_meta_checkpoint

TURNS = [Turn("user", "Hello there"), Turn("assistant", "Hi, how can I help?"), Turn("user", "Tell me a joke")]


def _assert_prompts_as_trained(folder, phrases: PhraseSet) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert is_coh_template(tok.chat_template)
    rt = RecordTokenizer(tok, chat_template="never")
    messages = [{"role": t.role, "content": t.text} for t in TURNS]
    for feedback, phrase in [("good", phrases.good), ("bad", phrases.bad), ("none", None), ("A joke:", "A joke:")]:
        got = tok.apply_chat_template(messages, add_generation_prompt=True, feedback=feedback)["input_ids"]
        assert got == rt(prompt_record(TURNS, phrases, phrase)).input_ids, feedback


@pytest.fixture(scope="module")
def coh_checkpoint(tmp_path_factory, llama_tokenizer):
    """A tiny model folder whose tokenizer carries a CoH template over ChatML, as coh train writes it."""
    folder = tmp_path_factory.mktemp("coh_ckpt")
    tiny_llama(folder, llama_tokenizer)
    info = CohJson(phrases=PhraseSet(good="Good:", bad="Bad:"), prompt_format="chat-template")
    tok = _load_tokenizer(folder)
    tok.chat_template = checkpoint_chat_template(tok, info)
    tok.save_pretrained(folder)
    info.write(folder)
    return folder


def _load_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_meta_with_coh_phrases_gets_a_template_that_renders_as_training(tmp_path, hf_llama, sp_model):  # noqa: F811
    model, _ = hf_llama
    meta = write_meta_checkpoint(tmp_path / "meta", model, sp_model)
    out = tmp_path / "hf"
    assert main(["convert", "llama", str(meta), str(out), "--coh-phrases", "--no-progress"]) == 0
    assert (out / "chat_template.jinja").is_file()
    _assert_prompts_as_trained(out, PhraseSet())  # the original code's phrases, SentencePiece spacing
    without = tmp_path / "plain"
    assert main(["convert", "llama", str(meta), str(without), "--no-progress"]) == 0
    assert not is_coh_template(_load_tokenizer(without).chat_template)  # not CoH weights: no CoH template


def test_easylm_keeps_the_template_of_its_tokenizer(tmp_path, coh_checkpoint, capsys):
    model = _load(coh_checkpoint)
    stream = write_easylm_stream(tmp_path / "streaming_params", easylm_llama_params(model))
    for flags in ([], ["--coh-phrases"]):
        out = tmp_path / f"hf{len(flags)}"
        assert main(["convert", "easylm", str(stream), str(out), "--config", _config_json(tmp_path / "c.json", model),
                     "--tokenizer", str(coh_checkpoint), "--no-progress", *flags]) == 0
        assert (out / "chat_template.jinja").read_bytes() == (coh_checkpoint / "chat_template.jinja").read_bytes()


def test_easylm_with_coh_phrases_extends_a_plain_tokenizer(tmp_path, llama_tokenizer, capsys):
    folder = tmp_path / "base"
    model = tiny_llama(folder, llama_tokenizer)
    stream = write_easylm_stream(tmp_path / "streaming_params", easylm_llama_params(model))
    out = tmp_path / "hf"
    assert main(["convert", "easylm", str(stream), str(out), "--config", _config_json(tmp_path / "c.json", model),
                 "--tokenizer", str(folder), "--coh-phrases", "--no-progress"]) == 0
    template = _load_tokenizer(out).chat_template
    assert base_chat_template(template) == llama_tokenizer.chat_template  # kept inside, for retraining
    _assert_prompts_as_trained(out, PhraseSet())


def test_lora_merge_keeps_the_template(tmp_path, adapter, capsys):  # noqa: F811
    root, _ = adapter
    tok = _load_tokenizer(root / "base")
    tok.chat_template = checkpoint_chat_template(tok, CohJson(phrases=PhraseSet(good="A good reply:")))
    tok.save_pretrained(root / "adapter")  # coh train saves the tokenizer beside a LoRA adapter
    out = tmp_path / "merged"
    assert main(["convert", "lora-merge", str(root / "adapter"), str(out), "--base", str(root / "base"),
                 "--no-progress"]) == 0
    assert (out / "chat_template.jinja").read_bytes() == (root / "adapter" / "chat_template.jinja").read_bytes()
    assert json.loads((out / "coh.json").read_text())["phrases"]["good"] == "A good reply:"
