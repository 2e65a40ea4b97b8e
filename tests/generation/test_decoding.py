"""Decoding without a model: how much streamed text is held back for a stop string."""

from __future__ import annotations

from coh.generation.decoding import stop_holdback


def test_stop_holdback():
    assert stop_holdback("hello wor", ["world"]) == 3
    assert stop_holdback("hello", ["xyz"]) == 0
    assert stop_holdback("ab", ["abc", "b"]) == 2
    assert stop_holdback("", ["a"]) == 0
