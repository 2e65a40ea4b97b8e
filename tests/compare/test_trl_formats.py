"""The rows handed to TRL, checked with TRL's own tokenization on the real SmolLM2 tokenizer: DPO
trains on exactly the prompt tokens the evaluation prompts with, and the reward model is trained
on exactly the token sequences ``coh.eval.scorers.RewardModelScorer`` scores."""

from __future__ import annotations

import pytest

from coh.compare.methods import conversation_rows, preference_rows, prompt_text
from coh.data.phrases import DEFAULT_PHRASES, phrases_for
from tests.conftest import HH_SAMPLE

trl_data = pytest.importorskip("trl.data_utils", reason="TRL (the compare extra) is not installed")


@pytest.fixture(scope="module")
def setup(smollm2_dir):
    from transformers import AutoTokenizer

    from coh.eval.examples import read_examples

    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} not present")
    examples, _ = read_examples("dialogue", str(HH_SAMPLE), 40)
    return AutoTokenizer.from_pretrained(smollm2_dir), examples, phrases_for("dialogue", DEFAULT_PHRASES)


def test_dpo_prompt_tokens_are_the_evaluation_prompt(setup):
    from coh.data.render import prompt_record
    from coh.data.tokenize import RecordTokenizer

    tok, examples, phrases = setup
    rtok = RecordTokenizer(tok, chat_template="never")
    rows = preference_rows(examples, phrases, tok.eos_token)
    assert any(len(ex.context) > 1 for ex in examples)  # multi-turn contexts, with EOS between turns
    for ex, row in zip(examples, rows):
        ours = rtok(prompt_record(ex.context, phrases, None)).input_ids
        prompt_ids = trl_data._tokenize(tok, row["prompt"])["input_ids"]
        assert prompt_ids == ours
        for key in ("chosen", "rejected"):  # what DPOTrainer tokenizes: prompt + completion + EOS
            full = trl_data._tokenize(tok, row["prompt"] + row[key] + tok.eos_token)["input_ids"]
            assert full[: len(prompt_ids)] == prompt_ids
            assert full[-1] == tok.eos_token_id
    assert rows[0]["prompt"] == prompt_text(examples[0].context, phrases, tok.eos_token)


def test_reward_model_trains_on_what_the_scorer_scores(setup):
    from coh.eval.scorers import RewardModelScorer

    tok, examples, _ = setup
    scorer = RewardModelScorer.__new__(RewardModelScorer)  # its encoder only; no model needed
    scorer.tokenizer, scorer.max_length = tok, 4096
    for ex, row in zip(examples, conversation_rows(examples)):
        trl_ids = trl_data._tokenize(tok, row["chosen"])["input_ids"]
        ours = scorer._encode([ex.context], [ex.candidates[0].text])["input_ids"][0].tolist()
        assert trl_ids == ours
