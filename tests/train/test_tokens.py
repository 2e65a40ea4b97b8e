"""Training from the tokenized build, memory-mapped (``coh.train.tokens``): the same batches and
losses as tokenizing again, and a one-line reason whenever the build's tokens are not used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest

from coh.data.build import BuildConfig, SourceSpec, build
from coh.data.render import RenderSpec
from coh.data.tokenize import RecordTokenizer
from coh.train.data import TrainingEpochs, read_training_records
from coh.train.packing import fit_records
from coh.train.setup import load_tokenizer
from coh.train.tokens import MappedTokens, count_lines, tokenize_to_folder, usable_build
from coh.train.trainer import train

from .conftest import config


@pytest.fixture(scope="module")
def tokenized(workspace):
    """A `coh data build --tokenizer` folder made with the tiny LLaMA's tokenizer."""
    out = workspace / "tokenized-build"
    if not (out / "summary.json").exists():
        build(BuildConfig([SourceSpec.parse(f"dialogue:{workspace / 'hh.jsonl'}")], str(out), eval_fraction=0.2,
                          skip_invalid=True, render=RenderSpec(feedback=("p", "n", "pn", "np")),
                          tokenizer=str(workspace / "llama"), progress=False))
    return out


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def rtok_of(workspace) -> RecordTokenizer:
    return RecordTokenizer(load_tokenizer(config(workspace, "x")))


def test_mapped_build_trains_exactly_as_tokenizing_again(workspace, tokenized, tmp_path, capsys):
    """The same loss at every step from the build's tokens as from tokenizing the records again
    (the build's coh_tokenize.json made to disagree), and each run says which it did and why."""
    kw = dict(train_data=str(tokenized), max_steps=3, eval_every=100, save_every=100, fcm_max_ratio=0.1)
    train(config(workspace, "from-build", **kw))
    said = capsys.readouterr().out
    assert f"training tokens: {tokenized / 'tokenized' / 'train'}, memory-mapped" in said

    other = tmp_path / "other-build"
    shutil.copytree(tokenized, other)
    saved_path = other / "tokenized" / "coh_tokenize.json"
    saved = json.loads(saved_path.read_text())
    saved["tokenizer"]["fingerprint"] = "sha256:another"
    saved_path.write_text(json.dumps(saved))
    train(config(workspace, "retokenized", **{**kw, "train_data": str(other)}))
    said = capsys.readouterr().out
    line = next(x for x in said.splitlines() if x.startswith("tokenizing "))
    assert "tokenizer fingerprint: saved 'sha256:another', now 'sha256:" in line
    assert str(other / "train.jsonl") in line

    straight = losses(workspace / "from-build")
    assert len(straight) == 3 and straight == losses(workspace / "retokenized")


