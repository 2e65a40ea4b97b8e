"""Controllability on a model trained to answer yes after its positive phrase and no after its negative one."""

from __future__ import annotations

import json

from coh.eval.config import Sampling
from coh.eval.controllability import eval_controllability
from coh.eval.scorers import FunctionScorer
from coh.models import load_for_inference
from tests.eval.conftest import TRAINED_PHRASES, short_examples


def test_controllability_follows_the_trained_phrases(yes_no_dir, tmp_path):
    lm = load_for_inference(str(yes_no_dir), "cpu")
    assert (lm.phrases.good, lm.phrases.bad) == (TRAINED_PHRASES["good"], TRAINED_PHRASES["bad"])
    judge = FunctionScorer(lambda prompt, reply: float(reply == "yes"), "yes")
    metrics, ci95, counts = eval_controllability(lm, short_examples(), judge, Sampling(max_new_tokens=4),
                                                    tmp_path)
    assert metrics["judge_good_mean"] == 1.0 and metrics["judge_bad_mean"] == 0.0
    assert metrics["good_over_bad_win_rate"] == 1.0 and ci95["good_over_bad_win_rate"] == (1.0, 1.0)
    assert counts == {"prompts": 8, "wins": 8, "ties": 0, "losses": 0}
    rows = [json.loads(line) for line in (tmp_path / "generations_bad.jsonl").read_text().splitlines()]
    assert {r["reply"] for r in rows} == {"no"} and rows[0]["context"][0]["role"] == "user"
