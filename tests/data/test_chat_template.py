"""The CoH chat template against training, token for token.

The reference is training itself: a record of every source is tokenized by ``RecordTokenizer``
(plain CoH text, or through the base chat template), and the ids before each of its outputs must
be what ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, feedback=X)`` gives
for the conversation up to there, with ``X`` the phrase that output was trained under (good, bad,
an alternative phrase, none for ``sft`` records). In the plain format the template also equals
the serve-time prompt ``RecordTokenizer(tok, chat_template="never")(prompt_record(...))`` for
good, bad, none and a literal phrase.
"""

from __future__ import annotations

import copy

import pytest

from coh.cohjson import CohJson
from coh.data.chat_template import (
    base_chat_template,
    checkpoint_chat_template,
    coh_chat_template,
    is_coh_template,
    template_format,
)
from coh.data.feedback import Turn
from coh.data.phrases import DEFAULT_PHRASES, PhraseSet, phrases_for
from coh.data.records import FeedbackRecord
from coh.data.render import RenderSpec, prompt_record, render_records
from coh.data.sources import CONVERTERS, Skip
from coh.data.tokenize import RecordTokenizer, tokenizer_adds_bos
from coh.train.data import for_mode
from tests.conftest import hh_rows
from tests.data.test_sources import GOOD_FIXTURES, rows


def _examples():
    out = []
    for kind, name, _, _ in GOOD_FIXTURES:
        if name.endswith(".parquet"):
            continue  # the same rows as the .jsonl
        converted = [CONVERTERS[kind](raw, f"{name}:{line}", "train") for line, raw in rows(name)]
        out += [ex for ex in converted if not isinstance(ex, Skip)][:3]
    converted = [CONVERTERS["dialogue"](r, f"shared-hh:{i}", "train") for i, r in enumerate(hh_rows(12))]
    return out + [ex for ex in converted if not isinstance(ex, Skip)]  # the real hh-rlhf sample, multi-turn


def _records() -> list[FeedbackRecord]:
    records = []
    for i, ex in enumerate(_examples()):
        kinds = ("p", "n", "pn", "np", "chain") if ex.source == "rated" else ("p", "n", "pn", "np")
        if i % 7 == 0 and ex.source in ("dialogue", "webgpt", "summary"):
            kinds = (*kinds, "aux")  # the alternative phrase pairs, literal phrase text
        records += render_records(ex, RenderSpec(feedback=kinds), phrases_for(ex.source, DEFAULT_PHRASES), seed=0)
    return records + for_mode(records, "sft")  # sft: outputs after no phrase (feedback "none")


RECORDS = _records()


def _legacy_sentencepiece(llama_tokenizer):
    """A LLaMA-1/2 style tokenizer: a Prepend normaliser puts the word-start marker on every piece."""
    from tokenizers import normalizers, pre_tokenizers

    legacy = copy.deepcopy(llama_tokenizer)
    legacy.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    legacy.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    return legacy


@pytest.fixture(scope="module", params=["bpe", "llama", "legacy-sentencepiece", "smollm2"])
def tokenizer(request, bpe_tokenizer, llama_tokenizer):
    if request.param == "bpe":
        return bpe_tokenizer
    if request.param == "llama":
        return llama_tokenizer
    if request.param == "legacy-sentencepiece":
        return _legacy_sentencepiece(llama_tokenizer)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(request.getfixturevalue("smollm2_dir"))  # its own chat template


def _conversations(record: FeedbackRecord, chat: bool):
    """(messages, feedback, output index among the record's outputs) before each output of the
    record that a chat can express: earlier outputs are earlier replies, so only those after
    good-phrase outputs and not a second output's own quotes. Quotes join the user message as the training render puts them."""
    messages: list[dict] = []
    output = 0
    phrase = None
    for seg in record.segments:
        text = seg.text.strip()
        if seg.role in ("system", "user"):
            messages.append({"role": seg.role, "content": text})
        elif seg.role == "prompt":
            if messages[-1]["role"] != "user":
                return  # a second output's own quotes (webgpt pn/np) follow no user turn
            messages[-1]["content"] += ("\n\n" if chat else " ") + text
        elif seg.role == "feedback":
            phrase = text
        elif seg.role == "assistant":
            if seg.loss:
                feedback = "none" if phrase is None else {"A helpful answer:": "good",
                                                          "An unhelpful answer:": "bad"}.get(phrase, phrase)
                yield [dict(m) for m in messages], feedback, output
                output += 1
                if phrase != "A helpful answer:":
                    return  # an earlier reply is always rendered under the good phrase
            messages.append({"role": "assistant", "content": text})
            phrase = None


def _loss_run_starts(mask: list[int]) -> list[int]:
    return [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]


def _check_records(tok, rt: RecordTokenizer, template: str, chat: bool) -> list[str]:
    """The feedback of every prompt checked."""
    checked = []
    for record in RECORDS:
        full = rt(record)
        starts = _loss_run_starts(full.loss_mask)  # each output (with its EOS / end of turn) is one run
        for messages, feedback, output in _conversations(record, chat):
            got = tok.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                          tokenize=True, feedback=feedback)["input_ids"]
            want = full.input_ids[: starts[output]]
            assert got == want, (record.id, output, feedback, tok.convert_ids_to_tokens(got),
                                 tok.convert_ids_to_tokens(want))
            checked.append(feedback)
    return checked


