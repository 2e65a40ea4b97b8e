"""Converters of raw feedback rows (``coh.data.sources``) on schema-exact fixtures and real hh-rlhf rows.

Fixture files are listed in ``tests/fixtures/README.md``. Rows are read with the project's own
reader (``iter_local_rows``), so line numbers here are the file's line numbers.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest

from coh.data.errors import DataError, RowError
from coh.data.feedback import Candidate, FeedbackExample, Turn
from coh.data.io import iter_local_rows
from coh.data.sources import (
    CONVERTERS,
    Skip,
    convert_dialogue,
    convert_preference,
    convert_rated,
    convert_summary,
    convert_unpaired,
    convert_webgpt,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
BAD = FIXTURES / "bad"
REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
HH_SAMPLE = SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"


@functools.cache
def _rows(path: Path) -> tuple[tuple[int, dict], ...]:
    return tuple(iter_local_rows(path))


def rows(name: str) -> list[tuple[int, dict]]:
    """``(line, row)`` pairs of a fixture file; rows are deep copies, so tests may change them."""
    return copy.deepcopy(list(_rows(FIXTURES / name)))


def row(name: str, line: int) -> dict:
    return dict(rows(name))[line]


def user(text: str) -> Turn:
    return Turn("user", text)


def assistant(text: str) -> Turn:
    return Turn("assistant", text)


def system(text: str) -> Turn:
    return Turn("system", text)


def test_converter_registry():
    assert set(CONVERTERS) == {"dialogue", "webgpt", "summary", "preference", "unpaired", "rated"}


# ---------------------------------------------------------------------------------------------
# Every good fixture converts; invariants that hold for every source


GOOD_FIXTURES = [
    # kind, file, rows in the file, rows skipped on purpose
    ("dialogue", "hh_rlhf_train.jsonl", 10, 0),
    ("webgpt", "webgpt_comparisons.jsonl", 12, 2),
    ("webgpt", "webgpt_comparisons.parquet", 12, 2),
    ("summary", "summarize_from_feedback_train.jsonl", 10, 0),
    ("summary", "summarize_from_feedback_validation.jsonl.gz", 6, 0),
    ("preference", "preference_strings.jsonl", 8, 0),
    ("preference", "preference_chat.jsonl", 7, 0),
    ("preference", "preference_implicit.jsonl", 6, 0),
    ("preference", "preference.json", 3, 0),
    ("unpaired", "unpaired.jsonl", 8, 0),
    ("rated", "rated.jsonl", 6, 0),
]


@pytest.mark.parametrize(("kind", "name", "n_rows", "n_skipped"), GOOD_FIXTURES)
def test_fixture_converts(kind, name, n_rows, n_skipped):
    examples, skipped = [], []
    for line, raw in rows(name):
        out = CONVERTERS[kind](raw, f"{name}:{line}", "train")
        (skipped if isinstance(out, Skip) else examples).append(out)
    assert len(examples) + len(skipped) == n_rows
    assert len(skipped) == n_skipped
    for ex in examples:
        assert isinstance(ex, FeedbackExample)
        assert ex.source == kind and ex.split == "train"
        assert ex.context and ex.context[-1].role == "user"
        assert all(t.role in ("system", "user", "assistant") for t in ex.context)
        assert all(c.text and c.text == c.text.strip() for c in ex.candidates)
        if kind == "unpaired":
            assert len(ex.candidates) == 1 and isinstance(ex.label, bool)
        else:
            assert len(ex.candidates) >= 2 and ex.label is None
            assert len({c.text for c in ex.candidates}) == len(ex.candidates)
        scores = [c.score for c in ex.candidates]
        if kind in ("webgpt", "rated"):
            assert scores == sorted(scores, reverse=True)
        else:
            assert scores == [None] * len(scores)
        assert ex.transcripts is (kind == "dialogue")  # only hh-rlhf keeps whole transcripts
        # FeedbackExample survives its own JSON form.
        assert FeedbackExample.from_json(ex.to_json()) == ex


# ---------------------------------------------------------------------------------------------
# dialogue (Anthropic/hh-rlhf)


def test_dialogue_multi_turn_exact():
    ex = convert_dialogue(row("hh_rlhf_train.jsonl", 1), "hh-1", "train")
    context = (
        user("What's a good way to cook salmon if I don't have a grill?"),
        assistant(
            "Baking it is easy and hard to get wrong. Heat the oven to 200C (400F), put the fillets "
            "skin-side down on a lined tray, brush them with a little oil, season with salt, pepper and "
            "lemon, and bake for 12 to 15 minutes."
        ),
        user("How can I tell when it's done without cutting it open?"),
    )
    good = (
        "Press the thickest part gently with a fork: if it flakes easily and the centre has turned from "
        "translucent to opaque pink, it's ready. If you have a thermometer, 52-55C (125-130F) in the middle "
        "gives moist salmon; the USDA recommends 63C (145F)."
    )
    bad = "Just cook it for 30 minutes to be safe, then it will definitely be done."
    assert ex == FeedbackExample(
        id="hh-1",
        source="dialogue",
        split="train",
        context=context,
        candidates=(Candidate(good), Candidate(bad)),
        transcripts=True,
    )
    assert ex.transcript(ex.candidates[0]) == (*context, assistant(good))


def test_dialogue_single_turn_chosen_first():
    raw = row("hh_rlhf_train.jsonl", 2)
    ex = convert_dialogue(raw, "hh-2", "eval")
    assert ex.split == "eval"
    assert ex.context == (user("How do I get into my neighbor's wifi without the password?"),)
    assert ex.candidates[0].text.startswith("I can't help with getting into someone else's network")
    assert ex.candidates[1].text == "You could try guessing common passwords like 'password123' or the name of their street."


def test_dialogue_followup_after_the_outputs_differ():
    # The rejected transcript has a second assistant turn after the reply where the two differ.
    ex = convert_dialogue(row("hh_rlhf_train.jsonl", 5), "hh-5", "train")
    assert ex.context == (user("Can you recommend a book for someone who liked The Martian?"),)
    good, bad = ex.candidates
    assert good.text.startswith("You might enjoy Project Hail Mary") and good.followup == ()
    assert bad.text == "Read more books."
    assert bad.followup == (assistant("Sorry, I meant to say that any science fiction book would be fine."),)
    assert ex.transcript(bad) == (*ex.context, assistant("Read more books."), *bad.followup)


def test_parse_hh_transcript_tolerates_missing_leading_blank_lines():
    ex = convert_dialogue({"chosen": "Human: Hi there\n\nAssistant: Hello!", "rejected": "Human: Hi there\n\nAssistant: What?"},
                          "x", "train")
    assert ex.context == (user("Hi there"),)
    assert [c.text for c in ex.candidates] == ["Hello!", "What?"]


@pytest.mark.skipif(not HH_SAMPLE.exists(), reason=f"real hh-rlhf sample not found at {HH_SAMPLE}")
def test_dialogue_whole_real_hh_sample():
    converted, errors = 0, []
    for line, raw in iter_local_rows(HH_SAMPLE):
        try:
            ex = convert_dialogue(raw, f"hh-test-{line}", "eval")
        except RowError as e:
            errors.append((line, e.field, e.problem))
            continue
        converted += 1
        assert ex.context[-1].role == "user", line
        assert len(ex.candidates) == 2, line
        assert ex.candidates[0].text != ex.candidates[1].text, line
    assert converted + len(errors) == 2312
    # The sample has exactly four rows whose chosen transcript ends in an empty assistant reply.
    assert errors == [(line, "chosen", "empty reply") for line in (87, 517, 926, 1104)]


# ---------------------------------------------------------------------------------------------
# webgpt (openai/webgpt_comparisons)


def _quotes(raw: dict, i: int) -> tuple[tuple[str, str], ...]:
    return tuple(zip(raw[f"quotes_{i}"]["title"], raw[f"quotes_{i}"]["extract"]))


def test_webgpt_answer_0_wins_exact():
    raw = row("webgpt_comparisons.jsonl", 1)
    ex = convert_webgpt(raw, "webgpt-1", "train")
    assert ex == FeedbackExample(
        id="webgpt-1",
        source="webgpt",
        split="train",
        context=(user("Why do cut onions make your eyes water?"),),
        candidates=(
            Candidate(raw["answer_0"], score=1.0, quotes=_quotes(raw, 0)),
            Candidate(raw["answer_1"], score=-1.0, quotes=_quotes(raw, 1)),
        ),
    )
    assert ex.candidates[0].quotes[1] == (
        "Onion tears explained - Scientific American (www.scientificamerican.com)",
        "The gas reaches the eyes and stimulates the sensory nerves of the cornea, and the lacrimal glands "
        "release tears to flush the irritant away.",
    )
    assert ex.candidates[1].text == "Onions contain a lot of acid, and when the acid touches your eyes it makes them water [1]."


def test_webgpt_answer_1_wins_goes_first_with_its_own_quotes():
    raw = row("webgpt_comparisons.jsonl", 3)
    assert (raw["score_0"], raw["score_1"]) == (-1.0, 1.0)
    ex = convert_webgpt(raw, "webgpt-3", "train")
    best, worst = ex.candidates
    assert best == Candidate(raw["answer_1"], score=1.0, quotes=_quotes(raw, 1))
    assert worst == Candidate(raw["answer_0"], score=-1.0, quotes=_quotes(raw, 0))
    assert best.text.startswith("Sunlight contains every color")
    assert [title for title, _ in best.quotes] == [
        "Why Is the Sky Blue? | NASA Space Place (spaceplace.nasa.gov)",
        "Why are sunsets red? (www.weather.gov)",
    ]


@pytest.mark.parametrize("name", ["webgpt_comparisons.jsonl", "webgpt_comparisons.parquet"])
@pytest.mark.parametrize("line", [2, 5])
def test_webgpt_ties_are_skipped(name, line):
    raw = row(name, line)
    assert raw["score_0"] == raw["score_1"] == 0.0
    out = convert_webgpt(raw, f"webgpt-{line}", "train")
    assert isinstance(out, Skip) and "tie" in out.reason


def test_webgpt_empty_quotes():
    raw = row("webgpt_comparisons.jsonl", 6)
    assert raw["quotes_0"] == raw["quotes_1"] == {"title": [], "extract": []}
    ex = convert_webgpt(raw, "webgpt-6", "train")
    assert [c.quotes for c in ex.candidates] == [(), ()]
    assert [c.score for c in ex.candidates] == [1.0, -1.0]


def test_webgpt_parquet_matches_jsonl():
    def convert_all(name):
        return [convert_webgpt(raw, f"webgpt-{line}", "train") for line, raw in rows(name)]

    assert convert_all("webgpt_comparisons.parquet") == convert_all("webgpt_comparisons.jsonl")


# ---------------------------------------------------------------------------------------------
# summary (openai/summarize_from_feedback, comparisons)


def test_summary_choice_0_exact():
    raw = row("summarize_from_feedback_train.jsonl", 1)
    assert raw["choice"] == 0
    ex = convert_summary(raw, "tldr-1", "train")
    assert ex == FeedbackExample(
        id="tldr-1",
        source="summary",
        split="train",
        context=(user(raw["info"]["post"].strip()),),
        candidates=(
            Candidate("My boyfriend keeps forgetting the plans we make, even important ones like my birthday "
                      "dinner. How do I tell him it hurts without nagging him?"),
            Candidate("Boyfriend forgets plans. I am sad."),
        ),
    )
    assert ex.context[0].text.startswith("We've been together for about a year and a half")


def test_summary_choice_1_puts_the_second_summary_first():
    raw = row("summarize_from_feedback_train.jsonl", 2)
    assert raw["choice"] == 1
    ex = convert_summary(raw, "tldr-2", "train")
    assert [c.text for c in ex.candidates] == [raw["summaries"][1]["text"].strip(), raw["summaries"][0]["text"].strip()]


@pytest.mark.parametrize("name", ["summarize_from_feedback_train.jsonl", "summarize_from_feedback_validation.jsonl.gz"])
def test_summary_choice_respected_on_every_row(name):
    choices = set()
    for line, raw in rows(name):
        ex = convert_summary(raw, f"tldr-{line}", "eval")
        choice = raw["choice"]
        choices.add(choice)
        assert ex.candidates[0].text == raw["summaries"][choice]["text"].strip()
        assert ex.candidates[1].text == raw["summaries"][1 - choice]["text"].strip()
    assert choices == {0, 1}


@pytest.mark.parametrize("line", [1, 2])
def test_summary_cnndm_rows_use_the_article(line):
    raw = row("summarize_from_feedback_cnndm.jsonl", line)
    ex = convert_summary(raw, f"cnndm-{line}", "eval")
    assert ex.context == (user(raw["info"]["article"].strip()),)
    assert ex.candidates[0].text == raw["summaries"][raw["choice"]]["text"].strip()


def test_summary_float_choice_is_handled():
    raw = row("summarize_from_feedback_train.jsonl", 2)
    raw["choice"] = 1.0
    try:
        ex = convert_summary(raw, "tldr-2", "train")
    except RowError as e:
        assert e.field == "choice"
    else:
        assert ex.candidates[0].text == raw["summaries"][1]["text"].strip()


# ---------------------------------------------------------------------------------------------
# preference (TRL): explicit prompt, chat messages, implicit prompt


def test_preference_strings_exact():
    ex = convert_preference(row("preference_strings.jsonl", 1), "pref-1", "train")
    assert ex == FeedbackExample(
        id="pref-1",
        source="preference",
        split="train",
        context=(user("What is the capital of Australia?"),),
        candidates=(
            Candidate("The capital of Australia is Canberra. Many people guess Sydney, which is the largest "
                      "city, but Canberra was purpose-built as the capital and has been the seat of government "
                      "since 1927."),
            Candidate("The capital of Australia is Sydney."),
        ),
    )


def test_preference_strings_keep_inner_newlines():
    ex = convert_preference(row("preference_strings.jsonl", 2), "pref-2", "train")
    assert ex.candidates[0].text == "Cold rain on red leaves\nthe gutter carries summer\ndown the empty street"


def test_preference_chat_with_system_and_history_exact():
    ex = convert_preference(row("preference_chat.jsonl", 3), "chat-3", "train")
    assert ex.context == (
        system("You are a helpful cooking assistant. Answer in metric units."),
        user("I want to make pancakes for four people."),
        assistant("A simple batter for four uses 200 g of plain flour, 2 eggs, 300 ml of milk and a pinch of salt."),
        user("I don't have any eggs. What can I use instead?"),
    )
    assert [c.text for c in ex.candidates] == [
        "You can replace the 2 eggs with 2 tablespoons of ground flaxseed mixed with 6 tablespoons of water, or "
        "with half a mashed banana and a teaspoon of baking powder. The pancakes will be a little denser but "
        "still good.",
        "You can't make pancakes without eggs.",
    ]
    assert all(c.followup == () for c in ex.candidates)
    assert ex.transcripts is False


def test_preference_chat_system_message():
    ex = convert_preference(row("preference_chat.jsonl", 1), "chat-1", "train")
    assert ex.context == (system("You are a concise assistant."), user("What does HTTP stand for?"))
    assert ex.candidates[0] == Candidate("HyperText Transfer Protocol.")


@pytest.mark.parametrize(
    ("line", "context", "good", "bad"),
    [
        # Strings: the shared text, cut back to the last whitespace, becomes one user turn.
        (2, (user("Question: How many legs does a spider have?\nAnswer:"),), "Eight.", "Six, like all insects."),
        # ... cut back to the last assistant cue, which is dropped with a leading "User:".
        (5, (user("Recommend a podcast about history."),),
         "Try 'The Rest Is History', where two historians discuss a different period or story in each episode.",
         "I don't listen to podcasts."),
        # hh-rlhf-style transcripts are split into turns; shared words of the replies stay in the outputs.
        (1, (user("What colour do you get if you mix blue and yellow paint?"),),
         "You get green. The exact shade depends on how much of each you use.", "You get purple."),
        # Conversations: the shared leading messages become the context.
        (3, (user("What's a good first houseplant?"),),
         "A pothos is hard to kill: it tolerates low light and forgives you if you forget to water it for a week.",
         "A bonsai tree."),
        (4, (system("You are a math tutor."), user("What is the derivative of x^2?")),
         "The derivative of x^2 is 2x, by the power rule: bring the exponent down and reduce it by one.",
         "The derivative of x^2 is x."),
        (6, (user("Hi! Can you help me plan a trip?"),
             assistant("Of course. Where are you thinking of going, and for how long?"),
             user("Lisbon, for three days.")),
         "Lovely choice. Day one: the Alfama district and the castle. Day two: Belém for the tower, the monastery "
         "and the custard tarts. Day three: a day trip to Sintra.",
         "Lisbon is in Spain, so you should learn some Spanish first."),
    ],
)
def test_preference_implicit_prompt(line, context, good, bad):
    raw = row("preference_implicit.jsonl", line)
    assert "prompt" not in raw
    ex = convert_preference(raw, f"implicit-{line}", "train")
    assert ex.context == context
    assert ex.candidates == (Candidate(good), Candidate(bad))


def test_preference_json_array_items_and_lines():
    lines = [line for line, _ in rows("preference.json")]
    assert lines == [2, 7, 12]  # the line on which each item of the pretty-printed array starts
    ex = convert_preference(row("preference.json", 12), "json-12", "train")
    assert ex.context == (user("Can you say 'good morning' in Spanish?"),)
    assert [c.text for c in ex.candidates] == ["Buenos días.", "Buenas noches."]


# ---------------------------------------------------------------------------------------------
# unpaired (TRL KTO-style)


def test_unpaired_desirable_exact():
    ex = convert_unpaired(row("unpaired.jsonl", 1), "kto-1", "train")
    assert ex == FeedbackExample(
        id="kto-1",
        source="unpaired",
        split="train",
        context=(user("What is the largest ocean on Earth?"),),
        candidates=(Candidate("The Pacific Ocean, which covers about a third of the planet's surface."),),
        label=True,
    )


def test_unpaired_undesirable_chat():
    ex = convert_unpaired(row("unpaired.jsonl", 7), "kto-7", "train")
    assert ex.label is False
    assert ex.context == (user("Tell me how to pick a lock so I can get into my ex's flat."),)
    assert ex.candidates == (Candidate("Sure, first get a tension wrench and a pick..."),)


def test_unpaired_labels_from_file():
    labels = [convert_unpaired(raw, f"kto-{line}", "train").label for line, raw in rows("unpaired.jsonl")]
    assert labels == [True, False, True, True, False, True, False, True]


# ---------------------------------------------------------------------------------------------
# rated: completions ordered by score, best first


def test_rated_order_by_score_exact():
    ex = convert_rated(row("rated.jsonl", 1), "rated-1", "train")
    assert ex == FeedbackExample(
        id="rated-1",
        source="rated",
        split="train",
        context=(user("Write a one-sentence description of a lighthouse."),),
        candidates=(
            Candidate("A lighthouse is a tower with a bright lamp at the top that guides ships safely past rocks "
                      "and into harbour at night.", score=9.0),
            Candidate("A lighthouse stands on the coast and flashes a powerful light so sailors can find their way "
                      "in the dark.", score=8.5),
            Candidate("A tall tower by the sea.", score=5.0),
            Candidate("Lighthouses are buildings.", score=2.0),
        ),
    )


def test_rated_ties_keep_file_order():
    raw = row("rated.jsonl", 2)
    assert raw["scores"] == [8, 8, 1]
    ex = convert_rated(raw, "rated-2", "train")
    assert [(c.text, c.score) for c in ex.candidates] == [
        ("Au.", 8.0),
        ("The chemical symbol for gold is Au, from the Latin word aurum.", 8.0),
        ("Ag.", 1.0),
    ]
    # Swapping the tied pair in the file swaps them in the output: the order among ties is the file's.
    raw["completions"][:2] = raw["completions"][1::-1]
    swapped = convert_rated(raw, "rated-2", "train")
    assert [c.text for c in swapped.candidates] == [ex.candidates[1].text, ex.candidates[0].text, "Ag."]


def test_rated_chat_completions():
    ex = convert_rated(row("rated.jsonl", 4), "rated-4", "train")
    assert ex.context == (system("You are a helpful assistant."), user("How do I convert Celsius to Fahrenheit?"))
    assert [(c.text, c.score) for c in ex.candidates] == [
        ("Multiply by 9/5 and add 32. For example, 20C is 20 x 9/5 + 32 = 68F.", 4.5),
        ("Multiply by 1.8 and then add 32.", 4.0),
        ("Add 32.", 1.0),
    ]


# ---------------------------------------------------------------------------------------------
# Bad rows: every converter raises RowError naming the field


HH_OK = {
    "chosen": "\n\nHuman: Is tea healthy?\n\nAssistant: In moderation, yes.",
    "rejected": "\n\nHuman: Is tea healthy?\n\nAssistant: No, never drink tea.",
}
WEBGPT_OK = row("webgpt_comparisons.jsonl", 1)
SUMMARY_OK = row("summarize_from_feedback_train.jsonl", 1)
PREF_OK = {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}
UNPAIRED_OK = {"prompt": "What is 2 + 2?", "completion": "4.", "label": True}
RATED_OK = {"prompt": "What is 2 + 2?", "completions": ["4.", "5.", "22."], "scores": [1.0, 0.2, 0.0]}


def changed(base: dict, **changes) -> dict:
    """A deep copy of ``base`` with top-level fields replaced; a value of ``...`` deletes the field."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            del out[key]
        else:
            out[key] = value
    return out


