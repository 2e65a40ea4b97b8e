"""The votes store: comparisons per pair, one vote per voter and comparison, resume, hidden sides."""

from __future__ import annotations

import sqlite3

import pytest

from coh.judge.sources import read_comparisons
from coh.judge.store import JudgeStore, VoteConflict, normalize_name

from .conftest import comparison_rows, write_jsonl


def test_every_pair_of_systems_is_one_comparison_and_loading_is_idempotent(tmp_path):
    rows = read_comparisons(write_jsonl(tmp_path / "c.jsonl", comparison_rows(4, ("x", "b", "m"))))
    store = JudgeStore(tmp_path / "v.sqlite")
    assert store.add_comparisons(rows) == {"added": 12, "existing": 0, "identical": 0}
    assert store.add_comparisons(rows) == {"added": 0, "existing": 12, "identical": 0}
    by_id = {pid: (prompt, outs) for pid, prompt, outs in rows}
    stored = [store.comparison(i) for i in range(1, 13)]
    assert {(c.system_a, c.system_b) for c in stored} == {("b", "m"), ("b", "x"), ("m", "x")}
    for c in stored:
        prompt, outs = by_id[c.prompt_id]
        assert (c.prompt, c.output_a, c.output_b) == (prompt, outs[c.system_a], outs[c.system_b])
    changed = [(pid, prompt, {**outs, "b": "another text"}) for pid, prompt, outs in rows]
    with pytest.raises(ValueError, match="already stored with other text"):
        store.add_comparisons(changed)
    assert store.count_comparisons() == 12


def test_pairs_of_identical_outputs_are_left_out(tmp_path):
    store = JudgeStore(tmp_path / "v.sqlite")
    rows = [("1", [{"role": "user", "content": "q"}], {"x": "same", "y": "same", "z": "other"})]
    assert store.add_comparisons(rows) == {"added": 2, "existing": 0, "identical": 1}
    assert {(store.comparison(i).system_a, store.comparison(i).system_b) for i in (1, 2)} == {("x", "z"), ("y", "z")}


def test_wal_mode(store):
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_next_comparison_resumes_never_repeats_and_ends(store):
    v = store.voter("Ada")
    first = store.next_comparison(v.id)
    assert store.next_comparison(v.id) == first  # not voted yet: the same one again (a reload, a return)
    seen = []
    c = first
    while c is not None:
        seen.append(c.id)
        assert store.record_vote(v.id, c.id, "tie") is True
        c = store.next_comparison(v.id)
    assert sorted(seen) == list(range(1, 7))
    assert store.progress(v.id) == {"voted": 6, "total": 6}


def test_voters_get_their_own_order_and_coverage_grows_evenly(store):
    firsts = {store.next_comparison(store.voter(f"voter {i}").id).id for i in range(12)}
    assert len(firsts) > 1  # not everyone starts with the same comparison
    a, b = store.voter("a"), store.voter("b")
    c = store.next_comparison(a.id)
    store.record_vote(a.id, c.id, "a")
    # b has not started; comparisons without votes come before the one a voted on
    order = []
    while (n := store.next_comparison(b.id)) is not None:
        order.append(n.id)
        store.record_vote(b.id, n.id, "b")
    assert order[-1] == c.id


def test_max_votes_stops_handing_out_full_comparisons(store):
    voters = [store.voter(f"v{i}") for i in range(3)]
    for v in voters[:2]:
        while (c := store.next_comparison(v.id, max_votes=2)) is not None:
            store.record_vote(v.id, c.id, "a")
    assert store.next_comparison(voters[2].id, max_votes=2) is None
    assert store.progress(voters[2].id, max_votes=2) == {"voted": 0, "total": 0}
    assert store.progress(voters[0].id, max_votes=2) == {"voted": 6, "total": 6}
    assert store.next_comparison(voters[2].id, max_votes=3) is not None


def test_vote_is_stored_once_retries_are_harmless_changes_refused(store):
    v = store.voter("Ada")
    assert store.record_vote(v.id, 1, "a", "  clearer  ") is True
    assert store.record_vote(v.id, 1, "a", "clearer") is False
    with pytest.raises(VoteConflict, match="already voted"):
        store.record_vote(v.id, 1, "b")
    with pytest.raises(ValueError, match="choice"):
        store.record_vote(v.id, 2, "left")
    with pytest.raises(KeyError):
        store.record_vote(v.id, 999, "a")
    with pytest.raises(ValueError, match="comment"):
        store.record_vote(v.id, 2, "a", "x" * 2001)
    votes = store.votes()
    assert [(x.comparison.id, x.choice, x.comment, x.voter_name) for x in votes] == [(1, "a", "clearer", "Ada")]
    assert votes[0].left_side == store.left_side(v.id, 1)


def test_sides_are_drawn_per_voter_and_comparison(store):
    sides = [store.left_side(v, c) for v in range(20) for c in range(1, 7)]
    assert 30 < sides.count("a") < 90  # both sides, roughly balanced (120 draws)
    assert sides == [store.left_side(v, c) for v in range(20) for c in range(1, 7)]  # stable


def test_names(store):
    assert normalize_name("  Ada \t Lovelace ") == "Ada Lovelace"
    assert store.voter("ADA lovelace").id == store.voter("Ada  Lovelace").id
    assert store.voter("ADA lovelace").name == "ADA lovelace"  # as first typed
    for bad in ("", "   ", "x" * 65, "a\x00b", "a\u200bb"):
        with pytest.raises(ValueError, match="name"):
            normalize_name(bad)


def test_secret_survives_reopening(tmp_path, store):
    again = JudgeStore(store.path)
    assert again.secret == store.secret and len(store.secret) == 32
    assert [again.left_side(3, c) for c in range(1, 7)] == [store.left_side(3, c) for c in range(1, 7)]
    assert JudgeStore(tmp_path / "other.sqlite").secret != store.secret
