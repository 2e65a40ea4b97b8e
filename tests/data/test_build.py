"""`coh data build` end to end: counts, splits, mixing, determinism, bad input, outputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from coh.cli import main
from coh.data.build import BuildConfig, SourceSpec, build
from coh.data.fields import read_fields_file
from coh.data.records import read_records
from coh.data.render import RenderSpec

from ..conftest import hh_rows


@pytest.fixture(scope="module")
def hh_file(tmp_path_factory) -> Path:
    """200 real hh-rlhf rows (4 of the shared sample's rows have an empty reply; row 87 is one)."""
    path = tmp_path_factory.mktemp("hh") / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in hh_rows(200):
            f.write(json.dumps(row) + "\n")
    return path


def files_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_cli_build_counts_and_rejects(hh_file, tmp_path, capsys):
    assert main(["data", "build", "-s", f"dialogue:eval={hh_file}", "-o", str(tmp_path / "a"),
                 "--skip-invalid", "--feedback", "p,pn"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    src = summary["sources"]["dialogue"]
    rejects = [json.loads(line) for line in (tmp_path / "a" / "rejects.jsonl").read_text().splitlines()]
    assert src["rows"] == 200 == src["examples"]["eval"] + src["invalid"]
    assert src["invalid"] == len(rejects) == summary["invalid_rows"] >= 1
    assert rejects[0]["line"] == 87 and rejects[0]["field"] == "chosen"
    with gzip.open(hh_file, "rt", encoding="utf-8") as f:  # the line as it was, byte for byte
        assert rejects[0]["raw"] == f.read().split("\n")[86]
    assert src["records"]["eval"] == {"p": src["examples"]["eval"], "pn": src["examples"]["eval"]}
    records = list(read_records(tmp_path / "a" / "eval.jsonl"))
    assert len(records) == summary["records"]["eval"] == 2 * src["examples"]["eval"]
    assert "invalid rows set aside" in capsys.readouterr().out


def test_invalid_row_stops_the_build_with_file_line_field(hh_file, tmp_path, capsys):
    assert main(["data", "build", "-s", f"dialogue:eval={hh_file}", "-o", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert str(hh_file) in err and "line 87" in err and "field 'chosen'" in err and "--skip-invalid" in err
    assert not (tmp_path / "b" / "eval.jsonl").exists()


def test_byte_identical_and_seeded(hh_file, tmp_path):
    def run(name: str, seed: int, num_proc: int = 1) -> dict[str, bytes]:
        cfg = BuildConfig([SourceSpec.parse(f"summary:{hh_file}".replace("summary", "dialogue"))],
                          str(tmp_path / name), seed=seed, skip_invalid=True, num_proc=num_proc, progress=False)
        build(cfg)
        return files_of(tmp_path / name)

    first, again, other = run("s1", 1), run("s2", 1), run("s3", 2)
    assert first == again
    assert first["train.jsonl"] != other["train.jsonl"]  # another seed: another held-out split and order
    assert run("s4", 1, num_proc=2) == first  # several processes give the same bytes


def test_held_out_split_when_the_dataset_has_none(hh_file, tmp_path):
    def eval_ids(out: Path, limit: str = "") -> tuple[set, set]:
        build(BuildConfig([SourceSpec.parse(f"dialogue:{hh_file}{limit}")], str(out), eval_fraction=0.1,
                          skip_invalid=True, render=RenderSpec(feedback=("p",)), progress=False))
        assert all(r.split == "eval" for r in read_records(out / "eval.jsonl"))
        return ({r.id for r in read_records(out / "train.jsonl")}, {r.id for r in read_records(out / "eval.jsonl")})

    train, evals = eval_ids(tmp_path / "all")
    assert not train & evals
    assert 0.04 < len(evals) / (len(train) + len(evals)) < 0.2  # 10 % of about 200, by a seeded hash
    # an example keeps its split when the dataset changes size: the split depends on its id only
    small_train, small_eval = eval_ids(tmp_path / "small", ",limit=100")
    assert small_eval <= evals and small_train <= train and small_eval


def test_several_sources_mixed_without_overwrite(hh_file, tmp_path):
    specs = [SourceSpec.parse(f"dialogue:eval={hh_file},name=hh-a,limit=50"),
             SourceSpec.parse(f"dialogue:eval={hh_file},name=hh-b,limit=30")]
    summary = build(BuildConfig(specs, str(tmp_path), skip_invalid=True, render=RenderSpec(feedback=("p",)),
                                progress=False))
    sources = [r.source for r in read_records(tmp_path / "eval.jsonl")]
    assert sources.count("hh-a") == summary["sources"]["hh-a"]["examples"]["eval"] > 40
    assert sources.count("hh-b") == summary["sources"]["hh-b"]["examples"]["eval"] > 20
    assert sources != sorted(sources)  # shuffled together
    with pytest.raises(ValueError, match="distinct name"):
        build(BuildConfig([SourceSpec.parse(f"dialogue:{hh_file}")] * 2, str(tmp_path / "x"), progress=False))


def test_hub_code_path_on_a_local_folder(tmp_path):
    """The hub loader (load_dataset(name)) exercised on a local folder of the same schema."""
    folder = tmp_path / "hh-rlhf"
    folder.mkdir()
    rows = [r for r in hh_rows(40) if r["chosen"].rstrip()[-1] != ":"]
    for split, part in (("train", rows[:30]), ("test", rows[30:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    summary = build(BuildConfig([SourceSpec(kind="dialogue", hub=str(folder))], str(tmp_path / "out"),
                                render=RenderSpec(feedback=("p",)), progress=False))
    assert summary["sources"]["dialogue"]["examples"] == {"train": 30, "eval": len(rows) - 30}


def test_tokenized_output(hh_file, tmp_path, bpe_tokenizer):
    import datasets

    tok_dir = tmp_path / "tok"
    bpe_tokenizer.save_pretrained(tok_dir)
    summary = build(BuildConfig([SourceSpec.parse(f"dialogue:eval={hh_file},limit=20")], str(tmp_path / "o"),
                                skip_invalid=True, tokenizer=str(tok_dir), progress=False))
    ds = datasets.load_from_disk(str(tmp_path / "o" / "tokenized" / "eval"))
    assert ds.num_rows == summary["records"]["eval"] == summary["tokens"]["eval"]["records"]
    assert sum(ds["loss_tokens"]) == summary["tokens"]["eval"]["loss_tokens"] > 0
    first = next(read_records(tmp_path / "o" / "eval.jsonl"))
    assert ds[0]["id"] == first.id


def test_fields_format_and_resample(hh_file, tmp_path):
    build(BuildConfig([SourceSpec.parse(f"dialogue:eval={hh_file},limit=20")], str(tmp_path / "f"),
                      skip_invalid=True, output_format="fields", progress=False))
    recs = list(read_fields_file(tmp_path / "f" / "eval.jsonl"))
    assert recs and {r.feedback for r in recs} == {"p", "n", "pn", "np"}
    build(BuildConfig([SourceSpec.parse(f"dialogue:eval={hh_file},limit=20")], str(tmp_path / "r"),
                      skip_invalid=True, render=RenderSpec(feedback=("pn", "np"), resample=True), progress=False))
    recs = list(read_records(tmp_path / "r" / "eval.jsonl"))
    examples = (tmp_path / "r" / "examples" / "eval.jsonl").read_text().splitlines()
    assert len(recs) == len(examples) and all(r.id.endswith("/e0") for r in recs)


def test_pack_hf_keeps_the_original_flags_and_file_names(hh_file, tmp_path):
    from coh.data.pack_hf import main as pack_main

    out = tmp_path / "ph"
    assert pack_main([f"--output_dir={out}", f"--dataset=dialogue:eval={hh_file},limit=30",
                      "--include_feedback=p,pn,aux", "--gpt_marker=Good:"]) == 0
    for name in ("eval_p,pn,aux.jsonl", "eval_p,pn,aux_shuffled.jsonl", "hh_dialogue_eval_p,pn,aux.jsonl"):
        assert (out / name).exists(), name
    lines = [json.loads(line) for line in (out / "eval_p,pn,aux.jsonl").read_text().splitlines()]
    assert all("fields" in obj for obj in lines)
    # aux replaces the default pair: 12 alternative pairs x 2 types per example
    n_examples = json.loads((out / "summary.json").read_text())["sources"]["dialogue"]["examples"]["eval"]
    assert len(lines) == 24 * n_examples
    assert {obj["marker_gpt"] for obj in lines} >= {"The following is a better response."}


def test_bad_source_specs(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown source kind"):
        SourceSpec.parse("dialog:x.jsonl")
    with pytest.raises(ValueError, match="needs a file or a hub dataset"):
        SourceSpec.parse("preference")
    assert main(["data", "build", "-s", "preference:missing.jsonl", "-o", str(tmp_path)]) == 1
    assert "missing.jsonl: file not found" in capsys.readouterr().err


def test_chat_data_goes_through_the_chat_template(tmp_path, bpe_tokenizer):
    """With chat_template='auto', records of message-list data use the template; plain text does not."""
    import datasets

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    tok_dir = tmp_path / "tok"
    bpe_tokenizer.save_pretrained(tok_dir)
    build(BuildConfig([SourceSpec.parse(f"preference:eval={fixtures / 'preference_chat.jsonl'},name=chat"),
                       SourceSpec.parse(f"preference:eval={fixtures / 'preference_strings.jsonl'},name=text")],
                      str(tmp_path / "o"), render=RenderSpec(feedback=("p",)), tokenizer=str(tok_dir), progress=False))
    ds = datasets.load_from_disk(str(tmp_path / "o" / "tokenized" / "eval"))
    im_start = bpe_tokenizer.convert_tokens_to_ids("<|im_start|>")
    for row in ds:
        assert (im_start in row["input_ids"]) == (row["source"] == "chat"), row["id"]
    records = {r.id: r for r in read_records(tmp_path / "o" / "eval.jsonl")}
    assert all(bool(r.meta.get("chat")) == (r.source == "chat") for r in records.values())


def test_yaml_recipes(tmp_path, monkeypatch):
    """The shipped recipes parse, and the offline one builds (flags override recipe keys)."""
    import yaml

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    assert main(["data", "build", "--config", "configs/data/hh-sample.yaml", "-o", str(tmp_path), "--no-progress",
                 "--feedback", "pn"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["feedback"] == ["pn"]
    paper = yaml.safe_load((repo / "configs" / "data" / "paper.yaml").read_text())
    specs = [SourceSpec.parse(s) for s in paper["source"]]
    assert [(s.kind, s.hub) for s in specs] == [("dialogue", "Anthropic/hh-rlhf"),
                                               ("webgpt", "openai/webgpt_comparisons"),
                                               ("summary", "openai/summarize_from_feedback")]


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BAD = FIXTURES / "bad"


@pytest.mark.parametrize(
    ("kind", "name", "line", "field", "problem"),
    [
        ("preference", "malformed.jsonl", 2, None, "malformed JSON"),
        ("preference", "non_utf8.jsonl", 2, None, "not UTF-8"),
        ("preference", "missing_field.jsonl", 3, "rejected", "missing"),
        ("preference", "wrong_type.jsonl", 2, "chosen", "expected a string"),
        ("preference", "empty_output.jsonl", 1, "chosen", "empty"),
        ("preference", "identical.jsonl", 1, "chosen/rejected", "identical"),
        ("dialogue", "hh_bad_transcript.jsonl", 1, "chosen", "start with"),
    ],
)
def test_bad_input_names_file_line_field(kind, name, line, field, problem, tmp_path, capsys):
    path = BAD / name
    assert main(["data", "build", "-s", f"{kind}:{path}", "-o", str(tmp_path / "x"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{path}, line {line}" in err and problem in err
    if field:
        assert f"field '{field}'" in err
    # --skip-invalid: the row (even a line that is not JSON) is set aside, counted, and the rest is built
    code = main(["data", "build", "-s", f"{kind}:{path}", "-o", str(tmp_path / "y"), "--no-progress",
                 "--skip-invalid", "--eval-fraction", "0"])
    if code == 0:
        rejects = [json.loads(r) for r in (tmp_path / "y" / "rejects.jsonl").read_text().splitlines()]
        assert rejects[0]["line"] == line and rejects[0]["field"] == field
        summary = json.loads((tmp_path / "y" / "summary.json").read_text())
        assert summary["invalid_rows"] == len(rejects)
        assert summary["sources"][kind]["rows"] == summary["sources"][kind]["examples"]["train"] + len(rejects)
    else:  # every row was invalid: the build says so, listing them, and leaves no half-written folder
        err = capsys.readouterr().err
        assert code == 1 and "invalid" in err and f"{path}, line {line}" in err
        assert not list((tmp_path / "y").glob("*"))


def test_held_out_split_follows_the_prompt_not_the_row_order(hh_file, tmp_path):
    rows = hh_rows(200)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))

    def eval_prompts(path: Path, out: str) -> set[str]:
        build(BuildConfig([SourceSpec.parse(f"dialogue:{path}")], str(tmp_path / out), eval_fraction=0.2,
                          skip_invalid=True, render=RenderSpec(feedback=("p",)), progress=False))
        return {r.text.rsplit("A helpful answer:", 1)[0] for r in read_records(tmp_path / out / "eval.jsonl")}

    assert eval_prompts(hh_file, "a") == eval_prompts(shuffled, "b")


def test_spec_and_recipe_mistakes_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="two files for split 'train'"):
        SourceSpec.parse("preference:a.jsonl,b.jsonl")
    with pytest.raises(ValueError, match="limit must be a positive whole number"):
        SourceSpec.parse("preference:a.jsonl,limit=x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("feedbak: p\n")
    assert main(["data", "build", "--config", str(recipe), "-s", "preference:a.jsonl", "-o", str(tmp_path)]) == 1
    assert "unknown option(s) ['feedbak']" in capsys.readouterr().err


def test_outputs_of_an_earlier_build_do_not_linger(hh_file, tmp_path, bpe_tokenizer):
    tok_dir = tmp_path / "tok"
    bpe_tokenizer.save_pretrained(tok_dir)
    spec = [SourceSpec.parse(f"dialogue:eval={hh_file},limit=10")]
    build(BuildConfig(spec, str(tmp_path / "o"), skip_invalid=True, tokenizer=str(tok_dir), progress=False,
                      render=RenderSpec(feedback=("pn", "np"), resample=True)))
    assert (tmp_path / "o" / "tokenized").exists() and (tmp_path / "o" / "examples").exists()
    # folders of an earlier build are replaced whole by the new ones
    more = [SourceSpec.parse(f"dialogue:eval={hh_file},limit=20")]
    summary = build(BuildConfig(more, str(tmp_path / "o"), skip_invalid=True, tokenizer=str(tok_dir),
                                progress=False, render=RenderSpec(feedback=("pn", "np"), resample=True)))
    import datasets

    assert len(datasets.load_from_disk(str(tmp_path / "o" / "tokenized" / "eval"))) == summary["records"]["eval"]
    assert len((tmp_path / "o" / "examples" / "eval.jsonl").read_text().splitlines()) == 20
    build(BuildConfig(spec, str(tmp_path / "o"), skip_invalid=True, progress=False))
    assert not (tmp_path / "o" / "tokenized").exists() and not (tmp_path / "o" / "examples").exists()


def test_json_lines_with_unicode_line_separators(tmp_path):
    path = tmp_path / "prefs.json"  # JSON lines saved with a .json suffix, raw U+2028 inside a string
    rows = [{"prompt": "Hi\u2028there", "chosen": "Hello", "rejected": "Go"}] * 3
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    summary = build(BuildConfig([SourceSpec.parse(f"preference:eval={path}")], str(tmp_path / "o"),
                                render=RenderSpec(feedback=("p",)), progress=False))
    assert summary["records"]["eval"] == 3


def test_a_failed_build_leaves_the_previous_one_whole(hh_file, tmp_path, monkeypatch, bpe_tokenizer):
    """Outputs are staged and moved into place at the end: a folder holds one build or none."""
    import coh.data.build as build_module

    out = tmp_path / "o"
    out.mkdir()
    (out / "raw.jsonl").write_text("mine\n")  # not an output of the build: never touched
    good = f"dialogue:{hh_file},limit=100"
    assert main(["data", "build", "-s", good, "-o", str(out), "--no-progress", "--skip-invalid"]) == 0
    first = files_of(out)
    assert {"train.jsonl", "eval.jsonl", "summary.json", "rejects.jsonl", "raw.jsonl"} <= set(first)
    # fails while reading (a second source that cannot be read) ...
    assert main(["data", "build", "-s", good, "-s", f"preference:{BAD / 'preference_truncated.jsonl.gz'}",
                 "-o", str(out), "--no-progress", "--skip-invalid", "--feedback", "p"]) == 1
    assert files_of(out) == first
    # ... or while writing, after train.jsonl and eval.jsonl were written
    bpe_tokenizer.save_pretrained(tmp_path / "tok")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(build_module, "write_tokenized", broken)
    with pytest.raises(OSError, match="disk full"):
        build(BuildConfig([SourceSpec.parse(good)], str(out), tokenizer=str(tmp_path / "tok"), progress=False,
                          skip_invalid=True, render=RenderSpec(feedback=("p",))))
    assert files_of(out) == first and not list(out.glob(".staging-*"))
    # a build that succeeds replaces every output, and removes those it does not make
    assert main(["data", "build", "-s", f"preference:{FIXTURES / 'preference_strings.jsonl'}", "-o", str(out),
                 "--no-progress"]) == 0
    assert not (out / "rejects.jsonl").exists() and (out / "raw.jsonl").read_text() == "mine\n"
    assert json.loads((out / "summary.json").read_text())["sources"].keys() == {"preference"}
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "raw.jsonl", "summary.json", "train.jsonl"]
