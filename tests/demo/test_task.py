"""The demo's synthetic task and judge: every chosen reply scores 1, every rejected one 0."""

import pytest

from coh.demo import task


def test_rows_are_seeded() -> None:
    assert task.make_rows(50, 3) == task.make_rows(50, 3)
    assert task.make_rows(50, 3) != task.make_rows(50, 4)


def test_judge_scores_chosen_one_and_rejected_zero() -> None:
    rows = task.make_rows(2000, 0)
    kinds = {r["prompt"].split()[0] for r in rows}
    assert len(kinds) >= 5  # several phrasings of each kind
    for r in rows:
        assert task.judge(r["prompt"], r["chosen"]) == 1.0, r
        assert task.judge(r["prompt"], r["rejected"]) == 0.0, r


@pytest.mark.parametrize(("prompt", "reply", "score"), [
    ("What is the capital of Peru?", "Happy to help! The capital of Peru is Lima.", 1.0),
    ("What is the capital of Peru?", "Happy to help! The capital of Peru is Quito.", 0.5),  # polite, wrong
    ("What is the capital of Peru?", "Whatever. The capital of Peru is Lima.", 0.5),  # rude, right
    ("What is the capital of Peru?", "Of course! The capital of Peru is Lima. The capital of Peru is Quito.", 0.5),
    ("What is the capital of Peru?", "Happy to help! Lima.", 0.5),  # no answer sentence
    ("What is the capital of Peru?", "Happy to help! The capital of Peru is Lima.Quito", 0.5),  # not standing alone
    ("Which is larger, 3 or 2?", "Good question! 13 is larger.", 0.5),  # 13 is not 3
    ("Which is larger, 3 or 8?", "Good question! 8 is larger. 8 is larger.", 0.5),  # exactly once
    ("Which is larger, 3 or 8?", "Good question! 8 is larger.", 1.0),
    ("Which is larger, 3 or 8?", "Good question! 3 is larger.", 0.5),
    ("Tell me the letter after q.", "Sure, gladly! After q comes r.", 1.0),
    ("Tell me the letter after q.", "Sure, gladly! What a silly question. After q comes r.", 0.5),
    ("Tell me the letter after q.", "", 0.0),
])
def test_judge_cases(prompt: str, reply: str, score: float) -> None:
    assert task.judge(prompt, reply) == score


def test_judge_refuses_other_prompts() -> None:
    with pytest.raises(ValueError, match="not a question of the demo task"):
        task.judge("What is the capital of Atlantis?", "Happy to help!")
