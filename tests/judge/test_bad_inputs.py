"""`coh judge` as a new user types it, with bad input: every case ends in a clear error (exit 1 with
`coh judge: error: ...` naming the file, flag or system, or argparse's exit 2 naming the flag), never
a traceback, and nothing is written where the command failed."""

from __future__ import annotations

import gzip
import json
import socket
import sqlite3

import pytest

from coh.cli import main
from coh.judge.store import JudgeStore
from tests.conftest import HH_SAMPLE
from tests.eval.conftest import HH_81_92 as HH_ROWS_81_92

from .conftest import comparison_rows, live_server, write_jsonl
from .test_sources import stub_server


def free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Named bad (and good) inputs, read-only for the tests."""
    tmp_path = tmp_path_factory.mktemp("bad_inputs")
    f = {"dir": tmp_path / "a_folder", "text": tmp_path / "notes.txt", "empty": tmp_path / "empty.jsonl",
         "prompts": write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}, {"prompt": "how are you?"}]),
         "broken": tmp_path / "broken.jsonl", "broken_cmp": tmp_path / "broken_cmp.jsonl",
         "cmp": write_jsonl(tmp_path / "cmp.jsonl", comparison_rows(3)),
         "one_output": write_jsonl(tmp_path / "one.jsonl", [{"prompt": "a", "outputs": {"x": "1"}}]),
         "not_sqlite": tmp_path / "votes.sqlite", "same": tmp_path / "same.jsonl", "foreign": tmp_path / "other.db", "corrupt": tmp_path / "corrupt.sqlite",
         "truncated_gz": tmp_path / "p.jsonl.gz", "hh": HH_ROWS_81_92}
    f["dir"].mkdir()
    f["text"].write_text("just some notes\n")
    f["empty"].write_text("")
    f["broken"].write_text('{"prompt": "hi"}\n{"prompt": "cut off\n{"prompt": "ok"}\n')
    good = json.dumps(comparison_rows(1)[0])
    f["broken_cmp"].write_text(good + "\n" + good[:20] + "\n")
    f["not_sqlite"].write_text("this is not a database\n")
    write_jsonl(f["same"], [{"prompt": f"q{i}", "outputs": {"x": "same", "y": "same"}} for i in range(2)])
    with sqlite3.connect(f["foreign"]) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    f["truncated_gz"].write_bytes(gzip.compress(b'{"prompt": "hi"}\n' * 1000)[:60])
    store = JudgeStore(f["corrupt"])
    from coh.judge.sources import read_comparisons

    store.add_comparisons(read_comparisons(write_jsonl(tmp_path / "many.jsonl", comparison_rows(200))))
    data = bytearray(f["corrupt"].read_bytes())
    data[4096:12288] = b"\xde\xad\xbe\xef" * 2048  # pages of the comparisons table overwritten
    f["corrupt"].write_bytes(bytes(data))
    for p in f["corrupt"].parent.glob("corrupt.sqlite-*"):
        p.unlink()
    return f


DOWN = f"http://127.0.0.1:{free_port()}/v1"
SYSTEMS = ["--system", f"a:url={DOWN}", "--system", f"b:url={DOWN},feedback=bad"]

# (id, argv with {placeholders} for files, exit status, what the message must hold)
CASES = [
    # prepare: prompts
    ("prompts missing", ["prepare", "--prompts", "{dir}/nope.jsonl", *SYSTEMS, "-o", "{out}"], 1, "file not found"),
    ("prompts a folder", ["prepare", "--prompts", "{dir}", *SYSTEMS, "-o", "{out}"], 1, "unknown file type"),
    ("prompts of unknown type", ["prepare", "--prompts", "{text}", *SYSTEMS, "-o", "{out}"], 1, "unknown file type"),
    ("prompts empty", ["prepare", "--prompts", "{empty}", *SYSTEMS, "-o", "{out}"], 1, "no prompts found"),
    ("prompts broken line, strict", ["prepare", "--prompts", "{broken}", "--strict", *SYSTEMS, "-o", "{out}"], 1,
     "broken.jsonl, line 2: malformed JSON"),
    ("prompts truncated gzip", ["prepare", "--prompts", "{truncated_gz}", *SYSTEMS, "-o", "{out}"], 1, "cannot read"),
    ("prompts unknown kind", ["prepare", "--prompts", "dialog:{hh}", *SYSTEMS, "-o", "{out}"], 1, "unknown kind 'dialog'"),
    ("prompts of the wrong kind", ["prepare", "--prompts", "summary:{hh}", *SYSTEMS, "-o", "{out}"], 1,
     "no prompts found; 12 unusable row(s) skipped"),
    ("prompts strict on real hh-rlhf", ["prepare", "--prompts", "dialogue:{hh}", "--strict", *SYSTEMS, "-o", "{out}"],
     1, "line 7, field 'chosen': empty reply"),
    # prepare: systems
    ("one system", ["prepare", "--prompts", "{prompts}", "--system", f"a:url={DOWN}", "-o", "{out}"], 1, "two or more"),
    ("system without a colon", ["prepare", "--prompts", "{prompts}", "--system", "a", "--system", "b:url=x", "-o",
                                "{out}"], 1, "expected NAME:url="),
    ("system url not http", ["prepare", "--prompts", "{prompts}", "--system", "a:url=localhost:8000",
                             "--system", f"b:url={DOWN}", "-o", "{out}"], 1, "expected an http:// or https:// URL"),
    ("system url malformed", ["prepare", "--prompts", "{prompts}", "--system", "a:url=http://[::1",
                              "--system", f"b:url={DOWN}", "-o", "{out}"], 1, "not a valid URL"),
    ("system server down", ["prepare", "--prompts", "{prompts}", *SYSTEMS, "-o", "{out}"], 1,
     "system 'a': " + DOWN + "/models: nothing answers there"),
    ("system server down, model given", ["prepare", "--prompts", "{prompts}", "--system", f"a:url={DOWN},model=m",
                                         "--system", f"b:url={DOWN},model=m", "-o", "{out}"], 1,
     "/chat/completions: nothing answers there"),
    ("system feedback blank", ["prepare", "--prompts", "{prompts}", "--system", f"a:url={DOWN},feedback=",
                               "--system", f"b:url={DOWN}", "-o", "{out}"], 1, "feedback= is blank"),
    ("system file missing", ["prepare", "--prompts", "{prompts}", "--system", "a:file={dir}/x.jsonl",
                             "--system", "b:file={prompts}", "-o", "{out}"], 1, "x.jsonl: file not found"),
    ("system file empty name", ["prepare", "--prompts", "{prompts}", "--system", "a:file=", "--system", "b:file={prompts}",
                                "-o", "{out}"], 1, "file= names no file"),
    ("system api key variable unset", ["prepare", "--prompts", "{prompts}", "--system",
                                       f"a:url={DOWN},api_key_env=COH_TEST_NO_SUCH_VAR", "--system", f"b:url={DOWN}",
                                       "-o", "{out}"], 1, "COH_TEST_NO_SUCH_VAR is not set"),
    # prepare: options
    *[(f"prepare {flag} {value}", ["prepare", "--prompts", "{prompts}", *SYSTEMS, "-o", "{out}", flag, value], 2,
       f"argument {flag}: expected") for flag, value in (
        ("--limit", "0"), ("--limit", "-3"), ("--limit", "ten"), ("--max-tokens", "0"), ("--temperature", "nan"),
        ("--temperature", "-1"), ("--temperature", "inf"), ("--top-p", "0"), ("--top-p", "1.5"), ("--seed", "-1"),
        ("--seed", str(2**63)), ("--concurrency", "0"), ("--timeout", "0"), ("--timeout", "abc"))],
    ("prepare -o a folder", ["prepare", "--prompts", "{prompts}", *SYSTEMS, "-o", "{dir}"], 1, "a folder"),
    ("prepare -o under a file", ["prepare", "--prompts", "{prompts}", *SYSTEMS, "-o", "{text}/c.jsonl"], 1,
     "is a file, not a folder"),
    # serve
    ("serve nothing", ["serve"], 1, "give a comparisons file"),
    ("serve comparisons missing", ["serve", "{dir}/nope.jsonl"], 1, "file not found"),
    ("serve comparisons empty", ["serve", "{empty}"], 1, "no comparisons found"),
    ("serve comparisons broken line", ["serve", "{broken_cmp}"], 1, "broken_cmp.jsonl, line 2: malformed JSON"),
    ("serve comparisons of one system", ["serve", "{one_output}"], 1, "field 'outputs': expected an object of two"),
    ("serve prompts given as comparisons", ["serve", "{prompts}"], 1, "field 'outputs'"),
    ("serve --db not SQLite", ["serve", "--db", "{not_sqlite}"], 1, "votes.sqlite: cannot be used as a votes database"),
    ("serve --db another app's SQLite", ["serve", "{cmp}", "--db", "{foreign}"], 1,
     "an SQLite database, but not one of coh judge (its tables: customers)"),
    ("serve --db a folder", ["serve", "{cmp}", "--db", "{dir}"], 1, "a folder, not a votes database"),
    ("serve --db under a file", ["serve", "{cmp}", "--db", "{text}/v.sqlite"], 1, "is a file, not a folder"),
    ("serve identical outputs only", ["serve", "{same}"], 1, "in every comparison the outputs are identical (2 pair"),
    ("serve --db corrupt", ["serve", "--db", "{corrupt}"], 1, "malformed"),
    ("serve --port 70000", ["serve", "{cmp}", "--port", "70000"], 2, "argument --port: expected a port"),
    ("serve --port abc", ["serve", "{cmp}", "--port", "abc"], 2, "argument --port: expected a port"),
    ("serve --max-votes 0", ["serve", "{cmp}", "--max-votes", "0"], 2, "argument --max-votes: expected"),
    ("serve --host junk", ["serve", "{cmp}", "--host", "no such host..local"], 1, "--host no such host..local"),
    ("serve --host of another machine", ["serve", "{cmp}", "--host", "192.0.2.1"], 1, "cannot listen on 192.0.2.1"),
    ("serve --port 0", ["serve", "{cmp}", "--port", "0"], 2, "argument --port: expected a port from 1"),
    ("serve --port in use", ["serve", "{cmp}", "--port", "{busy_port}"], 1, "Address already in use; choose another --port"),
    # results and export
    *[(f"{cmd} {what}", [cmd, f"{{{key}}}", *extra], 1, message)
      for cmd, extra in (("results", []), ("export", ["-o", "{out}"]))
      for what, key, message in (("missing", "out", "no votes database there"),
                                 ("not SQLite", "not_sqlite", "cannot be used as a votes database: file is not a database"),
                                 ("another app's SQLite", "foreign", "not one of coh judge"),
                                 ("a folder", "dir", "no votes database there"),
                                 ("corrupt", "corrupt", "malformed"))],
    ("results --plot under a file", ["results", "{db}", "--plot", "{text}/r.png"], 1, "is a file, not a folder"),
    ("results --plot a folder", ["results", "{db}", "--plot", "{dir}"], 1, "--plot"),
    ("export -o a folder", ["export", "{db}", "-o", "{dir}"], 1, "a folder"),
    ("export -o under a file", ["export", "{db}", "-o", "{text}/p.jsonl"], 1, "is a file, not a folder"),
    ("export --aggregate junk", ["export", "{db}", "-o", "{out}", "--aggregate", "mean"], 2, "invalid choice"),
]


@pytest.fixture(scope="module")
def busy_port():
    """A loopback port another program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def no_serving(monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("serve should have stopped before uvicorn"))


