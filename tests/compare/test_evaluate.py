"""The protocols against small obviously-correct references: records rendered as training renders
them, likelihoods from a plain HF forward pass of the whole text, plain-text loss from HF's own loss."""

from __future__ import annotations

import math
import random

import pytest
import torch

from coh.compare.evaluate import plain_preference, plain_text_loss, reply_records
from coh.data.feedback import Candidate, FeedbackExample, Turn
from coh.data.phrases import PhraseSet

EXAMPLES = [
    FeedbackExample("a", "dialogue", "eval", (Turn("user", "How do I bake bread?"),),
                    (Candidate("Mix flour, water and yeast, then bake it."), Candidate("No."))),
    FeedbackExample("b", "dialogue", "eval",
                    (Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "Tell me a joke.")),
                    (Candidate("Why did the chicken cross the road?"), Candidate("I hate you."))),
    FeedbackExample("c", "dialogue", "eval", (Turn("user", "Is water wet?"),),
                    (Candidate("Water makes things wet."), Candidate("Maybe, maybe not, who knows"))),
]


def test_reply_records_render_as_training_does():
    """After the positive phrase: exactly the `p` record of `coh data`; after the plain prompt:
    exactly what `coh train`'s sft mode trains on."""
    from coh.data.render import render_one
    from coh.train.data import for_mode

    phrases = PhraseSet()
    for feedback, expected in (("good", lambda ex: render_one(ex, "p", (phrases.good, phrases.bad), phrases,
                                                             random.Random(0))),
                               (None, None)):
        records = reply_records(EXAMPLES, phrases, feedback)
        for k, ex in enumerate(EXAMPLES):
            chosen = records[2 * k]
            p_record = render_one(ex, "p", (phrases.good, phrases.bad), phrases, random.Random(0))
            if feedback == "good":
                assert [s.text for s in chosen.segments] == [s.text for s in expected(ex)]
            else:
                from coh.data.records import FeedbackRecord

                sft = for_mode([FeedbackRecord("x", "d", "p", tuple(p_record))], "sft")[0]
                assert [s.text for s in chosen.segments] == [s.text for s in sft.segments]
            assert [s.loss for s in chosen.segments][-1] and not any(s.loss for s in chosen.segments[:-1])
            assert records[2 * k + 1].segments[-1].text.strip() == ex.candidates[-1].text


def test_reply_records_plain_text_by_hand():
    recs = reply_records(EXAMPLES[:1], PhraseSet(), None)
    assert "".join(s.text for s in recs[0].segments) == "User: How do I bake bread? Mix flour, water and yeast, then bake it."
    recs = reply_records(EXAMPLES[:1], PhraseSet(), "good")
    assert "".join(s.text for s in recs[1].segments) == "User: How do I bake bread? A helpful answer: No."


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, bpe_tokenizer):
    from coh.models import load_for_inference
    from coh.tiny import make_tiny_model

    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_model(folder, bpe_tokenizer, "llama", hidden=32, layers=2, seed=3)
    return load_for_inference(str(folder), "cpu")


def _reference_nll(lm, text: str, reply: str) -> tuple[float, int]:
    """Summed NLL of the reply tokens and EOS after ``text``, one unpacked HF forward pass."""
    tok = lm.tokenizer
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    target = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, :-1].float(), -1)
    positions = range(len(prompt) - 1, len(prompt) + len(target) - 1)
    return -sum(float(logp[p, ids[0, p + 1]]) for p in positions), len(target)


def test_plain_preference_against_reference(tiny_lm):
    metrics, ci = plain_preference(tiny_lm, EXAMPLES)
    hits, hits_tok = [], []
    for ex in EXAMPLES:
        from coh.compare.methods import prompt_text

        prompt = prompt_text(ex.context, tiny_lm.phrases, tiny_lm.tokenizer.eos_token)
        c, nc = _reference_nll(tiny_lm, prompt, " " + ex.candidates[0].text)
        r, nr = _reference_nll(tiny_lm, prompt, " " + ex.candidates[-1].text)
        hits.append(c < r)
        hits_tok.append(c / nc < r / nr)
    assert metrics["plain_preference_accuracy"] == pytest.approx(sum(hits) / 3)
    assert metrics["plain_preference_accuracy_per_token"] == pytest.approx(sum(hits_tok) / 3)
    low, high = ci["plain_preference_accuracy"]
    assert 0 <= low <= metrics["plain_preference_accuracy"] <= high <= 1


def test_plain_text_loss_against_hf_loss(tiny_lm):
    docs = ["The cat sat on the mat and looked at the door.", "Water boils at one hundred degrees.",
            "A short line of plain English text."]
    loss, (low, high), tokens = plain_text_loss(tiny_lm, docs, 10**6)
    total, count = 0.0, 0
    for d in docs:
        ids = torch.tensor([tiny_lm.tokenizer(d)["input_ids"]])
        with torch.no_grad():
            out = tiny_lm.model(input_ids=ids, labels=ids)
        total += float(out.loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    assert tokens == count
    assert loss == pytest.approx(total / count, rel=1e-4)
    assert low <= loss <= high
    # the token cap keeps whole documents in order
    _, _, first = plain_text_loss(tiny_lm, docs, 1)
    assert first == len(tiny_lm.tokenizer(docs[0])["input_ids"]) - 1


def test_scorer_accuracy_counts_ties_as_misses():
    from coh.compare.evaluate import scorer_accuracy

    class Fixed:
        name = "fixed"

        def score(self, contexts, replies):
            return [float(len(r)) for r in replies]

    acc, (low, high), n = scorer_accuracy(Fixed(), EXAMPLES)
    expected = sum(len(ex.candidates[0].text) > len(ex.candidates[-1].text) for ex in EXAMPLES) / 3
    assert n == 3 and acc == pytest.approx(expected) and low <= acc <= high
    assert not math.isnan(low)
