"""The HTTP API against a live server: the official openai client, lm-eval's completions contract,
tokenizer endpoints, the original server's endpoints, bad requests, authentication, concurrency
and the full queue."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from coh.data.feedback import Turn
from coh.data.phrases import PhraseSet
from coh.data.render import prompt_record
from coh.data.tokenize import RecordTokenizer
from tests.generation.fixtures import COH_PHRASES, SCRIPT, paused
from tests.generation.test_engine import greedy_reference, reference_logprobs
from tests.serve.conftest import make_server


def client(server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_openai_client_models_completions_and_chat(scripted_server):
    c = client(scripted_server)
    assert [m.id for m in c.models.list().data] == ["scripted"]
    chat = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert chat.choices[0].message.content == SCRIPT and chat.choices[0].finish_reason == "stop"
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 5 and chat.usage.prompt_tokens > 0  # the script's 4 tokens, then EOS
    done = c.completions.create(model="scripted", prompt="User: hi A helpful answer:", max_tokens=2, temperature=0)
    assert done.choices[0].text == " <img src" and done.choices[0].finish_reason == "length"
    stopped = c.completions.create(model="scripted", prompt="User: hi A helpful answer:", max_tokens=10,
                                   temperature=0, stop=["alert"])
    assert stopped.choices[0].text == " <img src onerror=" and stopped.choices[0].finish_reason == "stop"
    # n choices and a list of prompts: index = prompt * n + choice
    many = c.completions.create(model="scripted", prompt=["User: a A helpful answer:", "no colon here"],
                                max_tokens=3, temperature=0, n=2)
    assert [ch.index for ch in many.choices] == [0, 1, 2, 3]
    assert [ch.text for ch in many.choices] == [" <img src onerror=alert(1)>"] * 2 + ["", ""]


def test_streaming_chat_and_completions_give_the_same_text(scripted_server):
    c = client(scripted_server)
    messages = [{"role": "user", "content": "hi"}]
    chunks = list(c.chat.completions.create(model="scripted", messages=messages, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == SCRIPT
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5 and not chunks[-1].choices  # EOS counts
    parts = list(c.completions.create(model="scripted", prompt="User: hi A helpful answer:", max_tokens=10,
                                      temperature=0, stream=True, stop=["(1)"]))
    assert "".join(p.choices[0].text for p in parts) == " <img src onerror=alert"
    assert len([p for p in parts if p.choices[0].text]) >= 2  # really streamed, not one block


def test_feedback_selects_the_phrase_and_matches_the_training_render(scripted_server):
    tok = scripted_server.engine.tokenizer
    rt = RecordTokenizer(tok, chat_template="never")
    for feedback, phrase in [("bad", "An unhelpful answer:"), ("A more harmless answer:", "A more harmless answer:"),
                             ("none", None)]:
        r = httpx.post(scripted_server.url + "/v1/completions",
                       json={"prompt": "hi", "feedback": feedback, "echo": True, "max_tokens": 0, "logprobs": 0,
                             "return_tokens_as_token_ids": True}).json()
        ids = [int(t.split(":")[1]) for t in r["choices"][0]["logprobs"]["tokens"]]
        if phrase is None:
            assert ids == tok("hi")["input_ids"]  # "none": the prompt as given
        else:
            assert ids == rt(prompt_record([Turn("user", "hi")], PhraseSet(**COH_PHRASES), phrase)).input_ids
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "more"}]
    got = httpx.post(scripted_server.url + "/tokenize", json={"messages": turns, "feedback": "bad"}).json()["tokens"]
    want = rt(prompt_record([Turn(t["role"], t["content"]) for t in turns], PhraseSet(**COH_PHRASES), "bad"))
    assert got == want.input_ids


def test_echo_logprobs_follow_lm_evals_contract_on_token_id_prompts(coh_server):
    tok, model = coh_server.engine.tokenizer, coh_server.engine.model
    a = tok("The cat sat on the mat", add_special_tokens=False)["input_ids"]  # no BOS: must stay that way
    b = tok("User: hi A helpful answer: hello", add_special_tokens=True)["input_ids"]
    r = httpx.post(coh_server.url + "/v1/completions",
                   json={"model": "tiny", "prompt": [a, b], "echo": True, "logprobs": 1, "max_tokens": 1,
                         "temperature": 0, "seed": 1234}).json()
    for ids, choice in zip([a, b], sorted(r["choices"], key=lambda c: c["index"])):
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
        assert len(lp["token_logprobs"]) == len(ids) + 1  # every prompt token, then the generated one
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["token_logprobs"][1:-1] == pytest.approx(reference_logprobs(model, ids), abs=1e-4)
        generated = greedy_reference(model, ids, 1, tok.eos_token_id)
        if generated:
            assert lp["tokens"][-1] == tok.decode(generated) and choice["finish_reason"] == "length"
        # greedy: the generated token's logprob is the top one, as lm-eval checks it
        assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())
        assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    zero = httpx.post(coh_server.url + "/v1/completions",
                      json={"prompt": a, "echo": True, "logprobs": 1, "max_tokens": 0}).json()["choices"][0]
    assert len(zero["logprobs"]["token_logprobs"]) == len(a) and zero["finish_reason"] == "length"
    assert zero["text"] == tok.decode(a)


def test_eos_is_a_generated_token_with_its_logprob_in_usage_and_in_streams(scripted_server):
    """The scripted model writes EOS after any token but "answer:": the case where lm-eval's
    ``[ctxlen:-1]`` slice needs the generated EOS entry to drop, not the continuation's last token."""
    tok, model = scripted_server.engine.tokenizer, scripted_server.engine.model
    eos = tok.eos_token
    ids = tok("no colon here", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert int(model(torch.tensor([ids])).logits[0, -1].argmax()) == tok.eos_token_id  # EOS is next
    r = httpx.post(scripted_server.url + "/v1/completions",
                   json={"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}).json()
    (choice,) = r["choices"]
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["text_offset"]) == len(ids) + 1
    assert lp["tokens"][-1] == eos and lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())
    assert lp["token_logprobs"][1:-1] == pytest.approx(reference_logprobs(model, ids), abs=1e-4)
    assert lp["token_logprobs"][-1] == pytest.approx(
        reference_logprobs(model, [*ids, tok.eos_token_id])[-1], abs=1e-4)
    assert choice["text"] == tok.decode(ids) and choice["finish_reason"] == "stop"  # EOS adds no text
    assert lp["text_offset"][-1] == len(choice["text"])
    assert r["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}

    # Generation: the script's tokens, then EOS, each with its logprob; text without EOS.
    body = {"prompt": "User: hi A helpful answer:", "max_tokens": 10, "temperature": 0, "logprobs": 2}
    whole = httpx.post(scripted_server.url + "/v1/completions", json=body).json()
    lp = whole["choices"][0]["logprobs"]
    assert whole["choices"][0]["text"] == " " + SCRIPT and lp["tokens"][-1] == eos
    assert len(lp["tokens"]) == whole["usage"]["completion_tokens"] == 5
    assert lp["text_offset"][-1] == len(" " + SCRIPT)
    # Streamed, the same tokens and logprobs arrive, EOS with the last delta.
    with httpx.stream("POST", scripted_server.url + "/v1/completions",
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as events:
        chunks = [json.loads(line[6:]) for line in events.iter_lines() if line.startswith("data: {")]
    parts = [c["choices"][0] for c in chunks if c["choices"]]
    streamed = [p["logprobs"] for p in parts if p["logprobs"]]
    assert "".join(p["text"] for p in parts) == " " + SCRIPT
    assert [t for s in streamed for t in s["tokens"]] == lp["tokens"]
    assert [v for s in streamed for v in s["token_logprobs"]] == pytest.approx(lp["token_logprobs"])
    assert [v for s in streamed for v in s["text_offset"]] == lp["text_offset"]
    assert streamed[-1]["tokens"][-1] == eos and parts[-1]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    # Chat: EOS is the last logprob entry too, and counted.
    chat = client(scripted_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], temperature=0, logprobs=True, top_logprobs=1)
    entries = chat.choices[0].logprobs.content
    assert entries[-1].token == eos and len(entries) == chat.usage.completion_tokens == 5
    assert chat.choices[0].message.content == SCRIPT
    chunks = list(client(scripted_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], temperature=0, logprobs=True,
        stream=True))
    assert [e.token for ch in chunks if ch.choices and ch.choices[0].logprobs
            for e in ch.choices[0].logprobs.content] == [e.token for e in entries]


def test_the_original_endpoints_follow_the_same_eos_rule(scripted_server):
    """EasyLM's server cuts its output at the EOS token's text; here EOS ends the text likewise (no
    EOS text in it) and a context that predicts EOS scores it like the model does."""
    tok, model = scripted_server.engine.tokenizer, scripted_server.engine.model
    out = httpx.post(scripted_server.url + "/generate",
                     json={"prefix_text": ["User: hi A helpful answer:", "no colon here"], "temperature": 0.0}).json()
    assert out["output_text"] == [" " + SCRIPT, ""]
    until = httpx.post(scripted_server.url + "/greedy-until",
                       json={"prefix_text": ["User: hi A helpful answer:"], "until": [["never"]]}).json()
    assert until["output_text"] == [" " + SCRIPT]
    r = httpx.post(scripted_server.url + "/loglikelihood",
                   json={"prefix_text": ["no colon here"], "text": [tok.eos_token]}).json()
    ctx = tok("no colon here")["input_ids"]
    assert r["log_likelihood"][0] == pytest.approx(
        reference_logprobs(model, [*ctx, tok.eos_token_id])[-1], abs=1e-4)
    assert r["is_greedy"] == [True]


def test_tokenizer_endpoints_at_the_root_and_under_v1(coh_server):
    tok = coh_server.engine.tokenizer
    for prefix in ("", "/v1"):
        info = httpx.get(coh_server.url + prefix + "/tokenizer_info").json()
        assert info["eos_token"] == tok.eos_token and info["bos_token"] == tok.bos_token
        assert info["pad_token"] == tok.pad_token and info["model_max_length"] == 4096
        out = httpx.post(coh_server.url + prefix + "/tokenize", json={"prompt": "hello world",
                                                                      "add_special_tokens": False}).json()
        assert out["tokens"] == tok("hello world", add_special_tokens=False)["input_ids"]
        assert httpx.post(coh_server.url + prefix + "/tokenize", json={"prompt": tok.eos_token,
                                                                       "add_special_tokens": False}
                          ).json()["tokens"] == [tok.eos_token_id]
        back = httpx.post(coh_server.url + prefix + "/detokenize", json={"tokens": out["tokens"]}).json()
        assert back["prompt"] == "hello world"


def test_the_original_servers_endpoints(coh_server, scripted_server):
    tok, model = coh_server.engine.tokenizer, coh_server.engine.model
    assert httpx.get(coh_server.url + "/ready").json() == "Ready!\n"
    r = httpx.post(coh_server.url + "/loglikelihood",
                   json={"prefix_text": ["User: hi A helpful answer:", ""], "text": [" hello", "bread"]}).json()
    assert set(r) == {"prefix_text", "text", "log_likelihood", "is_greedy"}
    for prefix, text, ll in zip(["User: hi A helpful answer:", ""], [" hello", "bread"], r["log_likelihood"]):
        ctx = tok(prefix)["input_ids"] if prefix else [tok.bos_token_id]
        cont = tok(text, add_special_tokens=False)["input_ids"]
        assert ll == pytest.approx(sum(reference_logprobs(model, ctx + cont)[len(ctx) - 1:]), abs=1e-3)
    rolling = httpx.post(coh_server.url + "/loglikelihood-rolling", json={"text": ["a short text"]}).json()
    ids = [tok.bos_token_id, *tok("a short text", add_special_tokens=False)["input_ids"]]
    assert rolling["log_likelihood"][0] == pytest.approx(sum(reference_logprobs(model, ids)), abs=1e-3)
    gen = httpx.post(scripted_server.url + "/generate",
                     json={"prefix_text": ["User: hi A helpful answer:"], "temperature": 0.0}).json()
    assert gen == {"prefix_text": ["User: hi A helpful answer:"], "output_text": [" " + SCRIPT], "temperature": 0.0}
    until = httpx.post(scripted_server.url + "/greedy-until",
                       json={"prefix_text": ["User: hi A helpful answer:"], "until": [["(1)"]]}).json()
    assert until["output_text"] == [" <img src onerror=alert"] and until["until"] == [["(1)"]]
    chat = httpx.post(scripted_server.url + "/chat", json={"prompt": "hi", "temperature": 0}).json()
    assert chat["response"] == SCRIPT
    assert chat["context"] == f"User: hi A helpful answer: {SCRIPT}{tok.eos_token}"
    again = httpx.post(scripted_server.url + "/chat", json={"prompt": "more", "context": chat["context"],
                                                            "temperature": 0}).json()
    assert again["context"].startswith(chat["context"] + "User: more A helpful answer:")


def test_rolling_loglikelihood_of_a_text_longer_than_the_context(coh_model_dir, coh_server):
    running = make_server(coh_model_dir, engine=coh_server.engine, max_model_len=8)
    try:
        tok, model = running.engine.tokenizer, running.engine.model
        text = "the quick brown fox jumps over the lazy dog and runs far away"
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
        assert len(ids) > 16
        got = httpx.post(running.url + "/loglikelihood-rolling", json={"text": [text]}).json()["log_likelihood"][0]
        want, pos = 0.0, 1  # windows of at most 8 tokens, each scoring new tokens with the context before them
        while pos < len(ids):
            end = min(len(ids), pos + 7)
            window = ids[max(0, end - 8):end]
            want += sum(reference_logprobs(model, window)[-(end - pos):])
            pos = end
        assert got == pytest.approx(want, abs=1e-3)
        r = httpx.post(running.url + "/v1/completions", json={"prompt": text, "max_tokens": 1})
        assert r.status_code == 400 and "context of 8" in r.json()["error"]["message"]
    finally:
        running.stop()


@pytest.mark.parametrize("body, status, words", [
    ("{not json", 400, "not valid JSON"),
    ({"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 5000}, 400, "exceed the model's context of 4096"),
    ({"prompt": [5] * 5000, "max_tokens": 1}, 400, "5000 tokens long"),
    ({"prompt": [10**9]}, 400, "outside the vocabulary"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"prompt": "hi", "logprobs": 50}, 400, "logprobs"),
    ({"prompt": "hi", "stop": [""]}, 400, "stop"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "does not exist"),
    ({"prompt": "hi", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"prompt": [1, 2], "feedback": "bad"}, 400, "feedback"),
])
def test_bad_completion_requests_get_a_clear_4xx_and_the_server_stays_up(coh_server, body, status, words):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(coh_server.url + "/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert httpx.get(coh_server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("body, words", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text parts"),
    ({"messages": [{"role": "system", "content": "x"}]}, "user message"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "feedback": ""}, "feedback"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, "top_logprobs"),
])
def test_bad_chat_requests(coh_server, body, words):
    r = httpx.post(coh_server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_chat_logprobs_and_a_chat_template_model(plain_server):
    c = client(plain_server)
    out = c.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                    temperature=0, logprobs=True, top_logprobs=2)
    entries = out.choices[0].logprobs.content
    assert len(entries) == out.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in entries)
    tok = plain_server.engine.tokenizer
    want = tok(tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert out.usage.prompt_tokens == len(want)
    info = httpx.get(plain_server.url + "/tokenizer_info").json()
    assert info["chat_template"] == tok.chat_template  # lm-eval may render it itself


def test_api_key(coh_model_dir, coh_server):
    running = make_server(coh_model_dir, engine=coh_server.engine, api_key="s3cret")
    try:
        assert httpx.get(running.url + "/health").status_code == 200  # probes need no key
        assert httpx.get(running.url + "/").status_code == 200
        r = httpx.get(running.url + "/v1/models")
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        assert httpx.get(running.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(running.url + "/tokenize", json={"prompt": "x"}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client(running, "wrong").models.list()
        assert client(running, "s3cret").models.list().data[0].id == "tiny"
    finally:
        running.stop()


def test_many_clients_at_once_get_their_own_answers(coh_server, scripted_server):
    prompts = [f"User: question number {i} A helpful answer:" for i in range(12)]
    tok = coh_server.engine.tokenizer

    def ask(k: int):
        if k % 3 == 2:  # some streaming chats to the scripted model in between
            chunks = client(scripted_server).chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": f"hi {k}"}], temperature=0, stream=True)
            return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        return client(coh_server).completions.create(model="tiny", prompt=prompts[k], max_tokens=5,
                                                     temperature=0).choices[0].text

    batches = coh_server.engine.stats["batches"]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    for k, answer in enumerate(answers):
        if k % 3 == 2:
            assert answer == SCRIPT
        else:
            ids = tok(prompts[k])["input_ids"]
            gen = greedy_reference(coh_server.engine.model, ids, 5, tok.eos_token_id)
            prompt_text = tok.decode(ids, skip_special_tokens=True)
            assert answer == tok.decode(ids + gen, skip_special_tokens=True)[len(prompt_text):]
    assert coh_server.engine.stats["batches"] > batches


def test_a_full_queue_answers_503_and_the_waiting_requests_finish(coh_model_dir, coh_server):
    running = make_server(coh_model_dir, engine=coh_server.engine, queue_size=2)
    results: list[int] = []

    def post():
        r = httpx.post(running.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=120)
        results.append(r.status_code)

    try:
        with paused(running.engine):
            waiting = [threading.Thread(target=post) for _ in range(2)]
            for t in waiting:
                t.start()
            deadline = time.monotonic() + 30
            while running.engine.queued() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = httpx.post(running.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 503 and "busy" in r.json()["error"]["message"]
        for t in waiting:
            t.join(timeout=120)
        assert results == [200, 200]
        assert httpx.get(running.url + "/health").json()["status"] == "ok"
    finally:
        running.stop()
