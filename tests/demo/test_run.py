"""``coh demo --quick`` runs every stage through the real commands and writes artefacts that parse."""

import json

from coh.cli import main
from coh.data.records import read_records
from coh.demo.run import FEEDBACK, MODES


def test_quick_demo(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--output-dir", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    for n in range(1, 6):
        assert f"[{n}/5]" in printed
    assert "$ coh data build --source preference:" in printed and "$ coh train " in printed
    assert printed.rstrip().endswith(f"coh serve {out / 'coh' / 'final'}")

    results = json.loads((out / "results.json").read_text())
    assert results["config"]["seed"] == 1
    summary = json.loads((out / "data" / "summary.json").read_text())
    assert results["records"] == summary["records"] and summary["records"]["train"] > 0
    for mode in MODES:
        assert (out / mode / "final" / "model.safetensors").exists()
        assert json.loads((out / mode / "final" / "coh.json").read_text())["mode"] == mode
        steps = [json.loads(line)["step"] for line in (out / mode / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) == results["config"]["steps"]
        assert results["training"][mode]["train_loss"] and results["training"][mode]["final_eval"]
        for fb in FEEDBACK:
            rows = [json.loads(line) for line in (out / "eval" / f"{mode}_{fb}.jsonl").read_text().splitlines()]
            assert len(rows) == results["eval_prompts"] > 0
            assert all(r["feedback"] == fb and 0 <= r["judge"] <= 1 for r in rows)
            mean = sum(r["judge"] for r in rows) / len(rows)
            assert abs(results["scores"][mode][fb]["judge"] - mean) < 1e-9

    # Evaluation prompts are the held-out ones: none of them appears in a training record.
    eval_prompts = {json.loads(line)["context"][0]["text"] for line in (out / "eval" / "coh_good.jsonl").open()}
    trained = {s.text.strip() for r in read_records(out / "data" / "train.jsonl") for s in r.segments
               if s.role == "user"}
    assert eval_prompts and not eval_prompts & trained

    held = [json.loads(line)["prompt"] for line in (out / "task" / "heldout.jsonl").open()]
    assert set(held) == eval_prompts

    report = (out / "report.md").read_text()
    assert "| coh | good |" in report and "| sft | none |" in report and "seed 1" in report.lower()
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep me")
    assert main(["demo", "--quick", "--no-progress", "--output-dir", str(tmp_path)]) == 1
    assert "not written by coh demo" in capsys.readouterr().err
    assert (tmp_path / "data" / "mine.txt").read_text() == "keep me"
