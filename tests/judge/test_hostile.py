"""Hand-written hostile requests to a real `coh judge` server: what a fuzzer seldom draws (ids past
SQLite's 64 bits, lone surrogates, bodies nested 100,000 deep, 5 MB comments, junk cookies and
paths). Each gets a 4xx, never a 5xx, and the server answers `/health` after every one; the votes
stay what they were."""

from __future__ import annotations

import httpx
import pytest

from coh.judge.app import COOKIE, create_app
from coh.judge.sources import read_comparisons
from coh.judge.store import JudgeStore

from .conftest import comparison_rows, live_server, write_jsonl

JSON = {"content-type": "application/json"}
BIG = 2**63  # SQLite integers are signed 64-bit: this was an OverflowError and a 500


def _vote(comparison: str, extra: str = "") -> bytes:
    return f'{{"comparison": {comparison}, "choice": "left"{extra}}}'.encode()


# (name, method, path, raw body or None, extra headers, expected status)
CASES = [
    *[(f"vote comparison {v}", "POST", "/api/vote", _vote(v), JSON, 422) for v in (
        str(BIG), str(2**64), str(10**400), str(-BIG - 1), "-1", "0", "1.5", "1e400", '"1e3"', "true", "null",
        "[]", "{}", "NaN", "Infinity", str(2**53), '"1"')],
    ("vote on a comparison that is not there", "POST", "/api/vote", _vote("999999"), JSON, 404),
    ("vote comment with a lone surrogate", "POST", "/api/vote", _vote("1", ', "comment": "\\ud83d"'), JSON, 422),
    ("vote comment of 5 MB", "POST", "/api/vote", _vote("1", ', "comment": "' + "x" * 5_000_000 + '"'), JSON, 422),
    ("vote choice as a number", "POST", "/api/vote", b'{"comparison": 1, "choice": 1}', JSON, 422),
    ("vote choice with a NUL", "POST", "/api/vote", b'{"comparison": 1, "choice": "left\\u0000"}', JSON, 422),
    ("vote body nested 100,000 deep", "POST", "/api/vote", b"[" * 100_000 + b"]" * 100_000, JSON, 400),
    ("vote body that is not JSON", "POST", "/api/vote", b"{comparison: 1", JSON, 422),
    ("vote body that is not UTF-8", "POST", "/api/vote", b'{"comparison": 1, "choice": "\xff\xfe"}', JSON, 400),
    ("vote body empty", "POST", "/api/vote", b"", JSON, 422),
    ("vote as a form post", "POST", "/api/vote", b"comparison=1&choice=left",
     {"content-type": "application/x-www-form-urlencoded"}, 422),
    ("vote body a JSON string", "POST", "/api/vote", b'"left"', JSON, 422),
    ("login name with a lone surrogate", "POST", "/api/login", b'{"name": "\\ud83d"}', JSON, 422),
    ("login name of control characters", "POST", "/api/login", b'{"name": "\\u0000\\u200b\\u0007"}', JSON, 422),
    ("login name of 100,000 characters", "POST", "/api/login", b'{"name": "' + b"a" * 100_000 + b'"}', JSON, 422),
    ("login name as a list", "POST", "/api/login", b'{"name": ["Ada"]}', JSON, 422),
    ("login password of 1 MB", "POST", "/api/login", b'{"name": "Ada", "password": "' + b"p" * 1_000_000 + b'"}',
     JSON, 422),
    ("static path traversal", "GET", "/static/..%2Fstore.py", None, {}, 404),
    ("static file with a NUL", "GET", "/static/page.js%00", None, {}, 404),
    ("static file with a surrogate", "GET", "/static/%ED%A0%BD", None, {}, 404),
    ("unknown route", "GET", "/api/nothing", None, {}, 404),
    ("wrong method", "DELETE", "/api/vote", None, {}, 405),
    ("query junk", "GET", "/api/next?" + "x=%ff&" * 1000, None, {}, 200),
]
# Cookies: the server must treat each as no login at all (401), whatever it holds.
COOKIES = [b"", b".", b"-1.x", b"99999999999999999999999.abc", b"\xff\xfe.abc", b"1." + b"a" * 100_000,
           b"\xed\xa0\xbd.x", b"1e3.x", b"0x1.abc", b"\xd9\xa3.abc"]  # the last: an Arabic-Indic digit


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    store = JudgeStore(tmp / "votes.sqlite")
    store.add_comparisons(read_comparisons(write_jsonl(tmp / "c.jsonl", comparison_rows(4))))
    with live_server(create_app(store)) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/api/login", json={"name": "Ada"}).raise_for_status()
        yield client, store


def _healthy(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}


@pytest.mark.parametrize("name,method,path,body,headers,status", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_clear_4xx(server, name, method, path, body, headers, status):
    client, store = server
    before = len(store.votes())
    r = client.request(method, path, content=body, headers=headers)
    assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
    if status >= 400:
        assert "detail" in r.json()
    assert len(store.votes()) == before
    _healthy(client)


@pytest.mark.parametrize("cookie", COOKIES, ids=[repr(c)[:30] for c in COOKIES])
def test_junk_cookies_are_no_login(server, cookie):
    client, _ = server
    url = str(client.base_url)
    with httpx.Client(base_url=url, timeout=60) as anonymous:
        r = anonymous.get("/api/next", headers={"cookie": COOKIE.encode() + b"=" + cookie})
        assert r.status_code == 401, r.text
    _healthy(client)


def test_a_good_vote_still_lands_after_all_that(server):
    client, store = server
    shown = client.get("/api/next").json()["comparison"]
    r = client.post("/api/vote", json={"comparison": shown["id"], "choice": "tie", "comment": "fine 👍"})
    assert r.status_code == 200 and r.json()["stored"] is True
    assert [v.comment for v in store.votes()] == ["fine 👍"]
