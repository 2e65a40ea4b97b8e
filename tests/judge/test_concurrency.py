"""Many people voting at once through the HTTP API of a real server: every vote lands exactly once."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from coh.judge.app import create_app
from coh.judge.sources import read_comparisons
from coh.judge.store import JudgeStore

from .conftest import comparison_rows, live_server, write_jsonl

CHOICES = ("left", "right", "tie", "neither")


def test_concurrent_votes_nothing_lost_nothing_doubled(tmp_path):
    store = JudgeStore(tmp_path / "votes.sqlite")
    store.add_comparisons(read_comparisons(write_jsonl(tmp_path / "c.jsonl", comparison_rows(10, ("a1", "b2", "c3")))))
    n_comparisons = store.count_comparisons()  # 30
    voters = [f"voter {i}" for i in range(6)]
    intended: dict[tuple[str, int], tuple[str, str]] = {}  # (voter, comparison) -> (choice, text shown there)
    lock = threading.Lock()
    start = threading.Barrier(2 * len(voters))

    def vote_all(base: str, name: str, tab: int) -> int:
        """One browser tab: log in, then judge until nothing is left. Two tabs per voter run at
        once and often get the same comparison; each vote is also sent twice (a retry)."""
        with httpx.Client(base_url=base, timeout=60) as c:
            c.post("/api/login", json={"name": name}).raise_for_status()
            start.wait()
            sent = 0
            while (shown := c.get("/api/next").json()["comparison"]) is not None:
                choice = CHOICES[(shown["id"] + len(name)) % 4]  # both tabs pick the same for a comparison
                body = {"comparison": shown["id"], "choice": choice, "comment": f"{name} on {shown['id']}"}
                for _ in range(2):
                    r = c.post("/api/vote", json=body)
                    assert r.status_code == 200, r.text
                sent += 1
                text = shown[choice] if choice in ("left", "right") else choice
                with lock:
                    assert intended.setdefault((name, shown["id"]), (choice, text)) == (choice, text)
            return sent

    with live_server(create_app(store)) as base, ThreadPoolExecutor(2 * len(voters)) as pool:
        sent = list(pool.map(lambda job: vote_all(base, *job), [(v, t) for v in voters for t in (0, 1)]))
    assert sum(sent) >= len(voters) * n_comparisons

    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT comparison_id || '/' || voter_id) FROM votes").fetchone()
    assert rows == (len(voters) * n_comparisons,) * 2  # every vote exactly once
    votes = store.votes()
    assert len(intended) == len(votes)
    for v in votes:
        _, shown_text = intended[(v.voter_name, v.comparison.id)]
        outputs = {"a": v.comparison.output_a, "b": v.comparison.output_b}
        stored = outputs[v.choice] if v.choice in ("a", "b") else v.choice
        assert stored == shown_text  # the system stored is the one whose output was on that side
        assert v.comment == f"{v.voter_name} on {v.comparison.id}"
