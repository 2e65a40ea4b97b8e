"""The demo's synthetic feedback task and its automatic judge.

A seeded program asks short questions of three kinds (the capital of a country, the larger of two
numbers, the letter after a letter) in several phrasings. For each it writes a preferred reply,
polite and correct, and a dispreferred one, rude and wrong::

    What is the capital of Peru?
      chosen:   Happy to help! The capital of Peru is Lima.
      rejected: Ugh, look it up yourself. The capital of Peru is Quito.

The rows are in TRL's preference schema (``prompt``, ``chosen``, ``rejected``), so ``coh data``
reads them as any user's preference file. :func:`judge` scores a reply 0 to 1: half for a polite
opening and no rude words, half for the correct answer sentence. The model must learn the facts,
the comparison, the alphabet and which manner goes with which feedback phrase.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Poland": "Warsaw",
    "Austria": "Vienna", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago", "Cuba": "Havana",
    "Japan": "Tokyo", "China": "Beijing", "India": "Delhi", "Russia": "Moscow", "Canada": "Ottawa",
    "Ireland": "Dublin", "Portugal": "Lisbon", "Hungary": "Budapest", "Ecuador": "Quito",
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"

CAPITAL_QUESTIONS = ("What is the capital of {x}?", "Which city is the capital of {x}?",
                     "Tell me the capital of {x}.", "Name the capital city of {x}.", "Do you know the capital of {x}?")
LARGER_QUESTIONS = ("Which is larger, {a} or {b}?", "What is the bigger number: {a} or {b}?",
                    "Which number is greater, {a} or {b}?", "Tell me which is larger: {a} or {b}.")
LETTER_QUESTIONS = ("What letter comes after {x}?", "Which letter follows {x} in the alphabet?",
                    "Tell me the letter after {x}.", "In the alphabet, what comes after {x}?")

POLITE = ("Happy to help!", "Good question!", "Of course!", "Sure, gladly!", "Thanks for asking!")
RUDE = ("Ugh, look it up yourself.", "Whatever.", "Obviously, everyone knows this.", "Stop asking me things.",
        "What a silly question.")
RUDE_WORDS = ("ugh", "whatever", "obviously", "stop asking", "silly")


@dataclass(frozen=True)
class Question:
    """One question: its text, the correct answer sentence and a wrong one."""

    prompt: str
    right: str
    wrong: str


def capital_question(rng: random.Random) -> Question:
    country = rng.choice(sorted(CAPITALS))
    other = rng.choice(sorted(c for c in CAPITALS.values() if c != CAPITALS[country]))
    sentence = "The capital of {x} is {c}."
    return Question(rng.choice(CAPITAL_QUESTIONS).format(x=country), sentence.format(x=country, c=CAPITALS[country]),
                    sentence.format(x=country, c=other))


def larger_question(rng: random.Random) -> Question:
    a, b = rng.sample(range(1, 10), 2)
    return Question(rng.choice(LARGER_QUESTIONS).format(a=a, b=b), f"{max(a, b)} is larger.", f"{min(a, b)} is larger.")


def letter_question(rng: random.Random) -> Question:
    i = rng.randrange(1, len(LETTERS) - 1)
    x = LETTERS[i]
    return Question(rng.choice(LETTER_QUESTIONS).format(x=x), f"After {x} comes {LETTERS[i + 1]}.",
                    f"After {x} comes {LETTERS[i - 1]}.")


KINDS = (capital_question, larger_question, letter_question)


def make_rows(n: int, seed: int) -> list[dict]:
    """``n`` preference rows (``prompt``, ``chosen``, ``rejected``), the same for the same seed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = rng.choice(KINDS)(rng)
        rows.append({"prompt": q.prompt, "chosen": f"{rng.choice(POLITE)} {q.right}",
                     "rejected": f"{rng.choice(RUDE)} {q.wrong}"})
    return rows


def right_answer(prompt: str) -> str | None:
    """The correct answer sentence for a question of the task, or None for any other text."""
    for template in CAPITAL_QUESTIONS:
        m = re.fullmatch(re.escape(template).replace(r"\{x\}", r"(\w+)"), prompt)
        if m and m.group(1) in CAPITALS:
            return f"The capital of {m.group(1)} is {CAPITALS[m.group(1)]}."
    for template in LARGER_QUESTIONS:
        m = re.fullmatch(re.escape(template).replace(r"\{a\}", r"(\d+)").replace(r"\{b\}", r"(\d+)"), prompt)
        if m:
            return f"{max(int(m.group(1)), int(m.group(2)))} is larger."
    for template in LETTER_QUESTIONS:
        m = re.fullmatch(re.escape(template).replace(r"\{x\}", r"([a-y])"), prompt)
        if m and m.group(1) != "a":
            return f"After {m.group(1)} comes {LETTERS[LETTERS.index(m.group(1)) + 1]}."
    return None


def is_polite(reply: str) -> bool:
    """Opens with one of the polite phrases and has no rude words."""
    lowered = reply.lower()
    return reply.startswith(POLITE) and not any(w in lowered for w in RUDE_WORDS)


def is_correct(prompt: str, reply: str) -> bool:
    """States the correct answer sentence exactly once, and no other answer sentence."""
    right = right_answer(prompt)
    if right is None:
        raise ValueError(f"not a question of the demo task: {prompt!r}")
    # Every sentence of an answer's form, standing alone ("... is X." / "After x comes y.").
    answers = re.findall(r"(?<!\S)(?:The capital of \w+ is \w+\.|\d+ is larger\.|After \w comes \w\.)(?!\S)", reply)
    return answers == [right]


def judge(prompt: str, reply: str) -> float:
    """The demo's automatic judge, usable as a ``coh eval --scorer`` function: 0.5 for politeness
    plus 0.5 for correctness."""
    return 0.5 * is_polite(reply) + 0.5 * is_correct(prompt, reply)
