"""The paper's protocols against small, obviously correct references: unpacked one-sequence
log-likelihoods, step-by-step greedy decoding, and a model trained to answer yes/no by phrase."""

from __future__ import annotations

import json

import pytest
import torch

from coh.data.errors import DataError
from coh.data.feedback import Candidate, FeedbackExample, Turn
from coh.data.records import FeedbackRecord, Segment
from coh.data.render import prompt_record
from coh.eval import feedback as fb
from coh.eval.judges import FunctionJudge
from coh.judge.sources import SetAside
from coh.models import load_for_inference
from tests.conftest import BUILTIN_HH, FIXTURES, HH_SAMPLE
from tests.eval.conftest import HH_81_92, TRAINED_PHRASES, needs_serve, short_examples

HH = HH_SAMPLE if HH_SAMPLE.exists() else BUILTIN_HH


def naive_logprob(model, ids: list[int], start: int) -> float:
    """log p(ids[start:] | ids[:start]): one unpadded sequence, no packing."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


@pytest.mark.parametrize("packs", [True, False])
def test_sequence_nll_matches_unpacked_reference(tiny_llama_dir, packs):
    lm = load_for_inference(str(tiny_llama_dir), "cpu")
    assert lm.packs  # LLaMA honours position_ids resets
    lm.packs = packs
    texts = [("User: hello there A helpful answer:", " hi, how are you?"), ("Why is the sky blue?", " Light."),
             ("User: a longer question about cooking pasta at home A helpful answer:", " Boil water, add salt.")]
    records = [FeedbackRecord(str(i), "t", "p", (Segment(p, False, "prompt"), Segment(r, True, "assistant", eos=True)))
               for i, (p, r) in enumerate(texts)]
    nll, count = fb.sequence_nll(lm, records, batch_tokens=64)
    for rec, value, n in zip(records, nll, count):
        tok = lm.record_tokenizer(rec)
        start = tok.loss_mask.index(1)
        assert n == len(tok.input_ids) - start
        assert value == pytest.approx(-naive_logprob(lm.model, tok.input_ids, start), abs=1e-3)


def test_dialogue_scores_on_real_hh_match_a_naive_reference(tiny_bpe_dir):
    examples, _counts = fb.read_examples("dialogue", str(HH), limit=40)
    examples = [ex for ex in examples if not any(c.followup for c in ex.candidates)][:6]
    lm = load_for_inference(str(tiny_bpe_dir), "cpu")
    tok = lm.tokenizer
    s = fb.dialogue_scores(lm, examples, batch_tokens=512)
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
    metrics, ci95 = fb.eval_dialogue(lm, examples, batch_tokens=512)
    expected = sum(c > r for c, r in zip(s.chosen_logprob, s.rejected_logprob)) / len(examples)
    assert metrics["preference_accuracy"] == expected
    assert ci95["preference_accuracy"][0] <= expected <= ci95["preference_accuracy"][1]
    expected = sum(c > r for c, r in zip(s.verdict_chosen, s.verdict_rejected)) / len(examples)
    assert metrics["dialogue_is_good_accuracy"] == expected
    assert metrics["chosen_judged_good"] == sum(c > 0 for c in s.verdict_chosen) / len(examples)


def test_batched_generation_equals_step_by_step_greedy(tiny_llama_dir):
    lm = load_for_inference(str(tiny_llama_dir), "cpu")
    contexts = [(Turn("user", "hi"),), (Turn("user", "Can you tell me a long story about a dog and a cat?"),),
                (Turn("user", "What is two plus two?"), Turn("assistant", "Four."), Turn("user", "And three?"))]
    prompts = fb.prompt_ids(lm, contexts, "good")
    got = fb.generate(lm, prompts, fb.Sampling(max_new_tokens=8, batch_size=3))
    for ids, text in zip(prompts, got):
        ids = list(ids)
        new: list[int] = []
        for _ in range(8):
            with torch.no_grad():
                nxt = int(lm.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == lm.tokenizer.eos_token_id:
                break
            new.append(nxt)
        assert text == lm.tokenizer.decode(new, skip_special_tokens=True).split("User:")[0].strip()


def test_controllability_follows_the_trained_phrases(yes_no_dir, tmp_path):
    lm = load_for_inference(str(yes_no_dir), "cpu")
    assert (lm.phrases.good, lm.phrases.bad) == (TRAINED_PHRASES["good"], TRAINED_PHRASES["bad"])
    judge = FunctionJudge(lambda prompt, reply: float(reply == "yes"), "yes")
    metrics, ci95, counts = fb.eval_controllability(lm, short_examples(), judge, fb.Sampling(max_new_tokens=4),
                                                    tmp_path)
    assert metrics["judge_good_mean"] == 1.0 and metrics["judge_bad_mean"] == 0.0
    assert metrics["good_over_bad_win_rate"] == 1.0 and ci95["good_over_bad_win_rate"] == (1.0, 1.0)
    assert counts == {"prompts": 8, "wins": 8, "ties": 0, "losses": 0}
    rows = [json.loads(line) for line in (tmp_path / "generations_bad.jsonl").read_text().splitlines()]
    assert {r["reply"] for r in rows} == {"no"} and rows[0]["context"][0]["role"] == "user"


def test_pairwise_model_against_files(yes_no_dir, tmp_path):
    examples = short_examples()
    ids, contexts = [ex.id for ex in examples], [ex.context for ex in examples]
    # B: a file answering "yes" to the first four prompts only, and missing the last one.
    fb.write_generations(tmp_path / "b.jsonl", ids[:-1], contexts[:-1], "good", ["yes"] * 4 + ["no"] * 3)
    judge = FunctionJudge(lambda prompt, reply: float(reply == "yes"), "yes")
    a, b = fb.Side.open(str(yes_no_dir)), fb.Side.open(str(tmp_path / "b.jsonl"))
    metrics, ci95, counts = fb.eval_pairwise(a, b, judge, examples, fb.Sampling(max_new_tokens=4),
                                             output_dir=tmp_path)
    assert counts == {"prompts": 7, "missing": 1, "wins": 3, "ties": 4, "losses": 0}
    assert metrics["win_rate_a_over_b"] == pytest.approx((3 + 4 / 2) / 7)
    assert ci95["win_rate_a_over_b"][0] < metrics["win_rate_a_over_b"] <= ci95["win_rate_a_over_b"][1] <= 1.0
    # The model's replies were kept: the same comparison from two files gives the same numbers.
    again = fb.eval_pairwise(fb.Side.open(str(tmp_path / "generations_a.jsonl")), b, judge, None, fb.Sampling())
    assert again == (metrics, ci95, counts)


def test_summarization_prompt_references_and_rouge(tiny_llama_dir, monkeypatch):
    lm = load_for_inference(str(tiny_llama_dir), "cpu")
    post = (Turn("user", "My cat knocks cups off the table every morning."),)
    other = (Turn("user", "The bus was late three days in a row."),)
    examples = [FeedbackExample("s/1", "summary", "eval", post, (Candidate("Cat knocks cups off."), Candidate("Cat."))),
                FeedbackExample("s/2", "summary", "eval", post, (Candidate("A cat breaks cups daily."), Candidate("x"))),
                FeedbackExample("s/3", "summary", "eval", other, (Candidate("Late bus."), Candidate("Bus.")))]
    seen = {}

    def fake_generate(lm_, prompts, sampling, progress=False, desc=""):
        seen["prompts"] = [lm.tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
        return ["A cat breaks cups daily.", ""]

    monkeypatch.setattr(fb, "generate", fake_generate)
    metrics, _, counts = fb.eval_summarization(lm, examples, fb.Sampling())
    assert seen["prompts"][0] == ("User: Write a summary of the following article: My cat knocks cups off the "
                                  "table every morning. A helpful answer:")
    assert counts == {"posts": 2, "empty_summaries": 1}
    # Post 1 matches its second preferred summary exactly (best reference counts), post 2 is empty.
    assert metrics["rouge1"] == pytest.approx(0.5) and metrics["rougeL"] == pytest.approx(0.5)
    fb.eval_summarization(lm, examples, fb.Sampling(), feedback="a good summary is:", task_phrase="")
    assert seen["prompts"][0] == "User: My cat knocks cups off the table every morning. a good summary is:"
    fb.eval_summarization(lm, examples, fb.Sampling(), feedback="none", task_phrase="")
    assert seen["prompts"][0] == "User: My cat knocks cups off the table every morning."


def test_read_examples_counts_and_errors():
    examples, counts = fb.read_examples("webgpt", str(FIXTURES / "webgpt_comparisons.jsonl"))
    assert counts == {"rows": 12, "examples": 10, "skipped": 2, "skipped: webgpt tie (equal scores)": 2}
    examples, counts = fb.read_examples("dialogue", str(FIXTURES / "hh_rlhf_train.jsonl"), limit=3)
    assert len(examples) == 3 and counts["rows"] == 3
    bad = FIXTURES / "bad" / "hh_bad_transcript.jsonl"
    with pytest.raises(DataError, match=r"hh_bad_transcript.jsonl, line 1, field 'chosen'"):
        fb.read_examples("dialogue", str(bad))


def test_generations_files_round_trip_and_errors(tmp_path):
    contexts = [(Turn("user", "hi"),), (Turn("system", "Be brief."), Turn("user", "Why?"))]
    fb.write_generations(tmp_path / "g.jsonl", ["a", "b"], contexts, "good", ["hello", "Because."])
    assert fb.read_generations(tmp_path / "g.jsonl") == {"a": (contexts[0], "hello"), "b": (contexts[1], "Because.")}
    ok = '{"id": "a", "context": [{"role": "user", "text": "hi"}], "reply": "x"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text(ok + '\n{"id": "b", "context": [{"role": "bot", "text": "x"}], "reply": "y"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'context': expected a non-empty list"):
        fb.read_generations(bad)
    bad.write_text(ok + "\n" + ok.replace('"x"', '"y"') + "\n")
    with pytest.raises(DataError, match=r"line 2, field 'id': id 'a' appears twice"):
        fb.read_generations(bad)


def test_generations_files_with_unusable_rows_set_aside(tmp_path):
    """Each kind of unusable row is left out and recorded with its line; good rows are kept."""
    good = {"id": "ok", "context": [{"role": "user", "text": "hi"}], "reply": "hello"}
    rows = [good, [1, 2], {**good, "id": 7}, {**good, "id": "no reply", "reply": None},
            {**good, "id": "no context", "context": []},
            {**good, "id": "ends with the assistant", "context": [{"role": "assistant", "text": "x"}]},
            {**good, "id": "lone surrogate", "reply": "\ud83d"}, {**good, "id": "ok 2"}]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    set_aside = SetAside()
    got = fb.read_generations(path, set_aside)
    assert sorted(got) == ["ok", "ok 2"]
    assert [(r["line"], r["field"]) for r in set_aside.rows] == [(2, None), (3, "id"), (4, "reply"), (5, "context"),
                                                                (6, "context"), (7, "reply")]
    with pytest.raises(DataError, match="line 2"):
        fb.read_generations(path)  # without a place to set them aside, the first one stops
    path.write_text(json.dumps([1]) + "\n")
    with pytest.raises(ValueError, match=r"no generations \(1 unusable row"):
        fb.read_generations(path, SetAside())


def test_read_examples_sets_aside_real_hh_rows_with_an_empty_reply():
    """Rows 81-92 of the published hh-rlhf harmless test split: row 87 has an empty chosen reply."""
    set_aside = SetAside()
    examples, counts = fb.read_examples("dialogue", str(HH_81_92), set_aside=set_aside)
    assert len(examples) == 11 and counts["rows"] == 12 and counts["invalid"] == 1
    assert counts["invalid: chosen: empty reply"] == 1
    assert set_aside.rows == [{"file": str(HH_81_92), "line": 7, "field": "chosen", "problem": "empty reply"}]
    with pytest.raises(DataError, match=r"line 7, field 'chosen': empty reply"):
        fb.read_examples("dialogue", str(HH_81_92))
    # --limit counts examples: the row set aside does not use one up
    examples, counts = fb.read_examples("dialogue", str(HH_81_92), limit=8, set_aside=SetAside())
    assert len(examples) == 8 and counts["rows"] == 9 and counts["invalid"] == 1


@needs_serve
def test_pairwise_with_a_server_side_follows_the_feedback_field(yes_no_dir, serve, tmp_path):
    url = serve(yes_no_dir)
    examples = short_examples()
    contexts = [ex.context for ex in examples]
    assert fb.generate_http(url, contexts, "bad", fb.Sampling(max_new_tokens=4)) == ["no"] * len(examples)
    judge = FunctionJudge(lambda prompt, reply: float(reply == "yes"), "yes")
    a, b = fb.Side.open(url), fb.Side.open(str(yes_no_dir))
    metrics, _, counts = fb.eval_pairwise(a, b, judge, examples, fb.Sampling(max_new_tokens=4), output_dir=tmp_path)
    assert counts == {"prompts": 8, "missing": 0, "wins": 0, "ties": 8, "losses": 0}  # "yes" on both sides
    assert metrics["win_rate_a_over_b"] == 0.5
    assert fb.read_generations(tmp_path / "generations_a.jsonl") == fb.read_generations(tmp_path / "generations_b.jsonl")
