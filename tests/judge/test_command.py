"""`coh judge serve` up to the point where uvicorn would take over (uvicorn.run is replaced)."""

from __future__ import annotations

import pytest
import uvicorn
from fastapi.testclient import TestClient

from coh.cli import main


@pytest.fixture
def served(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    return calls


def test_serve_loads_comparisons_and_binds_loopback(comparisons_file, served, capsys, monkeypatch):
    monkeypatch.delenv("COH_JUDGE_PASSWORD", raising=False)
    assert main(["judge", "serve", str(comparisons_file), "--port", "8123"]) == 0
    out = capsys.readouterr().out
    db = comparisons_file.with_suffix(".sqlite")
    assert db.exists() and "comparisons: 6 added, 0 already" in out and "http://127.0.0.1:8123/" in out
    assert served[0]["host"] == "127.0.0.1" and served[0]["port"] == 8123
    app = served[0]["app"]
    assert TestClient(app, base_url="http://127.0.0.1:8123").get("/api/config").json() == \
        {"password_required": False, "results": True}
    assert TestClient(app, base_url="http://evil.example").get("/api/config").status_code == 400  # DNS rebinding
    # again, and from the database alone: nothing added twice
    assert main(["judge", "serve", str(comparisons_file), "--hide-results"]) == 0
    assert "0 added, 6 already" in capsys.readouterr().out
    assert main(["judge", "serve", "--db", str(db)]) == 0
    assert "6 comparisons" in capsys.readouterr().out


def test_serve_on_all_interfaces_warns_without_password(comparisons_file, served, capsys, monkeypatch):
    monkeypatch.delenv("COH_JUDGE_PASSWORD", raising=False)
    assert main(["judge", "serve", str(comparisons_file), "--host", "0.0.0.0"]) == 0
    assert "no password" in capsys.readouterr().err
    monkeypatch.setenv("COH_JUDGE_PASSWORD", "from-env")
    assert main(["judge", "serve", str(comparisons_file), "--host", "0.0.0.0"]) == 0
    assert "no password" not in capsys.readouterr().err
    c = TestClient(served[-1]["app"], base_url="http://judge.lan")  # any host name when not on loopback
    assert c.post("/api/login", json={"name": "Ada", "password": "nope"}).status_code == 401
    assert c.post("/api/login", json={"name": "Ada", "password": "from-env"}).status_code == 200


def test_serve_errors(tmp_path, served, capsys):
    assert main(["judge", "serve"]) == 1
    assert "give a comparisons file" in capsys.readouterr().err
    assert main(["judge", "serve", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert main(["judge", "serve", "--db", str(tmp_path / "empty.sqlite")]) == 1
    assert "no comparisons to judge" in capsys.readouterr().err
    assert served == []
