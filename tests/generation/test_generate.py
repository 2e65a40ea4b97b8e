"""``coh.generation.generate``, the synchronous path of ``coh eval`` and ``coh demo``: the greedy
text of plain ``model.generate``, in the prompts' order whatever the batch size, cut before a stop
string, and seeded samples that repeat."""

from __future__ import annotations

from coh.generation import generate
from tests.generation.test_engine import greedy_reference

TEXTS = ["User: hi A helpful answer:", "the", "User: what is the capital of France? A helpful answer:",
         "User: tell me a story about a dog A helpful answer:", "a"]


def test_generate_gives_the_greedy_text_of_each_prompt_in_order(coh_engine):
    model, tok = coh_engine.model, coh_engine.tokenizer
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    got = generate(model, tok, prompts, 6, batch_size=2)
    assert len(got) == len(prompts)
    for ids, text in zip(prompts, got):
        new = greedy_reference(model, ids, 6, tok.eos_token_id)
        prompt_text = tok.decode(ids, skip_special_tokens=True)
        assert text == tok.decode(ids + new, skip_special_tokens=True)[len(prompt_text):]


def test_generate_cuts_before_a_stop_string_and_repeats_a_seeded_sample(coh_engine):
    model, tok = coh_engine.model, coh_engine.tokenizer
    ids = tok(TEXTS[0])["input_ids"]
    (full,) = generate(model, tok, [ids], 12)
    assert len(full) >= 4, full
    stop = full[2:4]
    (cut,) = generate(model, tok, [ids], 12, stop=[stop])
    assert cut == full[: full.index(stop)]
    first = generate(model, tok, [ids, ids], 8, temperature=1.0, seed=5)
    assert generate(model, tok, [ids, ids], 8, temperature=1.0, seed=5) == first
