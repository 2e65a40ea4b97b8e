"""Sequence likelihoods through the training loss against unpacked one-sequence log-likelihoods."""

from __future__ import annotations

import pytest

from coh.data.records import FeedbackRecord, Segment
from coh.eval.likelihood import sequence_nll
from coh.models import load_for_inference
from tests.eval.reference import naive_logprob


@pytest.mark.parametrize("packs", [True, False])
def test_sequence_nll_matches_unpacked_reference(tiny_llama_dir, packs):
    lm = load_for_inference(str(tiny_llama_dir), "cpu")
    assert lm.packs  # LLaMA honours position_ids resets
    lm.packs = packs
    texts = [("User: hello there A helpful answer:", " hi, how are you?"), ("Why is the sky blue?", " Light."),
             ("User: a longer question about cooking pasta at home A helpful answer:", " Boil water, add salt.")]
    records = [FeedbackRecord(str(i), "t", "p", (Segment(p, False, "prompt"), Segment(r, True, "assistant", eos=True)))
               for i, (p, r) in enumerate(texts)]
    nll, count = sequence_nll(lm, records, batch_tokens=64)
    for rec, value, n in zip(records, nll, count):
        tok = lm.record_tokenizer(rec)
        start = tok.loss_mask.index(1)
        assert n == len(tok.input_ids) - start
        assert value == pytest.approx(-naive_logprob(lm.model, tok.input_ids, start), abs=1e-3)
