"""A scorer importable as ``tests.compare.judge_functions:reply_words``: longer replies score higher."""


def reply_words(prompt: str, reply: str) -> float:
    return float(len(reply.split()))
