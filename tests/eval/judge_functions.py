"""A judge function importable as ``tests.eval.judge_functions:prompt_words`` (see test_judges)."""


def prompt_words(prompt: str, reply: str) -> float:
    return float(len(prompt.split()))
