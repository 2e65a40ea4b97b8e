"""Prompt building, without a model: the CoH prompt against the training render, and the choice
of prompt format."""

from __future__ import annotations

import pytest

from coh.data.feedback import Turn
from coh.data.phrases import PhraseSet
from coh.data.render import prompt_record
from coh.data.tokenize import RecordTokenizer
from coh.serve.prompts import Prompter
from tests.generation.fixtures import write_coh_json


def test_coh_prompt_is_the_training_render_with_the_checkpoint_phrases(tmp_path, llama_tokenizer):
    phrases = {"user": "Human:", "good": "A good reply:", "bad": "A bad reply:"}
    llama_tokenizer.save_pretrained(tmp_path)
    write_coh_json(tmp_path, phrases)
    p = Prompter.for_model(str(tmp_path), llama_tokenizer)
    assert p.format == "coh" and p.default_feedback == "good"
    turns = [Turn("system", "be nice"), Turn("user", "hi"), Turn("assistant", "hello"), Turn("user", "how are you?")]
    rt = RecordTokenizer(llama_tokenizer, chat_template="never")
    want = PhraseSet(**phrases)
    for feedback, phrase in [(None, "A good reply:"), ("good", "A good reply:"), ("bad", "A bad reply:"),
                             ("none", None), ("A kinder reply:", "A kinder reply:")]:
        ids = p.chat_ids(turns, feedback)
        assert ids == rt(prompt_record(turns, want, phrase)).input_ids
    text = llama_tokenizer.decode(p.chat_ids(turns, "bad"))
    assert text.endswith("Human: how are you? A bad reply:") and "A good reply: hello" in text
    with pytest.raises(ValueError, match="user message"):
        p.chat_ids([Turn("system", "x")])
    with pytest.raises(ValueError, match="feedback"):
        p.chat_ids(turns, " ")


def test_prompt_format_choice(tmp_path, bpe_tokenizer, llama_tokenizer):
    plain = tmp_path / "plain"
    bpe_tokenizer.save_pretrained(plain)
    p = Prompter.for_model(str(plain), bpe_tokenizer)
    assert p.format == "chat-template" and p.default_feedback == "none"
    messages = [{"role": "user", "content": "hi"}]
    want = bpe_tokenizer(bpe_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"]
    assert p.chat_ids([Turn("user", "hi")]) == want
    # An explicit phrase opens the assistant turn, as CoH records of chat data were rendered.
    assert bpe_tokenizer.decode(p.chat_ids([Turn("user", "hi")], "bad")).endswith(
        "<|im_start|>assistant\nAn unhelpful answer:")
    assert Prompter.for_model(str(plain), bpe_tokenizer, "coh").format == "coh"
    sft = tmp_path / "sft"
    llama_tokenizer.save_pretrained(sft)
    write_coh_json(sft, {"user": "User:", "good": "A helpful answer:", "bad": "An unhelpful answer:"}, mode="sft")
    p = Prompter.for_model(str(sft), llama_tokenizer)
    assert p.format == "coh" and p.default_feedback == "none"  # sft replies followed no phrase in training
    chat = tmp_path / "chat-trained"  # a checkpoint whose records went through the chat template
    llama_tokenizer.save_pretrained(chat)
    write_coh_json(chat, {"user": "User:", "good": "Good:", "bad": "Bad:"}, prompt_format="chat-template")
    p = Prompter.for_model(str(chat), llama_tokenizer)
    assert (p.format, p.default_feedback) == ("chat-template", "good")
    assert llama_tokenizer.decode(p.chat_ids([Turn("user", "hi")])).endswith("<|im_start|>assistant\nGood:")
    no_template = tmp_path / "no-template"
    llama_tokenizer.save_pretrained(no_template)
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(no_template)
    bare.chat_template = None
    assert Prompter.for_model(str(no_template), bare).format == "coh"
    with pytest.raises(ValueError, match="no chat template"):
        Prompter.for_model(str(no_template), bare, "chat-template")
