"""lm-evaluation-harness's ``local-completions`` against the server, offline: tasks defined by local
YAML and JSONL files, the tokenizer read through the server's endpoints (no local tokenizer).
Loglikelihoods must equal a direct computation with the model; generations must stop as asked."""

from __future__ import annotations

import json
import math

import pytest

from tests.serve.conftest import SCRIPT
from tests.serve.test_engine import reference_logprobs

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
