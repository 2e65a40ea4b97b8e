"""Hostile requests, by hand (issue 14): text that is not Unicode, out-of-range seeds, unknown
routes and methods, undecodable and oversized bodies, fields the server does not implement,
values of the wrong type, the full queue's Retry-After, huge prompts while /health must answer,
a client that goes away, and a long generation beside short requests. Every answer is an error
in OpenAI's shape naming the field, and the server stays up."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from coh.generation.requests import GenRequest
from tests.generation.fixtures import paused
from tests.serve.conftest import make_server


def post(server, path: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"},
                      timeout=120, **kw)


def assert_error(r: httpx.Response, status: int, *words: str, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status, error
    for word in words:
        assert word in error["message"], error
    if param is not None:
        assert error["param"] == param, error
    return error


LONE = '"hi \\ud83d there"'  # JSON text for a string holding a lone high surrogate


def lone(template: str) -> str:
    return template.replace("@", LONE)


@pytest.mark.parametrize("path, raw, field", [
    ("/v1/completions", lone('{"prompt": @}'), "prompt"),
    ("/v1/completions", lone('{"prompt": ["ok", @]}'), "prompt[1]"),
    ("/v1/completions", lone('{"prompt": "hi", "stop": [@]}'), "stop[0]"),
    ("/v1/completions", lone('{"prompt": "hi", "model": @}'), "model"),
    ("/v1/chat/completions", lone('{"messages": [{"role": "user", "content": @}]}'), "messages[0].content"),
    ("/v1/chat/completions", lone('{"messages": [{"role": "user", "content": [{"type": "text", "text": @}]}]}'),
     "messages[0].content[0].text"),
    ("/tokenize", lone('{"prompt": @}'), "prompt"),
    ("/v1/tokenize", lone('{"prompt": "x", "feedback": @}'), "feedback"),
    ("/loglikelihood", lone('{"prefix_text": [""], "text": [@]}'), "text[0]"),
    ("/chat", lone('{"prompt": @}'), "prompt"),
    ("/v1/completions", lone('{"prompt": "hi", @: 1}'), None),
])
def test_lone_surrogates_are_a_400_naming_the_field(coh_server, path, raw, field):
    error = assert_error(post(coh_server, path, raw), 400, "lone UTF-16 surrogate")
    if field is not None:
        assert error["param"] == field and f"'{field}'" in error["message"]
    # A proper surrogate pair is a character like any other.
    ok = post(coh_server, "/tokenize", '{"prompt": "hi \\ud83d\\ude00"}')
    assert ok.status_code == 200 and ok.json()["count"] > 0


def test_seeds_outside_64_bits_are_a_400_and_fail_no_batch(coh_server):
    failed = coh_server.engine.stats["failed_batches"]
    for seed in (2**63, 2**64, -(2**63) - 1, 10**30):
        assert_error(post(coh_server, "/v1/completions", {"prompt": "hi", "seed": seed, "temperature": 1,
                                                          "max_tokens": 2}), 400, "seed", param="seed")
    for seed in (2**63 - 1, -(2**63), 0):
        r = post(coh_server, "/v1/completions", {"prompt": "hi", "seed": seed, "temperature": 1, "max_tokens": 2})
        assert r.status_code == 200, r.text
    assert coh_server.engine.stats["failed_batches"] == failed


def test_unknown_routes_wrong_methods_and_unreadable_bodies_answer_in_openai_shape(coh_server):
    assert_error(httpx.get(coh_server.url + "/nope"), 404, "/nope")
    assert_error(httpx.get(coh_server.url + "/static/missing.js"), 404)
    r = httpx.get(coh_server.url + "/v1/completions")
    assert_error(r, 405, "GET", "POST")
    assert r.headers["allow"] == "POST"
    assert_error(httpx.delete(coh_server.url + "/health"), 405)
    assert_error(post(coh_server, "/v1/completions", b'{"prompt": "hi \xff"}'), 400, "not UTF-8", "0xff")
    assert_error(post(coh_server, "/v1/completions", "{not json"), 400, "not valid JSON")
    assert_error(post(coh_server, "/v1/completions", "[" * 100_000 + "]" * 100_000), 400, "too deeply")
    assert_error(post(coh_server, "/v1/completions", ""), 400, "required")
    assert_error(post(coh_server, "/v1/completions", "[1, 2]"), 400)
    assert_error(post(coh_server, "/v1/completions", '{"prompt": "hi", "temperature": NaN}'), 400, "temperature")
    assert_error(post(coh_server, "/v1/completions", '{"prompt": "hi", "temperature": Infinity}'), 400, "temperature")
    r = httpx.post(coh_server.url + "/v1/completions", content=b"prompt=hi",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(r, 400)
    assert httpx.get(coh_server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("path, body, field", [
    ("/v1/completions", {"prompt": "hi", "suffix": " end"}, "suffix"),
    ("/v1/completions", {"prompt": "hi", "repetition_penalty": 1.2}, "repetition_penalty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"}, "tool_choice"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "messages[0].name"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True,
                              "stream_options": {"include_usage": True, "include_obfuscation": True}},
     "stream_options.include_obfuscation"),
    ("/tokenize", {"prompt": "hi", "truncation": True}, "truncation"),
    ("/generate", {"prefix_text": ["hi"], "top_k": 5}, "top_k"),
])
def test_fields_the_server_does_not_implement_are_a_400_naming_them(coh_server, path, body, field):
    assert_error(post(coh_server, path, body), 400, f"'{field}'", "not supported", param=field)


def test_fields_that_ask_for_nothing_pass(coh_server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "tools": None, "tool_choice": None,
            "parallel_tool_calls": False, "metadata": {}, "user": "someone"}
    assert post(coh_server, "/v1/chat/completions", body).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"prompt": "hi", "max_tokens": "4"}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 4.0}, "max_tokens"),
    ({"prompt": "hi", "temperature": "0.5"}, "temperature"),
    ({"prompt": "hi", "echo": 1}, "echo"),
    ({"prompt": "hi", "n": True}, "n"),
    ({"prompt": "hi", "logprobs": "1"}, "logprobs"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [[1, "2"]]}, "prompt"),
    ({"prompt": [-1, 2]}, "prompt"),
    ({"prompt": "hi", "stop": 3}, "stop"),
    ({"prompt": "hi", "stop": ["x"] * 17}, "stop"),
    ({"prompt": "hi", "stop": "y" * 257}, "stop"),
])
def test_values_are_never_coerced(coh_server, body, field):
    assert_error(post(coh_server, "/v1/completions", body), 400, f"'{field}", param=field)


def test_ints_are_numbers_for_float_fields(coh_server):
    r = post(coh_server, "/v1/completions", {"prompt": "hi", "temperature": 0, "top_p": 1, "max_tokens": 1})
    assert r.status_code == 200, r.text


def test_a_full_queue_answers_503_with_retry_after(coh_model_dir, coh_server):
    running = make_server(coh_model_dir, engine=coh_server.engine, queue_size=1)
    try:
        with paused(running.engine):
            waiting = threading.Thread(target=post, args=(running, "/v1/completions", {"prompt": "hi", "max_tokens": 1}))
            waiting.start()
            deadline = time.monotonic() + 60
            while running.engine.queued() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = post(running, "/v1/completions", {"prompt": "hi", "max_tokens": 1})
            assert_error(r, 503, "busy")
            assert r.headers["retry-after"] == "1"
            stream = post(running, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                            "stream": True})
            assert stream.status_code == 503 and stream.headers["retry-after"] == "1"
        waiting.join(timeout=120)
    finally:
        running.stop()


def test_bodies_over_the_limit_are_a_413_declared_or_streamed(coh_model_dir, coh_server):
    small = make_server(coh_model_dir, engine=coh_server.engine, max_body_mb=0.01)
    try:
        big = {"prompt": "x " * 10_000}
        assert_error(post(small, "/v1/completions", big), 413, "0.01 MiB", "--max-body-mb")

        def chunks():  # no Content-Length: the limit counts the bytes as they arrive
            data = json.dumps(big).encode()
            for k in range(0, len(data), 1000):
                yield data[k:k + 1000]

        r = httpx.post(small.url + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(r, 413, "--max-body-mb")
        assert post(small, "/v1/completions", {"prompt": "hi", "max_tokens": 1}).status_code == 200
    finally:
        small.stop()


def test_a_request_for_more_outputs_than_the_queue_holds_is_a_400(coh_server):
    r = post(coh_server, "/v1/completions", {"prompt": [[1, 2]] * 5, "n": 128, "max_tokens": 1})
    assert_error(r, 400, "640 outputs", "at most 512", param="prompt")
    r = post(coh_server, "/loglikelihood", {"prefix_text": ["a"] * 600, "text": ["b"] * 600})
    assert_error(r, 400, "600 outputs")


def test_a_prompt_too_long_for_any_context_is_refused_before_tokenizing(coh_server):
    r = post(coh_server, "/v1/completions", {"prompt": "word " * 1_000_000, "max_tokens": 1})
    assert_error(r, 400, "characters long", param="prompt")
    r = post(coh_server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 1_000_000}]})
    assert_error(r, 400, "characters long", param="messages[0].content")


def test_health_answers_while_a_huge_text_is_tokenized(coh_server):
    """Tokenization runs beside the event loop: /health answers while /tokenize works on 2 MB."""
    server = coh_server.server.openai  # the routes object whose _tokenize runs on the tokenizer thread
    started, finished = threading.Event(), threading.Event()
    tokenize = server._tokenize

    def watched(req):
        started.set()
        try:
            return tokenize(req)
        finally:
            finished.set()

    server._tokenize = watched
    answers_during = 0
    try:
        sender = threading.Thread(target=post, args=(coh_server, "/tokenize", {"prompt": "the cat sat. " * 170_000}))
        sender.start()
        assert started.wait(120)
        while not finished.is_set():
            r = httpx.get(coh_server.url + "/health", timeout=60)
            assert r.status_code == 200
            answers_during += not finished.is_set()
        sender.join(timeout=120)
    finally:
        server._tokenize = tokenize
    assert answers_during >= 1


def test_a_client_that_disconnects_cancels_its_request(coh_model_dir, coh_server):
    running = make_server(coh_model_dir, engine=coh_server.engine)
    jobs = []
    submit = running.engine.submit

    def recording(requests, on_event=None):
        jobs.append(submit(requests, on_event))
        return jobs[-1]

    running.engine.submit = recording
    gives_up = httpx.Timeout(60, read=1.0)  # the client waits 1 s for the answer, then closes the connection
    try:
        ids = running.engine.tokenizer("User: tell me a long story A helpful answer:")["input_ids"]
        # Waiting in the queue: cancelled before it starts.
        with paused(running.engine), pytest.raises(httpx.ReadTimeout):
            httpx.post(running.url + "/v1/completions", json={"prompt": ids, "max_tokens": 5}, timeout=gives_up)
        (result,) = jobs[0].future.result(timeout=120)
        assert result.finish_reason == "abort" and result.token_ids == []
        # Generating: 32 sampled requests of up to 4000 tokens (minutes of work), stopped where they are.
        body = {"prompt": ids, "max_tokens": running.engine.max_model_len - len(ids), "temperature": 1.0,
                "seed": 1, "n": 32}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(running.url + "/v1/completions", json=body, timeout=gives_up)
        results = jobs[1].future.result(timeout=120)
        assert "abort" in {r.finish_reason for r in results}
        assert all(len(r.token_ids) < body["max_tokens"] for r in results)
        deadline = time.monotonic() + 60
        while (running.server.disconnects < 2 or running.engine.running()) and time.monotonic() < deadline:
            time.sleep(0.05)
        health = httpx.get(running.url + "/health").json()
        assert health["disconnects"] == 2 and health["running"] == 0 and health["queued"] == 0
    finally:
        running.stop()


def test_a_long_generation_does_not_hold_up_short_requests(coh_model_dir, coh_server):
    """A 1-token request sent while a long generation runs is answered before that generation ends:
    the generation yields every --slice-steps decode steps."""
    running = make_server(coh_model_dir, engine=coh_server.engine, slice_steps=4)
    try:
        engine = running.engine
        tok = engine.tokenizer
        ids = tok("User: tell me a long story A helpful answer:")["input_ids"]
        # 16 sampled requests of up to 4000 tokens: minutes of work, not all ended by EOS for long.
        long_job = engine.submit([GenRequest(ids, max_new_tokens=engine.max_model_len - len(ids), temperature=1.0,
                                             seed=3) for _ in range(16)])
        deadline = time.monotonic() + 60
        while not long_job.results[0].token_ids and time.monotonic() < deadline:
            time.sleep(0.005)
        assert long_job.results[0].token_ids, "the long generation did not start"
        assert engine.running() == 2  # its two batches of 8 requests, taking turns
        r = post(running, "/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0, "echo": True,
                                              "logprobs": 1})
        assert r.status_code == 200
        assert not long_job.future.done(), "the short request waited for the whole generation"
        assert engine.stats["yields"] >= 1
        long_job.cancel()
        long_job.future.result(timeout=120)
    finally:
        running.stop()
