"""lm-evaluation-harness's ``local-completions`` against the server, offline: tasks defined by local
YAML and JSONL files, the tokenizer read through the server's endpoints (no local tokenizer).
Loglikelihoods must equal a direct computation with the model; generations must stop as asked."""

from __future__ import annotations

import json
import math

import pytest

from tests.generation.fixtures import SCRIPT
from tests.generation.test_engine import reference_logprobs

lm_eval = pytest.importorskip("lm_eval")

DOCS = [
    {"question": "What colour is the sky?", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "How many legs has a cat?", "choices": ["two", "four", "none at all"], "answer": 1},
    {"question": "What do bees make?", "choices": ["honey", "steel", "rain"], "answer": 0},
    {"question": "Which is a fruit?", "choices": ["a chair", "a table", "an apple"], "answer": 2},
]

MC_TASK = """task: coh_serve_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""

GEN_TASK = """task: coh_serve_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "User: {{{{question}}}} A helpful answer:"
doc_to_target: "x"
generation_kwargs:
  until: ["alert"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""


def evaluate(server, model_name: str, task: str, task_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    args = (f"model={model_name},base_url={server.url}/v1/completions,tokenizer_backend=remote,"
            "tokenized_requests=True,num_concurrent=2,max_retries=1")
    # include_defaults=False: indexing lm-eval's thousands of built-in task files takes seconds.
    tasks = TaskManager(include_path=str(task_dir), include_defaults=False)
    return simple_evaluate(model="local-completions", model_args=args, tasks=[task], batch_size=3,
                           task_manager=tasks, log_samples=True)


def test_lm_eval_local_completions_scores_like_the_model_itself(tmp_path, coh_server, scripted_server):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    (tmp_path / "mc.yaml").write_text(MC_TASK.format(data=data), encoding="utf-8")
    (tmp_path / "gen.yaml").write_text(GEN_TASK.format(data=data), encoding="utf-8")

    out = evaluate(coh_server, "tiny", "coh_serve_mc", tmp_path)
    tok, model = coh_server.engine.tokenizer, coh_server.engine.model
    samples = sorted(out["samples"]["coh_serve_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(DOCS)
    correct = 0
    for doc, sample in zip(DOCS, samples):
        context = f"Question: {doc['question']}\nAnswer:"
        expected = []
        for choice in doc["choices"]:  # lm-eval's split: the context's tokens, then the rest of the whole
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
            lps = reference_logprobs(model, whole)
            expected.append(sum(lps[len(ctx) - 1:]))
        got = [resp[0][0] for resp in sample["resps"]]
        assert got == pytest.approx(expected, abs=1e-3)
        correct += int(max(range(len(expected)), key=expected.__getitem__) == doc["answer"])
    assert out["results"]["coh_serve_mc"]["acc,none"] == pytest.approx(correct / len(DOCS))
    assert not math.isnan(out["results"]["coh_serve_mc"]["acc,none"])

    gen = evaluate(scripted_server, "scripted", "coh_serve_gen", tmp_path)
    texts = [s["resps"][0][0] for s in gen["samples"]["coh_serve_gen"]]
    assert texts == [" " + SCRIPT.split("alert")[0]] * len(DOCS)


# Short factual questions put through SmolLM2's chat template, with one-word answers as the choices:
# after an answer with a full stop the model's likeliest next token is <|im_end|> (EOS), after a bare
# word it is usually not, so the task holds both kinds of items.
QUESTIONS = [
    ("What is the capital of France?", ["Paris.", "London.", "Berlin.", "Rome."]),
    ("What colour is the sky on a clear day?", ["Blue.", "Green.", "Red.", "Yellow."]),
    ("How many legs does a spider have?", ["Eight", "Six", "Four", "Ten"]),
    ("Which animal says moo?", ["A cow.", "A cat.", "A dog.", "A duck."]),
    ("What do bees make?", ["Honey", "Milk", "Silk", "Bread"]),
    ("What is frozen water called?", ["Ice.", "Steam.", "Sand.", "Glass."]),
    ("Which planet do we live on?", ["Earth.", "Mars.", "Venus.", "Jupiter."]),
    ("What is 2 + 2?", ["4", "3", "5", "22"]),
    ("Which season is the coldest?", ["Winter.", "Summer.", "Spring.", "Autumn."]),
    ("What gas do people breathe in to live?", ["Oxygen", "Helium", "Neon", "Argon"]),
    ("Which is the largest ocean?", ["The Pacific.", "The Atlantic.", "The Indian.", "The Arctic."]),
    ("What do you call a baby dog?", ["A puppy", "A kitten", "A calf", "A foal"]),
    ("Which fruit is yellow and curved?", ["A banana.", "An apple.", "A grape.", "A cherry."]),
    ("What language is spoken in Spain?", ["Spanish", "German", "Japanese", "Russian"]),
    ("How many days are in a week?", ["Seven.", "Five.", "Ten.", "Twelve."]),
    ("What is the opposite of hot?", ["Cold", "Warm", "Loud", "Tall"]),
]

CHAT_MC_TASK = """task: coh_serve_eos_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: 0
target_delimiter: ""
metric_list:
  - metric: acc
"""


def test_lm_eval_over_http_equals_in_process_hf_on_every_item_eos_next_included(tmp_path, smollm2_dir):
    """Issue 13: lm-eval ``local-completions`` against ``coh serve`` and lm-eval's in-process ``hf``
    model give the same loglikelihood for every (item, choice) on a real model and tokenizer, items
    whose continuation is followed by EOS included (the server once left the generated EOS out, and
    lm-eval's ``[ctxlen:-1]`` then dropped the continuation's last token instead)."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tests.serve.conftest import make_server

    running = make_server(smollm2_dir, name="smollm2")
    try:
        tok, model = running.engine.tokenizer, running.engine.model
        docs = [{"context": tok.apply_chat_template([{"role": "user", "content": q + " Answer briefly."}],
                                                    tokenize=False, add_generation_prompt=True), "choices": choices}
                for q, choices in QUESTIONS]
        # The items really include EOS-next cases (and others), by the model itself.
        seqs = [tok(doc["context"] + choice, add_special_tokens=False)["input_ids"]
                for doc in docs for choice in doc["choices"]]
        width = max(map(len, seqs))  # one right-padded forward pass; each row is read at its last token
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        eos_next = [int(logits[b, len(s) - 1].argmax()) == tok.eos_token_id for b, s in enumerate(seqs)]
        assert 10 <= sum(eos_next) <= len(eos_next) - 10, sum(eos_next)

        data = tmp_path / "docs.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        (tmp_path / "eos_mc.yaml").write_text(CHAT_MC_TASK.format(data=data), encoding="utf-8")
        tasks = TaskManager(include_path=str(tmp_path), include_defaults=False)
        task = "coh_serve_eos_mc"
        local = HFLM(pretrained=model, tokenizer=tok, batch_size=8)
        in_process = simple_evaluate(model=local, tasks=[task], task_manager=tasks, log_samples=True)
        args = (f"model=smollm2,base_url={running.url}/v1/completions,tokenizer_backend=huggingface,"
                f"tokenizer={smollm2_dir},tokenized_requests=True,num_concurrent=2,max_retries=1")
        over_http = simple_evaluate(model="local-completions", model_args=args, tasks=[task], batch_size=8,
                                    task_manager=tasks, log_samples=True)
    finally:
        running.stop()

    def scores(out) -> list[tuple[float, bool]]:
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        assert len(samples) == len(docs)
        return [tuple(resp[0]) for s in samples for resp in s["resps"]]

    want, got = scores(in_process), scores(over_http)
    assert len(want) == len(got) == len(eos_next) == 4 * len(QUESTIONS)
    for k, ((ll_hf, greedy_hf), (ll_http, greedy_http)) in enumerate(zip(want, got)):
        assert ll_http == pytest.approx(ll_hf, abs=1e-4), (k, docs[k // 4]["choices"][k % 4], eos_next[k])
        assert greedy_http == greedy_hf, k
    assert over_http["results"][task]["acc,none"] == in_process["results"][task]["acc,none"]