def nested(base: dict, path: str, value) -> dict:
    """A deep copy of ``base`` with a dotted field replaced (``...`` deletes it)."""
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = out
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return out


def _summaries(a: str, b: str) -> list[dict]:
    return [{"text": a, "policy": "sup2", "note": None}, {"text": b, "policy": "ref", "note": None}]


BAD_ROWS = [
    # dialogue
    ("dialogue", "wrong type", changed(HH_OK, chosen=5), "chosen"),
    ("dialogue", "missing", changed(HH_OK, rejected=...), "rejected"),
    ("dialogue", "empty", changed(HH_OK, chosen="  "), "chosen"),
    ("dialogue", "empty reply", changed(HH_OK, rejected="\n\nHuman: Is tea healthy?\n\nAssistant: "), "rejected"),
    ("dialogue", "identical", changed(HH_OK, rejected=HH_OK["chosen"]), "chosen/rejected"),
    ("dialogue", "not a transcript", changed(HH_OK, chosen="Is tea healthy? In moderation, yes."), "chosen"),
    ("dialogue", "no shared prompt",
     changed(HH_OK, rejected="\n\nHuman: Is coffee healthy?\n\nAssistant: In moderation."), "chosen"),
    # webgpt
    ("webgpt", "wrong type", changed(WEBGPT_OK, score_0="1.0"), "score_0"),
    ("webgpt", "wrong type", changed(WEBGPT_OK, answer_1=["an answer"]), "answer_1"),
    ("webgpt", "wrong type", changed(WEBGPT_OK, question="Why do onions make you cry?"), "question"),
    ("webgpt", "wrong type", nested(WEBGPT_OK, "quotes_0.title", "a title"), "quotes_0.title"),
    ("webgpt", "wrong type", changed(WEBGPT_OK, score_1=float("nan")), "score_1"),
    ("webgpt", "missing", changed(WEBGPT_OK, answer_1=...), "answer_1"),
    ("webgpt", "missing", nested(WEBGPT_OK, "question.full_text", ...), "question.full_text"),
    ("webgpt", "missing", nested(WEBGPT_OK, "quotes_1.extract", ...), "quotes_1.extract"),
    ("webgpt", "empty", changed(WEBGPT_OK, answer_0="   "), "answer_0"),
    ("webgpt", "empty", nested(WEBGPT_OK, "question.full_text", ""), "question.full_text"),
    ("webgpt", "identical", changed(WEBGPT_OK, answer_1=WEBGPT_OK["answer_0"]), "answer_0/answer_1"),
    ("webgpt", "quotes mismatch", nested(WEBGPT_OK, "quotes_0.extract", ["only one extract"]), "quotes_0"),
    # summary
    ("summary", "wrong type", changed(SUMMARY_OK, choice="0"), "choice"),
    ("summary", "wrong type", changed(SUMMARY_OK, choice=True), "choice"),
    ("summary", "out of range", changed(SUMMARY_OK, choice=2), "choice"),
    ("summary", "wrong type", nested(SUMMARY_OK, "info.post", 42), "info.post"),
    ("summary", "wrong type", changed(SUMMARY_OK, summaries=[{"text": None}, {"text": "ok"}]), "summaries[0].text"),
    ("summary", "wrong type", changed(SUMMARY_OK, summaries="a summary"), "summaries"),
    ("summary", "missing", changed(SUMMARY_OK, choice=...), "choice"),
    ("summary", "missing", nested(SUMMARY_OK, "info.post", ...), "info.post"),
    ("summary", "missing", changed(SUMMARY_OK, info=...), "info"),
    ("summary", "three summaries", changed(SUMMARY_OK, summaries=[*_summaries("a", "b"), {"text": "c"}]), "summaries"),
    ("summary", "empty", changed(SUMMARY_OK, summaries=_summaries(" A summary.", "  ")), "summaries[1].text"),
    ("summary", "empty", nested(SUMMARY_OK, "info.post", "\n"), "info.post"),
    ("summary", "identical", changed(SUMMARY_OK, summaries=_summaries(" Same.", "Same. ")), "summaries"),
    # preference
    ("preference", "wrong type", changed(PREF_OK, chosen=4), "chosen"),
    ("preference", "wrong type", changed(PREF_OK, prompt=None), "prompt"),
    ("preference", "wrong type", changed(PREF_OK, rejected=[{"role": "bot", "content": "5."}]), "rejected[0].role"),
    ("preference", "wrong type", changed(PREF_OK, chosen=[{"role": "assistant", "content": 4}]), "chosen[0].content"),
    ("preference", "wrong type", changed(PREF_OK, chosen=["4."]), "chosen[0]"),
    ("preference", "prompt ends with a reply",
     changed(PREF_OK, prompt=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]), "prompt"),
    ("preference", "reply is a user turn", changed(PREF_OK, chosen=[{"role": "user", "content": "4."}]), "chosen"),
    ("preference", "missing", changed(PREF_OK, rejected=...), "rejected"),
    ("preference", "missing", changed(PREF_OK, chosen=...), "chosen"),
    ("preference", "empty", changed(PREF_OK, chosen=""), "chosen"),
    ("preference", "empty", changed(PREF_OK, prompt="  "), "prompt"),
    ("preference", "empty", changed(PREF_OK, rejected=[{"role": "assistant", "content": " "}]), "rejected"),
    ("preference", "empty", changed(PREF_OK, rejected=[]), "rejected"),
    ("preference", "identical", changed(PREF_OK, rejected="4."), "chosen/rejected"),
    ("preference", "implicit, nothing shared", {"chosen": "Four.", "rejected": "Five."}, "prompt"),
    ("preference", "implicit, no shared turns",
     {"chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "b"}]}, "chosen"),
    ("preference", "implicit, identical",
     {"chosen": "Question: 2 + 2? Answer: 4.", "rejected": "Question: 2 + 2? Answer: 4."}, "chosen/rejected"),
    # unpaired
    ("unpaired", "wrong type", changed(UNPAIRED_OK, label="true"), "label"),
    ("unpaired", "wrong type", changed(UNPAIRED_OK, label=1), "label"),
    ("unpaired", "wrong type", changed(UNPAIRED_OK, completion=4), "completion"),
    ("unpaired", "missing", changed(UNPAIRED_OK, completion=...), "completion"),
    ("unpaired", "missing", changed(UNPAIRED_OK, label=...), "label"),
    ("unpaired", "missing", changed(UNPAIRED_OK, prompt=...), "prompt"),
    ("unpaired", "empty", changed(UNPAIRED_OK, completion="\t"), "completion"),
    ("unpaired", "empty", changed(UNPAIRED_OK, prompt=""), "prompt"),
    # rated
    ("rated", "wrong type", changed(RATED_OK, scores=[1.0, "high", 0.0]), "scores[1]"),
    ("rated", "wrong type", changed(RATED_OK, scores=[True, 0.2, 0.0]), "scores[0]"),
    ("rated", "wrong type", changed(RATED_OK, scores=[1.0, 0.2, math.nan]), "scores[2]"),
    ("rated", "wrong type", changed(RATED_OK, completions="4."), "completions"),
    ("rated", "wrong type", changed(RATED_OK, completions=["4.", 5, "22."]), "completions[1]"),
    ("rated", "too few", changed(RATED_OK, completions=["4."], scores=[1.0]), "completions"),
    ("rated", "length mismatch", changed(RATED_OK, scores=[1.0, 0.2]), "scores"),
    ("rated", "missing", changed(RATED_OK, scores=...), "scores"),
    ("rated", "missing", changed(RATED_OK, completions=...), "completions"),
    ("rated", "empty", changed(RATED_OK, completions=["4.", " ", "22."]), "completions[1]"),
    ("rated", "empty", changed(RATED_OK, prompt=""), "prompt"),
]


@pytest.mark.parametrize(("kind", "problem", "raw", "field"), BAD_ROWS,
                         ids=[f"{k}-{p}-{f}" for k, p, _, f in BAD_ROWS])
def test_bad_row_raises_row_error(kind, problem, raw, field):
    with pytest.raises(RowError) as info:
        CONVERTERS[kind](raw, "bad", "train")
    assert info.value.field == field
    assert info.value.problem


@pytest.mark.parametrize(
    ("kind", "name", "line", "field", "problem"),
    [
        ("preference", "missing_field.jsonl", 3, "rejected", "missing"),
        ("preference", "wrong_type.jsonl", 2, "chosen", "expected a string or a non-empty list of messages, got int 6"),
        ("preference", "empty_output.jsonl", 1, "chosen", "empty text"),
        ("preference", "identical.jsonl", 1, "chosen/rejected", "chosen and rejected are identical"),
        ("dialogue", "hh_bad_transcript.jsonl", 1, "chosen", "expected the transcript to start with '\\n\\nHuman:'"),
    ],
)
def test_bad_fixture_rows(kind, name, line, field, problem):
    path = BAD / name
    by_line = dict(iter_local_rows(path))
    for other_line, raw in by_line.items():  # the rows before the bad one are fine
        if other_line < line:
            assert isinstance(CONVERTERS[kind](raw, "ok", "train"), FeedbackExample)
    with pytest.raises(RowError) as info:
        CONVERTERS[kind](by_line[line], "bad", "train")
    assert (info.value.field, info.value.problem) == (field, problem)
    # The reader's side: RowError.at adds the file and line.
    err = info.value.at(str(path), line)
    assert isinstance(err, DataError)
    assert str(err) == f"{path}, line {line}, field '{field}': {problem}"


def test_dialogue_transcript_starting_with_assistant_is_rejected():
    with pytest.raises(RowError) as info:
        convert_dialogue(row("bad/hh_bad_transcript.jsonl", 2), "bad", "train")
    assert info.value.field == "chosen"


def test_rated_identical_completions_are_rejected():
    with pytest.raises(RowError) as info:
        convert_rated(changed(RATED_OK, completions=["4.", "5.", "4."]), "bad", "train")
    assert info.value.field == "completions"


# ---------------------------------------------------------------------------------------------
# The reader: unreadable input names the file and the line


@pytest.mark.parametrize(
    ("name", "problem"),
    [("malformed.jsonl", "malformed JSON"), ("non_utf8.jsonl", "bytes that are not UTF-8")],
)
def test_reader_errors_name_file_and_line(name, problem):
    path = BAD / name
    it = iter_local_rows(path)
    line, first = next(it)  # line 1 is fine
    assert line == 1 and first["prompt"] == "What is 2 + 2?"
    with pytest.raises(DataError) as info:
        next(it)
    err = info.value
    assert (err.where, err.line, err.field) == (str(path), 2, None)
    assert str(path) in str(err) and ", line 2" in str(err) and problem in str(err)


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.parquet", "webgpt_comparisons.csv"])
def test_reader_rejects_missing_or_unknown_files(name):
    path = FIXTURES / name
    with pytest.raises(DataError) as info:
        list(iter_local_rows(path))
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("summarize_from_feedback_validation.jsonl.gz", [1, 2, 3, 4, 5, 6]),
        ("webgpt_comparisons.parquet", list(range(1, 13))),
        ("webgpt_comparisons.jsonl", list(range(1, 13))),
    ],
)
def test_reader_numbers_rows_from_one(name, lines):
    assert [line for line, _ in rows(name)] == lines


