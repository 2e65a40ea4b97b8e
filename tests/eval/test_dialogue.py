"""The dialogue protocol on real hh-rlhf pairs against a naive reference."""

from __future__ import annotations

import pytest

from coh.data.feedback import Turn
from coh.data.render import prompt_record
from coh.eval.dialogue import dialogue_scores, eval_dialogue
from coh.eval.examples import read_examples
from coh.models import load_for_inference
from tests.conftest import BUILTIN_HH, HH_SAMPLE
from tests.eval.reference import naive_logprob

HH = HH_SAMPLE if HH_SAMPLE.exists() else BUILTIN_HH


def test_dialogue_scores_on_real_hh_match_a_naive_reference(tiny_bpe_dir):
    examples, _counts = read_examples("dialogue", str(HH), limit=40)
    examples = [ex for ex in examples if not any(c.followup for c in ex.candidates)][:6]
    lm = load_for_inference(str(tiny_bpe_dir), "cpu")
    tok = lm.tokenizer
    s = dialogue_scores(lm, examples, batch_tokens=512)
    for k, ex in enumerate(examples):
        # Reference: the documented inference prompt, then the reply and EOS, as plain token ids
        # (byte-level BPE: encoding the reply alone gives the same tokens as in running text).
        prompt = lm.record_tokenizer(prompt_record(ex.context, lm.phrases, "good")).input_ids
        for cand, got in ((ex.candidates[0], s.chosen_logprob[k]), (ex.candidates[1], s.rejected_logprob[k])):
            reply = [*tok.encode(" " + cand.text, add_special_tokens=False), tok.eos_token_id]
            assert got == pytest.approx(naive_logprob(lm.model, prompt + reply, len(prompt)), abs=2e-3)
        for cand, got in ((ex.candidates[0], s.verdict_chosen[k]), (ex.candidates[1], s.verdict_rejected[k])):
            turns = [*ex.context, Turn("assistant", cand.text)]
            dialogue = "\n\n".join(f"{'Human' if t.role == 'user' else 'Assistant'}: {t.text}" for t in turns)
            context = tok.encode(f"The following is a dialogue: {dialogue}. This dialogue is")
            good, bad = (naive_logprob(lm.model, context + tok.encode(w), len(context)) for w in (" good", " bad"))
            assert got == pytest.approx(good - bad, abs=1e-3)
    metrics, ci95 = eval_dialogue(lm, examples, batch_tokens=512)
    expected = sum(c > r for c, r in zip(s.chosen_logprob, s.rejected_logprob)) / len(examples)
    assert metrics["preference_accuracy"] == expected
    assert ci95["preference_accuracy"][0] <= expected <= ci95["preference_accuracy"][1]
    expected = sum(c > r for c, r in zip(s.verdict_chosen, s.verdict_rejected)) / len(examples)
    assert metrics["dialogue_is_good_accuracy"] == expected
    assert metrics["chosen_judged_good"] == sum(c > 0 for c in s.verdict_chosen) / len(examples)
