"""Pretraining stream: whole documents in order, within capacity, BOS/EOS as the tokenizer wants,
nothing lost over an epoch, and exact resume from a JSON round-tripped state. Offline only."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

from coh.data.errors import DataError
from coh.data.tokenize import tokenizer_adds_bos
from coh.train.pretrain import PretrainStream

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def docs(corpus) -> list[str]:
    """Documents of very different lengths (many longer than MAX_LENGTH), one line each, some non-ASCII."""
    long = [" ".join(c.split()) for c in corpus[:24]]
    short = ["Hello.", "café naïve — ✓ ünïcode", "A short line of text.", "x"]
    return [d for pair in zip(long, short * 6) for d in pair]


def write_txt(path: Path, docs: list[str]) -> Path:
    # blank lines between documents are not documents
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    lines = "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs))
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def write_dir(path: Path, docs: list[str]) -> Path:
    path.mkdir()
    third = len(docs) // 3
    write_txt(path / "a.txt", docs[:third])
    write_jsonl(path / "b.jsonl.gz", docs[third : 2 * third])
    write_jsonl(path / "c.jsonl", docs[2 * third :])
    (path / "README.md").write_text("not a data file")
    return path


@pytest.fixture(params=["txt", "jsonl", "jsonl.gz", "dir"])
def source(request, tmp_path, docs) -> str:
    kind = request.param
    if kind == "txt":
        return str(write_txt(tmp_path / "docs.txt", docs))
    if kind == "dir":
        return str(write_dir(tmp_path / "docs", docs))
    return str(write_jsonl(tmp_path / f"docs.{kind}", docs))


def doc_tokens(tokenizer, text: str) -> list[int]:
    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    return bos + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def expected_pieces(tokenizer, docs: list[str], n: int = MAX_LENGTH) -> list[list[int]]:
    out = []
    for d in docs:
        ids = doc_tokens(tokenizer, d)
        out += [ids[i : i + n] for i in range(0, len(ids), n)]
    return out


def pieces_of(batch) -> list[list[int]]:
    """Split a packed row back into its records at every position 0."""
    ids, pos = batch["input_ids"][0].tolist(), batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(ids)]
    return [ids[a:b] for a, b in itertools.pairwise(starts)]


def serve(stream: PretrainStream, n_pieces: int, capacities) -> tuple[list[list[int]], list]:
    pieces, batches = [], []
    for cap in capacities:
        if len(pieces) >= n_pieces:
            break
        batches.append(stream.next_batch(cap))
        pieces += pieces_of(batches[-1])
    return pieces, batches


def test_one_epoch_is_every_document_whole_in_order(source, docs, any_tokenizer):
    want = expected_pieces(any_tokenizer, docs)
    stream = PretrainStream(source, any_tokenizer, MAX_LENGTH)
    got, batches = serve(stream, len(want), [64, 100, 200] * 1000)
    assert got[: len(want)] == want  # nothing lost, nothing reordered, split only where longer than max_length
    assert all(len(p) <= MAX_LENGTH for p in got)
    assert stream.tokens_served == sum(b["input_ids"].numel() for b in batches)
    assert stream.batches_served == len(batches)


def test_capacity_targets_bos_and_eos(source, docs, any_tokenizer):
    stream = PretrainStream(source, any_tokenizer, MAX_LENGTH)
    want = expected_pieces(any_tokenizer, docs)
    served: list[list[int]] = []
    for cap in [50, 77, 128, 300] * 20:
        batch = stream.next_batch(cap)
        ids, pos, target = (batch[k][0].tolist() for k in ("input_ids", "position_ids", "target_mask"))
        assert 0 < len(ids) <= cap
        assert target == [p != 0 for p in pos]  # every token but a piece's first is a target
        served += pieces_of(batch)
        if len(served) < len(want):  # greedy: the next piece did not fit
            assert len(ids) + len(want[len(served)]) > cap
    # Documents, cut at every EOS of the served stream: BOS first for a llama-style tokenizer only.
    flat = [t for p in served for t in p]
    eos, bos = any_tokenizer.eos_token_id, any_tokenizer.bos_token_id
    ends = [i for i, t in enumerate(flat) if t == eos]
    documents = [flat[a + 1 : b + 1] for a, b in zip([-1, *ends], ends)]
    assert len(documents) > len(docs)  # past the first epoch
    assert all(d[-1] == eos and eos not in d[:-1] for d in documents)
    if tokenizer_adds_bos(any_tokenizer):
        assert all(d[0] == bos and bos not in d[1:] for d in documents)
    else:
        assert bos is None or bos not in flat


def test_epochs_wrap_around(tmp_path, docs, bpe_tokenizer):
    path = write_txt(tmp_path / "few.txt", docs[:5])
    want = expected_pieces(bpe_tokenizer, docs[:5])
    stream = PretrainStream(str(path), bpe_tokenizer, MAX_LENGTH)
    got, _ = serve(stream, 3 * len(want) + 1, [96] * 1000)
    assert got[: 3 * len(want)] == want * 3
    assert stream.epoch == 3 and stream.state_dict()["epoch"] == 3


def resume_check(make, capacities, k: int, m: int) -> dict:
    original = make()
    for cap in capacities[:k]:
        original.next_batch(cap)
    state = json.loads(json.dumps(original.state_dict()))
    restored = make()
    restored.load_state_dict(state)
    for cap in capacities[k : k + m]:
        a, b = original.next_batch(cap), restored.next_batch(cap)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].equal(b[key]), key
    assert restored.state_dict() == original.state_dict()
    return state


@pytest.mark.parametrize("kind", ["txt", "jsonl.gz", "dir"])
def test_resume_gives_the_same_batches(kind, tmp_path, docs, any_tokenizer):
    path = {"txt": lambda: write_txt(tmp_path / "d.txt", docs),
            "jsonl.gz": lambda: write_jsonl(tmp_path / "d.jsonl.gz", docs),
            "dir": lambda: write_dir(tmp_path / "d", docs)}[kind]()
    capacities = [60, 130, 90, 250, 48] * 40
    states = [resume_check(lambda: PretrainStream(str(path), any_tokenizer, MAX_LENGTH), capacities, k, 25)
              for k in (0, 1, 3, 7, 22, 30, 40, 60, 100)]  # about 45 batches an epoch
    assert any(s["pending"] for s in states)  # some saves fell inside a document carried over
    assert any(s["epoch"] >= 1 for s in states)
    assert any(s["cursor"][0] > 0 for s in states) or kind != "dir"


def offline_cache(monkeypatch, tmp_path: Path) -> None:
    """Keep ``datasets``' lock files and arrow builds (map-style) out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("streaming", [True, False])