@pytest.mark.parametrize("argv,status,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(files, busy_port, tmp_path, capsys, no_serving, monkeypatch, argv, status,
                                    message):
    monkeypatch.delenv("COH_TEST_NO_SUCH_VAR", raising=False)
    db = JudgeStore(tmp_path / "good.sqlite")
    names = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out.jsonl"), "db": str(db.path),
                                                      "busy_port": str(busy_port)}
    argv = ["judge", *(a.format(**names) for a in argv)]
    if status == 2:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
    else:
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err, err
    if status == 1:
        assert err.startswith("coh judge: error: ")
    assert not (tmp_path / "out.jsonl").exists()  # a failed command writes nothing
    assert files["foreign"].read_bytes() == sqlite_bytes(files["foreign"])  # someone else's database untouched


def sqlite_bytes(path) -> bytes:
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["customers"]
    return path.read_bytes()


def test_prepare_on_real_hh_rlhf_skips_the_empty_reply_and_counts_it(tmp_path, capsys):
    """Rows 81-92 of the published hh-rlhf harmless test split; row 87 has an empty chosen reply."""
    with live_server(stub_server([])) as base:
        assert main(["judge", "prepare", "--prompts", f"dialogue:{HH_ROWS_81_92}", "--system", f"a:url={base}/v1",
                     "--system", f"b:url={base}/v1,feedback=bad", "-o", str(tmp_path / "c.jsonl"),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 11" in out
    assert "1 unusable row(s) skipped (1 x chosen: empty reply)" in out
    assert "line 7, field 'chosen': empty reply" in out and "--strict" in out
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(rows) == 11 and "7" not in {r["id"] for r in rows}  # ids are line numbers here


@pytest.mark.skipif(not HH_SAMPLE.exists(), reason="the hh-rlhf test split is not in ../shared/data")
def test_the_docs_example_runs_on_the_real_test_split(tmp_path, capsys):
    """docs/judge.md's own example: `--prompts dialogue:hh-test.jsonl.gz --limit 200`."""
    with live_server(stub_server([])) as base:
        assert main(["judge", "prepare", "--prompts", f"dialogue:{HH_SAMPLE}", "--limit", "200",
                     "--system", f"helpful:url={base}/v1,feedback=good",
                     "--system", f"unhelpful:url={base}/v1,feedback=bad", "-o", str(tmp_path / "cmp.jsonl"),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 200" in out and "line 87, field 'chosen': empty reply" in out
    assert len((tmp_path / "cmp.jsonl").read_text().splitlines()) == 200


def test_export_without_votes_says_there_is_nothing_to_train_on(tmp_path, capsys):
    store = JudgeStore(tmp_path / "v.sqlite")
    from coh.judge.sources import read_comparisons

    store.add_comparisons(read_comparisons(write_jsonl(tmp_path / "c.jsonl", comparison_rows(2))))
    assert main(["judge", "export", str(store.path), "-o", str(tmp_path / "p.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "no decisive vote yet" in out and "coh data build" not in out


def test_prepare_sets_aside_lines_that_are_not_json(files, tmp_path, capsys):
    with live_server(stub_server([])) as base:
        assert main(["judge", "prepare", "--prompts", str(files["broken"]), "--system", f"a:url={base}/v1",
                     "--system", f"b:url={base}/v1,feedback=bad", "-o", str(tmp_path / "c.jsonl"),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 2" in out and "line 2: malformed JSON" in out
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 2