def test_plain_template_gives_training_ids_before_every_output(tokenizer):
    template = coh_chat_template(tokenizer, PhraseSet())
    checked = _check_records(tokenizer, RecordTokenizer(tokenizer, chat_template="never"), template, chat=False)
    _assert_every_feedback(checked)


def _assert_every_feedback(checked: list[str]) -> None:
    assert len(checked) > 150
    assert {"good", "bad", "none", "The following is a worse response.", "Generate a better summary."} <= set(checked)


def test_template_over_the_base_template_gives_training_ids_before_every_output(tokenizer):
    assert tokenizer.chat_template  # the tiny tokenizers carry ChatML, SmolLM2 its own
    template = coh_chat_template(tokenizer, PhraseSet(), base_template=tokenizer.chat_template)
    checked = _check_records(tokenizer, RecordTokenizer(tokenizer, chat_template="always"), template, chat=True)
    _assert_every_feedback(checked)


def test_plain_template_is_the_serve_prompt_for_every_feedback(tokenizer):
    phrases = PhraseSet(user="Human:", good="A good reply:", bad="A bad reply:")
    template = coh_chat_template(tokenizer, phrases)
    rt = RecordTokenizer(tokenizer, chat_template="never")
    conversations = [
        [Turn("user", "hi")],
        [Turn("system", "be nice"), Turn("user", "hi"), Turn("assistant", "hello"), Turn("user", "how are you?")],
        [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"), Turn("assistant", "d"), Turn("user", "e")],
    ]
    for turns in conversations:
        messages = [{"role": t.role, "content": t.text} for t in turns]
        for feedback, phrase in [(None, "A good reply:"), ("good", "A good reply:"), ("bad", "A bad reply:"),
                                 ("none", None), ("A kinder reply:", "A kinder reply:")]:
            kwargs = {} if feedback is None else {"feedback": feedback}
            got = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                                **kwargs)["input_ids"]
            assert got == rt(prompt_record(turns, phrases, phrase)).input_ids, (turns, feedback)
            if tokenizer_adds_bos(tokenizer):  # the template writes BOS; apply_chat_template adds none
                assert got.count(tokenizer.bos_token_id) == 1 and got[0] == tokenizer.bos_token_id
    text = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                         tokenize=False, feedback="bad")
    assert text.endswith("Human: e A bad reply:") and f"A good reply: b{tokenizer.eos_token}" in text


def test_sft_default_is_no_phrase_and_the_base_template_is_kept(bpe_tokenizer):
    sft = CohJson(mode="sft", prompt_format="chat-template")
    template = checkpoint_chat_template(bpe_tokenizer, sft)
    assert is_coh_template(template) and base_chat_template(template) == bpe_tokenizer.chat_template
    messages = [{"role": "user", "content": "hi"}]
    text = bpe_tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                             tokenize=False)
    assert text == bpe_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert bpe_tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                             tokenize=False, feedback="bad").endswith("assistant\nAn unhelpful answer:")
    assert template_format(template) == "chat-template"
    plain = checkpoint_chat_template(bpe_tokenizer, CohJson())
    assert template_format(plain) == "coh" and base_chat_template(plain) == bpe_tokenizer.chat_template
    assert base_chat_template(coh_chat_template(bpe_tokenizer)) is None and template_format("{{ x }}") is None
    # Extending a CoH template extends its base, never CoH twice.
    assert coh_chat_template(bpe_tokenizer, base_template=template) == coh_chat_template(
        bpe_tokenizer, base_template=bpe_tokenizer.chat_template)
    assert base_chat_template(bpe_tokenizer.chat_template) == bpe_tokenizer.chat_template
    assert base_chat_template(None) is None


def test_phrases_with_quotes_and_unicode_survive(bpe_tokenizer):
    phrases = PhraseSet(user='Q "x":', good="Réponse utile 😀:", bad="Back\\slash {{ not jinja }}:")
    template = coh_chat_template(bpe_tokenizer, phrases)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "again"}]
    text = bpe_tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                             tokenize=False, feedback="bad")
    eos = bpe_tokenizer.eos_token
    assert text == f'Q "x": hi Réponse utile 😀: yo{eos}Q "x": again Back\\slash {{{{ not jinja }}}}:'


def test_unknown_roles_and_bad_settings_are_refused(bpe_tokenizer):
    template = coh_chat_template(bpe_tokenizer)
    with pytest.raises(Exception, match="not tool"):
        bpe_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], chat_template=template)
    with pytest.raises(ValueError, match="default_feedback"):
        coh_chat_template(bpe_tokenizer, default_feedback="great")
    with pytest.raises(ValueError, match="history_phrase"):
        coh_chat_template(bpe_tokenizer, history_phrase=None)


def test_a_coh_checkpoint_tokenizer_renders_chat_records_through_its_base(bpe_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from coh.data.chat_template import with_base_template

    bpe_tokenizer.save_pretrained(tmp_path)
    ckpt = AutoTokenizer.from_pretrained(tmp_path)
    ckpt.chat_template = checkpoint_chat_template(ckpt, CohJson(prompt_format="chat-template"))
    chat_records = [r for r in RECORDS if r.meta.get("chat")]
    assert chat_records
    want = RecordTokenizer(bpe_tokenizer, chat_template="auto").batch(chat_records)
    assert RecordTokenizer(ckpt, chat_template="auto").batch(chat_records) != want  # CoH twice
    assert RecordTokenizer(with_base_template(ckpt), chat_template="auto").batch(chat_records) == want
    assert ckpt.chat_template == bpe_tokenizer.chat_template
