"""The comparison set from an OpenAI-compatible server (a stub standing in for `coh serve`),
from prepared files, and from `coh data` source rows."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from coh.cli import main
from coh.data.errors import DataError
from coh.judge.sources import prepare, read_comparisons, read_prompts
from coh.judge.systems import Generation, SystemSpec

from ..conftest import hh_rows
from .conftest import live_server, write_jsonl


def stub_server(requests: list[dict], fail_on: str | None = None) -> FastAPI:
    """An OpenAI-compatible chat endpoint whose reply shows what it was asked: the model, the
    feedback phrase and the last user message."""
    app = FastAPI()
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "tiny-coh", "object": "model"}, {"id": "other", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        with lock:
            requests.append({**body, "authorization": request.headers.get("authorization")})
        last = body["messages"][-1]["content"]
        if fail_on and fail_on in last:
            return JSONResponse({"error": {"message": "model exploded"}}, status_code=500)
        text = f" [{body.get('feedback', 'no phrase')}] {body['model']} says: {last[::-1]} "
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if "long" in last else "stop"}]}

    return app


@pytest.fixture
def prompts_file(tmp_path):
    rows = [{"prompt": "hello there"}, {"id": "chat", "prompt": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "a long story please"}]},
        {"prompt": "<b>bold</b> & co"}]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def test_two_phrases_of_one_model_and_a_prepared_file(tmp_path, prompts_file, monkeypatch):
    write_jsonl(tmp_path / "ref.jsonl", [{"prompt": "<b>bold</b> & co", "output": "ref 3"},
                                         {"prompt": "hello there", "output": "ref 1"},
                                         {"prompt": "not asked", "output": "unused"},
                                         {"prompt": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "Hello!"},
                                                     {"role": "user", "content": "a long story please"}],
                                          "output": "ref 2"}])
    monkeypatch.setenv("STUB_KEY", "k-123")
    requests: list[dict] = []
    with live_server(stub_server(requests)) as base:
        systems = [SystemSpec.parse(f"good:url={base}/v1,feedback=good,api_key_env=STUB_KEY"),
                   SystemSpec.parse(f"bad:url={base}/v1/,feedback=bad,model=other"),
                   SystemSpec.parse(f"ref:file={tmp_path / 'ref.jsonl'}")]
        prompts, skipped = read_prompts(str(prompts_file))
        summary = prepare(prompts, systems, Generation(max_tokens=7, temperature=0.5, seed=3, concurrency=3),
                          tmp_path / "cmp.jsonl", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "cmp.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "chat", "3"] and skipped == {}
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    for r in rows:
        last = r["prompt"][-1]["content"]
        assert r["outputs"] == {"good": f"[good] tiny-coh says: {last[::-1]}",  # first listed model
                                "bad": f"[bad] other says: {last[::-1]}",  # stripped
                                "ref": {"1": "ref 1", "chat": "ref 2", "3": "ref 3"}[r["id"]]}
    assert len(requests) == 6
    for q in requests:
        assert (q["max_tokens"], q["temperature"], q["seed"]) == (7, 0.5, 3)
        assert q["authorization"] == ("Bearer k-123" if q["feedback"] == "good" else None)
    assert summary["systems"]["good"]["cut_at_max_tokens"] == 1  # "a long story" stopped at max_tokens
    assert summary["systems"]["ref"]["unused_rows"] == 1
    assert summary["identical"] == {"good / bad": 0, "good / ref": 0, "bad / ref": 0}
    # what prepare wrote is what serve reads
    assert [(pid, outs) for pid, _, outs in read_comparisons(tmp_path / "cmp.jsonl")] == \
        [(r["id"], r["outputs"]) for r in rows]


def test_server_errors_name_the_system_and_prompt(tmp_path, prompts_file):
    with live_server(stub_server([], fail_on="bold")) as base:
        spec = [SystemSpec.parse(f"a:url={base}/v1"), SystemSpec.parse(f"b:url={base}/v1,feedback=bad")]
        with pytest.raises(ValueError, match=r"system 'a': prompt '3'.*HTTP 500.*model exploded"):
            prepare(read_prompts(str(prompts_file))[0], spec, Generation(), tmp_path / "x.jsonl", progress=False)
        with pytest.raises(ValueError, match=r"system 'a'.*HTTP 404"):
            prepare(read_prompts(str(prompts_file))[0], [SystemSpec.parse(f"a:url={base}/nowhere"), spec[1]],
                    Generation(), tmp_path / "x.jsonl", progress=False)
    assert not (tmp_path / "x.jsonl").exists()


def test_the_first_failure_stops_the_requests(tmp_path):
    prompts_file = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fail now" if i == 1 else f"q{i}"} for i in range(40)])
    requests: list[dict] = []
    with live_server(stub_server(requests, fail_on="fail now")) as base:
        spec = [SystemSpec.parse(f"a:url={base}/v1"), SystemSpec.parse(f"b:url={base}/v1")]
        with pytest.raises(ValueError, match="prompt '2'"):
            prepare(read_prompts(str(prompts_file))[0], spec, Generation(concurrency=2), tmp_path / "x.jsonl",
                    progress=False)
    assert len(requests) < 10  # not all 80: queued requests were cancelled


def test_cli_prepare(tmp_path, prompts_file, capsys, monkeypatch):
    with live_server(stub_server([])) as base:
        assert main(["judge", "prepare", "--prompts", str(prompts_file), "--limit", "2", "--system",
                     f"good:url={base}/v1,feedback=good", "--system", f"none:url={base}/v1,feedback=none",
                     "--system", f"same:url={base}/v1,feedback=good",
                     "-o", str(tmp_path / "c.jsonl"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "comparisons: 6 (3 pair(s) of systems)" in out and "coh judge serve" in out
    assert "good / same: identical outputs for 2 prompt(s)" in out
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["outputs"]["none"].split("]")[0] for r in rows] == ["[none", "[none"]
    # serve leaves the identical pairs out
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert main(["judge", "serve", str(tmp_path / "c.jsonl")]) == 0
    assert "comparisons: 4 added, 0 already" in capsys.readouterr().out


def test_prompts_from_a_coh_data_source(tmp_path):
    """hh-rlhf rows: the conversation both transcripts share, up to the last user turn."""
    rows = hh_rows(5)
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    prompts, _ = read_prompts(f"dialogue:{path}", limit=3)
    assert len(prompts) == 3
    for p, row in zip(prompts, rows):
        assert p.messages[-1]["role"] == "user"
        assert p.messages[0]["content"] in row["chosen"] and p.messages[-1]["content"] in row["rejected"]
        assert all(m["content"] in row["chosen"] for m in p.messages)


@pytest.mark.parametrize("rows,match", [
    ([{"prompt": "a"}, {"text": "b"}], r"line 2, field 'prompt': missing"),
    ([{"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}],
     r"line 1, field 'prompt': expected the prompt to end with a user turn"),
    ([{"prompt": "a", "id": 1}, {"prompt": "b", "id": "1"}], r"line 2, field 'id'.*twice"),
    ([], "no prompts found"),
])
def test_bad_prompt_files(tmp_path, rows, match):
    with pytest.raises(DataError, match=match):
        read_prompts(str(write_jsonl(tmp_path / "p.jsonl", rows)))


def test_bad_comparison_files_and_output_files(tmp_path, prompts_file):
    bad = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "outputs": {"x": "1", "y": "2"}},
                                             {"prompt": "b", "outputs": {"x": "1"}}])
    with pytest.raises(DataError, match=r"c.jsonl, line 2, field 'outputs': expected an object of two or more"):
        read_comparisons(bad)
    bad = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "outputs": {"x": "1", "y z": "2"}}])
    with pytest.raises(DataError, match=r"line 1, field 'outputs.y z'"):
        read_comparisons(bad)
    partial = write_jsonl(tmp_path / "o.jsonl", [{"prompt": "hello there", "output": "x"}])
    with pytest.raises(DataError, match=r"no output for 2 of 3 prompts \(first: prompt 'chat'\)"):
        prepare(read_prompts(str(prompts_file))[0], [SystemSpec("a", file=str(partial)), SystemSpec("b", file=str(partial))],
                Generation(), tmp_path / "x.jsonl", progress=False)


@pytest.mark.parametrize("text,match", [
    ("nocolon", "expected NAME:url="), ("a:url=x,file=y", "exactly one of"), ("a:", "exactly one of"),
    ("a:url=x,temperature=1", "unknown option"), ("a b:url=x", "system name"), ("a:file=x,feedback=bad", "url= systems"),
])
def test_bad_system_specs(text, match):
    with pytest.raises(ValueError, match=match):
        SystemSpec.parse(text)
