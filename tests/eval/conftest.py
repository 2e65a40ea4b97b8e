"""Tiny models for the eval tests: random ones, and one trained here in a second to answer
``yes`` after its positive phrase and ``no`` after its negative one (non-default phrases, saved
in ``coh.json`` as ``coh train`` does, so tests see whether evaluation prompts the way training did)."""

from __future__ import annotations

import importlib.util
import json
import random
import socket
import threading
import time
from pathlib import Path

import pytest

HH_81_92 = Path(__file__).parent / "fixtures" / "hh_rlhf_harmless_test_81_92.jsonl"  # line 7: an empty reply
TRAINED_PHRASES = {"user": "User:", "good": "A good reply:", "bad": "A bad reply:"}
MC_ROWS = [
    {"question": "What do you drink when you are thirsty?", "choices": ["water", "sand", "a chair"], "label": 0},
    {"question": "Which animal barks?", "choices": ["a cat", "a dog", "a fish"], "label": 1},
    {"question": "What colour is the sky on a clear day?", "choices": ["green", "red", "blue"], "label": 2},
    {"question": "How many legs does a spider have?", "choices": ["eight", "two", "six"], "label": 0},
    {"question": "What do bees make?", "choices": ["milk", "honey", "silk"], "label": 1},
    {"question": "Where do fish live?", "choices": ["in trees", "in deserts", "in water"], "label": 2},
]
MC_TASK = "coh_tiny_mc"
needs_serve = pytest.mark.skipif(importlib.util.find_spec("coh.serve") is None,
                                 reason="coh.serve is not built yet (branch serve): HTTP tests run once it lands")
SHORT_PROMPTS = ["Tell me something.", "Is it raining?", "Can you help me cook rice?", "What is a cat?",
                 "How do I fix a bike?", "Say hello.", "Where is Paris?", "Why do birds sing?"]


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Models this small run fastest on one thread (thread hand-offs dominate; on a loaded two-core
    machine two threads measured 20x slower); restored afterwards for the rest of the suite."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bpe_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    from coh.tiny import make_tiny_model

    out = tmp_path_factory.mktemp("tiny_bpe")
    make_tiny_model(out, bpe_tokenizer, hidden=32, layers=2, heads=2)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, llama_tokenizer) -> Path:
    from coh.tiny import make_tiny_model

    out = tmp_path_factory.mktemp("tiny_llama")
    make_tiny_model(out, llama_tokenizer, hidden=32, layers=2, heads=2, seed=1)
    return out


def short_examples():
    """Dialogue examples with one short user turn each (the replies do not matter here)."""
    from coh.data.feedback import Candidate, FeedbackExample, Turn

    return [FeedbackExample(f"short/{i}", "dialogue", "eval", (Turn("user", text),), (Candidate("a"), Candidate("b")))
            for i, text in enumerate(SHORT_PROMPTS)]


@pytest.fixture(scope="session")
def yes_no_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    """A tiny model trained with the CoH loss on records ``User: ... A good reply: yes<eos>`` and
    ``... A bad reply: no<eos>`` over ``SHORT_PROMPTS``, saved with its ``coh.json``."""
    import torch

    from coh.data.phrases import PhraseSet
    from coh.data.records import FeedbackRecord, Segment
    from coh.data.render import prompt_segments
    from coh.data.tokenize import RecordTokenizer
    from coh.tiny import make_tiny_model
    from coh.train.loss import target_loss
    from coh.train.packing import collate_packed

    out = tmp_path_factory.mktemp("yes_no")
    model = make_tiny_model(out, bpe_tokenizer, hidden=32, layers=2, heads=2, seed=2)
    phrases = PhraseSet(**TRAINED_PHRASES)
    rtok = RecordTokenizer(bpe_tokenizer, chat_template="never")
    records = []
    for context in [ex.context for ex in short_examples()]:
        for feedback, answer in (("good", " yes"), ("bad", " no")):
            segs = (*prompt_segments(context, phrases, feedback), Segment(answer, True, "assistant", eos=True))
            records.append(rtok(FeedbackRecord("r", "dialogue", "p", segs)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = random.Random(0)
    model.train()
    for _ in range(60):
        rng.shuffle(records)
        result = target_loss(model, collate_packed([(r.input_ids, r.loss_mask) for r in records]))
        (result.loss_sum / result.targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(result.loss_sum.detach() / result.targets) < 0.05, "the yes/no model did not learn"
    model.eval()
    model.save_pretrained(out)
    (out / "coh.json").write_text(json.dumps({"phrases": TRAINED_PHRASES, "mode": "coh", "training": {}}))
    return out


@pytest.fixture(scope="session")
def mc_task_dir(tmp_path_factory) -> Path:
    """An lm-eval multiple-choice task over a local JSONL file (runs offline)."""
    out = tmp_path_factory.mktemp("tasks")
    data = out / "tiny_qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
    (out / f"{MC_TASK}.yaml").write_text(
        f"task: {MC_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return out


@pytest.fixture
def serve(monkeypatch):
    """``serve(model_dir) -> base URL``: ``coh serve MODEL_DIR --port PORT`` run by the CLI in a
    background thread. uvicorn.run is wrapped so that the test can stop the servers it starts."""
    import uvicorn

    from coh.cli import main

    servers: list = []
    threads: list[threading.Thread] = []
    real_server = uvicorn.Server

    def run(app, **kwargs):
        servers.append(real_server(uvicorn.Config(app, **kwargs)))
        servers[-1].run()

    monkeypatch.setattr(uvicorn, "run", run)

    def start(model_dir) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        started = len(servers)
        thread = threading.Thread(target=main, args=(["serve", str(model_dir), "--port", str(port)],), daemon=True)
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 120  # model load and start-up; not a timing assertion
        while not (len(servers) > started and servers[-1].started) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(servers) > started and servers[-1].started, f"coh serve {model_dir} did not start"
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for server in servers:
        server.should_exit = True
    for thread in threads:
        thread.join(timeout=60)
