"""The voting API through FastAPI's test client: login, hidden sides, votes, resume, password."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from coh.judge.app import COOKIE, create_app


def client(store, **kw) -> TestClient:
    return TestClient(create_app(store, **kw))


def login(c: TestClient, name: str = "Ada", password: str = "") -> None:
    r = c.post("/api/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.text


def test_needs_a_name_first(store):
    c = client(store)
    assert c.get("/api/next").status_code == 401
    assert c.post("/api/vote", json={"comparison": 1, "choice": "left"}).status_code == 401
    assert c.post("/api/login", json={"name": "  "}).status_code == 422
    assert c.get("/api/config").json() == {"password_required": False, "results": True}


def test_left_and_right_map_to_the_hidden_systems(store):
    c = client(store)
    login(c)
    voter = store.voter("Ada")
    mapped = {}
    for choice in ("left", "right", "left", "right", "tie", "neither"):
        shown = c.get("/api/next").json()["comparison"]
        comparison = store.comparison(shown["id"])
        assert set(shown) == {"id", "prompt", "left", "right"}  # nothing names or orders the systems
        outputs = {comparison.output_a: "a", comparison.output_b: "b"}
        assert {shown["left"], shown["right"]} == set(outputs)
        assert shown["prompt"] == [{"role": "user", "content": comparison.prompt[0]["content"]}]
        r = c.post("/api/vote", json={"comparison": shown["id"], "choice": choice, "comment": f"because {choice}"})
        assert r.status_code == 200 and r.json()["stored"] is True
        mapped[shown["id"]] = outputs[shown[choice]] if choice in ("left", "right") else choice
    votes = {v.comparison.id: v for v in store.votes()}
    assert {cid: v.choice for cid, v in votes.items()} == mapped
    assert all(v.voter_id == voter.id and v.comment.startswith("because") for v in votes.values())
    done = c.get("/api/next").json()
    assert done["comparison"] is None and done["progress"] == {"voted": 6, "total": 6}


def test_a_person_who_comes_back_resumes(store):
    first = client(store)
    login(first, "Grace")
    a = first.get("/api/next").json()["comparison"]
    first.post("/api/vote", json={"comparison": a["id"], "choice": "tie"})
    b = first.get("/api/next").json()["comparison"]
    # another browser, the same name typed differently: the same place, the same layout
    again = client(store)
    login(again, " grace ")
    data = again.get("/api/next").json()
    assert data["name"] == "Grace" and data["progress"]["voted"] == 1
    assert data["comparison"] == b


def test_votes_are_idempotent_and_final(store):
    c = client(store)
    login(c)
    cid = c.get("/api/next").json()["comparison"]["id"]
    body = {"comparison": cid, "choice": "left", "comment": "x"}
    assert c.post("/api/vote", json=body).json()["stored"] is True
    assert c.post("/api/vote", json=body).json()["stored"] is False  # a retried request
    r = c.post("/api/vote", json={**body, "choice": "right"})
    assert r.status_code == 409 and "already voted" in r.json()["detail"]
    assert c.post("/api/vote", json={"comparison": 999, "choice": "left"}).status_code == 404
    assert c.post("/api/vote", json={"comparison": cid, "choice": "a"}).status_code == 422
    assert c.post("/api/vote", json={"comparison": cid, "choice": "tie", "comment": "x" * 2001}).status_code == 422
    # JSON only: a cross-site form or a body without a JSON content type is refused
    assert c.post("/api/vote", content=b'{"comparison": 2, "choice": "left"}').status_code == 422
    assert len(store.votes()) == 1


def test_password_and_signed_cookie(store):
    c = client(store, password="s3cret")
    assert c.get("/api/config").json()["password_required"] is True
    assert c.post("/api/login", json={"name": "Ada", "password": "wrong"}).status_code == 401
    assert c.post("/api/login", json={"name": "Ada"}).status_code == 401
    login(c, "Ada", "s3cret")
    assert c.get("/api/next").status_code == 200
    vid, _, sig = c.cookies[COOKIE].partition(".")
    forged = client(store, password="s3cret")
    forged.cookies.set(COOKIE, f"{int(vid) + 1}.{sig}")
    assert forged.get("/api/next").status_code == 401
    forged.cookies.clear()
    for junk in (b"", b".", b"x.y", b"\xb2.abc", b"9" * 5000 + b".abc", f"{vid}.{sig[:-1]}".encode()):
        assert forged.get("/api/next", headers={"Cookie": COOKIE.encode() + b"=" + junk}).status_code == 401
    # the cookie of a server without the password (or with another) is not accepted
    other = client(store)
    login(other, "Ada")
    stolen = client(store, password="s3cret")
    stolen.cookies.set(COOKIE, other.cookies[COOKIE])
    assert stolen.get("/api/next").status_code == 401
    c.post("/api/logout", json={})
    assert c.get("/api/next").status_code == 401


def test_headers_pages_and_static_files(store):
    c = client(store)
    r = c.get("/")
    assert r.status_code == 200 and "/static/page.js" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert c.get("/static/page.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/static/../store.py").status_code == 404
    assert c.get("/static/store.py").status_code == 404


def test_results_endpoints_and_hiding_them(store):
    c = client(store)
    login(c)
    for choice in ("left", "tie"):
        cid = c.get("/api/next").json()["comparison"]["id"]
        c.post("/api/vote", json={"comparison": cid, "choice": choice})
    pairs = c.get("/api/results").json()["pairs"]
    assert len(pairs) == 1 and pairs[0]["votes"] == 2 and pairs[0]["counts"]["tie"] == 1
    png = c.get("/api/results.png")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert c.get("/results").status_code == 200
    hidden = client(store, show_results=False)
    login(hidden)
    assert hidden.get("/api/results").status_code == 404 and hidden.get("/results").status_code == 404
    assert hidden.get("/api/config").json()["results"] is False


@pytest.mark.parametrize("host,status", [("127.0.0.1", 200), ("localhost", 200), ("evil.example", 400)])
def test_loopback_server_refuses_other_host_names(store, host, status):
    c = TestClient(create_app(store, allowed_hosts=["127.0.0.1", "localhost"]), base_url=f"http://{host}")
    assert c.get("/api/config").status_code == status
