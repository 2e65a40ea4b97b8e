"""The bad-input corpus (``tests/fixtures/bad``, made by ``tests/fixtures/make_fixtures.py``)
through ``coh data build`` (with and without ``--skip-invalid``) and ``coh data inspect``, in
process through ``coh.cli.main``.

For every file: no traceback; the error names the file, the line and the field; with
``--skip-invalid`` the rows read equal the examples + skipped + rejects exactly, each reject
keeps its line byte for byte, and the records written are valid (inspect finds no problem).
The expectations are the corpus's own (``bad/cases.json``), written by hand in the script."""

from __future__ import annotations

import base64
import gzip
import json
import re
from pathlib import Path

import pytest

from coh.cli import main
from coh.data.errors import DataError
from coh.data.inspect import inspect_records

BAD = Path(__file__).resolve().parents[1] / "fixtures" / "bad"
CASES: dict[str, dict] = json.loads((BAD / "cases.json").read_text(encoding="utf-8"))
SOURCE_CASES = sorted(n for n, c in CASES.items() if c["kind"] != "records")


def test_the_corpus_is_what_the_script_makes(tmp_path):
    """Every file of bad/ has its case, and the script makes exactly the committed bytes."""
    import sys

    sys.path.insert(0, str(BAD.parent))
    try:
        import make_fixtures
    finally:
        sys.path.pop(0)
    assert sorted(p.name for p in BAD.iterdir() if p.name != "cases.json") == sorted(CASES)
    assert len(CASES) >= 60
    kinds = {c["kind"] for c in CASES.values()}
    assert kinds == {"dialogue", "webgpt", "summary", "preference", "unpaired", "rated", "records"}
    for kind in kinds - {"records"}:  # every kind in every format
        names = [n for n, c in CASES.items() if c["kind"] == kind]
        for suffix in (".jsonl", ".json", ".parquet", ".gz"):
            assert any(n.endswith(suffix) for n in names), (kind, suffix)
    cases = make_fixtures.bad_cases()
    assert json.loads(json.dumps({c.name: c.manifest() for c in cases})) == CASES
    for case in cases:
        if case.data is not None:
            assert (BAD / case.name).read_bytes() == case.data, case.name


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def place(path: Path, line: int | None, field: str | None) -> str:
    return DataError(str(path), line, field, "").message.removesuffix(": ")


def file_lines(path: Path) -> list[bytes]:
    """The file's lines as bytes (gzip opened), without line ends: to check rejects against."""
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return [x.removesuffix(b"\r") for x in data.removeprefix(b"\xef\xbb\xbf").split(b"\n")]


def check_rejects(path: Path, case: dict, rejects: list[dict]) -> None:
    assert [(r["line"], r["field"]) for r in rejects] == [(line, field) for line, field, _ in case["rejects"]]
    lines = file_lines(path) if not path.name.endswith(".parquet") else None
    data = b"\n".join(lines) if lines else b""
    for r, (_, _, fragment) in zip(rejects, case["rejects"]):
        assert fragment in r["problem"] and r["file"] == str(path)
        if lines is None:  # parquet rows have no text: the row as read, standard JSON
            assert isinstance(r["row"], dict)
            continue
        raw = base64.b64decode(r["raw_base64"]) if "raw_base64" in r else r["raw"].encode("utf-8")
        assert ("raw_base64" in r) == (b"not UTF-8" in r["problem"].encode())
        if path.name.endswith((".json", ".json.gz")) and data.lstrip().startswith(b"["):
            # an array item: its exact text, starting on its line
            assert raw in data and data[: data.index(raw)].count(b"\n") + 1 == r["line"]
        else:
            assert raw == lines[r["line"] - 1]


@pytest.mark.parametrize("name", SOURCE_CASES)
def test_build_stops_at_the_first_bad_row_naming_it(name, tmp_path, capsys):
    case, path = CASES[name], BAD / name
    code, _, err = run(capsys, "data", "build", "-s", f"{case['kind']}:{path}", "-o", str(tmp_path / "o"),
                       "--no-progress", "--num-proc", "1", "--eval-fraction", "0")
    first = case["rejects"][0] if case["rejects"] else case["fatal"]
    if first is None:  # odd but valid input
        assert code == 0 and not (tmp_path / "o" / "rejects.jsonl").exists()
        return
    line, field = first[0], first[1] if case["rejects"] else None
    assert code == 1
    assert place(path, line, field) in err and first[-1] in err
    assert not (tmp_path / "o").exists()  # nothing written, not even an empty folder


