"""The summarization prompt, its references and ROUGE."""

from __future__ import annotations

import pytest

from coh.data.feedback import Candidate, FeedbackExample, Turn
from coh.eval import summarization
from coh.eval.config import Sampling
from coh.eval.summarization import eval_summarization
from coh.models import load_for_inference


def test_summarization_prompt_references_and_rouge(tiny_llama_dir, monkeypatch):
    lm = load_for_inference(str(tiny_llama_dir), "cpu")
    post = (Turn("user", "My cat knocks cups off the table every morning."),)
    other = (Turn("user", "The bus was late three days in a row."),)
    examples = [FeedbackExample("s/1", "summary", "eval", post, (Candidate("Cat knocks cups off."), Candidate("Cat."))),
                FeedbackExample("s/2", "summary", "eval", post, (Candidate("A cat breaks cups daily."), Candidate("x"))),
                FeedbackExample("s/3", "summary", "eval", other, (Candidate("Late bus."), Candidate("Bus.")))]
    seen = {}

    def fake_generate(lm_, prompts, sampling, progress=False, desc=""):
        seen["prompts"] = [lm.tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
        return ["A cat breaks cups daily.", ""]

    monkeypatch.setattr(summarization, "generate", fake_generate)
    metrics, _, counts = eval_summarization(lm, examples, Sampling())
    assert seen["prompts"][0] == ("User: Write a summary of the following article: My cat knocks cups off the "
                                  "table every morning. A helpful answer:")
    assert counts == {"posts": 2, "empty_summaries": 1}
    # Post 1 matches its second preferred summary exactly (best reference counts), post 2 is empty.
    assert metrics["rouge1"] == pytest.approx(0.5) and metrics["rougeL"] == pytest.approx(0.5)
    eval_summarization(lm, examples, Sampling(), feedback="a good summary is:", task_phrase="")
    assert seen["prompts"][0] == "User: My cat knocks cups off the table every morning. a good summary is:"
    eval_summarization(lm, examples, Sampling(), feedback="none", task_phrase="")
    assert seen["prompts"][0] == "User: My cat knocks cups off the table every morning."
