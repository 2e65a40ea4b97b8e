"""Votes into preference rows that ``coh data build -s preference:FILE`` reads.

One row per decisive vote (``aggregate="vote"``, the default: agreement between voters weighs in
as repeated rows), or one per comparison by majority (``aggregate="majority"``; comparisons whose
decisive votes are split evenly are left out and counted)::

    {"prompt": "...", "chosen": "...", "rejected": "...", "comment": "the voter's words",
     "judge": {"systems": {"chosen": "coh", "rejected": "sft"}, "voters": ["3f2a..."],
               "time": "2026-11-02T10:00:00.000+00:00", "prompt_id": "17", "votes": {...}}}

``prompt`` is a string for a single user turn and a message list otherwise; ``comment`` is there
only when voters wrote one. Ties and "neither" are not preferences: they are counted, not written.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from coh.data.io import atomic_writer
from coh.judge.store import JudgeStore, Vote

AGGREGATES = ("vote", "majority")


def _prompt(messages: list[dict]) -> str | list[dict]:
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return messages


def _row(votes: list[Vote], winner: str, store: JudgeStore) -> tuple[dict, int]:
    """The row of ``votes`` on one comparison, won by ``winner``, and how many comments it holds."""
    c = votes[0].comparison
    loser = "b" if winner == "a" else "a"
    systems = {"a": c.system_a, "b": c.system_b}
    outputs = {"a": c.output_a, "b": c.output_b}
    row: dict = {"prompt": _prompt(c.prompt), "chosen": outputs[winner], "rejected": outputs[loser]}
    comments = [v.comment for v in votes if v.comment and v.choice == winner]
    if comments:
        row["comment"] = "\n".join(comments)
    row["judge"] = {
        "systems": {"chosen": systems[winner], "rejected": systems[loser]},
        "voters": [store.voter_hash(v.voter_id) for v in votes if v.choice == winner],
        "time": max(v.created for v in votes),
        "prompt_id": c.prompt_id,
        "votes": dict(Counter(v.choice for v in votes)),
    }
    return row, len(comments)


def export_preferences(store: JudgeStore, output: str | Path, aggregate: str = "vote") -> dict:
    """Write the preference rows to ``output`` (JSONL) and return what was counted: ``votes``,
    ``rows``, ``tie``, ``neither``, ``comments`` written, ``comments_left_out`` (on ties and
    "neither", or on the losing side of a majority) and, by majority, ``split_evenly``."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")
    votes = store.votes()
    counts = Counter(v.choice for v in votes)
    made: list[tuple[dict, int]] = []
    split_evenly = 0
    if aggregate == "vote":
        made = [_row([v], v.choice, store) for v in votes if v.choice in ("a", "b")]
    else:
        by_comparison: dict[int, list[Vote]] = {}
        for v in votes:
            by_comparison.setdefault(v.comparison.id, []).append(v)
        for group in by_comparison.values():
            n = Counter(v.choice for v in group)
            if n["a"] == n["b"]:
                split_evenly += n["a"] > 0
                continue
            made.append(_row(group, "a" if n["a"] > n["b"] else "b", store))
    with atomic_writer(output) as f:
        for row, _ in made:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    written = sum(n for _, n in made)
    summary = {"votes": len(votes), "rows": len(made), "tie": counts["tie"], "neither": counts["neither"],
               "comments": written, "comments_left_out": sum(bool(v.comment) for v in votes) - written}
    if aggregate == "majority":
        summary["split_evenly"] = split_evenly
    return summary
