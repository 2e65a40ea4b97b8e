"""Replies through coh.generation against step-by-step greedy decoding, and generations files."""

from __future__ import annotations

import json

import pytest
import torch

from coh.data.errors import DataError, SetAside
from coh.data.feedback import Turn
from coh.eval.config import Sampling
from coh.eval.generations import generate, prompt_ids, read_generations, write_generations
from coh.models import load_for_inference


def test_batched_generation_equals_step_by_step_greedy(tiny_llama_dir):
    lm = load_for_inference(str(tiny_llama_dir), "cpu")
    contexts = [(Turn("user", "hi"),), (Turn("user", "Can you tell me a long story about a dog and a cat?"),),
                (Turn("user", "What is two plus two?"), Turn("assistant", "Four."), Turn("user", "And three?"))]
    prompts = prompt_ids(lm, contexts, "good")
    got = generate(lm, prompts, Sampling(max_new_tokens=8, batch_size=3))
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


def test_generations_files_round_trip_and_errors(tmp_path):
    contexts = [(Turn("user", "hi"),), (Turn("system", "Be brief."), Turn("user", "Why?"))]
    write_generations(tmp_path / "g.jsonl", ["a", "b"], contexts, "good", ["hello", "Because."])
    assert read_generations(tmp_path / "g.jsonl") == {"a": (contexts[0], "hello"), "b": (contexts[1], "Because.")}
    ok = '{"id": "a", "context": [{"role": "user", "text": "hi"}], "reply": "x"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text(ok + '\n{"id": "b", "context": [{"role": "bot", "text": "x"}], "reply": "y"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'context': expected a non-empty list"):
        read_generations(bad)
    bad.write_text(ok + "\n" + ok.replace('"x"', '"y"') + "\n")
    with pytest.raises(DataError, match=r"line 2, field 'id': id 'a' appears twice"):
        read_generations(bad)


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
    got = read_generations(path, set_aside)
    assert sorted(got) == ["ok", "ok 2"]
    assert [(r["line"], r["field"]) for r in set_aside.rows] == [(2, None), (3, "id"), (4, "reply"), (5, "context"),
                                                                (6, "context"), (7, "reply")]
    with pytest.raises(DataError, match="line 2"):
        read_generations(path)  # without a place to set them aside, the first one stops
    path.write_text(json.dumps([1]) + "\n")
    with pytest.raises(ValueError, match=r"no generations \(1 unusable row"):
        read_generations(path, SetAside())
