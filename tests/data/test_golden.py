"""Golden-output regression tests for ``coh data build``: every source fixture, built under a set of
feedback types, must give byte for byte the files checked in under ``tests/golden/<case>/``
(``train.jsonl``, ``eval.jsonl``, ``summary.json`` and, for resampled builds, ``examples/*.jsonl``).

A failure means the records changed. If the change is intended, regenerate the golden files::

    COH_UPDATE_GOLDEN=1 python -m pytest -q tests/data/test_golden.py

which rewrites ``tests/golden/`` instead of comparing (the tests still pass), then read the diff
(``git diff tests/golden``) record by record against the rules in ``coh.data.render`` before
committing it.

Builds run from the repository root with fixture paths relative to it, so ``summary.json`` (which
records each source's files) does not depend on where the checkout lives; any value that still
holds an absolute or temporary path is dropped from it before comparing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from coh.data.build import BuildConfig, SourceSpec, build
from coh.data.records import read_records
from coh.data.render import RenderSpec

from ..conftest import REPO

GOLDEN = REPO / "tests" / "golden"
FIX = "tests/fixtures"  # relative to REPO: the tests chdir there
UPDATE = os.environ.get("COH_UPDATE_GOLDEN") == "1"
PAIR = ("p", "n", "pn", "np")


@dataclass(frozen=True)
class Case:
    sources: tuple[str, ...]  # SourceSpec.parse texts
    feedback: tuple[str, ...] = PAIR
    shared_prefix: str = "context"
    resample: bool = False
    files: tuple[str, ...] = field(default=("train.jsonl", "eval.jsonl", "summary.json"))


CASES: dict[str, Case] = {
    "dialogue": Case((f"dialogue:{FIX}/hh_rlhf_train.jsonl",)),
    "dialogue_original": Case((f"dialogue:{FIX}/hh_rlhf_train.jsonl",), ("n", "pn"), shared_prefix="original"),
    "dialogue_resample": Case(
        (f"dialogue:{FIX}/hh_rlhf_train.jsonl",),
        resample=True,
        files=("train.jsonl", "eval.jsonl", "summary.json", "examples/train.jsonl", "examples/eval.jsonl"),
    ),
    "webgpt": Case((f"webgpt:{FIX}/webgpt_comparisons.jsonl",)),
    "summary": Case(
        (f"summary:train={FIX}/summarize_from_feedback_train.jsonl,"
         f"eval={FIX}/summarize_from_feedback_validation.jsonl.gz",),
    ),
    # aux multiplies records by the 12 alternative pairs: one row per split keeps it small
    "summary_aux": Case(
        (f"summary:train={FIX}/summarize_from_feedback_train.jsonl,"
         f"eval={FIX}/summarize_from_feedback_validation.jsonl.gz,limit=1",),
        feedback=("aux", "pn"),
    ),
    "preference_strings": Case((f"preference:{FIX}/preference_strings.jsonl",)),
    "preference_chat": Case((f"preference:{FIX}/preference_chat.jsonl",)),
    "preference_implicit": Case((f"preference:{FIX}/preference_implicit.jsonl",)),
    "unpaired": Case((f"unpaired:{FIX}/unpaired.jsonl",), feedback=("p", "n")),
    "rated": Case((f"rated:{FIX}/rated.jsonl",), feedback=("chain", "pn")),
}


def _scrub(obj: object, tmp: str) -> object:
    """``obj`` without the keys whose values hold an absolute or temporary path."""
    if isinstance(obj, dict):
        return {k: _scrub(v, tmp) for k, v in obj.items() if not _is_path(v, tmp)}
    if isinstance(obj, list):
        return [_scrub(v, tmp) for v in obj if not _is_path(v, tmp)]
    return obj


def _is_path(value: object, tmp: str) -> bool:
    return isinstance(value, str) and (os.path.isabs(value) or tmp in value)


def _outputs(out: Path, case: Case, tmp: str) -> dict[str, bytes]:
    got = {}
    for name in case.files:
        data = (out / name).read_bytes()
        if name == "summary.json":
            summary = _scrub(json.loads(data), tmp)
            data = (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode()
        got[name] = data
    return got


def _build(case: Case, out: Path) -> dict:
    cfg = BuildConfig(
        [SourceSpec.parse(s) for s in case.sources],
        str(out),
        seed=0,
        eval_fraction=0.25,
        render=RenderSpec(feedback=case.feedback, shared_prefix=case.shared_prefix, resample=case.resample),
        progress=False,
        skip_invalid=False,
    )
    return build(cfg)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, tmp_path, monkeypatch):
    case = CASES[name]
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    summary = _build(case, out)
    assert summary["invalid_rows"] == 0 and summary["records"]["train"] > 0
    for spec in summary["sources"].values():
        assert all(not os.path.isabs(p) for p in spec["spec"]["files"].values())  # relative: stable golden
    got = _outputs(out, case, str(tmp_path))
    golden_dir = GOLDEN / name
    if UPDATE:
        for old in golden_dir.rglob("*") if golden_dir.exists() else ():
            if old.is_file() and str(old.relative_to(golden_dir)) not in got:
                old.unlink()
        for rel, data in got.items():
            (golden_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden_dir / rel).write_bytes(data)
        return
    for rel, data in got.items():
        path = golden_dir / rel
        assert path.exists(), f"no golden file {path}; run with COH_UPDATE_GOLDEN=1 to write it"
        want = path.read_bytes()
        if data != want:
            got_lines, want_lines = data.decode().splitlines(), want.decode().splitlines()
            first = next((i for i, (a, b) in enumerate(zip(got_lines, want_lines)) if a != b),
                         min(len(got_lines), len(want_lines)))
            pytest.fail(
                f"{name}/{rel} differs from {path} at line {first + 1} "
                f"({len(got_lines)} lines built, {len(want_lines)} in the golden file):\n"
                f"  built:  {got_lines[first] if first < len(got_lines) else '<end>'}\n"
                f"  golden: {want_lines[first] if first < len(want_lines) else '<end>'}\n"
                "If the change is intended, rerun with COH_UPDATE_GOLDEN=1 and review `git diff tests/golden`."
            )


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_files_follow_the_record_contract(name):
    """The checked-in records themselves obey the contract of ``coh.data.records``, so a golden file
    regenerated from a broken renderer does not go unnoticed."""
    case = CASES[name]
    golden_dir = GOLDEN / name
    if not (golden_dir / "train.jsonl").exists():
        pytest.skip("golden files not written yet (COH_UPDATE_GOLDEN=1)")
    records = [r for split in ("train", "eval") for r in read_records(golden_dir / f"{split}.jsonl")]
    assert records
    for rec in records:
        assert rec.feedback in case.feedback
        segs = rec.segments
        for i, s in enumerate(segs):
            # loss only on outputs, and every output is closed by EOS
            if s.loss:
                assert s.role == "assistant" and s.eos and s.label is not None, (rec.id, i)
            if s.role in ("feedback", "marker", "user", "prompt", "system"):
                assert not s.loss and not s.eos, (rec.id, i)
            # an output comes right after its feedback phrase, with the same label
            if s.loss:
                assert i > 0 and segs[i - 1].role == "feedback" and segs[i - 1].label == s.label, (rec.id, i)
        labels = [s.label for s in segs if s.loss]
        if rec.feedback in ("p", "n", "pn", "np"):
            # p/n: every output under one label; pn/np: the first label's outputs, then the other's
            first, last = {"p": "gg", "n": "bb", "pn": "gb", "np": "bg"}[rec.feedback]
            assert labels[0].startswith(first) and labels[-1].startswith(last), rec.id
            assert labels == sorted(labels, key=lambda lab: lab != labels[0]), rec.id
        if rec.feedback == "chain":
            # worst to best: bad first, good last, better between; tied outputs share a label
            order = {"bad": 0, "better": 1, "good": 2}
            assert labels[0] == "bad" and labels[-1] == "good", rec.id
            assert [order[lab] for lab in labels] == sorted(order[lab] for lab in labels), rec.id
    splits = {split: [r.split for r in read_records(golden_dir / f"{split}.jsonl")] for split in ("train", "eval")}
    assert set(splits["train"]) <= {"train"} and set(splits["eval"]) <= {"eval"}
