"""Token-level loss masks, checked against a naive character-level reference and by properties."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coh.data.feedback import Candidate, FeedbackExample, Turn
from coh.data.phrases import DEFAULT_PHRASES
from coh.data.records import FeedbackRecord, Segment
from coh.data.render import RenderSpec, render_records
from coh.data.sources import convert_dialogue
from coh.data.tokenize import RecordTokenizer, leading_space_is_doubled

from ..conftest import hh_rows
from .helpers import tokenize_records


def reference_mask(record: FeedbackRecord, tokenizer, ids: list[int]) -> list[int]:
    """Obviously-correct mask for byte-level BPE on ASCII text: decode token by token, walk the
    record's characters, and give each token the loss flag of the characters it spells."""
    chars: list[tuple[str, int]] = []  # (character or special token, loss flag)
    for seg in record.segments:
        chars.extend((c, int(seg.loss)) for c in seg.text)
        if seg.eos:
            chars.append((tokenizer.eos_token, int(seg.loss)))
    mask, pos = [], 0
    for tid in ids:
        piece = tokenizer.decode([tid])
        if tid == tokenizer.eos_token_id:
            assert chars[pos][0] == tokenizer.eos_token
            mask.append(chars[pos][1])
            pos += 1
            continue
        flags = {chars[pos + i][1] for i in range(len(piece))}
        assert "".join(c for c, _ in chars[pos : pos + len(piece)]) == piece
        assert len(flags) == 1, f"token {piece!r} spans a loss boundary"
        mask.append(flags.pop())
        pos += len(piece)
    assert pos == len(chars), "tokens do not cover the record"
    return mask


def ascii_records(n: int = 300) -> list[FeedbackRecord]:
    records = []
    for i, row in enumerate(hh_rows(n)):
        if not (row["chosen"].isascii() and row["rejected"].isascii()):
            continue
        try:
            ex = convert_dialogue(row, f"hh/{i}", "train")
        except ValueError:
            continue
        records += render_records(ex, RenderSpec(feedback=("p", "n", "pn", "np")), DEFAULT_PHRASES["dialogue"], 0)
    assert len(records) >= 8
    return records


def test_mask_matches_character_reference(bpe_tokenizer):
    rt = RecordTokenizer(bpe_tokenizer)
    records = ascii_records()
    for rec, tok in zip(records, rt.batch(records)):
        assert tok.loss_mask == reference_mask(rec, bpe_tokenizer, tok.input_ids), rec.id


def test_batch_equals_one_by_one(any_tokenizer):
    rt = RecordTokenizer(any_tokenizer)
    records = ascii_records(120)
    assert rt.batch(records) == [rt(r) for r in records]


def test_bos_and_eos(bpe_tokenizer, llama_tokenizer):
    rec = ascii_records(40)[2]  # a pn record: two outputs, each closed by EOS
    n_eos = sum(s.eos for s in rec.segments)
    for tok, bos in ((bpe_tokenizer, None), (llama_tokenizer, llama_tokenizer.bos_token_id)):
        out = RecordTokenizer(tok)(rec)
        assert out.input_ids.count(tok.eos_token_id) == n_eos
        assert out.input_ids[-1] == tok.eos_token_id and out.loss_mask[-1] == 1
        if bos is None:
            assert tok.bos_token_id is None or tok.bos_token_id not in out.input_ids
        else:
            assert out.input_ids[0] == bos and out.input_ids.count(bos) == 1 and out.loss_mask[0] == 0


def test_chat_template_single_bos_and_end_of_turn_in_loss(llama_tokenizer):
    tok = copy.deepcopy(llama_tokenizer)
    tok.chat_template = "{{ bos_token }}" + tok.chat_template  # a template that writes BOS itself
    tok.eos_token = "<|im_end|>"
    rec = ascii_records(40)[0]
    out = RecordTokenizer(tok, chat_template="always")(rec)
    assert out.input_ids.count(tok.bos_token_id) == 1
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    trained_ends = [m for i, m in zip(out.input_ids, out.loss_mask) if i == im_end]
    # one end-of-turn per message; only the one closing the trained output carries loss
    assert sum(trained_ends) == 1 and len(trained_ends) >= 2
    decoded = tok.decode([i for i, m in zip(out.input_ids, out.loss_mask) if m])
    output = next(s for s in rec.segments if s.loss).text.strip()
    assert decoded.replace(" ", "") == (output + "<|im_end|>").replace(" ", "")