def test_hub_code_path_on_a_local_dataset_folder(streaming, tmp_path, monkeypatch, docs, bpe_tokenizer):
    """``hub:DIR`` goes through ``datasets.load_dataset(DIR, None, split="train", streaming=...)``
    offline: the code path of hub names such as ``allenai/c4`` (shuffle with the seed, skip on resume)."""
    offline_cache(monkeypatch, tmp_path)
    folder = tmp_path / "hubdata"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", docs, field="content")
    make = lambda seed=0: PretrainStream(f"hub:{folder}", bpe_tokenizer, MAX_LENGTH,  # noqa: E731
                                          text_field="content", streaming=streaming, seed=seed)
    assert make().files is None and make().hub == str(folder)
    want = expected_pieces(bpe_tokenizer, docs)
    got, _ = serve(make(), len(want), [200] * 1000)
    got = got[: len(want)]
    assert sorted(map(tuple, got)) == sorted(map(tuple, want))  # every document once (shuffled)
    assert got != want
    assert serve(make(seed=1), len(want), [200] * 1000)[0][: len(want)] != got
    resume_check(make, [200, 70, 120] * 40, 5, 20)
    state = resume_check(make, [200, 70, 120] * 40, 40, 20)
    assert state["epoch"] == 1  # into the second epoch (another shuffle)


def test_hub_errors_name_the_dataset_and_row(tmp_path, monkeypatch, bpe_tokenizer):
    offline_cache(monkeypatch, tmp_path)
    folder = tmp_path / "hubdata"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n{"body": "no text"}\n')
    stream = PretrainStream(f"hub:{folder}", bpe_tokenizer, MAX_LENGTH, streaming=True)
    with pytest.raises(DataError) as e:
        stream.next_batch(1000)
    assert e.value.where == f"hub dataset {folder} (default) split train" and e.value.field == "text"
    assert e.value.line in (1, 2, 3)  # the row in shuffled order
    missing = PretrainStream(f"hub:{tmp_path / 'nothing-here'}", bpe_tokenizer, MAX_LENGTH, streaming=True)
    with pytest.raises(DataError, match="cannot load"):
        missing.next_batch(1000)


