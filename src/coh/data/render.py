"""Feedback examples into Chain-of-Hindsight records: outputs interleaved with feedback phrases.

Feedback types, as in the original (``include_feedback``):

- ``p``: the preferred output after the good phrase;
- ``n``: the dispreferred output after the bad phrase;
- ``pn``: preferred, then dispreferred, in one record; ``np``: the reverse;
- ``aux``: with ``aux`` in the list, the other types are rendered once for every alternative
  (good, bad) phrase pair of the source instead of the default pair;
- ``chain`` (ours, for rated data): every output, worst to best, the worst after the bad phrase,
  the best after the good phrase and those between after the ``better`` phrase (tied outputs
  share a label).

For unpaired data (one output with a desirable/undesirable label) only ``p`` (desirable rows)
and ``n`` (undesirable rows) apply.

Rendering of a record (``shared_prefix="context"``, the default): the shared conversation is
context without loss; ``User:`` introduces user turns, the source's default good phrase
introduces earlier assistant turns (as the chat server renders history, whatever pair the
outputs get), each earlier assistant turn is closed by EOS; then each output follows its own feedback phrase and is closed by EOS, both with loss.
``shared_prefix="original"`` reproduces the original on hh-rlhf: whole transcripts, every
assistant turn trained under the phrase of its transcript.

Randomness (task phrases, quote introductions, and with ``resample`` the phrase pair and the
type) comes from a generator seeded by (seed, example id, epoch), so output does not depend on
the order or the process in which examples are rendered.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from coh.data.feedback import Candidate, FeedbackExample, Turn
from coh.data.phrases import PhraseSet, phrases_for
from coh.data.records import FeedbackRecord, Segment, separator

FEEDBACK_TYPES = ("p", "n", "pn", "np", "aux", "chain")
SHARED_PREFIX_MODES = ("context", "original")


@dataclass(frozen=True)
class RenderSpec:
    """How examples become records.

    ``feedback``: the feedback types (see the module docstring). ``shared_prefix``: ``context``
    (shared turns carry no loss) or ``original``. ``resample``: one record per example and epoch,
    its type drawn from ``feedback`` and its phrase pair from the default and alternative pairs.
    """

    feedback: tuple[str, ...] = ("p", "n", "pn", "np")
    shared_prefix: str = "context"
    resample: bool = False

    def __post_init__(self) -> None:
        unknown = [f for f in self.feedback if f not in FEEDBACK_TYPES]
        if unknown:
            raise ValueError(f"unknown feedback type(s) {unknown}; expected some of {list(FEEDBACK_TYPES)}")
        if not self.kinds:
            raise ValueError("feedback types need at least one of p, n, pn, np, chain ('aux' only changes phrases)")
        if self.shared_prefix not in SHARED_PREFIX_MODES:
            raise ValueError(f"shared_prefix must be one of {list(SHARED_PREFIX_MODES)}, got {self.shared_prefix!r}")

    @functools.cached_property
    def kinds(self) -> tuple[str, ...]:
        """The record layouts asked for (everything but ``aux``)."""
        return tuple(f for f in self.feedback if f != "aux")

    @staticmethod
    def parse_feedback(text: str) -> tuple[str, ...]:
        """``"p,n,pn"`` -> ``("p", "n", "pn")``."""
        return tuple(f.strip() for f in text.split(",") if f.strip())


class _Builder:
    """Collects segments; a space separates a segment from the previous one unless EOS intervened."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def add(self, role: str, text: str, loss: bool = False, eos: bool = False, label: str | None = None) -> None:
        text = separator(self.segments[-1] if self.segments else None) + text
        self.segments.append(Segment(text=text, loss=loss, role=role, eos=eos, label=label))

    def context(self, turns: tuple[Turn, ...], phrases: PhraseSet, good: str, task: str) -> None:
        first_user = True
        for turn in turns:
            if turn.role == "system":
                self.add("system", turn.text)
            elif turn.role == "user":
                self.add("marker", phrases.user)
                self.add("user", (task + turn.text) if first_user else turn.text)
                first_user = False
            else:
                self.add("feedback", good)
                self.add("assistant", turn.text, eos=True)

    def output(self, cand: Candidate, marker: str, label: str, phrases: PhraseSet, rng: random.Random) -> None:
        if cand.quotes:
            intro = rng.choice(phrases.quote_intro) if phrases.quote_intro else ""
            quoted = "".join(f"[{i}] title: {t} content: {e} " for i, (t, e) in enumerate(cand.quotes, start=1))
            self.add("prompt", (intro + quoted).rstrip())
        self.outputs((Turn("assistant", cand.text), *cand.followup), marker, label, phrases)

    def outputs(self, turns: tuple[Turn, ...], marker: str, label: str, phrases: PhraseSet) -> None:
        """Turns in which every assistant turn is an output under ``marker`` (user turns are context)."""
        for turn in turns:
            if turn.role == "assistant":
                self.add("feedback", marker, label=label)
                self.add("assistant", turn.text, loss=True, eos=True, label=label)
            else:
                self.add("marker", phrases.user)
                self.add("user", turn.text)


