"""`coh eval` as a new user types it, with bad input: every case ends in a clear error (exit 1 with
`coh eval: error: ...` naming the file, flag, judge or model, or argparse's exit 2 naming the flag),
never a traceback, and before any model is loaded where the input alone is wrong."""

from __future__ import annotations

import gzip
import json
import socket

import pytest

from coh.cli import main
from tests.eval.conftest import HH_81_92


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DOWN = f"http://127.0.0.1:{free_port()}/v1"


def _generation(i: int, reply: object = "yes") -> str:
    return json.dumps({"id": str(i), "context": [{"role": "user", "text": f"question {i}"}], "reply": reply})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_bad_inputs")
    f = {"dir": tmp / "a_folder", "text": tmp / "notes.txt", "empty": tmp / "empty.jsonl", "hh": HH_81_92,
         "broken": tmp / "broken.jsonl", "gz": tmp / "cut.jsonl.gz", "judges": tmp / "my_judges.py",
         "syntax": tmp / "syntax_error.py", "raises": tmp / "raises_on_import.py", "gen": tmp / "gen.jsonl",
         "gen_broken": tmp / "gen_broken.jsonl", "gen_other": tmp / "gen_other.jsonl", "gen_bad_rows": tmp / "gen_rows.jsonl",
         "list": tmp / "list" / "results.json", "bad_metrics": tmp / "bad_metrics" / "results.json",
         "no_tokenizer": tmp / "no_tokenizer"}
    f["dir"].mkdir()
    f["text"].write_text("just some notes\n")
    f["empty"].write_text("")
    rows = HH_81_92.read_text().splitlines()
    f["broken"].write_text(rows[0] + "\n" + rows[1][:50] + "\n" + rows[2] + "\n")
    f["gz"].write_bytes(gzip.compress(HH_81_92.read_bytes())[:200])
    f["judges"].write_text("def words(prompt, reply):\n    return len(reply.split())\n\n"
                           "def no_args():\n    return 1.0\n\n"
                           "def nan(prompt, reply):\n    return float('nan')\n\n"
                           "def text(prompt, reply):\n    return 'good'\n\n"
                           "def boom(prompt, reply):\n    raise RuntimeError('the judge fell over')\n\n"
                           "pi = 3.14\n")
    f["syntax"].write_text("def judge(prompt, reply)\n    return 1\n")
    f["raises"].write_text("raise RuntimeError('missing API key')\n")
    f["gen"].write_text("".join(_generation(i) + "\n" for i in range(4)))
    f["gen_broken"].write_text(_generation(0) + "\n" + _generation(1)[:30] + "\n")
    f["gen_other"].write_text("".join(_generation(i) + "\n" for i in range(10, 13)))
    f["gen_bad_rows"].write_text(_generation(0, 5) + "\n" + _generation(1, None) + "\n")
    for key, obj in (("list", [1, 2]), ("bad_metrics", {"protocol": "dialogue", "metrics": {"acc": "high"}})):
        f[key].parent.mkdir()
        f[key].write_text(json.dumps(obj))
    f["no_tokenizer"].mkdir()
    (f["no_tokenizer"] / "config.json").write_text("{}")
    return f


DIALOGUE = ["feedback", "dialogue", "--model", "{model}"]
CONTROL = ["feedback", "controllability", "--model", "{model}", "--data", "{hh}", "--limit", "2",
           "--max-new-tokens", "2"]
PAIRWISE = ["feedback", "pairwise", "--judge", "{judges}:words"]