def test_legacy_sentencepiece_prefix_is_detected(llama_tokenizer, bpe_tokenizer):
    from tokenizers import normalizers, pre_tokenizers

    assert not leading_space_is_doubled(bpe_tokenizer)
    assert not leading_space_is_doubled(llama_tokenizer)
    legacy = copy.deepcopy(llama_tokenizer)
    legacy.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    legacy.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    assert leading_space_is_doubled(legacy)
    rt = RecordTokenizer(legacy)
    rec = ascii_records(40)[0]
    joint = legacy(rec.segments[0].text + rec.segments[1].text, add_special_tokens=False)["input_ids"]
    got = rt(FeedbackRecord("x", "t", "p", rec.segments[:2])).input_ids[1:]
    assert got == joint


def test_tokenize_records_dataset(bpe_tokenizer):
    records = ascii_records(80)
    ds = tokenize_records(records, RecordTokenizer(bpe_tokenizer))
    assert ds.num_rows == len(records)
    assert ds[0]["id"] == records[0].id
    assert ds[0]["length"] == len(ds[0]["input_ids"]) == len(ds[0]["loss_mask"])
    assert ds[0]["loss_tokens"] == sum(ds[0]["loss_mask"]) > 0


def test_tokenizer_without_eos_is_refused(bpe_tokenizer):
    tok = copy.deepcopy(bpe_tokenizer)
    tok.eos_token = None
    with pytest.raises(ValueError, match="no EOS"):
        RecordTokenizer(tok)


# -- property: every output token carries loss, no prompt or feedback token does ------------------
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC .,?!'-0123456789", min_size=1, max_size=25).map(
    lambda s: " ".join(s.split())
).filter(bool)


@st.composite
def examples(draw):
    n_turns = draw(st.integers(0, 2))
    context = []
    for _ in range(n_turns):
        context += [Turn("user", draw(words)), Turn("assistant", draw(words))]
    context.append(Turn("user", draw(words)))
    n_out = draw(st.integers(2, 4))
    outs = draw(st.lists(words, min_size=n_out, max_size=n_out, unique=True))
    cands = tuple(Candidate(t, float(-i)) for i, t in enumerate(outs))
    return FeedbackExample("h/1", "rated", "train", tuple(context), cands)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ex=examples(), kind=st.sampled_from(["p", "n", "pn", "np", "chain"]), source=st.sampled_from(["dialogue", "summary"]))
def test_property_outputs_and_only_outputs_carry_loss(ex, kind, source, any_tokenizer):
    (rec,) = render_records(ex, RenderSpec(feedback=(kind,)), DEFAULT_PHRASES[source], seed=0)
    out = RecordTokenizer(any_tokenizer)(rec)
    ids, mask = out.input_ids, out.loss_mask
    assert len(ids) == len(mask)
    # runs of loss tokens, decoded, are exactly the outputs (each closed by EOS), in order
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    outputs = [s for s in rec.segments if s.loss]
    assert len(runs) == len(outputs)
    for run, seg in zip(runs, outputs):
        assert run[-1] == any_tokenizer.eos_token_id
        assert " ".join(any_tokenizer.decode(run[:-1]).split()) == " ".join(seg.text.split())
    # tokens without loss spell the prompt, the phrases and the shared context
    plain = [i for i, m in zip(ids, mask) if not m and i not in (any_tokenizer.bos_token_id, any_tokenizer.eos_token_id)]
    expected = "".join(s.text for s in rec.segments if not s.loss)
    assert any_tokenizer.decode(plain).replace(" ", "") == expected.replace(" ", "")


