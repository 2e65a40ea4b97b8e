"""`coh compare smoke` end to end on the real hh-rlhf sample (a tiny model), a rerun that reuses
every stage, a function scorer plugged in, and the resumable stages on their own."""

from __future__ import annotations

import json

import pytest

from coh.compare.config import CompareConfig
from tests.conftest import HH_SAMPLE

pytest.importorskip("trl", reason="the dpo method and the trained reward model need TRL (the compare extra)")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} not present")
    from coh.cli import main

    out = tmp_path_factory.mktemp("smoke")
    assert main(["compare", "smoke", "-o", str(out), "--data", str(HH_SAMPLE), "--no-progress"]) == 0
    return out


def test_smoke_writes_the_report(smoke):
    results = json.loads((smoke / "results.json").read_text())
    assert list(results["runs"]) == ["coh", "conditional-sft", "sft", "dpo", "base"]
    report = (smoke / "report.md").read_text()
    for label in results["runs"]:
        assert f"| {label} |" in report
    assert "95 % intervals" in report and "not distinguished" in report
    assert (smoke / "loss_curves.png").stat().st_size > 0 and (smoke / "metrics.png").stat().st_size > 0
    scorer = results["judge"]
    assert 0 <= scorer["accuracy"] <= 1 and scorer["pairs"] == results["runs"]["base"]["counts"]["pairs"]


def test_every_method_gets_the_same_budget_and_protocols(smoke):
    results = json.loads((smoke / "results.json").read_text())
    runs = results["runs"]
    cfg = results["config"]
    for label, row in runs.items():
        v = row["values"]
        for key in ("pref_acc", "pref_acc_per_token", "dialogue_is_good_accuracy", "judge_mean", "plain_text_loss"):
            assert key in v, (label, key)
        assert row["counts"]["pairs"] == runs["base"]["counts"]["pairs"]
        assert row["counts"]["prompts"] == runs["base"]["counts"]["prompts"]
        if label != "base":
            assert 0 <= v["win_vs_base"] <= 1
            lo, hi = row["ci95"]["win_vs_base"]
            assert lo <= v["win_vs_base"] <= hi
            assert row["train"]["steps"] == cfg["steps"]
            assert row["train"]["tokens"] > 0
    assert "good_over_bad_win_rate" in runs["coh"]["values"] and "good_over_bad_win_rate" not in runs["sft"]["values"]
    assert "win_vs_sft" in runs["coh"]["values"] and "win_vs_sft" not in runs["sft"]["values"]
    # plain-prompt accuracy for models trained without phrases, positive-phrase accuracy for the others
    coh_eval = json.loads((smoke / "eval" / "coh" / "results.json").read_text())["metrics"]
    sft_eval = json.loads((smoke / "eval" / "sft" / "results.json").read_text())["metrics"]
    assert runs["coh"]["values"]["pref_acc"] == coh_eval["preference_accuracy"]
    assert runs["sft"]["values"]["pref_acc"] == sft_eval["plain_preference_accuracy"]
    # the same held-out prompts were answered by every model
    ids = {label: set(json.loads((smoke / "eval" / label / "scores.json").read_text())) for label in runs}
    assert len({frozenset(s) for s in ids.values()}) == 1


def test_rerun_reuses_every_stage(smoke, capsys):
    from coh.cli import main

    before = json.loads((smoke / "results.json").read_text())
    assert main(["compare", "smoke", "-o", str(smoke), "--data", str(HH_SAMPLE), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before, reused") >= 11  # base, split, text, scorer, 4 trainings, 5 evaluations
    after = json.loads((smoke / "results.json").read_text())
    assert after["runs"] == before["runs"]


def test_function_scorer_plugs_in(tmp_path):
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} not present")
    from coh.compare.runner import run_compare

    cfg = CompareConfig.load("smoke", {"output_dir": str(tmp_path), "data": str(HH_SAMPLE), "methods": ["sft", "base"],
                                       "scorer": {"spec": "tests.compare.judge_functions:reply_words"}})
    results = run_compare(cfg, progress=False)
    assert results["judge"]["spec"] == "tests.compare.judge_functions:reply_words"
    assert not (tmp_path / "judge" / "model").exists()
    rows = [json.loads(line) for line in (tmp_path / "eval" / "sft" / "generations_none.jsonl").read_text().splitlines()]
    assert all(r["score"] == len(r["reply"].split()) for r in rows)


def _rows_file(tmp_path) -> str:
    """A data file beside the output folder: the folder is refused before any row is read, so
    these tests need no real data (and run where ../shared is absent)."""
    path = tmp_path.parent / f"{tmp_path.name}-rows.jsonl"
    path.write_text('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", '
                    '"rejected": "\\n\\nHuman: hi\\n\\nAssistant: go away"}\n')
    return str(path)


def test_refuses_a_folder_it_did_not_write(tmp_path):
    from coh.compare.runner import run_compare

    (tmp_path / "mine.txt").write_text("keep me")
    cfg = CompareConfig.load("smoke", {"output_dir": str(tmp_path), "data": _rows_file(tmp_path)})
    with pytest.raises(ValueError, match="not written by coh compare"):
        run_compare(cfg, progress=False)


def test_stage_redone_when_its_inputs_change(tmp_path):
    from coh.compare.runner import Stages

    stages = Stages(tmp_path)
    calls = []

    def work(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("x")
        return {"n": len(calls)}

    assert stages.run("s", {"a": 1}, work)["n"] == 1
    assert stages.run("s", {"a": 1}, work)["n"] == 1  # reused
    assert stages.run("s", {"a": 2}, work)["n"] == 2  # other inputs: redone
    assert len(calls) == 2
    # a stage interrupted with the same inputs keeps its folder (coh train resumes from it)
    (tmp_path / "s" / "done.json").unlink()
    (tmp_path / "s" / "checkpoint").write_text("partial")

    def resume(folder):
        assert (folder / "checkpoint").exists()
        return {"n": 3}

    assert stages.run("s", {"a": 2}, resume)["n"] == 3


def test_refuses_a_folder_in_use(tmp_path):
    import fcntl

    from coh.compare.runner import MARKER, run_compare

    (tmp_path / MARKER).write_text("x")
    with (tmp_path / ".lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        cfg = CompareConfig.load("smoke", {"output_dir": str(tmp_path), "data": _rows_file(tmp_path)})
        with pytest.raises(ValueError, match="in use by another coh compare"):
            run_compare(cfg, progress=False)