# (id, argv with {placeholders}, exit status, what the message must hold)
CASES = [
    # data
    ("data missing", [*DIALOGUE, "--data", "{dir}/nope.jsonl"], 1, "nope.jsonl: file not found"),
    ("data a folder", [*DIALOGUE, "--data", "{dir}"], 1, "unknown file type"),
    ("data of unknown type", [*DIALOGUE, "--data", "{text}"], 1, "unknown file type"),
    ("data empty", [*DIALOGUE, "--data", "{empty}"], 1, "empty.jsonl: holds no rows (the file is empty)"),
    ("data broken line, strict", [*DIALOGUE, "--data", "{broken}", "--strict"], 1, "broken.jsonl, line 2: malformed JSON"),
    ("data truncated gzip", [*DIALOGUE, "--data", "{gz}"], 1, "cut.jsonl.gz: cannot read"),
    ("data of another kind", ["feedback", "summarization", "--model", "{model}", "--data", "{hh}"], 1,
     "12 unusable row(s) skipped (12 x info: missing); the first: "),
    ("data strict, real hh-rlhf", [*DIALOGUE, "--data", "{hh}", "--strict"], 1, "line 7, field 'chosen': empty reply"),
    ("data from the hub, offline", [*DIALOGUE], 1, "give --data FILE"),
    ("kind unknown", [*CONTROL, "--kind", "dialog", "--judge", "{judges}:words"], 2, "argument --kind: invalid choice"),
    # models
    ("model missing", ["feedback", "dialogue", "--model", "{dir}/no_model", "--data", "{hh}"], 1,
     "no such folder here, and as a hub id"),
    ("model a file", ["feedback", "dialogue", "--model", "{text}", "--data", "{hh}"], 1, "a file, not a model folder"),
    ("model an empty folder", ["feedback", "dialogue", "--model", "{dir}", "--data", "{hh}"], 1,
     "no config.json in that folder"),
    ("model without a tokenizer", ["feedback", "dialogue", "--model", "{no_tokenizer}", "--data", "{hh}"], 1,
     "no tokenizer files"),
    # options
    *[(f"option {flag} {value}", [*DIALOGUE, "--data", "{hh}", flag, value], 2, f"argument {flag}: expected")
      for flag, value in (("--limit", "0"), ("--limit", "-1"), ("--limit", "many"), ("--batch-tokens", "0"),
                          ("--seed", "-1"), ("--seed", str(2**32)), ("--seed", "1.5"))],
    *[(f"option {flag} {value}", [*CONTROL, "--judge", "{judges}:words", flag, value], 2, f"argument {flag}: expected")
      for flag, value in (("--max-new-tokens", "0"), ("--temperature", "nan"), ("--temperature", "-0.5"),
                          ("--temperature", "inf"), ("--top-p", "0"), ("--top-p", "1.01"), ("--batch-size", "0"),
                          ("--judge-batch-size", "0"))],
    ("feedback blank", ["feedback", "summarization", "--model", "{model}", "--data", "{hh}", "--feedback", " "], 2,
     "argument --feedback: expected good, bad, none or a phrase"),
    ("device not here", [*DIALOGUE, "--data", "{hh}", "--device", "cuda:3"], 1, "--device cuda:3: there is no cuda"),
    ("device junk", [*DIALOGUE, "--data", "{hh}", "--device", "gpu0"], 1, "--device gpu0: not a device name"),
    ("output a file", [*DIALOGUE, "--data", "{hh}", "-o", "{text}"], 1, "notes.txt is a file; give a folder"),
    ("output under a file", [*DIALOGUE, "--data", "{hh}", "-o", "{text}/run"], 1, "notes.txt, which is a file"),
    # judges
    ("judge module missing", [*CONTROL, "--judge", "no_such_module_xyz:score"], 1, "cannot import module"),
    ("judge file missing", [*CONTROL, "--judge", "{dir}/judges.py:score"], 1, "no such file"),
    ("judge function missing", [*CONTROL, "--judge", "{judges}:missing"], 1, "has no function 'missing'"),
    ("judge not a function", [*CONTROL, "--judge", "{judges}:pi"], 1, "has no function 'pi'"),
    ("judge takes no arguments", [*CONTROL, "--judge", "{judges}:no_args"], 1, "cannot be called as no_args(prompt, reply)"),
    ("judge built-in of the wrong shape", [*CONTROL, "--judge", "os:getcwd"], 1, "cannot be called as getcwd"),
    ("judge with a syntax error", [*CONTROL, "--judge", "{syntax}:judge"], 1, "SyntaxError"),
    ("judge raising on import", [*CONTROL, "--judge", "{raises}:judge"], 1, "RuntimeError: missing API key"),
    ("judge spec without a function", [*CONTROL, "--judge", "{judges}:"], 1, "expected MODULE:FUNCTION"),
    ("judge spec without a module", [*CONTROL, "--judge", ":words"], 1, "expected MODULE:FUNCTION"),
    ("judge returning nan", [*CONTROL, "--judge", "{judges}:nan"], 1, "returned nan on reply 1"),
    ("judge returning text", [*CONTROL, "--judge", "{judges}:text"], 1, "returned str 'good'; expected a number"),
    ("judge raising", [*CONTROL, "--judge", "{judges}:boom"], 1, "raised RuntimeError: the judge fell over"),
    ("judge a causal LM, not a reward model", [*CONTROL, "--judge", "{model}"], 1,
     "not a trained sequence-classification model"),
    ("judge an empty folder", [*CONTROL, "--judge", "{dir}"], 1, "no config.json in that folder"),
    # pairwise
    ("pairwise file missing", [*PAIRWISE, "--a", "{gen}", "--b", "{dir}/b.jsonl"], 1, "no such generations file"),
    ("pairwise broken line, strict", [*PAIRWISE, "--a", "{gen}", "--b", "{gen_broken}", "--strict"], 1,
     "gen_broken.jsonl, line 2: malformed"),
    ("pairwise empty file", [*PAIRWISE, "--a", "{gen}", "--b", "{empty}"], 1, "empty.jsonl: no generations"),
    ("pairwise only unusable rows", [*PAIRWISE, "--a", "{gen}", "--b", "{gen_bad_rows}"], 1,
     "no generations (2 unusable row(s) skipped (2 x reply: expected a string)"),
    ("pairwise strict", [*PAIRWISE, "--a", "{gen}", "--b", "{gen_bad_rows}", "--strict"], 1,
     "gen_rows.jsonl, line 1, field 'reply': expected a string"),
    ("pairwise no shared ids", [*PAIRWISE, "--a", "{gen}", "--b", "{gen_other}"], 1, "share no prompt id"),
    ("pairwise server down", [*PAIRWISE, "--a", "{gen}", "--b", DOWN, "--max-new-tokens", "2"], 1,
     f"system 'b': {DOWN}/models: nothing answers there"),
    # compare
    ("compare run missing", ["compare", "{dir}/run"], 1, "no such results file"),
    ("compare not JSON", ["compare", "{text}"], 1, "notes.txt: malformed JSON"),
    ("compare a JSON list", ["compare", "{list}"], 1, "not a coh eval results file (expected a JSON object"),
    ("compare metrics not numbers", ["compare", "{bad_metrics}"], 1, "field 'metrics': expected an object of metric"),
    ("compare labels count", ["compare", "{bad_metrics}", "--labels", "a,b"], 1, "field 'metrics'"),
    # harness: everything checked before lm-eval starts
    ("harness task folder missing", ["harness", "--model", "{model}", "--include-path", "{dir}/tasks"], 1,
     "no such folder of task YAMLs"),
    ("harness model an empty folder", ["harness", "--model", "{dir}", "--include-path", "{dir}"], 1,
     "--model '{dir}': no config.json"),
    ("harness tokenizer not one", ["harness", "--model", "{model}", "--tokenizer", "{dir}", "--include-path", "{dir}"],
     1, "not a tokenizer folder"),
    ("harness server down", ["harness", "--base-url", DOWN, "--include-path", "{dir}", "--tasks", "t"], 1,
     "nothing answers there"),
    ("harness --num-fewshot -1", ["harness", "--model", "{model}", "--num-fewshot", "-1"], 2, "argument --num-fewshot"),
    ("harness --limit 0", ["harness", "--model", "{model}", "--limit", "0"], 2, "argument --limit"),
    ("harness --num-concurrent 0", ["harness", "--base-url", DOWN, "--num-concurrent", "0"], 2,
     "argument --num-concurrent"),
]


