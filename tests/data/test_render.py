"""Golden outputs for every feedback type, written out by hand from method.md's rules."""

from __future__ import annotations

import pytest

from coh.data.feedback import Candidate, FeedbackExample, Turn
from coh.data.phrases import DEFAULT_PHRASES
from coh.data.render import RenderSpec, render_records
from coh.data.sources import convert_dialogue

DIALOGUE = DEFAULT_PHRASES["dialogue"]


def show(record) -> str:
    """Record text with loss spans in {{ }} and EOS as <eos>."""
    out = []
    for s in record.segments:
        text = s.text + ("<eos>" if s.eos else "")
        out.append("{{" + text + "}}" if s.loss else text)
    return "".join(out)


CHAT = FeedbackExample(
    id="d/1",
    source="dialogue",
    split="train",
    context=(Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "Tell a joke")),
    candidates=(Candidate("Why did the chicken cross the road?"), Candidate("No.")),
)

GOLDEN = {
    "p": "User: Hi A helpful answer: Hello!<eos>User: Tell a joke A helpful answer:"
    "{{ Why did the chicken cross the road?<eos>}}",
    "n": "User: Hi A helpful answer: Hello!<eos>User: Tell a joke An unhelpful answer:{{ No.<eos>}}",
    "pn": "User: Hi A helpful answer: Hello!<eos>User: Tell a joke A helpful answer:"
    "{{ Why did the chicken cross the road?<eos>}}An unhelpful answer:{{ No.<eos>}}",
    "np": "User: Hi A helpful answer: Hello!<eos>User: Tell a joke An unhelpful answer:{{ No.<eos>}}"
    "A helpful answer:{{ Why did the chicken cross the road?<eos>}}",
}


@pytest.mark.parametrize("kind", ["p", "n", "pn", "np"])
def test_golden_dialogue(kind):
    (rec,) = render_records(CHAT, RenderSpec(feedback=(kind,)), DIALOGUE, seed=0)
    assert show(rec) == GOLDEN[kind]
    assert rec.id == f"d/1/{kind}"
    assert rec.feedback == kind


def test_original_shared_prefix_trains_shared_turns_under_both_phrases():
    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant: Why?",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant: No.",
    }
    ex = convert_dialogue(row, "d/2", "train")
    (rec,) = render_records(ex, RenderSpec(feedback=("pn",), shared_prefix="original"), DIALOGUE, seed=0)
    assert show(rec) == (
        "User: Hi A helpful answer:{{ Hello!<eos>}}User: Tell a joke A helpful answer:{{ Why?<eos>}}"
        "User: Hi An unhelpful answer:{{ Hello!<eos>}}User: Tell a joke An unhelpful answer:{{ No.<eos>}}"
    )
    (fixed,) = render_records(ex, RenderSpec(feedback=("pn",)), DIALOGUE, seed=0)
    assert show(fixed) == (
        "User: Hi A helpful answer: Hello!<eos>User: Tell a joke A helpful answer:{{ Why?<eos>}}"
        "An unhelpful answer:{{ No.<eos>}}"
    )


def test_aux_replaces_default_pair_with_every_alternative():
    recs = render_records(CHAT, RenderSpec(feedback=("p", "aux")), DIALOGUE, seed=0)
    assert len(recs) == 12 == len(DIALOGUE.aux)
    assert show(recs[0]).endswith("Tell a joke The following is a better response.{{ Why did the chicken cross the road?<eos>}}")
    assert [r.id for r in recs[:2]] == ["d/1/p/aux0", "d/1/p/aux1"]
    assert all("A helpful answer:" not in show(r).split("Tell a joke")[1] for r in recs)


def test_chain_orders_worst_to_best():
    rated = FeedbackExample(
        "r/1", "rated", "train", (Turn("user", "2+2?"),),
        (Candidate("4", 1.0), Candidate("About 4", 0.5), Candidate("5", 0.0)),
    )
    (rec,) = render_records(rated, RenderSpec(feedback=("chain",)), DEFAULT_PHRASES["default"], seed=0)
    assert show(rec) == (
        "User: 2+2? An unhelpful answer:{{ 5<eos>}}A better answer:{{ About 4<eos>}}A helpful answer:{{ 4<eos>}}"
    )
    assert [s.label for s in rec.segments if s.loss] == ["bad", "better", "good"]
    (pn,) = render_records(rated, RenderSpec(feedback=("pn",)), DEFAULT_PHRASES["default"], seed=0)
    assert show(pn) == "User: 2+2? A helpful answer:{{ 4<eos>}}An unhelpful answer:{{ 5<eos>}}"


