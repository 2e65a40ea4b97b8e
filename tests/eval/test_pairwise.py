"""Pairwise win rates: a model against generations files, and a server side."""

from __future__ import annotations

import pytest

from coh.eval.config import Sampling
from coh.eval.generations import generate_http, read_generations, write_generations
from coh.eval.pairwise import Side, eval_pairwise
from coh.eval.scorers import FunctionScorer
from tests.eval.conftest import needs_serve, short_examples


def test_pairwise_model_against_files(yes_no_dir, tmp_path):
    examples = short_examples()
    ids, contexts = [ex.id for ex in examples], [ex.context for ex in examples]
    # B: a file answering "yes" to the first four prompts only, and missing the last one.
    write_generations(tmp_path / "b.jsonl", ids[:-1], contexts[:-1], "good", ["yes"] * 4 + ["no"] * 3)
    judge = FunctionScorer(lambda prompt, reply: float(reply == "yes"), "yes")
    a, b = Side.open(str(yes_no_dir)), Side.open(str(tmp_path / "b.jsonl"))
    metrics, ci95, counts = eval_pairwise(a, b, judge, examples, Sampling(max_new_tokens=4),
                                             output_dir=tmp_path)
    assert counts == {"prompts": 7, "missing": 1, "wins": 3, "ties": 4, "losses": 0}
    assert metrics["win_rate_a_over_b"] == pytest.approx((3 + 4 / 2) / 7)
    assert ci95["win_rate_a_over_b"][0] < metrics["win_rate_a_over_b"] <= ci95["win_rate_a_over_b"][1] <= 1.0
    # The model's replies were kept: the same comparison from two files gives the same numbers.
    again = eval_pairwise(Side.open(str(tmp_path / "generations_a.jsonl")), b, judge, None, Sampling())
    assert again == (metrics, ci95, counts)


@needs_serve
def test_pairwise_with_a_server_side_follows_the_feedback_field(yes_no_dir, serve, tmp_path):
    url = serve(yes_no_dir)
    examples = short_examples()
    contexts = [ex.context for ex in examples]
    assert generate_http(url, contexts, "bad", Sampling(max_new_tokens=4)) == ["no"] * len(examples)
    judge = FunctionScorer(lambda prompt, reply: float(reply == "yes"), "yes")
    a, b = Side.open(url), Side.open(str(yes_no_dir))
    metrics, _, counts = eval_pairwise(a, b, judge, examples, Sampling(max_new_tokens=4), output_dir=tmp_path)
    assert counts == {"prompts": 8, "missing": 0, "wins": 0, "ties": 8, "losses": 0}  # "yes" on both sides
    assert metrics["win_rate_a_over_b"] == 0.5
    assert read_generations(tmp_path / "generations_a.jsonl") == read_generations(tmp_path / "generations_b.jsonl")
