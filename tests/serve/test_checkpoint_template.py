"""Done-when of the checkpoint's prompt format (issue 16): a checkpoint of the demo, prompted by
plain ``transformers`` through the chat template it carries (``feedback="good"`` / ``"bad"``),
replies exactly as ``coh serve`` does with the same phrases (greedy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coh.cli import main
from coh.data.chat_template import base_chat_template, template_format
from coh.tiny import CHATML_TEMPLATE
from tests.serve.conftest import make_server

MAX_NEW = 12


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    # COH_TEST_DEMO_RUN=runs/demo: the same checks on a full `coh demo` run (its replies are real
    # sentences; the quick run's are mostly blank), without training again
    if os.environ.get("COH_TEST_DEMO_RUN"):
        return Path(os.environ["COH_TEST_DEMO_RUN"])
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--quick", "--no-progress", "--output-dir", str(out), "--seed", "3"]) == 0
    return out


def _prompts(demo_run) -> list[str]:
    return [json.loads(line)["prompt"] for line in (demo_run / "task" / "heldout.jsonl").open()][:4]


def test_every_checkpoint_carries_the_template(demo_run):
    for mode in ("coh", "sft"):
        checkpoints = sorted((demo_run / mode).glob("checkpoint-*"))
        assert checkpoints
        for folder in (demo_run / mode / "final", *checkpoints):
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
            assert template_format(template) == "coh", folder  # plain CoH text
            assert base_chat_template(template) == CHATML_TEMPLATE  # the base model's, kept for retraining
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_run / "sft" / "final")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert not text.endswith("answer:")  # sft replies follow no phrase by default
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False,
                                   feedback="bad").endswith("User: hi An unhelpful answer:")


def test_transformers_through_the_template_replies_as_coh_serve(demo_run):
    import httpx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    final = demo_run / "coh" / "final"
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    generate = pipeline("text-generation", model=model, tokenizer=tok)
    server = make_server(final, name="demo")
    try:
        first_logprobs = {}
        for feedback in ("good", "bad"):
            for prompt in _prompts(demo_run):
                messages = [{"role": "user", "content": prompt}]
                r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
                    "model": "demo", "messages": messages, "feedback": feedback, "temperature": 0,
                    "max_tokens": MAX_NEW, "logprobs": True})
                assert r.status_code == 200, r.text
                choice = r.json()["choices"][0]
                served, served_logprobs = choice["message"]["content"], choice["logprobs"]["content"]
                # generate() over apply_chat_template: the ids are the server's prompt ids
                ids = tok.apply_chat_template(messages, add_generation_prompt=True, feedback=feedback,
                                              return_tensors="pt")["input_ids"]
                served_ids = httpx.post(server.url + "/tokenize", json={"messages": messages, "feedback": feedback}
                                        ).json()["tokens"]
                assert ids[0].tolist() == served_ids
                with torch.no_grad():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=MAX_NEW, pad_token_id=tok.pad_token_id,
                                         output_scores=True, return_dict_in_generate=True)
                new = out.sequences[0, ids.shape[1]:]
                text = tok.decode(new, skip_special_tokens=True)
                # coh serve ends a CoH-format reply where the next user turn would begin (its stop
                # string); an engine is given the same stop (docs/serve.md).
                text = text.split("User:")[0]
                assert text.strip() == served.strip(), (feedback, prompt)
                # The same distributions, not only the same argmax (a quick demo's replies are short).
                ours = [torch.log_softmax(score[0].float(), -1)[t].item() for score, t in zip(out.scores, new)]
                n = min(len(ours), len(served_logprobs))
                assert n >= 1
                assert ours[:n] == pytest.approx([e["logprob"] for e in served_logprobs[:n]], abs=1e-4)
                first_logprobs[feedback, prompt] = ours[0]
                # and the text-generation pipeline, the template variable passed through
                piped = generate(messages, max_new_tokens=MAX_NEW, do_sample=False,
                                 tokenizer_encode_kwargs={"feedback": feedback})[0]["generated_text"][-1]["content"]
                assert piped.split("User:")[0].strip() == served.strip(), (feedback, prompt)
        # the phrase changes what the model predicts
        assert any(first_logprobs["good", p] != first_logprobs["bad", p] for p in _prompts(demo_run))
    finally:
        server.stop()
