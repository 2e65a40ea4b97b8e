from __future__ import annotations

import pytest
import torch

from coh.data.feedback import Turn
from coh.eval.examples import conversation_text
from coh.eval.scorers import FunctionScorer, RewardModelScorer, is_function_spec, load_scorer

CONTEXTS = [(Turn("user", "How do I boil an egg?"),),
            (Turn("user", "hi"), Turn("assistant", "Hello! How can I help?"), Turn("user", "Tell me a joke."))]
REPLIES = ["Put it in boiling water for nine minutes, then cool it.", "No."]


def _reward_model(folder, tokenizer, num_labels: int, chat_template: bool):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    saved_template = tokenizer.chat_template
    tokenizer.chat_template = saved_template if chat_template else None
    tokenizer.save_pretrained(folder)
    tokenizer.chat_template = saved_template
    return model


def test_conversation_text():
    assert conversation_text(CONTEXTS[0]) == "How do I boil an egg?"
    assert conversation_text(CONTEXTS[1]) == "Human: hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."


def test_reward_model_with_chat_template_scores_like_one_at_a_time(tmp_path, bpe_tokenizer):
    model = _reward_model(tmp_path, bpe_tokenizer, 1, chat_template=True)
    judge = load_scorer(str(tmp_path), device="cpu", batch_size=2)
    assert isinstance(judge, RewardModelScorer)
    scores = judge.score(CONTEXTS, REPLIES)  # one padded batch
    for turns, reply, got in zip(CONTEXTS, REPLIES, scores):
        messages = [{"role": t.role, "content": t.text} for t in turns] + [{"role": "assistant", "content": reply}]
        text = bpe_tokenizer.apply_chat_template(messages, tokenize=False)
        assert text.startswith("<|im_start|>user\n")
        ids = bpe_tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            assert got == pytest.approx(float(model(input_ids=ids).logits[0, 0]), abs=1e-4)


def test_reward_model_without_template_takes_text_pairs(tmp_path, bpe_tokenizer):
    model = _reward_model(tmp_path, bpe_tokenizer, 2, chat_template=False)
    judge = RewardModelScorer(str(tmp_path), device="cpu", batch_size=2)
    scores = judge.score(CONTEXTS, REPLIES)
    for turns, reply, got in zip(CONTEXTS, REPLIES, scores):
        ids = judge.tokenizer(conversation_text(turns), reply, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = torch.log_softmax(model(input_ids=ids).logits[0], -1)[-1]  # the last label's log-probability
        assert got == pytest.approx(float(expected), abs=1e-4)


def test_function_judges_from_a_file_and_a_module(tmp_path):
    path = tmp_path / "my_judges.py"
    path.write_text("def words(prompt, reply):\n    return len(reply.split())\n\n"
                    "def broken(prompt, reply):\n    return 'good'\n")
    judge = load_scorer(f"{path}:words")
    assert isinstance(judge, FunctionScorer)
    assert judge.score(CONTEXTS, REPLIES) == [11.0, 1.0]
    assert load_scorer("tests.eval.scorer_functions:prompt_words").score(CONTEXTS, REPLIES) == [6.0, 13.0]
    with pytest.raises(ValueError, match="returned str 'good'; expected a number"):
        load_scorer(f"{path}:broken").score(CONTEXTS, REPLIES)
    with pytest.raises(ValueError, match="has no function 'missing'"):
        load_scorer(f"{path}:missing")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_scorer(f"{tmp_path / 'nope.py'}:words")


def test_function_spec_detection(tmp_path):
    assert is_function_spec("mypkg.judges:score") and is_function_spec("judges.py:score")
    assert not is_function_spec("OpenAssistant/reward-model-deberta-v3-large-v2")
    assert not is_function_spec(str(tmp_path))
    with pytest.raises(ValueError, match=r"no config\.json in that folder"):
        load_scorer(str(tmp_path))  # an empty folder