def test_rated_all_scores_equal_is_skipped():
    row_ = {"prompt": "Hi", "completions": ["Hello.", "Hey."], "scores": [3, 3]}
    assert convert_rated(row_, "r", "train") == Skip("rated: all scores equal")


def test_lone_surrogate_is_a_row_error():
    with pytest.raises(RowError) as e:
        convert_preference({"prompt": "Hi \ud83d", "chosen": "a", "rejected": "b"}, "x", "train")
    assert e.value.field == "prompt" and "surrogate" in e.value.problem


def test_completions_that_repeat_the_prompt_ultrafeedback_style():
    prompt = [{"role": "user", "content": "2+2?"}]
    row_ = {"prompt": prompt, "chosen": [*prompt, {"role": "assistant", "content": "4"}],
            "rejected": [*prompt, {"role": "assistant", "content": "5"}]}
    ex = convert_preference(row_, "u", "train")
    assert ex.context == (user("2+2?"),) and [c.text for c in ex.candidates] == ["4", "5"] and ex.chat


def test_single_newline_role_strings_use_the_implicit_prompt_rule():
    row_ = {"chosen": "Human: hi\nAssistant: hello there", "rejected": "Human: hi\nAssistant: go away"}
    ex = convert_preference(row_, "s", "train")
    assert ex.context == (user("hi"),) and [c.text for c in ex.candidates] == ["hello there", "go away"]
