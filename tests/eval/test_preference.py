"""Preference accuracy has one definition: training's evaluation and `coh eval feedback dialogue`
report the same number on the same model and data; pairs match an obviously-correct reference."""

from __future__ import annotations

import json
import random

from coh.cli import main
from coh.data.records import FeedbackRecord
from coh.data.render import render_one
from coh.eval.preference import pairs_from_examples, pairs_from_records, preference_accuracy
from coh.train.metrics import read_metrics
from tests.conftest import hh_rows


def test_pairs_equal_the_reference_rendering_on_real_hh(llama_tokenizer):
    """Reference: the rejected reply rendered as a ``p`` record with the positive phrase in place
    of the negative one, i.e. render_one(..., (good, good)): text, loss and EOS identical."""
    from coh.data.phrases import PhraseSet
    from coh.data.sources import CONVERTERS

    phrases = PhraseSet(good="A good reply:", bad="A bad reply:")
    examples = []
    for i, row in enumerate(hh_rows(300)):
        try:
            examples.append(CONVERTERS["dialogue"](row, f"d/{i}", "eval"))
        except Exception:  # the sample's empty replies
            continue
    pairs = pairs_from_examples(examples, phrases)
    assert len(pairs) == len(examples)

    def key(segs):
        return [(s.text, s.loss, s.eos) for s in segs]

    for ex, (chosen, rejected) in zip(examples, pairs):
        ref = [render_one(ex, k, (phrases.good, phrases.good), phrases, random.Random(0)) for k in ("p", "n")]
        assert (key(chosen.segments), key(rejected.segments)) == (key(ref[0]), key(ref[1]))
    # np records give the same pairs as pn records
    np_records = [FeedbackRecord(ex.id, ex.source, "np",
                                 tuple(render_one(ex, "np", (phrases.good, phrases.bad), phrases, random.Random(0))))
                  for ex in examples]
    assert [tuple(key(r.segments) for r in p) for p in pairs_from_records(np_records)] == \
        [tuple(key(r.segments) for r in p) for p in pairs]


def test_accuracy_counts_ties_as_misses():
    by_sum, by_token = preference_accuracy([1.0, 2.0, 3.0, 3.0, 4.0, 2.0], [1, 4, 3, 1, 2, 2])
    assert by_sum == [True, False, False]
    assert by_token == [False, True, False]  # 1/1 vs 2/4, 3/3 vs 3/1, 4/2 vs 2/2


def test_training_and_coh_eval_report_the_same_preference_accuracy(tmp_path, llama_tokenizer):
    from coh.tiny import make_tiny_model

    rows = [r for r in hh_rows(200) if all(t.strip() for t in (r["chosen"], r["rejected"]))]
    train_rows, eval_rows = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_rows.write_text("".join(json.dumps(r) + "\n" for r in rows[:120]))
    eval_rows.write_text("".join(json.dumps(r) + "\n" for r in rows[120:160]))
    make_tiny_model(tmp_path / "base", llama_tokenizer, hidden=32, layers=2, heads=2)
    assert main(["data", "build", "-s", f"dialogue:train={train_rows},eval={eval_rows}", "-o", str(tmp_path / "data"),
                 "--skip-invalid", "--no-progress"]) == 0
    assert main(["train", f"model={tmp_path / 'base'}", f"train_data={tmp_path / 'data'}",
                 f"output_dir={tmp_path / 'run'}", "max_steps=2", "eval_every=2", "save_every=2", "lr=3e-3",
                 "warmup_steps=1", "max_length=1024", "overlong=skip", "report_to=[none]", "eval_records=null"]) == 0
    trained = [m for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/preference_accuracy" in m][-1]
    assert main(["eval", "feedback", "dialogue", "--model", str(tmp_path / "run" / "final"), "--data", str(eval_rows),
                 "-o", str(tmp_path / "eval"), "--no-progress", "--device", "cpu"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    assert evaluated["preference_accuracy"] == trained["eval/preference_accuracy"]
    assert evaluated["preference_accuracy_per_token"] == trained["eval/preference_accuracy_per_token"]
