"""Preference accuracy: the one definition, used by training's evaluation
(``eval/preference_accuracy``), ``coh eval feedback dialogue`` and ``coh compare``.

A pair is two records with the same context, each continuing it with the positive phrase and one
of the two outputs: the preferred one, and the dispreferred one rendered *as if* it had been given
the positive phrase (every phrase of that output replaced by the positive one). The loss tokens
are the output's (with its EOS). The model prefers correctly when the preferred record's summed
negative log-likelihood is lower (``preference_accuracy``; ties are misses), or its per-token
mean (``preference_accuracy_per_token``).

Pairs come from ``pn`` / ``np`` records (:func:`pairs_from_records`, a build's ``eval.jsonl``) or
from raw examples (:func:`pairs_from_examples`), which renders each example as a ``pn`` record
exactly as ``coh data build`` does and then takes the same path, so both report the same number
on the same model and data. With ``with_phrase=False`` the outputs follow the context with no
phrase at all, as ``sft``-mode records and the plain prompt of models trained without phrases
(SFT, DPO, the base model in ``coh compare``) render them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from coh.data.feedback import FeedbackExample
from coh.data.phrases import PhraseSet
from coh.data.records import FeedbackRecord, Segment, join_segments

Pair = tuple[FeedbackRecord, FeedbackRecord]


def _as_positive(segments: Sequence[Segment], phrase: str | None) -> list[Segment]:
    """An output's segments with every feedback phrase replaced by ``phrase`` (None: removed),
    its outputs labelled good."""
    return [s._replace(text=phrase, label="good") if s.role == "feedback" else s._replace(label="good")
            if s.loss else s for s in segments if phrase is not None or s.role != "feedback"]


def pairs_from_records(records: Sequence[FeedbackRecord], with_phrase: bool = True) -> list[Pair]:
    """(preferred, dispreferred) pairs from the ``pn`` / ``np`` records among ``records`` (others,
    and records without both a good and a bad output, are left out); ``with_phrase`` False: the
    outputs without any phrase."""
    pairs: list[Pair] = []
    for rec in records:
        if rec.feedback not in ("pn", "np"):
            continue
        segs = rec.segments
        # The first output's phrase: the first labelled one (earlier replies of the context have
        # phrases without a label).
        first = next((i for i, s in enumerate(segs) if s.role == "feedback" and s.label), None)
        if first is None:
            continue
        groups: dict[str, list[Segment]] = {"good": [], "bad": []}
        label = None
        for s in segs[first:]:
            if s.role == "feedback" and s.label:
                label = s.label
            if label not in groups:
                break
            groups[label].append(s)
        good, bad = groups["good"], groups["bad"]
        if not any(s.loss for s in good) or not any(s.loss for s in bad):
            continue
        context = segs[:first]
        phrase = next(s.text for s in good if s.role == "feedback").strip() if with_phrase else None
        chosen = join_segments((*context, *_as_positive(good, phrase)))
        rejected = join_segments((*context, *_as_positive(bad, phrase)))
        pairs.append((FeedbackRecord(f"{rec.id}/chosen", rec.source, "p", chosen, rec.split),
                      FeedbackRecord(f"{rec.id}/rejected", rec.source, "p", rejected, rec.split)))
    return pairs


def pairs_from_examples(examples: Sequence[FeedbackExample], phrases: PhraseSet, with_phrase: bool = True
                        ) -> list[Pair]:
    """One pair per example: its ``pn`` record under ``phrases`` (rendered as ``coh data build``
    renders it), through :func:`pairs_from_records`."""
    from coh.data.render import render_one

    records = []
    for ex in examples:
        segs = render_one(ex, "pn", (phrases.good, phrases.bad), phrases, random.Random(0))
        if segs is not None:
            records.append(FeedbackRecord(ex.id, ex.source, "pn", tuple(segs), "eval"))
    return pairs_from_records(records, with_phrase)


def preference_accuracy(nll: Sequence[float], targets: Sequence[int]) -> tuple[list[bool], list[bool]]:
    """Per pair, whether the preferred record won by summed and by per-token NLL. ``nll`` and
    ``targets`` are interleaved: entry 2k is the preferred record of pair k, 2k+1 the other."""
    by_sum = [nll[i] < nll[i + 1] for i in range(0, len(nll) - 1, 2)]
    by_token = [nll[i] / max(1, targets[i]) < nll[i + 1] / max(1, targets[i + 1]) for i in range(0, len(nll) - 1, 2)]
    return by_sum, by_token