def test_hub_names_are_not_loaded_before_the_first_batch(bpe_tokenizer):
    c4 = PretrainStream("c4", bpe_tokenizer, MAX_LENGTH)
    assert (c4.hub, c4.config, c4.streaming, c4.files) == ("allenai/c4", "en", True, None)
    other = PretrainStream("someone/some-corpus", bpe_tokenizer, MAX_LENGTH, config="x")
    assert (other.hub, other.config, other.streaming) == ("someone/some-corpus", "x", False)


@pytest.mark.parametrize(("content", "line", "field", "problem"), [
    (b'{"text": "ok"}\n\n{"body": "no text"}\n', 3, "text", "missing"),
    (b'{"text": "ok"}\n{"text": 5}\n', 2, "text", "expected a string, found int 5"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 2, None, "not UTF-8"),
    (b'{"text": "ok"}\n{"text": \n', 2, None, "malformed JSON"),
    (b'["a list"]\n', 1, None, "expected a JSON object"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, bpe_tokenizer, content, line, field, problem):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        PretrainStream(str(path), bpe_tokenizer, MAX_LENGTH).next_batch(1000)
    assert (e.value.where, e.value.line, e.value.field) == (str(path), line, field)
    assert problem in e.value.problem and str(path) in str(e.value)


def test_bad_text_and_sources(tmp_path, bpe_tokenizer):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\n\xff\xfe bad\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 2: bytes that are not UTF-8"):
        PretrainStream(str(path), bpe_tokenizer, MAX_LENGTH).next_batch(1000)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(DataError, match="no documents"):
        PretrainStream(str(blank), bpe_tokenizer, MAX_LENGTH).next_batch(1000)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data file: expected names ending in"):
        PretrainStream(str(tmp_path / "empty"), bpe_tokenizer, MAX_LENGTH)
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        PretrainStream(str(tmp_path / "missing.jsonl"), bpe_tokenizer, MAX_LENGTH)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="no data file"):
        PretrainStream(str(tmp_path / "x.csv"), bpe_tokenizer, MAX_LENGTH)
    with pytest.raises(ValueError, match="capacity 10 is smaller than max_length"):
        PretrainStream(str(path), bpe_tokenizer, MAX_LENGTH).next_batch(10)


def test_error_after_resume_names_the_right_line(tmp_path, bpe_tokenizer):
    path = tmp_path / "late.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(300))
                    + '{"text": null}\n')
    stream = PretrainStream(str(path), bpe_tokenizer, MAX_LENGTH)
    stream.next_batch(MAX_LENGTH)
    restored = PretrainStream(str(path), bpe_tokenizer, MAX_LENGTH)
    restored.load_state_dict(json.loads(json.dumps(stream.state_dict())))
    with pytest.raises(DataError) as e:
        for _ in range(300):
            restored.next_batch(MAX_LENGTH)
    assert (e.value.line, e.value.field) == (301, "text")


def test_state_from_another_stream_is_refused(tmp_path, docs, bpe_tokenizer):
    a = PretrainStream(str(write_txt(tmp_path / "a.txt", docs)), bpe_tokenizer, MAX_LENGTH)
    b = PretrainStream(str(write_txt(tmp_path / "b.txt", docs)), bpe_tokenizer, MAX_LENGTH)
    with pytest.raises(ValueError, match="state is for source"):
        b.load_state_dict(a.state_dict())


def test_shards_are_disjoint_and_cover_the_text(tmp_path):
    from coh.tiny import train_tiny_tokenizer

    docs = [f"document number {i} says hello" for i in range(40)]
    path = tmp_path / "t.txt"
    path.write_text("\n".join(docs) + "\n")
    tok = train_tiny_tokenizer(docs, 300, "bpe")
    seen = []
    for rank in range(3):
        stream = PretrainStream(str(path), tok, 64, shard=(rank, 3))
        ids = []
        while stream.epoch == 0:
            batch = stream.next_batch(256)
            ids.append(batch["input_ids"][0].tolist())
        text = tok.decode([t for row in ids for t in row])
        seen.append({d for d in docs if d in text})
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert seen[0] | seen[1] | seen[2] == set(docs)
