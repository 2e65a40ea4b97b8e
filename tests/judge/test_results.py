"""Win / tie / loss counts and Wilson intervals against small, obviously correct references."""

from __future__ import annotations

import math

import pytest

from coh.judge.results import OUTCOMES, format_table, pair_results, plot
from coh.judge.store import Comparison, Vote
from coh.stats import wilson_interval


def score_test_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson interval by its definition: every p the score test does not reject,
    |k/n - p| <= z * sqrt(p (1 - p) / n), found by bisection on either side of k/n."""
    phat = k / n

    def inside(p: float) -> bool:
        return abs(phat - p) <= z * math.sqrt(p * (1 - p) / n)

    def edge(lo: float, hi: float) -> float:  # inside(lo) != inside(hi)
        for _ in range(100):
            mid = (lo + hi) / 2
            if inside(mid) == inside(lo):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = 0.0 if inside(0.0) else edge(0.0, phat)
    high = 1.0 if inside(1.0) else edge(phat, 1.0)
    return low, high


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (5, 10), (10, 10), (17, 40), (1, 200), (999, 1000)])
def test_wilson_matches_the_score_test_definition(k, n):
    assert wilson_interval(k, n) == pytest.approx(score_test_interval(k, n), abs=1e-9)


def test_wilson_known_value_and_empty():
    # 0 successes of n: the upper bound is z^2 / (n + z^2), 0.2775 for n = 10
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def vote(cid: int, a: str, b: str, choice: str, voter: int = 1, left: str = "a", prompt: str = "p") -> Vote:
    return Vote(Comparison(cid, prompt, [{"role": "user", "content": "q"}], a, b, "A", "B"), voter, "n",
                choice, left, "", "2026-01-01T00:00:00")


def test_pair_counts_from_the_first_system_side():
    votes = [vote(1, "coh", "sft", c, voter=i % 3, left="ab"[i % 2], prompt=f"p{i % 4}")
             for i, c in enumerate(["a"] * 5 + ["b"] * 2 + ["tie"] * 2 + ["neither"])]
    votes += [vote(2, "coh", "rlhf", "b"), vote(2, "coh", "rlhf", "b", voter=2)]
    results = pair_results(votes)
    assert [(r.system_a, r.system_b) for r in results] == [("coh", "rlhf"), ("coh", "sft")]
    rlhf, sft = results
    assert sft.counts == {"win": 5, "tie": 2, "loss": 2, "neither": 1} and sft.votes == 10
    assert rlhf.counts == {"win": 0, "tie": 0, "loss": 2, "neither": 0}
    # decisive votes where the chosen system was on the left: i even -> left a; a wins at i 0..4, b at 5, 6
    assert sft.left_chosen == sum(1 for i in range(7) if ("a" if i < 5 else "b") == "ab"[i % 2])
    assert sft.share("win") == (0.5, *wilson_interval(5, 10))
    d = sft.to_dict()
    assert (d["prompts"], d["voters"], d["decisive"]) == (4, 3, 7)
    assert sum(d["shares"][o]["share"] for o in OUTCOMES) == pytest.approx(1.0)


def test_table_and_plot(tmp_path):
    results = pair_results([vote(1, "coh", "sft", "a"), vote(1, "coh", "sft", "tie", voter=2)])
    table = format_table(results)
    assert "coh" in table and "sft" in table and " 50.0% [" in table and "95% Wilson" in table
    assert format_table([]) == "no votes yet"
    data = plot(results, tmp_path / "plots" / "r.png")
    assert data.startswith(b"\x89PNG") and (tmp_path / "plots" / "r.png").read_bytes() == data
    assert plot([]).startswith(b"\x89PNG")