def test_record_text_tokenizes_like_running_text(bpe_tokenizer):
    """Segment-wise tokens equal the tokens of the whole text between EOS tokens (byte-level BPE)."""
    rt = RecordTokenizer(bpe_tokenizer)
    for rec in ascii_records(120)[:20]:
        chunks = rec.text.split("<eos>")
        joint = []
        for chunk in chunks[:-1]:
            joint += bpe_tokenizer(chunk, add_special_tokens=False)["input_ids"] + [bpe_tokenizer.eos_token_id]
        assert rt(rec).input_ids == joint + (bpe_tokenizer(chunks[-1], add_special_tokens=False)["input_ids"] if chunks[-1] else [])


def test_segment_roundtrip_json():
    seg = Segment(" hi", True, "assistant", True, "good")
    assert Segment(**{k: v for k, v in seg.to_json().items()}) == seg


@pytest.mark.parametrize("mode", ["never", "always"])
def test_special_token_strings_in_data_stay_text(bpe_tokenizer, mode):
    """A reply that mentions <|endoftext|> gets no EOS in the middle: it would teach the model to stop there."""
    rec = FeedbackRecord("x", "t", "p", (
        Segment("User:", role="marker"), Segment(" hi", role="user"),
        Segment(" A helpful answer:", role="feedback", label="good"),
        Segment(" The token <|endoftext|> ends texts.", loss=True, role="assistant", eos=True, label="good"),
    ))
    out = RecordTokenizer(bpe_tokenizer, mode)(rec)
    closing = bpe_tokenizer.eos_token_id if mode == "never" else bpe_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert bpe_tokenizer.eos_token_id not in out.input_ids[:-1] or mode == "always"
    assert out.input_ids.count(bpe_tokenizer.eos_token_id) == (1 if mode == "never" else 0)
    assert out.input_ids.count(closing) == (1 if mode == "never" else 2)
    trained = bpe_tokenizer.decode([i for i, m in zip(out.input_ids, out.loss_mask) if m])
    assert "<|endoftext|> ends texts." in trained


def test_a_strict_template_gives_a_clear_error(bpe_tokenizer):
    tok = copy.deepcopy(bpe_tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                         "{{ raise_exception('Conversation roles must alternate') }}{% endif %}{{ m['content'] }}"
                         "{% endfor %}")
    pn = ascii_records(40)[2]
    with pytest.raises(ValueError, match=r"record .*/pn: the tokenizer's chat template refused .*alternate.*never"):
        RecordTokenizer(tok, "always")(pn)


def test_tokenizer_fingerprint(bpe_tokenizer, llama_tokenizer):
    from coh.data.tokenize import tokenizer_fingerprint

    fp = tokenizer_fingerprint(bpe_tokenizer)
    assert fp.startswith("sha256:") and fp != tokenizer_fingerprint(llama_tokenizer)
    tok = copy.deepcopy(bpe_tokenizer)
    tok(["a b c d e"], truncation=True, max_length=2, padding="max_length")  # may set these in the Rust state
    assert tokenizer_fingerprint(tok) == fp
    tok.chat_template = "{{ messages }}"  # recorded on its own by tokenize_config
    assert tokenizer_fingerprint(tok) == fp
    tok.add_tokens(["<new-token>"])
    assert tokenizer_fingerprint(tok) != fp
    tok = copy.deepcopy(bpe_tokenizer)
    tok.eos_token = "<|im_end|>"
    assert tokenizer_fingerprint(tok) != fp


def test_pieces_shared_by_records_are_encoded_once_with_the_same_ids(bpe_tokenizer):
    rt = RecordTokenizer(bpe_tokenizer)
    records = ascii_records(40)
    texts = [text for r in records for text, _, _ in rt._pieces(r.segments)]
    assert len(set(texts)) < 0.8 * len(texts)  # p, pn and np hold the same good output, n, pn, np the bad
    calls = []
    backend = rt.text_backend
    encode_batch = backend.encode_batch

    class Counting:
        def encode_batch(self, batch, **kwargs):
            calls.append(len(batch))
            return encode_batch(batch, **kwargs)

    rt.text_backend = Counting()
    got = rt.batch(records)
    rt.text_backend = backend
    assert calls == [len(set(texts))]
    assert got == [rt(r) for r in records]