def test_why_the_build_is_not_used(workspace, tokenized, tmp_path):
    rtok = rtok_of(workspace)
    train_path = tokenized / "train.jsonl"
    folder, reason = usable_build(train_path, rtok, "llama", 512, "coh")
    assert folder == tokenized / "tokenized" / "train" and reason == ""
    assert "mode sft" in usable_build(train_path, rtok, "llama", 512, "sft")[1]
    assert "coh_tokenize.json not found" in usable_build(workspace / "data" / "train.jsonl", rtok, "llama", 512, "coh")[1]

    other = tmp_path / "b"
    shutil.copytree(tokenized, other)
    saved_path = other / "tokenized" / "coh_tokenize.json"
    saved = json.loads(saved_path.read_text())
    saved_path.write_text(json.dumps({**saved, "max_length": 64, "chat_template_used": "never"}))
    reason = usable_build(other / "train.jsonl", rtok, "llama", 512, "coh")[1]
    assert "chat template used: saved 'never', now 'auto'" in reason and "max_length: saved 64, now 512" in reason
    saved_path.write_text(json.dumps(saved))
    with (other / "train.jsonl").open("a") as f:  # a record the tokenized folder does not hold
        f.write((other / "train.jsonl").read_text().splitlines()[0] + "\n")
    assert "not the same build" in usable_build(other / "train.jsonl", rtok, "llama", 512, "coh")[1]

    broken = tmp_path / "c"  # a cut Arrow file (a full disk, a copy stopped half-way): tokenize again, say why
    shutil.copytree(tokenized, broken)
    arrow = next((broken / "tokenized" / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    folder, reason = usable_build(broken / "train.jsonl", rtok, "llama", 512, "coh")
    assert folder is None and f"{broken / 'tokenized' / 'train'} cannot be read" in reason


def test_worker_processes_tokenize_as_the_build_did(workspace, tokenized, tmp_path):
    """Records tokenized in 2 worker processes, 7 records a chunk, give the build's rows exactly;
    the overlong policy on the map gives fit_records' pieces."""
    import datasets

    rtok = rtok_of(workspace)
    records = read_training_records(tokenized / "train.jsonl")
    assert count_lines(tokenized / "train.jsonl") == len(records)
    tokenize_to_folder(iter(records), len(records), rtok, tmp_path / "tok", num_proc=2, chunk_records=7)
    ours, built = datasets.load_from_disk(str(tmp_path / "tok")), datasets.load_from_disk(str(tokenized / "tokenized" / "train"))
    for column in ("id", "source", "input_ids", "loss_mask", "length", "loss_tokens"):
        assert ours[column] == built[column], column

    for policy in ("split", "skip"):
        mapped = MappedTokens(tmp_path / "tok", 40, policy)
        fitted = fit_records(built["input_ids"], built["loss_mask"], 40, policy)
        assert [mapped.input_ids[i] for i in range(len(mapped))] == fitted.input_ids
        assert [mapped.loss_mask[i] for i in range(len(mapped))] == fitted.loss_mask
        assert [mapped.sources[i] for i in range(len(mapped))] == [built["source"][k] for k in fitted.origin]
        assert [mapped.targets(i) for i in range(len(mapped))] == [sum(m[1:]) for m in fitted.loss_mask]
        assert (mapped.overlong, mapped.tokens_dropped) == (fitted.overlong, fitted.tokens_dropped)


def test_resampled_epochs_are_tokenized_once_and_found_on_resume(workspace, tmp_path):
    """With resample_each_epoch each epoch's records are tokenized into the cache once; a second
    run (a resume) maps them without tokenizing; the render settings are saved beside them."""
    import coh.train.data as data_module

    resampled = tmp_path / "resampled"
    build(BuildConfig([SourceSpec.parse(f"dialogue:{workspace / 'hh.jsonl'}")], str(resampled), skip_invalid=True,
                      render=RenderSpec(feedback=("pn", "np"), resample=True), progress=False))
    rtok, cache = rtok_of(workspace), tmp_path / "cache"

    def epochs() -> TrainingEpochs:
        return TrainingEpochs(resampled / "train.jsonl", "coh", rtok, 1024, 512, "skip", 0, True, cache)

    first = epochs()
    a, b = first.get(0), first.get(1)
    assert sorted(p.name.split("-")[1] for p in cache.glob("train-epoch*")) == ["epoch0", "epoch1"]
    render = json.loads((resampled / "examples" / "coh_render.json").read_text())  # the build's own
    assert render["feedback"] == ["pn", "np"] and render["kinds"] == {"dialogue": "dialogue"}
    assert not (cache / "coh_render.json").exists()
    with mock.patch.object(data_module, "tokenize_to_folder", side_effect=AssertionError("tokenized again")):
        again = epochs()
        a2, b2 = again.get(0), again.get(1)
    for (recs, data, plan), (recs2, data2, plan2) in ((a, a2), (b, b2)):
        assert [r.text for r in recs] == [r.text for r in recs2] and plan.bins == plan2.bins
        assert [data.input_ids[i] for i in range(len(data))] == [data2.input_ids[i] for i in range(len(data2))]
    tokens = rtok.batch(b[0])  # what today's in-memory path trains on
    fitted = fit_records([t.input_ids for t in tokens], [t.loss_mask for t in tokens], 512, "skip")
    assert [b[1].input_ids[i] for i in range(len(b[1]))] == fitted.input_ids


def test_two_processes_map_one_copy(workspace, tokenized, tmp_path):
    """Under torchrun every rank maps the build's files (rank 0 says so, once); when they do not
    match, rank 0 alone tokenizes into one cache folder that both ranks then map. Either way the
    losses are those of one process accumulating the same micro-batches."""
    from .test_distributed import COMMON, torchrun

    def step_losses(run: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    other = tmp_path / "other-build"
    shutil.copytree(tokenized, other)
    saved_path = other / "tokenized" / "coh_tokenize.json"
    saved_path.write_text(json.dumps({**json.loads(saved_path.read_text()), "format": 0}))
    kw = {**COMMON, "eval_every": 100, "save_every": 100}
    train(config(workspace, "mapped-one", train_data=str(tokenized), gradient_accumulation_steps=2, **kw))
    out = torchrun(config(workspace, "mapped-ddp", train_data=str(tokenized), **kw))
    assert out.count("training tokens: ") == 1 and "tokenizing " not in out
    out = torchrun(config(workspace, "retokenized-ddp", train_data=str(other), **kw))
    assert out.count("tokenizing ") == 1 and "format: saved 0, now 1" in out
    assert len(list((workspace / "retokenized-ddp" / "tokens").iterdir())) == 1
    ref = step_losses(workspace / "mapped-one")
    for run in ("mapped-ddp", "retokenized-ddp"):
        got = step_losses(workspace / run)
        assert ref.keys() == got.keys() and all(abs(ref[s] - got[s]) < 1e-5 for s in ref)


def test_a_build_without_render_settings_renders_as_its_summary_says(workspace, tmp_path):
    """A build made before builds wrote examples/coh_render.json: the settings come from its
    summary.json, are saved beside the run's token caches, and render the same epochs."""
    resampled = tmp_path / "resampled"
    build(BuildConfig([SourceSpec.parse(f"dialogue:{workspace / 'hh.jsonl'}")], str(resampled), skip_invalid=True,
                      render=RenderSpec(feedback=("pn", "np"), resample=True), progress=False))
    rtok = rtok_of(workspace)
    with_settings = TrainingEpochs(resampled / "train.jsonl", "coh", rtok, 1024, 512, "skip", 0, True,
                                   tmp_path / "cache1").get(1)[0]
    saved = json.loads((resampled / "examples" / "coh_render.json").read_text())
    (resampled / "examples" / "coh_render.json").unlink()
    cache = tmp_path / "cache2"
    derived = TrainingEpochs(resampled / "train.jsonl", "coh", rtok, 1024, 512, "skip", 0, True, cache).get(1)[0]
    assert json.loads((cache / "coh_render.json").read_text()) == saved
    assert [r.text for r in derived] == [r.text for r in with_settings]