def _layout(ex: FeedbackExample, kind: str) -> list[tuple[Candidate, str]] | None:
    """The (candidate, label) sequence of a record of ``kind``, or None where it does not apply."""
    cands = ex.candidates
    if ex.label is not None:  # unpaired: a single output judged on its own
        if (kind == "p" and ex.label) or (kind == "n" and not ex.label):
            return [(cands[0], "good" if ex.label else "bad")]
        return None
    best, worst = cands[0], cands[-1]
    if kind == "p":
        return [(best, "good")]
    if kind == "n":
        return [(worst, "bad")]
    if kind == "pn":
        return [(best, "good"), (worst, "bad")]
    if kind == "np":
        return [(worst, "bad"), (best, "good")]
    if kind == "chain":
        # Worst to best by score (position where there are no scores); tied outputs share a label.
        scores = [c.score if c.score is not None else -i for i, c in enumerate(cands)]
        low, high = min(scores), max(scores)
        ordered = sorted(zip(scores, range(len(cands))), key=lambda t: (t[0], -t[1]))
        return [(cands[i], "bad" if s == low else "good" if s == high else "better") for s, i in ordered]
    raise ValueError(kind)


def render_one(
    ex: FeedbackExample, kind: str, pair: tuple[str, str], phrases: PhraseSet, rng: random.Random,
    shared_prefix: str = "context",
) -> list[Segment] | None:
    """Segments of one record of ``kind`` under the (good, bad) phrase ``pair``; None if not applicable."""
    layout = _layout(ex, kind)
    if layout is None:
        return None
    good, bad = pair
    markers = {"good": good, "bad": bad, "better": phrases.better}
    b = _Builder()
    if shared_prefix == "original" and ex.transcripts:
        for cand, label in layout:
            b.outputs(ex.transcript(cand), markers[label], label, phrases)  # the original's layout
        return b.segments
    task = rng.choice(phrases.task) if phrases.task else ""
    b.context(ex.context, phrases, phrases.good, task)
    for cand, label in layout:
        b.output(cand, markers[label], label, phrases, rng)
    return b.segments


def example_rng(seed: int, ex_id: str, epoch: int | None) -> random.Random:
    """A generator that depends only on the seed, the example and the epoch (str seeds hash by SHA-512)."""
    return random.Random(f"{seed}/{ex_id}/{'' if epoch is None else epoch}")


