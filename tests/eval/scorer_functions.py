"""A scorer function importable as ``tests.eval.scorer_functions:prompt_words`` (see test_scorers)."""


def prompt_words(prompt: str, reply: str) -> float:
    return float(len(prompt.split()))
