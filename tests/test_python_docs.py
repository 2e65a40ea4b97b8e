"""docs/python.md runs: its ```python blocks, in order, in one namespace, in a fresh folder; any
exception fails the test, naming the block. The page runs at coh demo's sizes (minutes); here at
``QUICK_SIZES`` (seconds)."""

from __future__ import annotations

import re
from pathlib import Path

from .data.test_trl import reset_accelerate_state

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_walkthrough_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 7 and "\nsize = SIZES\n" in blocks[0]
    blocks[0] = blocks[0].replace("\nsize = SIZES\n", "\nsize = QUICK_SIZES\n")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    try:
        for i, code in enumerate(blocks, start=1):
            try:
                exec(compile(code, f"docs/python.md block {i}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"docs/python.md block {i} raised {type(e).__name__}: {e}\n{code}") from e
    finally:
        reset_accelerate_state()  # the TRL block's trainer would leave it set up its way for later tests
    # what the page says it made
    assert (tmp_path / "data" / "train.jsonl").exists() and (tmp_path / "run" / "final").is_dir()
    assert (tmp_path / "eval" / "results.json").exists()
    assert isinstance(namespace["good"], str) and isinstance(namespace["bad"], str)
    assert namespace["result"].counts["prompts"] == len(namespace["held_out"]) > 0
    assert namespace["trainer"].state.global_step == 2
    assert "preference" in capsys.readouterr().out