def render_records(
    ex: FeedbackExample, spec: RenderSpec, phrases: PhraseSet, seed: int, epoch: int | None = None
) -> list[FeedbackRecord]:
    """All records of one example under ``spec``. Empty when no requested type applies."""
    rng = example_rng(seed, ex.id, epoch)
    meta = {"chat": True} if ex.chat else {}
    records = []
    if spec.resample:
        # The first release: fresh phrasing and order at every epoch, one record per example.
        kinds = [k for k in spec.kinds if _layout(ex, k) is not None]
        if not kinds:
            return []
        kind = rng.choice(kinds)
        pair = rng.choice(phrases.pairs())
        segs = render_one(ex, kind, pair, phrases, rng, spec.shared_prefix)
        suffix = f"/{kind}" + (f"/e{epoch}" if epoch is not None else "")
        return [FeedbackRecord(ex.id + suffix, ex.source, kind, tuple(segs), ex.split, meta)]
    if "aux" in spec.feedback:
        if not phrases.aux:
            raise ValueError(f"feedback type 'aux' asked for, but source '{ex.source}' has no alternative phrase pairs")
        pairs = [(f"/aux{i}", p) for i, p in enumerate(phrases.aux)]
    else:
        pairs = [("", (phrases.good, phrases.bad))]
    for tag, pair in pairs:
        for kind in spec.kinds:
            segs = render_one(ex, kind, pair, phrases, rng, spec.shared_prefix)
            if segs is not None:
                records.append(FeedbackRecord(f"{ex.id}/{kind}{tag}", ex.source, kind, tuple(segs), ex.split, meta))
    return records


def prompt_segments(turns: tuple[Turn, ...] | list[Turn], phrases: PhraseSet, feedback: str | None = "good") -> list[Segment]:
    """The inference prompt for the next assistant reply, rendered exactly as training rendered
    context: ``User:`` before user turns, the good phrase before earlier assistant turns (each
    closed by EOS), then the phrase the reply is conditioned on: ``feedback`` is ``"good"``,
    ``"bad"``, any literal phrase text, or None for no phrase at all. No segment carries loss.
    Tokenize with ``RecordTokenizer(tok, chat_template="never")(prompt_record(...))``."""
    b = _Builder()
    b.context(tuple(turns), phrases, phrases.good, "")
    if feedback is not None:
        text = {"good": phrases.good, "bad": phrases.bad}.get(feedback, feedback)
        b.add("feedback", text, label=feedback if feedback in ("good", "bad") else None)
    return b.segments


def prompt_record(turns: tuple[Turn, ...] | list[Turn], phrases: PhraseSet, feedback: str | None = "good") -> FeedbackRecord:
    """``prompt_segments`` wrapped as a record (source ``prompt``), ready for ``RecordTokenizer``."""
    return FeedbackRecord("prompt", "prompt", "prompt", tuple(prompt_segments(turns, phrases, feedback)), "eval", {})


# -- rendering again, per epoch ------------------------------------------------------------------
def render_dataset(examples: list[FeedbackExample], spec: RenderSpec, phrases: dict[str, PhraseSet],
                   kinds: dict[str, str], seed: int, epoch: int | None = None) -> list[FeedbackRecord]:
    """Records of many examples; ``kinds`` maps source name to converter kind (for its phrases).

    The build renders as it converts; the trainer calls this with ``epoch`` set to draw fresh
    phrasing every epoch from ``examples/*.jsonl`` (written with ``resample``)."""
    out: list[FeedbackRecord] = []
    for ex in examples:
        out.extend(render_records(ex, spec, phrases_for(kinds.get(ex.source, ex.source), phrases), seed, epoch))
    return out


RENDER_CONFIG = "coh_render.json"  # beside the examples of a build made with resample


def render_settings(summary: dict) -> dict:
    """How a build rendered its records, from its ``summary.json``: ``seed``, ``feedback``,
    ``shared_prefix``, ``phrases_file`` and ``kinds`` (source name -> converter kind), what
    ``coh train --resample-each-epoch`` needs to render the build's examples afresh each epoch.
    A build with resample writes it as ``examples/coh_render.json``."""
    return {"seed": summary["seed"], "feedback": summary["feedback"], "shared_prefix": summary["shared_prefix"],
            "phrases_file": summary.get("phrases_file"),
            "kinds": {name: src["spec"]["kind"] for name, src in summary["sources"].items()}}