@pytest.mark.parametrize("name", SOURCE_CASES)
def test_build_with_skip_invalid_accounts_for_every_row(name, tmp_path, capsys):
    case, path = CASES[name], BAD / name
    out = tmp_path / "o"
    code, stdout, err = run(capsys, "data", "build", "-s", f"{case['kind']}:{path}", "-o", str(out),
                            "--no-progress", "--num-proc", "1", "--eval-fraction", "0", "--skip-invalid")
    if case["fatal"]:  # no option reads this file: refused, naming it
        line, fragment = case["fatal"]
        assert code == 1 and place(path, line, None) in err and fragment in err
        assert not out.exists()
        return
    rows, invalid, skipped = case["rows"], len(case["rejects"]), case["skipped"]
    if invalid + skipped == rows:  # nothing to build: said so, with the rows listed
        assert code == 1
        assert f"no records were produced from the {rows} rows read: {invalid} invalid and {skipped} skipped" in err
        line, field, fragment = case["rejects"][0]
        assert f"{place(path, line, field)}: " in err and fragment in err
        assert not out.exists()
        return
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    src = summary["sources"][case["kind"]]
    assert src["rows"] == rows
    assert src["examples"]["train"] + src["examples"]["eval"] + sum(src["skipped"].values()) + src["invalid"] == rows
    assert src["invalid"] == summary["invalid_rows"] == invalid and summary["skipped_rows"] == skipped
    if invalid:
        text = (out / "rejects.jsonl").read_text(encoding="utf-8")  # standard JSON, UTF-8
        rejects = [json.loads(x, parse_constant=pytest.fail) for x in text.splitlines()]
        check_rejects(path, case, rejects)
        assert f"invalid rows set aside: {invalid}" in stdout
    else:
        assert not (out / "rejects.jsonl").exists()
    # what was written is valid: inspect finds no problem in it
    code, _, _ = run(capsys, "data", "inspect", str(out / "train.jsonl"))
    assert code == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_inspect_names_every_bad_line(name, capsys):
    """Raw source files are not records: every row is reported, with its file and line; records
    files get their bad lines reported and the rest counted."""
    case, path = CASES[name], BAD / name
    code, out, err = run(capsys, "data", "inspect", str(path))
    assert code == 1  # every file here has a problem (raw rows are not records)
    try:
        report = inspect_records(path)
    except DataError as e:  # unreadable from the start: the error names the file
        assert str(path) in err and e.where == str(path)
        assert case["fatal"] or name.endswith(".parquet")
        return
    invalid = report.examples.get("invalid", [])
    assert all(x.startswith(f"{path}:") for x in invalid)
    if case["kind"] == "records":
        lines = [int(re.match(rf"{re.escape(str(path))}:(\d+): ", x).group(1)) for x in invalid]
        assert lines == [line for line, _, _ in case["rejects"]][: len(lines)]
        for ex, (_, field, fragment) in zip(invalid, case["rejects"]):
            assert fragment in ex and (field is None or f"field '{field}'" in ex)
    if case["fatal"]:
        fragment = case["fatal"][1]
        if fragment == "holds no rows":
            assert report.problems == {"empty": 1}
        elif name.endswith(".csv"):  # inspect reads any other name as JSON lines
            assert report.problems == {"invalid": 1}
        else:  # cut short: the lines before are counted, then the problem
            assert report.problems["unreadable"] == 1 and fragment in report.examples["unreadable"][0]
            assert report.n_records + report.problems["invalid"] > 0
        return
    assert report.n_records + report.problems["invalid"] == case["rows"]
    assert report.problems["invalid"] == (len(case["rejects"]) if case["kind"] == "records" else case["rows"])
    assert f"{path}:" in out


def test_several_processes_set_aside_the_same_rows(tmp_path):
    """Bad lines cross to worker processes and back: the same files as with one process."""
    path = BAD / "webgpt_scores.jsonl"
    outs = []
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        assert main(["data", "build", "-s", f"webgpt:{path}", "-s", f"preference:{BAD / 'preference_array_items.json'}",
                     "-o", str(out), "--no-progress", "--skip-invalid", "--num-proc", str(n)]) == 0
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1]


