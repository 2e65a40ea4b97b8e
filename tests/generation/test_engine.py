"""The engine, without HTTP: scores against a direct forward pass, batching, generation against
plain ``model.generate``, stop strings, seeds, cancelling, slices and EOS."""

from __future__ import annotations

import pytest
import torch

from coh.generation.requests import GenRequest
from tests.generation.fixtures import SCRIPT, paused


def reference_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, from one unpadded forward pass."""
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def greedy_reference(model, ids: list[int], n: int, eos: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    gen = out[0, len(ids):].tolist()
    return gen[: gen.index(eos)] if eos in gen else gen


def run(engine, requests):
    return engine.submit(requests).future.result(timeout=120)


def test_prompt_logprobs_match_a_direct_forward_pass_in_a_batch_of_different_lengths(coh_engine):
    engine = coh_engine
    tok = engine.tokenizer
    prompts = [tok(t)["input_ids"] for t in ("hello there", "User: how do I bake bread? A helpful answer:", "a")]
    results = run(engine, [GenRequest(ids, prompt_logprobs=2) for ids in prompts])
    for ids, res in zip(prompts, results):
        assert res.prompt_logprobs[0] is None and len(res.prompt_logprobs) == len(ids)
        got = [e[1] for e in res.prompt_logprobs[1:]]
        assert [e[0] for e in res.prompt_logprobs[1:]] == ids[1:]
        assert got == pytest.approx(reference_logprobs(engine.model, ids), abs=1e-4)
        for _, lp, alts in res.prompt_logprobs[1:]:  # alternatives: the two likeliest, best first
            assert len(alts) == 2 and alts[0][1] >= alts[1][1] and alts[0][1] >= lp


def test_requests_waiting_together_run_as_one_batch_with_the_same_greedy_text_as_alone(coh_engine):
    engine = coh_engine
    tok = engine.tokenizer
    texts = ["User: hi A helpful answer:", "User: what is the capital of France? A helpful answer:",
             "the", "User: tell me a story about a dog A helpful answer:"]
    prompts = [tok(t)["input_ids"] for t in texts]
    before = engine.stats["batches"]
    with paused(engine):
        jobs = [engine.submit([GenRequest(ids, max_new_tokens=6)]) for ids in prompts]
    results = [j.future.result(timeout=120)[0] for j in jobs]
    assert engine.stats["batches"] == before + 1  # four jobs, one generate call
    eos = tok.eos_token_id
    for ids, res in zip(prompts, results):
        assert res.token_ids == greedy_reference(engine.model, ids, 6, eos)
        prompt_text = tok.decode(ids, skip_special_tokens=True)
        assert res.text == tok.decode(ids + res.token_ids, skip_special_tokens=True)[len(prompt_text):]
        assert res.finish_reason == ("length" if len(res.token_ids) == 6 else "stop")


def test_single_greedy_step_from_the_forward_pass_equals_generate(coh_engine):
    engine = coh_engine
    ids = engine.tokenizer("User: hi there A helpful answer:")["input_ids"]
    (one,) = run(engine, [GenRequest(ids, max_new_tokens=1, logprobs=1, prompt_logprobs=1)])
    assert one.token_ids == greedy_reference(engine.model, ids, 1, engine.tokenizer.eos_token_id)[:1]
    tok, lp, alts = one.logprobs[0]
    assert alts[0] == (tok, lp)  # greedy: the chosen token is the top one
    with torch.no_grad():
        ref = engine.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)[tok].item()
    assert lp == pytest.approx(ref, abs=1e-4)


def test_stop_strings_cut_the_text_and_streamed_deltas_add_up_to_it(scripted_engine, scripted_prompt):
    engine = scripted_engine
    ids = scripted_prompt
    (full,) = run(engine, [GenRequest(ids, max_new_tokens=20)])
    assert full.text == " " + SCRIPT and full.finish_reason == "stop"  # EOS after the script
    deltas = []
    job = engine.submit([GenRequest(ids, max_new_tokens=20, stop=("alert(", "nothing"))],
                        on_event=lambda event, i, p: deltas.append(p) if event == "delta" else None)
    (res,) = job.future.result(timeout=60)
    assert res.text == " <img src onerror=" and res.finish_reason == "stop"
    assert "".join(d.text for d in deltas) == res.text
    assert [t for d in deltas for t in d.token_ids] == res.token_ids
    assert "".join(res.pieces) == res.text
    (short,) = run(engine, [GenRequest(ids, max_new_tokens=2)])
    assert short.text == " <img src" and short.finish_reason == "length" and len(short.token_ids) == 2


def test_the_same_seed_gives_the_same_sample_whatever_ran_before(coh_engine):
    engine = coh_engine
    ids = engine.tokenizer("User: hi A helpful answer:")["input_ids"]
    req = GenRequest(ids, max_new_tokens=8, temperature=5.0, seed=1234)
    (first,) = run(engine, [req])
    run(engine, [GenRequest(ids, max_new_tokens=8, temperature=5.0)])  # an unseeded sample in between
    (again,) = run(engine, [req])
    assert first.token_ids == again.token_ids
    (other,) = run(engine, [GenRequest(ids, max_new_tokens=8, temperature=5.0, seed=99)])
    assert len(other.token_ids) == 8


def test_top_p_and_top_k_filter_the_sampled_tokens(coh_engine):
    engine = coh_engine
    ids = engine.tokenizer("User: tell me about bread A helpful answer:")["input_ids"]
    greedy = greedy_reference(engine.model, ids, 6, engine.tokenizer.eos_token_id)
    # With only the likeliest token left, sampling at a high temperature must give the greedy text.
    (by_p,) = run(engine, [GenRequest(ids, max_new_tokens=6, temperature=50.0, top_p=1e-6, seed=3)])
    (by_k,) = run(engine, [GenRequest(ids, max_new_tokens=6, temperature=50.0, top_k=1, seed=3)])
    assert by_p.token_ids == by_k.token_ids == greedy


def test_a_cancelled_job_stops_and_says_so(coh_engine):
    engine = coh_engine
    ids = engine.tokenizer("User: hi A helpful answer:")["input_ids"]
    with paused(engine):
        job = engine.submit([GenRequest(ids, max_new_tokens=200), GenRequest(ids, prompt_logprobs=1)])
        job.cancel()  # the client went away before its turn
    results = job.future.result(timeout=60)
    assert [r.finish_reason for r in results] == ["abort", "abort"] and results[0].token_ids == []


def test_generations_in_slices_give_the_same_tokens_as_in_one_go(coh_engine):
    """Generations that take turns (a slice of 2 decode steps each) continue from their KV cache and
    their own random state: greedy and seeded samples equal those of each generation run alone."""
    from coh.generation.config import EngineConfig
    from coh.generation.engine import Engine

    base = coh_engine
    tok = base.tokenizer
    prompts = [tok(t)["input_ids"] for t in ("User: hi A helpful answer:", "User: tell me about bread A helpful answer:")]
    requests = [GenRequest(prompts[0], max_new_tokens=24),
                GenRequest(prompts[1], max_new_tokens=30, temperature=1.5, seed=7),
                GenRequest(prompts[0], max_new_tokens=20, temperature=0.8, top_k=40, seed=8, logprobs=2)]
    alone = [run(base, [req])[0] for req in requests]
    sliced = Engine(base.model, tok, EngineConfig(slice_steps=2, batch_wait_ms=50))
    sliced.start()
    try:
        with paused(sliced):
            jobs = [sliced.submit([req]) for req in requests]
        together = [j.future.result(timeout=120)[0] for j in jobs]
        assert sliced.stats["yields"] >= 3  # they really took turns
    finally:
        sliced.close()
    for a, b in zip(alone, together):
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
    assert [e[0] for e in together[2].logprobs] == together[2].token_ids
    assert [e[1] for e in together[2].logprobs] == pytest.approx([e[1] for e in alone[2].logprobs], abs=1e-5)


def test_a_generation_reports_eos_as_its_last_token(scripted_engine, scripted_prompt):
    engine = scripted_engine
    ids = scripted_prompt
    (res,) = run(engine, [GenRequest(ids, max_new_tokens=20, logprobs=1)])
    eos = engine.tokenizer.eos_token_id
    assert res.token_ids[-1] == eos and res.pieces[-1] == "" and res.finish_reason == "stop"
    assert len(res.logprobs) == len(res.token_ids) and res.logprobs[-1][0] == eos
    assert eos not in res.token_ids[:-1] and res.text == " " + SCRIPT