@pytest.fixture
def no_lm_eval(monkeypatch):
    """lm-eval's task index takes seconds to build: the harness cases must fail before it."""
    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks.TaskManager, "__init__", lambda *a, **k: pytest.fail("lm-eval was started"))


@pytest.mark.parametrize("argv,status,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(files, tiny_bpe_dir, tmp_path, capsys, no_lm_eval, argv, status, message):
    names = {k: str(v) for k, v in files.items()} | {"model": str(tiny_bpe_dir)}
    out = tmp_path / "run"
    argv = ["eval", *(a.format(**names) for a in argv)]
    if ("-o" not in argv and argv[1] != "compare") or (argv[1] == "compare" and "-o" not in argv):
        argv += ["-o", str(out)]
    if status == 2:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
    else:
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message.format(**names) in err, err
    if status == 1:  # the message is a line of its own (after any of transformers' progress bars)
        assert "\ncoh eval: error: " in "\n" + err.replace("\r", "\n"), err
    assert not (out / "results.json").exists()


def test_real_hh_rlhf_rows_with_an_empty_reply_are_skipped_and_counted(tiny_bpe_dir, tmp_path, capsys):
    """Rows 81-92 of the published hh-rlhf harmless test split; its 7th row has an empty chosen
    reply. The run goes on without it, says so in results.md, and lists it in invalid_rows.jsonl."""
    out = tmp_path / "run"
    assert main(["eval", "feedback", "dialogue", "--model", str(tiny_bpe_dir), "--data", str(HH_81_92),
                 "-o", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["counts"]["pairs"] == 11 and result["counts"]["invalid"] == 1 and result["counts"]["rows"] == 12
    md = (out / "results.md").read_text()
    assert "1 unusable row(s) skipped (1 x chosen: empty reply), listed in invalid_rows.jsonl" in md
    assert "line 7, field 'chosen': empty reply" in md and "--strict" in md
    assert [json.loads(line) for line in (out / "invalid_rows.jsonl").read_text().splitlines()] == \
        [{"file": str(HH_81_92), "line": 7, "field": "chosen", "problem": "empty reply"}]
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 11
    assert "invalid_rows.jsonl" in capsys.readouterr().out


def test_every_protocol_skips_unusable_rows(yes_no_dir, tmp_path):
    """controllability and pairwise on the same real rows: 11 prompts, 1 row set aside."""
    from coh.data.io import iter_json_lines

    judge = "tests.eval.scorer_functions:prompt_words"
    out = tmp_path / "ctl"
    assert main(["eval", "feedback", "controllability", "--model", str(yes_no_dir), "--data", str(HH_81_92),
                 "--judge", judge, "--max-new-tokens", "2", "--no-progress", "-o", str(out)]) == 0
    counts = json.loads((out / "results.json").read_text())["counts"]
    assert counts["prompts"] == 11 and counts["invalid"] == 1
    assert len(list(iter_json_lines(out / "invalid_rows.jsonl"))) == 1
    # a generations file with unusable rows: they are counted per side and left out
    gen = tmp_path / "gen.jsonl"
    rows = [json.loads(line) for line in (out / "generations_good.jsonl").read_text().splitlines()]
    gen.write_text("".join(json.dumps({**r, "reply": None} if k == 3 else r) + "\n" for k, r in enumerate(rows)))
    out = tmp_path / "pair"
    assert main(["eval", "feedback", "pairwise", "--a", str(gen), "--b", str(yes_no_dir), "--judge", judge,
                 "--max-new-tokens", "2", "--no-progress", "-o", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["counts"]["prompts"] == 10 and result["counts"]["invalid: a generations"] == 1
    assert "1 unusable row(s) skipped (1 x reply: expected a string)" in (out / "results.md").read_text()


def test_lines_that_are_not_json_are_set_aside_too(files, tiny_bpe_dir, tmp_path):
    """A cut-off line in the data and in a generations file: skipped, counted and listed."""
    out = tmp_path / "dialogue"
    assert main(["eval", "feedback", "dialogue", "--model", str(tiny_bpe_dir), "--data", str(files["broken"]),
                 "-o", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["counts"]["pairs"] == 2 and result["counts"]["invalid"] == 1
    assert [json.loads(line)["line"] for line in (out / "invalid_rows.jsonl").read_text().splitlines()] == [2]
    out = tmp_path / "pairwise"
    assert main(["eval", "feedback", "pairwise", "--a", str(files["gen"]), "--b", str(files["gen_broken"]),
                 "--judge", f"{files['judges']}:words", "-o", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["counts"]["prompts"] == 1 and result["counts"]["invalid: b generations"] == 1