# -- bad options ----------------------------------------------------------------------------------
def option_cases(tmp: Path) -> list[tuple[str, list[str], str | None]]:
    """(what, argv, fragment of the error, or None where the run must succeed) for mistakes in
    the options of `coh data build` / `inspect`; files they need are written under ``tmp``."""
    good = str(BAD.parent / "preference_strings.jsonl")
    out = str(tmp / "out")
    (tmp / "a_file").write_text("x")
    (tmp / "no_tokenizer").mkdir(exist_ok=True)
    recipes = {"broken.yaml": "source: [preference:x.jsonl\n", "list.yaml": "- source\n",
               "unknown_key.yaml": f"source:\n  - kind: preference\n    file: {good}\n",
               "no_kind.yaml": f"source:\n  - files: {{train: {good}}}\n",
               "bad_kind.yaml": f"source:\n  - kind: p\n    files: {{train: {good}}}\n",
               "wrong_type.yaml": f"source: [preference:{good}]\nseed: one\n",
               "bool_seed.yaml": f"source: [preference:{good}]\nseed: true\n",
               "source_string.yaml": f"source: preference:{good}\n", "phrases.yaml": "default: {good: [\n"}
    for name, text in recipes.items():
        (tmp / name).write_text(text)
    build = ["data", "build", "--no-progress", "--num-proc", "1", "-s", f"preference:{good}"]
    recipe = ["data", "build", "--no-progress", "--num-proc", "1", "-o", out, "--config"]
    return [
        ("--tokenizer: no such folder", [*build, "-o", out, "--tokenizer", str(tmp / "missing")], "no such folder"),
        ("--tokenizer: a folder without one", [*build, "-o", out, "--tokenizer", str(tmp / "no_tokenizer")],
         "holds no tokenizer"),
        ("--tokenizer: a file", [*build, "-o", out, "--tokenizer", str(tmp / "a_file")], "is a file"),
        ("--config: broken YAML", [*recipe, str(tmp / "broken.yaml")], "broken.yaml, line 2: not valid YAML"),
        ("--config: not a mapping", [*recipe, str(tmp / "list.yaml")], "expected a mapping"),
        ("--config: missing file", [*recipe, str(tmp / "missing.yaml")], "missing.yaml: cannot read"),
        ("--config: unknown key in a source", [*recipe, str(tmp / "unknown_key.yaml")], "unknown key(s) ['file']"),
        ("--config: source without kind", [*recipe, str(tmp / "no_kind.yaml")], "source 1: missing 'kind'"),
        ("--config: unknown kind", [*recipe, str(tmp / "bad_kind.yaml")], "unknown source kind 'p'"),
        ("--config: seed: one", [*recipe, str(tmp / "wrong_type.yaml")], "option 'seed': expected a whole number"),
        ("--config: seed: true", [*recipe, str(tmp / "bool_seed.yaml")], "option 'seed': expected a whole number"),
        ("--config: source as one string", [*recipe, str(tmp / "source_string.yaml")], None),
        ("--phrases: broken YAML", [*build, "-o", out, "--phrases", str(tmp / "phrases.yaml")], "phrases.yaml, line"),
        ("-o: a file", [*build, "-o", str(tmp / "a_file")], "is a file"),
        ("-o: under a file", [*build, "-o", str(tmp / "a_file" / "sub")], "is under"),
        *[(f"--eval-fraction {v}", [*build, "-o", out, "--eval-fraction", v], "eval_fraction must be")
          for v in ("1", "-0.1", "nan", "inf", "1.5")],
        ("--num-proc 0", [*build, "-o", out, "--num-proc", "0"], "num_proc must be"),
        ("--source: limit=0", ["data", "build", "-o", out, "-s", f"preference:{good},limit=0"], "limit must be"),
        ("inspect --tokenizer: no such folder", ["data", "inspect", good, "--tokenizer", str(tmp / "missing")],
         "no such folder"),
        ("inspect --record -1", ["data", "inspect", good, "--record", "-1"], "--record must be"),
        ("inspect --max-length 0", ["data", "inspect", good, "--max-length", "0"], "--max-length must be"),
        ("inspect: a folder", ["data", "inspect", str(tmp)], "is a folder"),
        ("inspect: parquet", ["data", "inspect", str(BAD.parent / "webgpt_comparisons.parquet")], "is parquet"),
    ]


def test_bad_options_are_refused_before_any_work(tmp_path, capsys):
    for what, argv, fragment in option_cases(tmp_path):
        code, _, err = run(capsys, *argv)
        if fragment is None:
            assert code == 0, (what, err)
            continue
        assert code == 1 and fragment in err, (what, err)
        assert err.startswith("coh data: error: ") and err.count("\n") == 1, what  # one line, no traceback
        out = tmp_path / "out"
        assert not out.exists() or (out / "summary.json").exists(), what  # nothing half-written