def test_unpaired_takes_only_its_own_label():
    good = FeedbackExample("u/1", "unpaired", "train", (Turn("user", "Hi"),), (Candidate("Hello"),), label=True)
    bad = FeedbackExample("u/2", "unpaired", "train", (Turn("user", "Hi"),), (Candidate("Go away"),), label=False)
    spec = RenderSpec(feedback=("p", "n", "pn"))
    assert [show(r) for r in render_records(good, spec, DIALOGUE, 0)] == ["User: Hi A helpful answer:{{ Hello<eos>}}"]
    assert [show(r) for r in render_records(bad, spec, DIALOGUE, 0)] == ["User: Hi An unhelpful answer:{{ Go away<eos>}}"]


def test_summary_task_phrase_and_webgpt_quotes():
    summary = FeedbackExample("s/1", "summary", "train", (Turn("user", "POST"),), (Candidate("good"), Candidate("bad")))
    (rec,) = render_records(summary, RenderSpec(feedback=("pn",)), DEFAULT_PHRASES["summary"], seed=0)
    task = next(t for t in DEFAULT_PHRASES["summary"].task if f"User: {t}POST" in show(rec))
    assert show(rec) == f"User: {task}POST A helpful answer:{{{{ good<eos>}}}}An unhelpful answer:{{{{ bad<eos>}}}}"
    web = FeedbackExample(
        "w/1", "webgpt", "train", (Turn("user", "Why?"),),
        (Candidate("Because.", 1.0, quotes=(("T1", "E1"),)), Candidate("Dunno.", 0.0)),
    )
    (rec,) = render_records(web, RenderSpec(feedback=("pn",)), DEFAULT_PHRASES["webgpt"], seed=0)
    intro = next(i for i in DEFAULT_PHRASES["webgpt"].quote_intro if i in show(rec))
    assert show(rec) == (
        f"User: Why? {intro}[1] title: T1 content: E1 A helpful answer:{{{{ Because.<eos>}}}}"
        "An unhelpful answer:{{ Dunno.<eos>}}"
    )


def test_seeded_and_order_independent():
    summary = FeedbackExample("s/1", "summary", "train", (Turn("user", "POST"),), (Candidate("a"), Candidate("b")))
    spec = RenderSpec(feedback=("p",))
    phrases = DEFAULT_PHRASES["summary"]
    first = [show(render_records(summary, spec, phrases, seed=s)[0]) for s in range(20)]
    again = [show(render_records(summary, spec, phrases, seed=s)[0]) for s in range(20)]
    assert first == again
    assert len(set(first)) > 1  # different seeds draw different task phrases


def test_resample_draws_fresh_phrasing_each_epoch():
    spec = RenderSpec(feedback=("pn", "np"), resample=True)
    texts = {show(render_records(CHAT, spec, DIALOGUE, seed=0, epoch=e)[0]) for e in range(30)}
    assert len(texts) > 5
    (rec,) = render_records(CHAT, spec, DIALOGUE, seed=0, epoch=3)
    assert rec.id.endswith("/e3") and rec.feedback in ("pn", "np")
    assert render_records(CHAT, spec, DIALOGUE, seed=0, epoch=3)[0] == rec


def test_bad_spec():
    with pytest.raises(ValueError, match="unknown feedback"):
        RenderSpec(feedback=("pp",))
    with pytest.raises(ValueError, match="at least one"):
        RenderSpec(feedback=("aux",))


@pytest.mark.parametrize(("kind", "label"), [("p", "good"), ("n", "bad")])
def test_inference_prompt_is_the_training_prefix_of_the_output(kind, label):
    """The prompt the server builds is exactly what training put before the trained output."""
    from coh.data.render import prompt_segments

    ex = FeedbackExample(
        id="x", source="dialogue", split="eval",
        context=(Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "How are you?")),
        candidates=(Candidate("Fine, thanks."), Candidate("Go away.")),
    )
    phrases = DEFAULT_PHRASES["dialogue"]
    (record,) = render_records(ex, RenderSpec(feedback=(kind,)), phrases, seed=0)
    first_output = next(i for i, s in enumerate(record.segments) if s.loss)
    assert prompt_segments(ex.context, phrases, label) == list(record.segments[:first_output])


def test_inference_prompt_without_phrase_and_with_literal_phrase(tmp_path):
    import json

    from coh.cohjson import trained_phrases
    from coh.data.render import prompt_segments

    turns = (Turn("user", "Hi"),)
    phrases = DEFAULT_PHRASES["dialogue"]
    assert [s.text for s in prompt_segments(turns, phrases, None)] == ["User:", " Hi"]
    assert prompt_segments(turns, phrases, "A so-so answer:")[-1].text == " A so-so answer:"
    (tmp_path / "coh.json").write_text(json.dumps({"phrases": {"good": "Good:", "bad": "Bad:", "user": "Q:"}}))
    saved = trained_phrases(tmp_path)
    assert (saved.user, saved.good, saved.bad) == ("Q:", "Good:", "Bad:")
    assert trained_phrases(tmp_path / "nowhere").good == "A helpful answer:"
