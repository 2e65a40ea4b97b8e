"""Feedback as it comes from people, before it becomes text.

Every source (hh-rlhf, WebGPT, summarize-from-feedback, TRL-style preference / unpaired / rated
files) is normalised into one ``FeedbackExample``: a conversation context that all candidate
outputs share, and the candidate outputs ordered best first. ``coh.data.render`` then turns an
example into Chain-of-Hindsight records under a feedback type (``p``, ``n``, ``pn``, ``np``,
``aux``, ``chain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Turn(NamedTuple):
    """One message of the shared context. ``role`` is ``system``, ``user`` or ``assistant``.
    (Turn, Candidate and Segment are named tuples: cheap to make and to pickle by the million.)"""

    role: str
    text: str


class Candidate(NamedTuple):
    """One model output under judgement.

    ``quotes`` are (title, extract) pairs of sources that belong to this output alone (WebGPT);
    the renderer shows them, after an introduction phrase, before its feedback phrase. ``score`` is the rating when the source has one.
    ``followup`` holds turns after the reply when a conversation goes on past the point where two
    outputs differ (rare in hh-rlhf): its assistant turns are outputs too.
    """

    text: str
    score: float | None = None
    quotes: tuple[tuple[str, str], ...] = ()
    followup: tuple[Turn, ...] = ()


@dataclass(frozen=True)
class FeedbackExample:
    """Normalised feedback on one prompt.

    ``context`` ends with the user turn the outputs answer. ``candidates`` are ordered best
    first; ``label`` is set for unpaired data (one candidate, judged good or bad on its own).
    The source's phrase set may add a task instruction before the first user text (summaries).
    ``transcripts``: the original rendered this source's pairs as whole transcripts (hh-rlhf); used
    only by ``shared_prefix="original"``. ``chat``: the source gave chat message lists, so a
    tokenizer with a chat template renders its records through the template (``chat_template="auto"``).
    """

    id: str
    source: str
    split: str
    context: tuple[Turn, ...]
    candidates: tuple[Candidate, ...]
    label: bool | None = None
    transcripts: bool = False
    chat: bool = False

    def transcript(self, cand: Candidate) -> tuple[Turn, ...]:
        """The whole conversation of one output: context, reply and any turns after it."""
        return (*self.context, Turn("assistant", cand.text), *cand.followup)

    def to_json(self) -> dict:
        # By hand: dataclasses.asdict deep-copies and was the slowest step of a build.
        def turns(ts: tuple[Turn, ...]) -> list[dict]:
            return [{"role": t.role, "text": t.text} for t in ts]

        out: dict = {"id": self.id, "source": self.source, "split": self.split, "context": turns(self.context),
                     "candidates": []}
        for c in self.candidates:
            cand: dict = {"text": c.text}
            if c.score is not None:
                cand["score"] = c.score
            if c.quotes:
                cand["quotes"] = [list(q) for q in c.quotes]
            if c.followup:
                cand["followup"] = turns(c.followup)
            out["candidates"].append(cand)
        if self.label is not None:
            out["label"] = self.label
        if self.transcripts:
            out["transcripts"] = True
        if self.chat:
            out["chat"] = True
        return out

    @staticmethod
    def from_json(obj: dict) -> FeedbackExample:
        return FeedbackExample(
            id=obj["id"],
            source=obj["source"],
            split=obj["split"],
            context=tuple(Turn(**t) for t in obj["context"]),
            candidates=tuple(
                Candidate(
                    text=c["text"],
                    score=c.get("score"),
                    quotes=tuple((q[0], q[1]) for q in c.get("quotes", ())),
                    followup=tuple(Turn(**t) for t in c.get("followup", ())),
                )
                for c in obj["candidates"]
            ),
            label=obj.get("label"),
            transcripts=obj.get("transcripts", False),
            chat=obj.get("chat", False),
        )