# -- figures for docs/reliability.md: `python tests/data/test_bad_corpus.py` --------------------
OUTCOMES = {"runs": "runs", "ok": "as expected", "traceback": "traceback", "unclear": "error without file/line/field",
            "accepted": "nonsense accepted", "refused": "whole file refused", "miscounted": "rows miscounted"}


def tally() -> dict[str, dict[str, int]]:
    """Every case through build, build --skip-invalid and inspect; per run one outcome: ``ok``
    (as the case expects: the place named, the rows accounted for), ``traceback`` (an exception
    escaped ``coh.cli.main``), ``accepted`` (exit 0 where an error was due, or fewer rows set
    aside than are bad), ``unclear`` (an error that does not name the file, line and field),
    ``refused`` (with --skip-invalid, the whole file refused where its bad rows were to be set
    aside), ``miscounted`` (rows read != examples + skipped + rejects). Runs on whatever ``coh`` is importable, so the
    same command measures an older checkout (``PYTHONPATH=OLD/src``)."""
    import contextlib
    import io
    import tempfile

    results: dict[str, dict[str, int]] = {}

    def call(*argv: str) -> tuple[int | None, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except Exception:  # what a user would see as a traceback
                return None, out.getvalue() + err.getvalue()
        return code, out.getvalue() + err.getvalue()

    def count(mode: str, outcome: str) -> None:
        results.setdefault(mode, dict.fromkeys(OUTCOMES, 0))
        results[mode]["runs"] += 1
        results[mode][outcome] += 1

    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, case) in enumerate(sorted(CASES.items())):
            path = BAD / name
            if case["kind"] != "records":
                for mode in ("build", "build --skip-invalid"):
                    out = Path(tmp) / f"{i}{mode[-1]}"
                    code, text = call("data", "build", "-s", f"{case['kind']}:{path}", "-o", str(out), "--no-progress",
                                      "--num-proc", "1", "--eval-fraction", "0", *mode.split()[1:])
                    skip = "skip" in mode
                    first = case["fatal"] if case["fatal"] and (skip or not case["rejects"]) else (
                        case["rejects"][0] if case["rejects"] and not skip else None)
                    nothing = skip and not case["fatal"] and len(case["rejects"]) + case["skipped"] == case["rows"]
                    if code is None:
                        outcome = "traceback"
                    elif first is not None or nothing:
                        where = place(path, first[0], first[1] if len(first) == 3 else None) if first else str(path)
                        outcome = "accepted" if code == 0 else ("ok" if where in text else "unclear")
                    elif code != 0:
                        outcome = "refused"  # the whole file, where its bad rows were to be set aside
                    else:
                        outcome = "ok"
                        if skip:
                            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
                            src = summary["sources"][case["kind"]]
                            seen = src["examples"]["train"] + src["examples"]["eval"]
                            if src["invalid"] < len(case["rejects"]):
                                outcome = "accepted"
                            elif (src["rows"] != case["rows"] or src["invalid"] != len(case["rejects"])
                                    or seen + sum(src["skipped"].values()) + src["invalid"] != case["rows"]):
                                outcome = "miscounted"
                    count(mode, outcome)
            code, text = call("data", "inspect", str(path))
            named = str(path) in text
            if case["kind"] == "records" and case["rejects"]:
                line, field, _ = case["rejects"][0]
                named = f"{path}:{line}: " + (f"field '{field}'" if field else "") in text
            count("inspect", "traceback" if code is None else "accepted" if code == 0 else
                  "ok" if named else "unclear")
        for _, argv, fragment in option_cases(Path(tmp)):
            code, text = call(*argv)
            count("build/inspect options", "traceback" if code is None else
                  ("ok" if code == 0 else "refused") if fragment is None else
                  "accepted" if code == 0 else "ok" if fragment in text else "unclear")
    return results


if __name__ == "__main__":
    import os
    import time

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    figures = tally()
    print(f"{len(CASES)} files of tests/fixtures/bad, {time.perf_counter() - start:.1f} s\n")
    print("| run | " + " | ".join(OUTCOMES.values()) + " |")
    print("|---|" + "---:|" * len(OUTCOMES))
    for mode, f in figures.items():
        print(f"| `coh data {mode}` | " + " | ".join(str(f[k]) for k in OUTCOMES) + " |")
    print("| all | " + " | ".join(str(sum(f[k] for f in figures.values())) for k in OUTCOMES) + " |")
