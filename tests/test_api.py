"""`import coh`: the Python API is the commands' own functions (checked against the command line's
outputs), its imports are lazy, and generation follows the trained prompt (checked against a plain
greedy loop)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import coh
from coh.cli import main
from coh.data.errors import DataError
from coh.data.feedback import Turn
from coh.data.records import read_records
from coh.demo import task

from .generation.fixtures import COH_PHRASES


def test_import_coh_and_the_cli_parser_load_no_torch():
    code = ("import sys, coh, coh.cli; coh.cli.build_parser(); coh.BuildConfig; coh.TrainConfig; "
            "coh.ControllabilityConfig; print(sorted(m for m in ('torch', 'transformers', 'datasets', 'trl') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_names():
    assert set(coh.__all__) <= set(dir(coh))
    for name in coh.__all__:
        assert getattr(coh, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        coh.nope  # noqa: B018


def test_train_is_the_function_coh_train_runs(monkeypatch, tmp_path):
    import coh.train.trainer

    calls = []
    monkeypatch.setattr(coh.train.trainer, "train", lambda config: calls.append(config) or {"loss": 1.0})
    config = coh.TrainConfig(model="m", train_data="d", output_dir=str(tmp_path), max_steps=3, report_to=["none"])
    assert callable(coh.train) and coh.train(config) == {"loss": 1.0}
    assert main(["train", "--model", "m", "--train-data", "d", "-o", str(tmp_path), "--max-steps", "3",
                 "--report-to", "none"]) == 0
    assert calls == [config, config]  # the command line builds the same config and calls the same function


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return task.make_rows(60, seed=1)


def test_build_records_gives_what_coh_data_build_writes(rows, tmp_path):
    import datasets

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["data", "build", "-s", f"preference:{path}", "-o", str(tmp_path / "cli"), "--feedback", "p,pn",
                 "--eval-fraction", "0.2", "--seed", "3", "--num-proc", "1", "--no-progress"]) == 0
    expected = {s: list(read_records(tmp_path / "cli" / f"{s}.jsonl")) for s in ("train", "eval")}
    for data in (rows, datasets.Dataset.from_list(rows), path):
        built = coh.build_records(data, source="preference", feedback="p,pn", eval_fraction=0.2, seed=3)
        assert {"train": built.train, "eval": built.eval} == expected
        assert built.summary["records"] == {"train": len(expected["train"]), "eval": len(expected["eval"])}
    table = built.dataset("eval")
    assert table["id"] == [r.id for r in expected["eval"]] and table["text"][0] == expected["eval"][0].text
    kept = coh.build_records(rows, feedback=["p"], output_dir=tmp_path / "kept")
    assert (tmp_path / "kept" / "summary.json").exists() and {r.feedback for r in kept.train} == {"p"}


def test_build_records_names_bad_rows(rows):
    import datasets

    bad = [rows[0], {**rows[1], "chosen": ""}]
    with pytest.raises(DataError, match=r"^rows\[1\], field 'chosen': empty text"):
        coh.build_records(bad)
    with pytest.raises(DataError, match=r"^dataset\['test'\]\[0\], field 'chosen'"):
        coh.build_records(datasets.DatasetDict({"train": datasets.Dataset.from_list(bad[:1]),
                                                "test": datasets.Dataset.from_list(bad[1:])}))
    built = coh.build_records(bad, skip_invalid=True, eval_fraction=0)
    assert len(built.rejects) == 1 and built.rejects[0]["file"] == "rows[1]" and built.rejects[0]["line"] is None
    assert json.loads(built.rejects[0]["raw"]) == bad[1]  # the row as given: nothing lost
    assert built.summary["invalid_rows"] == 1 and len(built.train) == 4
    with pytest.raises(TypeError, match="wrap it in a list"):
        coh.build_records(rows[0])


def greedy_reference(lm, ids: list[int], max_new_tokens: int) -> str:
    """A plain greedy loop over full forwards: argmax, stop at EOS; the text up to the next 'User:'."""
    import torch

    ids = list(ids)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(lm.model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == lm.tokenizer.eos_token_id:
                break
            new.append(nxt)
    return lm.tokenizer.decode(new).split(COH_PHRASES["user"])[0].strip()


def test_generate_follows_the_trained_prompt(coh_model_dir):
    from coh.eval.generations import prompt_ids

    lm = coh.load(coh_model_dir, device="cpu")
    question = "What is the capital of Peru?"
    for feedback, phrase in (("good", COH_PHRASES["good"]), ("bad", COH_PHRASES["bad"]), ("Be rude:", "Be rude:")):
        ids = prompt_ids(lm, [(Turn("user", question),)], feedback)[0]
        assert lm.tokenizer.decode(ids, skip_special_tokens=True) == f"User: {question} {phrase}"
        assert coh.generate(lm, question, feedback=feedback, max_new_tokens=8) == greedy_reference(lm, ids, 8)
    conversation = [{"role": "user", "content": question}]
    both = coh.generate(lm, [question, conversation], feedback="bad", max_new_tokens=8)
    assert both == [coh.generate(lm, question, feedback="bad", max_new_tokens=8)] * 2
    assert coh.generate(lm, conversation, max_new_tokens=8) == coh.generate(lm, question, feedback="good",
                                                                             max_new_tokens=8)
    assert coh.generate(str(coh_model_dir), [], feedback="good") == []
    with pytest.raises(ValueError, match="must end with a user message"):
        coh.generate(lm, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    with pytest.raises(ValueError, match="message 0"):
        coh.generate(lm, [{"role": "robot", "content": "hi"}])


def test_evaluate_is_what_coh_eval_writes(coh_model_dir, rows, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]), encoding="utf-8")
    args = dict(model=str(coh_model_dir), data=str(data), kind="preference", scorer="coh.demo.task:judge",
                max_new_tokens=6, device="cpu", progress=False)
    assert main(["eval", "feedback", "controllability", "--model", str(coh_model_dir), "--data", str(data),
                 "--kind", "preference", "--scorer", "coh.demo.task:judge", "--max-new-tokens", "6", "--device",
                 "cpu", "--no-progress", "-o", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    result = coh.evaluate(coh.ControllabilityConfig(**args, output_dir=str(tmp_path / "api")))
    again = coh.evaluate(coh.ControllabilityConfig(**args, output_dir=str(tmp_path / "api2")),
                         model=coh.load(coh_model_dir, device="cpu"))
    assert result.metrics == again.metrics == cli["metrics"] and result.counts == cli["counts"]
    assert json.loads((tmp_path / "api" / "results.json").read_text())["metrics"] == cli["metrics"]
    with pytest.raises(TypeError, match="expected one of"):
        coh.evaluate(coh.TrainConfig(model="m", train_data="d", report_to=["none"]))
